"""How Singer messages reach stdout: in chunks, through a buffer the tap owns."""

from __future__ import annotations

import datetime
import io
import sys
import time
import typing as t
import weakref

from singer_sdk.contrib.msgspec import MsgSpecWriter, encoder
from singer_sdk.singerlib import RecordMessage, StateMessage

from tap_analytics.errors import TargetClosedPipeError

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from singer_sdk.singerlib.encoding.simple import Message

#: Bytes of messages collected before one write to stdout (about 200 records).
BUFFER_BYTES = 64 * 1024

#: How long one ``time_extracted`` stands for the records written after it: they
#: are stamped at most this much before they were written.
EXTRACTED_AT_SECONDS = 0.001

#: A stream's RECORD line buffer, where its record starts, and what follows the
#: record up to ``time_extracted`` (see BufferedMsgSpecWriter.write_record).
_RecordLine = tuple[bytearray, int, bytes]


class BufferedMsgSpecWriter(MsgSpecWriter):
    """The SDK's msgspec writer, with an output buffer of its own.

    The SDK's writers flush after every message, and with ``PYTHONUNBUFFERED``
    set (as in many Docker images) ``sys.stdout.buffer`` has no buffer at all:
    either way one write system call per record, a fifth of a bulk sync. Here
    messages go through a buffer the tap owns, written out in chunks of
    :data:`BUFFER_BYTES`, and flushed at every message but RECORD (SCHEMA, STATE,
    BATCH): a target acts on a STATE only after the records before it, so
    flushing there delivers every record and STATE a target could use.
    :meth:`flush_all` writes what is left when the run ends, fails or is
    interrupted.

    The buffer is an ``io.BufferedWriter`` over stdout's file descriptor: its C
    code keeps track of partial writes, so a signal that interrupts a write (and
    unwinds the sync, see :mod:`tap_analytics.interrupts`) never leaves half a
    line behind or writes one twice; the next flush goes on where it stopped.
    """

    _live: t.ClassVar[weakref.WeakSet[BufferedMsgSpecWriter]] = weakref.WeakSet()

    def __init__(self) -> None:
        super().__init__()
        self._stdout: t.TextIO | None = None  # the stdout that self._out writes to
        self._out: io.BufferedWriter | None = None
        #: Called before a STATE message is written (the tap's BATCH output hooks
        #: in here, so that no STATE passes records still in an open batch).
        self.before_state: Callable[[], None] | None = None
        #: Per (stream, version): see write_record.
        self._record_line: dict[tuple[str, int | None], _RecordLine] = {}
        # The end of a RECORD line: time_extracted (encoded at _extracted_at).
        self._extracted_at = -1.0
        self._extracted = b""
        self._live.add(self)

    def write_message(self, message: Message) -> None:
        if isinstance(message, StateMessage) and self.before_state is not None:
            self.before_state()
        out = self._output()
        try:
            if out is None:  # stdout replaced by a text stream (e.g. in tests)
                sys.stdout.write(self.format_message(message).decode())
                if not isinstance(message, RecordMessage):
                    sys.stdout.flush()
            else:
                out.write(self.format_message(message))
                if not isinstance(message, RecordMessage):
                    out.flush()
        except BrokenPipeError:
            raise TargetClosedPipeError from None

    def write_record(
        self, stream: str, record: dict[str, t.Any], version: int | None
    ) -> None:
        """A RECORD message: the line ``RecordMessage.to_dict`` would give, without
        the object, nor the message dict.

        Per record, building the message object (its checks, ``to_dict``) cost as
        much as encoding the record. The line's parts around the record are the
        same for every record of a stream, so only the record is encoded, with
        the SDK's encoder, into a buffer that starts with the rest; and
        ``time_extracted``, encoded, is the same for the records written within
        :data:`EXTRACTED_AT_SECONDS` (reading and encoding the time for each one
        cost as much as encoding the record).
        """
        line, start, middle = self._record_line.get((stream, version)) or (
            self._new_record_line(stream, version)
        )
        encoder.encode_into(record, line, start)  # cuts the line after the record
        line += middle
        now = time.time()
        if not 0 <= now - self._extracted_at < EXTRACTED_AT_SECONDS:
            self._extracted_at = now
            moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
            self._extracted = encoder.encode(moment) + b"}\n"
        line += self._extracted
        out = self._output()
        try:
            if out is None:  # stdout replaced by a text stream (e.g. in tests)
                sys.stdout.write(line.decode())
            else:
                out.write(line)
        except BrokenPipeError:
            raise TargetClosedPipeError from None

    def _new_record_line(self, stream: str, version: int | None) -> _RecordLine:
        """The buffer of ``stream``'s RECORD lines (up to its record), where the
        record starts, and what goes between the record and ``time_extracted``."""
        start = b'{"type":"RECORD","stream":' + encoder.encode(stream) + b',"record":'
        middle = b"" if version is None else b',"version":' + encoder.encode(version)
        entry = (bytearray(start), len(start), middle + b',"time_extracted":')
        self._record_line[stream, version] = entry
        return entry

    def _output(self) -> io.BufferedWriter | None:
        """The buffer over the process's stdout; None when ``sys.stdout`` is another."""
        stdout = sys.__stdout__
        if stdout is None or sys.stdout is not stdout:
            return None
        if self._stdout is not stdout:
            stdout.flush()  # whatever was printed before goes first
            raw = io.FileIO(stdout.fileno(), "wb", closefd=False)
            self._out = io.BufferedWriter(raw, buffer_size=BUFFER_BYTES)
            self._stdout = stdout
        return self._out

    def flush(self) -> None:
        """Write out every message collected so far."""
        if self._out is not None:
            try:
                self._out.flush()
            except BrokenPipeError:
                raise TargetClosedPipeError from None

    @classmethod
    def flush_all(cls) -> None:
        """Flush every writer (the run ends, fails or is interrupted)."""
        for writer in list(cls._live):
            writer.flush()

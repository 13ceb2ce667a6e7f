"""How Singer messages reach stdout: in chunks, through a buffer the tap owns."""

from __future__ import annotations

import datetime
import io
import sys
import typing as t
import weakref

from singer_sdk.contrib.msgspec import MsgSpecWriter, serialize_jsonl
from singer_sdk.singerlib import RecordMessage, StateMessage

from tap_analytics.errors import TargetClosedPipeError

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from singer_sdk.singerlib.encoding.simple import Message

#: Bytes of messages collected before one write to stdout (about 200 records).
BUFFER_BYTES = 64 * 1024


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
        """A RECORD message, as ``RecordMessage.to_dict`` has it, without the object.

        Per record, building the message object (its checks, ``to_dict``) cost as
        much as encoding the record; the line is the same.
        """
        message: dict[str, t.Any] = {"type": "RECORD", "stream": stream}
        message["record"] = record
        if version is not None:
            message["version"] = version
        message["time_extracted"] = datetime.datetime.now(datetime.UTC)
        line = serialize_jsonl(message)
        out = self._output()
        try:
            if out is None:  # stdout replaced by a text stream (e.g. in tests)
                sys.stdout.write(line.decode())
            else:
                out.write(line)
        except BrokenPipeError:
            raise TargetClosedPipeError from None

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

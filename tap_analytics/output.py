"""How Singer messages reach stdout."""

from __future__ import annotations

import sys
import typing as t

from singer_sdk.contrib.msgspec import MsgSpecWriter
from singer_sdk.singerlib import RecordMessage

from tap_analytics.errors import TargetClosedPipeError

if t.TYPE_CHECKING:
    from singer_sdk.singerlib.encoding.simple import Message


class BufferedMsgSpecWriter(MsgSpecWriter):
    """The SDK's msgspec writer, flushing stdout at SCHEMA/STATE, not per RECORD.

    The SDK's writers flush after every message: one system call per record, a
    large share of a bulk sync. Targets act on a STATE message only after the
    records before it, so flushing there (and at exit, which Python does even
    after an error) delivers every record and STATE a target could use.
    """

    def write_message(self, message: Message) -> None:
        line = self.format_message(message)
        stdout = sys.stdout
        binary = getattr(stdout, "buffer", None)
        try:
            if binary is None:  # stdout replaced by a text stream (e.g. in tests)
                stdout.write(line.decode())
            else:
                binary.write(line)
            if not isinstance(message, RecordMessage):
                stdout.flush()
        except BrokenPipeError:
            raise TargetClosedPipeError from None

"""BATCH messages: records in files the target loads in bulk, and no file left behind.

With ``batch_config`` set, each stream's records go to a JSON-lines file instead of
RECORD messages, and a BATCH message hands the file to the target, which loads it
in one go (target-postgres: ``COPY`` into a temporary table, one merge). The SDK
has a batch path of its own; it is not used, because

- it counts a record in the bookmark before the record is in any file, so a
  STATE written at an interrupt can pass a record that reaches no target;
- it holds a whole batch in memory before writing it (141 MB at 50,000 records);
- it writes one batch per parent record for child streams (thousands of tiny
  batches), and applies no stream map to what it writes;
- its files stay on disk: a target reads them, and nothing ever deletes them.

Here records take the SDK's RECORD path as usual (write, then bookmark, then STATE
every ``batch_size`` records), except that the writing goes to the stream's open
batch file (:meth:`BatchOutput.write`), and before any STATE reaches stdout every
open batch is closed and announced (:meth:`BatchOutput.announce_all`): a STATE
never covers a record that is not in a batch announced before it.

**No file is left behind.** A batch file has no name: it is created unlinked
(``O_TMPFILE``) in the storage root, and the BATCH message names it as
``file:///proc/<tap pid>/fd/<n>``, the tap's own descriptor, which the target's
SDK opens like any file (it needs a seekable file: a named pipe fails there). The
target's open keeps the data alive; the tap closes its descriptor as soon as it
sees that open (inotify ``IN_OPEN``), and the kernel frees the space once the
target has read it. A tap that is killed leaves nothing either: its descriptors
close with it. The price: Linux only, and the tap must live until the target has
opened every batch it announced, so it waits for that at the end of a run, and
when :data:`MAX_UNOPENED` batches are waiting (which also bounds the disk used).
A target that opens no batch file for :data:`BATCH_READ_TIMEOUT` seconds does not
read BATCH messages (or has died): the run fails with one line naming
``batch_config``.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import errno
import io
import os
import select
import struct
import sys
import tempfile
import time
import typing as t
import weakref
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from singer_sdk.contrib.msgspec import serialize_jsonl
from singer_sdk.helpers._batch import BaseBatchFileEncoding, SDKBatchMessage

from tap_analytics.errors import ConfigError, TapAnalyticsError
from tap_analytics.interrupts import held

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from singer_sdk.singerlib.encoding.simple import Message

#: Records per batch when ``batch_config`` does not say.
DEFAULT_BATCH_SIZE = 10_000
#: Batches announced and not yet opened by the target before the tap waits for it.
MAX_UNOPENED = 2
#: Seconds the target may take to open the next batch file (it loads the one
#: before meanwhile) before the run fails.
BATCH_READ_TIMEOUT = 300.0
#: Bytes of records buffered before a write to the batch file.
_FILE_BUFFER_BYTES = 256 * 1024

_IN_OPEN = 0x20
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


class BatchNotReadError(TapAnalyticsError):
    """The target opened no batch file for too long: it does not read BATCH."""


class BatchWriteError(TapAnalyticsError):
    """A batch file could not be made or written (no space left, a file too large)."""


def _cannot_write(directory: str, exc: OSError) -> str:
    return (
        f"cannot write a batch file in {directory} (setting "
        f"'batch_config.storage.root'): {exc.strerror or exc}"
    )


def batch_config_schema(sdk_schema: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """The SDK's ``batch_config`` schema, saying what :class:`BatchSettings` reads
    and refuses: ``batch_size``, which the SDK reads but does not declare, and
    the one format and compression taken."""
    schema = copy.deepcopy(dict(sdk_schema))
    properties = schema.setdefault("properties", {})
    properties["batch_size"] = {
        "type": ["integer", "null"],
        "minimum": 1,
        "default": DEFAULT_BATCH_SIZE,
        "title": "Batch Size",
        "description": "Records per batch file; a STATE follows each file.",
    }
    encoding = properties.get("encoding", {}).get("properties", {})
    if "format" in encoding:
        encoding["format"]["description"] = "jsonl (parquet is refused)."
    if "compression" in encoding:
        encoding["compression"]["description"] = (
            "none (gzip is refused: batch files never leave this machine)."
        )
    return schema


@dataclass(frozen=True)
class BatchSettings:
    """What ``batch_config`` asks for, as far as this tap supports it."""

    directory: str
    batch_size: int

    @classmethod
    def from_config(cls, raw: t.Mapping[str, t.Any] | None) -> BatchSettings | None:
        """The settings, or None for RECORD messages (``batch_config`` unset or {})."""
        if not raw:
            return None
        encoding = raw.get("encoding") or {}
        if encoding.get("format", "jsonl") != "jsonl":
            msg = "setting 'batch_config': encoding.format must be jsonl"
            raise ConfigError(msg)
        if encoding.get("compression") not in (None, "none"):
            msg = (
                "setting 'batch_config': encoding.compression must be none (batch "
                "files never leave this machine: compressing them only costs CPU)"
            )
            raise ConfigError(msg)
        root = (raw.get("storage") or {}).get("root") or tempfile.gettempdir()
        parts = urlsplit(root)
        if parts.scheme not in ("", "file") or parts.netloc not in ("", "localhost"):
            msg = "setting 'batch_config': storage.root must be a local directory"
            raise ConfigError(msg)
        directory = unquote(parts.path) if parts.scheme else root
        if not os.path.isdir(directory):
            msg = "setting 'batch_config': storage.root is not an existing directory"
            raise ConfigError(msg)
        if not sys.platform.startswith("linux"):
            msg = "setting 'batch_config': BATCH messages need Linux (/proc, inotify)"
            raise ConfigError(msg)
        try:  # before any record: a directory where no file can be made
            os.close(_unnamed_file(directory))
        except OSError as exc:
            raise BatchWriteError(_cannot_write(directory, exc)) from None
        # Its type and minimum are the settings schema's to check (batch_config_schema).
        batch_size = raw.get("batch_size")
        return cls(directory, DEFAULT_BATCH_SIZE if batch_size is None else batch_size)


class _OpenWatch:
    """Which of the watched files another process has opened (inotify, Linux)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._check(self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))

    def _check(self, result: int) -> int:
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify: {os.strerror(code)}")
        return result

    def watch(self, path: str) -> int:
        """Start watching ``path``; returns the watch descriptor."""
        return self._check(
            self._libc.inotify_add_watch(self.fd, os.fsencode(path), _IN_OPEN)
        )

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for an open (a signal may cut it short)."""
        select.select([self.fd], [], [], timeout)

    def opened(self) -> list[int]:
        """Watch descriptors opened since the last call (no waiting).

        An open read here is gone from inotify: the caller records it before an
        interrupt may unwind (tap_analytics.interrupts.held).
        """
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return []
        found = []
        offset = 0
        while offset < len(data):
            wd, mask, _, name_length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size + name_length
            if mask & _IN_OPEN:
                found.append(wd)
                self._libc.inotify_rm_watch(self.fd, wd)
        return found

    def close(self) -> None:
        os.close(self.fd)


class _BatchFile:
    """One batch: an unnamed file in ``directory``, written through a buffer."""

    def __init__(self, directory: str) -> None:
        self.fd = _unnamed_file(directory)
        raw = io.FileIO(self.fd, "wb", closefd=False)
        self.out = io.BufferedWriter(raw, buffer_size=_FILE_BUFFER_BYTES)
        self.records = 0
        self.broken = False  # a write failed (disk full): never announced

    @property
    def path(self) -> str:
        return f"/proc/{os.getpid()}/fd/{self.fd}"

    def close(self) -> None:
        if self.fd >= 0:
            try:
                self.out.close()  # flushes; the raw file does not own the descriptor
            finally:
                os.close(self.fd)
                self.fd = -1


def _unnamed_file(directory: str) -> int:
    """A new file in ``directory`` that no name points to (O_TMPFILE, else unlinked)."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except OSError as exc:  # a file system without O_TMPFILE
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
        fd, name = tempfile.mkstemp(prefix="tap-analytics-batch-", dir=directory)
        os.unlink(name)
        return fd


class BatchOutput:
    """The run's open and announced batches, one open batch per output stream."""

    _live: t.ClassVar[weakref.WeakSet[BatchOutput]] = weakref.WeakSet()

    def __init__(
        self, settings: BatchSettings, write_message: Callable[[Message], None]
    ) -> None:
        self.settings = settings
        self._write_message = write_message
        self._open: dict[str, _BatchFile] = {}  # by output stream (alias)
        self._unopened: dict[int, _BatchFile] = {}  # announced, by watch descriptor
        self._watch = _OpenWatch()
        #: The run is ending (done, failed, interrupted): announce without waiting.
        self.ending = False
        self._live.add(self)

    def write(self, stream: str, record: dict[str, t.Any]) -> None:
        """Add ``record`` to the open batch of ``stream``; announce it when full."""
        batch = self._open.get(stream)
        try:
            if batch is None:
                batch = self._open[stream] = _BatchFile(self.settings.directory)
            batch.out.write(serialize_jsonl(record))  # the SDK's JSON encoding
        except OSError as exc:  # disk full: half a line, never handed over
            if batch is not None:
                batch.broken = True
            raise BatchWriteError(_cannot_write(self.settings.directory, exc)) from None
        batch.records += 1
        if batch.records >= self.settings.batch_size:
            self.announce(stream)

    def announce(self, stream: str) -> None:
        """Close the open batch of ``stream`` (if any) and hand it to the target."""
        batch = self._open.get(stream)
        if batch is None:
            return
        if batch.broken:
            del self._open[stream]
            with contextlib.suppress(OSError):  # its buffer cannot be written either
                batch.close()
            return
        try:
            batch.out.flush()
        except OSError as exc:
            batch.broken = True
            raise BatchWriteError(_cannot_write(self.settings.directory, exc)) from None
        # Watched before the target can know of it, so that no open is missed.
        self._unopened[self._watch.watch(batch.path)] = batch
        self._write_message(
            SDKBatchMessage(
                stream=stream,
                encoding=BaseBatchFileEncoding(format="jsonl", compression="none"),
                manifest=[f"file://{batch.path}"],
            )
        )
        # Open until its message is out: a signal that unwinds the run before
        # that leaves it to the interrupt's STATE, which announces it first.
        del self._open[stream]
        if not self.ending:
            self._wait(MAX_UNOPENED, BATCH_READ_TIMEOUT)

    def announce_all(self) -> None:
        """Announce every open batch (before a STATE, at the end of a run)."""
        for stream in list(self._open):
            self.announce(stream)

    def end(self, timeout: float = BATCH_READ_TIMEOUT) -> None:
        """Announce what is open, then wait until the target has opened all of it.

        Raises :class:`BatchNotReadError` if the target opens none for ``timeout``
        seconds. Every descriptor is closed either way.
        """
        try:
            self.ending = True
            self.announce_all()
            self._wait(0, timeout)
        finally:
            self.close()

    @classmethod
    def end_all(cls, timeout: float) -> None:
        """Hand over the last batches of every run, waiting ``timeout`` at most.

        For a run that failed or was interrupted: the records written so far go
        to the target, as records before a failure do without BATCH. A target
        that does not open them in time loses nothing: it cannot load the STATE
        after them either.
        """
        for output in list(cls._live):
            with contextlib.suppress(TapAnalyticsError, OSError):
                output.end(timeout)

    def close(self) -> None:
        """Close every descriptor: unopened batches are gone for good."""
        for batch in [*self._open.values(), *self._unopened.values()]:
            batch.close()
        self._open.clear()
        self._unopened.clear()
        if self._watch.fd >= 0:
            self._watch.close()
            self._watch.fd = -1
        self._live.discard(self)

    def _wait(self, unopened_at_most: int, timeout: float) -> None:
        """Close the batches the target opened; wait until few enough are left."""
        deadline = time.monotonic() + timeout
        while True:
            with held():
                for wd in self._watch.opened():
                    batch = self._unopened.pop(wd, None)
                    if batch is not None:
                        batch.close()  # the target's open keeps the data
                        deadline = time.monotonic() + timeout
            if len(self._unopened) <= unopened_at_most:
                return
            wait = deadline - time.monotonic()
            if wait <= 0:
                self.close()
                msg = (
                    f"the target opened no BATCH file for {timeout:.0f} s: it does "
                    "not read BATCH messages (or it stopped); unset batch_config "
                    "for such targets"
                )
                raise BatchNotReadError(msg)
            self._watch.wait(wait)

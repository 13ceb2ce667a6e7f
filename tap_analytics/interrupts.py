"""An interrupted run: how it unwinds, and the STATE a rerun resumes from.

The SDK answers SIGINT and SIGTERM by writing its in-memory state and exiting 0,
so an orchestrator records a partial load as a success, and that state may carry
an unsorted stream's progress markers. Here a signal unwinds the sync instead,
the tap writes a resumable STATE after the records already produced, and the run
exits 128 + the signal's number, as a shell reports a process the signal killed.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import typing as t

from singer_sdk.helpers._state import (
    PROGRESS_MARKERS,
    SIGNPOST_MARKER,
    STARTING_MARKER,
)

# What the SDK keeps in a stream's state while the stream syncs; it means
# something only to the run that wrote it.
IN_PROGRESS_KEYS = (PROGRESS_MARKERS, SIGNPOST_MARKER, STARTING_MARKER)


class RunInterrupted(BaseException):
    """SIGINT or SIGTERM arrived; raised in the main thread wherever it was.

    A ``BaseException`` like ``KeyboardInterrupt``, so that no ``except Exception``
    on the way out (the SDK logs those as an unhandled error) mistakes it for a
    failure of the stream it passes through.
    """

    def __init__(self, signum: int, write_state: t.Callable[[], None]) -> None:
        super().__init__(signum)
        self.signum = signum
        #: Writes the tap's resumable STATE; called once the sync has unwound.
        self.write_state = write_state

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def message(self) -> str:
        name = signal.Signals(self.signum).name
        return (
            f"interrupted by {name}: every record and STATE read so far is on "
            "stdout; a rerun with the last STATE resumes from there"
        )


#: The interrupt that arrived inside :func:`held`, raised when it ends.
_held: list[RunInterrupted | None] = []


@contextlib.contextmanager
def held() -> t.Iterator[None]:
    """Raise an interrupt arriving in this block only when the block ends.

    For short steps of the main thread that must not be cut in two (not nested):
    the handler raises wherever the main thread is, and blocking the signal would
    not help (any thread may take it). E.g. open events read from inotify and not
    yet recorded are lost, and the run would then wait for opens that happened
    (tap_analytics.batches).
    """
    _held.append(None)
    try:
        yield
    finally:
        if (pending := _held.pop()) is not None:
            raise pending  # the interrupt goes on from here


def raise_interrupted(signum: int, write_state: t.Callable[[], None]) -> None:
    """Signal handler body: unwind the sync, and let a second signal end the run.

    Inside :func:`held`, the interrupt waits for the block's end.
    """
    # A second Ctrl-C or SIGTERM kills at once (default action), the way users
    # expect when the first one's cleanup takes too long.
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, signal.SIG_DFL)
    interrupt = RunInterrupted(signum, write_state)
    if _held:
        _held[-1] = interrupt
        return
    raise interrupt


def resumable_state(state: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """``state`` without what only the interrupted run understood.

    An unsorted stream's progress markers hold the highest replication key seen
    so far, while records below it may not have been read yet: the SDK promotes
    them to the bookmark only when the stream ends, and doing it here would skip
    those records. Without them the stream's bookmark stays where this run
    started, so a rerun reads them again. A sorted stream's bookmark advances
    record by record after each record is written, so it is already resumable.
    """
    resumable = copy.deepcopy(dict(state))
    for stream_state in resumable.get("bookmarks", {}).values():
        for entry in [stream_state, *stream_state.get("partitions", [])]:
            for key in IN_PROGRESS_KEYS:
                entry.pop(key, None)
    return resumable

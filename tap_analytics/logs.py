"""Logs a person reads at INFO: progress per stream, and the SDK's noise kept out.

The SDK's record counter only writes a ``METRIC`` line (JSON, every 60 s, and
once per parent record for a child stream); the progress line here counts a
stream's records across all its parents and says how far it is in plain words.
"""

from __future__ import annotations

import logging
import time
import typing as t

from singer_sdk import metrics

if t.TYPE_CHECKING:
    from types import TracebackType

    from tap_analytics.run_stats import RunStats


#: Records counted between two looks at the clock (the SDK's METRIC line and the
#: progress line) and two updates of the run's statistics (which take a lock): per
#: record, these were a tenth of a bulk sync's per-record cost.
CHECK_EVERY = 32


class StreamProgress:
    """One stream's records so far, logged every ``interval`` seconds."""

    def __init__(
        self,
        stream: str,
        *,
        interval: float,
        run_stats: RunStats,
        logger: logging.Logger,
    ) -> None:
        self.stream = stream
        self.interval = interval
        self._run_stats = run_stats
        self._logger = logger
        self._records = 0
        self._started: float | None = None
        self._next_report = 0.0

    def start(self) -> None:
        """Start the clock at the stream's first sync (a child's first parent)."""
        if self._started is None:
            self._started = time.monotonic()
            self._next_report = self._started + self.interval

    def advance(self, count: int) -> None:
        """Count ``count`` more records; log if due."""
        self._records += count
        self._run_stats.count_records(self.stream, count)
        now = time.monotonic()
        if now >= self._next_report and self._started is not None:
            rate = self._records / max(now - self._started, 1e-9)
            self._logger.info(
                "%s: %s records so far (%s records/s)",
                self.stream,
                f"{self._records:,}",
                f"{rate:,.0f}",
            )
            self._next_report = now + self.interval


class ProgressRecordCounter(metrics.Counter):
    """The SDK's record counter (its METRIC lines), also advancing a progress.

    The SDK's counter looks at the clock for every record it counts; this one
    looks every :data:`CHECK_EVERY` records, when it also hands them to the
    progress.
    """

    def __init__(
        self, progress: StreamProgress, tags: dict[str, t.Any], log_interval: float
    ) -> None:
        super().__init__(metrics.Metric.RECORD_COUNT, tags, log_interval=log_interval)
        self._progress = progress
        self._unchecked = 0  # counted since the last look at the clock

    def __enter__(self) -> t.Self:
        self._progress.start()
        return super().__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self._check()  # the last records of this sync count too
        super().__exit__(exc_type, exc_val, exc_tb)

    def increment(self, value: int = 1) -> None:
        self.value += value
        self._unchecked += value
        if self._unchecked >= CHECK_EVERY:
            self._check()
            if self._ready_to_log():
                self._pop()

    def _check(self) -> None:
        self._progress.advance(self._unchecked)
        self._unchecked = 0


# Lines the SDK and ``backoff`` write at INFO or above that a clean or a failing
# run does not need: "Backing off" repeats the stream's own retry line, "Giving
# up" (ERROR) and "An unhandled error" (ERROR) come before the CLI's last line,
# which reports the same failure; and "Pagination stopped" comes once per empty
# child page.
_DEBUG_ONLY = (
    "Backing off %s(...)",
    "Giving up %s(...)",
    "An unhandled error occurred while syncing",
    "Pagination stopped after",
)


class _DemoteSdkNoise(logging.Filter):
    """Turns the lines in ``_DEBUG_ONLY`` into DEBUG lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(_DEBUG_ONLY):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


#: One instance, so attaching it again to the same logger is a no-op.
DEMOTE_SDK_NOISE = _DemoteSdkNoise()

"""``tap-analytics``: the SDK's command line, with expected failures on one line."""

from __future__ import annotations

import contextlib
import os
import sys

import requests
from singer_sdk.exceptions import (
    FatalAPIError,
    InvalidStreamSortException,
    MappingError,
    RetriableAPIError,
)

from tap_analytics.batches import BatchOutput
from tap_analytics.concurrency import Prefetcher
from tap_analytics.errors import (
    TapAnalyticsError,
    TargetClosedPipeError,
    request_failure,
)
from tap_analytics.interrupts import RunInterrupted
from tap_analytics.output import BufferedMsgSpecWriter
from tap_analytics.retry import after_retries
from tap_analytics.tap import TapAnalytics
from tap_analytics.urls import safe_url

#: Seconds a failed or interrupted run waits for the target to open each of its
#: last batch files (tap_analytics.batches) before it exits.
HAND_OVER_SECONDS = 10.0


def failure_message(exc: BaseException) -> str | None:
    """One line for an expected failure; ``None`` for a bug (keep the traceback)."""
    if isinstance(exc, MappingError):
        return f"stream_maps: {exc}"
    if isinstance(exc, RetriableAPIError):
        return f"{exc}{after_retries(exc)}"
    if isinstance(exc, (TapAnalyticsError, FatalAPIError)):
        return str(exc)
    if isinstance(exc, InvalidStreamSortException):
        return f"records out of replication-key order: {exc}"
    if isinstance(exc, requests.RequestException):
        url = safe_url(exc.request.url) if exc.request and exc.request.url else "?"
        return f"{request_failure(f'GET {url}', exc)}{after_retries(exc)}"
    return None


def main() -> None:
    """``tap-analytics``: the SDK's CLI, with expected failures on one line."""
    try:
        TapAnalytics.cli()
    except RunInterrupted as interrupt:
        Prefetcher.cancel_all()
        with contextlib.suppress(TargetClosedPipeError, OSError):  # target gone too
            interrupt.write_state()  # announces the open batches first
            BatchOutput.end_all(timeout=HAND_OVER_SECONDS)
            sys.stdout.flush()
        print(f"tap-analytics: {interrupt.message}", file=sys.stderr, flush=True)
        # Without waiting for child requests still in flight in the prefetch pool
        # (Python joins its threads at exit): stopping promptly is the point.
        os._exit(interrupt.exit_code)
    except Exception as exc:
        message = failure_message(exc)
        if message is None:
            raise
        Prefetcher.cancel_all()  # nobody will read what is still queued
        TapAnalytics.logger.debug("Failure", exc_info=True)
        if not isinstance(exc, TargetClosedPipeError):
            # Every record written before the failure reaches the target.
            with contextlib.suppress(TargetClosedPipeError, OSError):
                BatchOutput.end_all(timeout=HAND_OVER_SECONDS)
                BufferedMsgSpecWriter.flush_all()
        if isinstance(exc, TargetClosedPipeError):
            # Else Python's flush of stdout at exit reports the broken pipe again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"tap-analytics: error: {message}", file=sys.stderr, flush=True)
        sys.exit(1)

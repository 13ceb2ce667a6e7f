"""Counters for one run, shared by every thread, read by the end-of-run summary."""

from __future__ import annotations

import collections
import threading
import time


class RunStats:
    """What a run did: requests, retries, parents skipped because they were gone."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.requests = 0
        self.retries = 0
        #: Parents (by child stream name) whose child request answered 404.
        self.skipped_parents: collections.Counter[str] = collections.Counter()

    def count_request(self) -> None:
        with self._lock:
            self.requests += 1

    def count_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def count_skipped_parent(self, stream: str) -> None:
        with self._lock:
            self.skipped_parents[stream] += 1

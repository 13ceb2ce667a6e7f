"""Counters for one run, shared by every thread, read by the end-of-run summary."""

from __future__ import annotations

import collections
import threading
import time


class RunStats:
    """What a run did: records, requests, retries, parents skipped because gone."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.requests = 0
        self.retries = 0
        #: Records synced, by stream (as the SDK counts them: selected, before maps).
        self.records: collections.Counter[str] = collections.Counter()
        #: Parents (by child stream name) whose child request answered 404.
        self.skipped_parents: collections.Counter[str] = collections.Counter()
        #: Fields the schema contract added this run: ``stream.field (type)``.
        self.added_fields: list[str] = []

    def count_request(self) -> None:
        with self._lock:
            self.requests += 1

    def count_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def count_records(self, stream: str, count: int = 1) -> None:
        with self._lock:
            self.records[stream] += count

    def count_skipped_parent(self, stream: str) -> None:
        with self._lock:
            self.skipped_parents[stream] += 1

    def count_added_field(self, stream: str, field: str, json_type: str) -> None:
        with self._lock:
            self.added_fields.append(f"{stream}.{field} ({json_type})")

    def summary(self) -> str:
        """The run's last INFO line: what was synced and what it took."""
        with self._lock:
            per_stream = ", ".join(f"{n} {c:,}" for n, c in self.records.items())
            skipped = sum(self.skipped_parents.values())
            skipped_by_stream = ", ".join(
                f"{n} {c:,}" for n, c in self.skipped_parents.items()
            )
            return (
                f"Sync completed in {time.monotonic() - self.started:.1f} s: "
                f"{sum(self.records.values()):,} records ({per_stream or 'none'}), "
                f"{self.requests:,} requests, {self.retries:,} retries, "
                f"{skipped:,} skipped parents"
                + (f" ({skipped_by_stream})" if skipped else "")
            )

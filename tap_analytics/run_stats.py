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
        # Parents (their ids, by child stream name) whose child request answered 404.
        self._skipped: dict[str, set[str]] = collections.defaultdict(set)
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

    def count_skipped_parent(self, stream: str, parent_id: str) -> None:
        with self._lock:
            self._skipped[stream].add(parent_id)

    def skipped(self, stream: str, parent_id: str) -> bool:
        """Whether ``stream`` skipped ``parent_id`` in this run."""
        with self._lock:
            return parent_id in self._skipped.get(stream, ())

    def skipped_ids(self, *streams: str) -> set[str]:
        """The parents any of ``streams`` skipped in this run."""
        with self._lock:
            return set().union(*(self._skipped.get(name, ()) for name in streams))

    @property
    def skipped_parents(self) -> collections.Counter[str]:
        """How many parents each child stream skipped."""
        with self._lock:
            return self._skipped_counts()

    def _skipped_counts(self) -> collections.Counter[str]:
        return collections.Counter(
            {stream: len(ids) for stream, ids in self._skipped.items()}
        )

    def count_added_field(self, stream: str, field: str, json_type: str) -> None:
        with self._lock:
            self.added_fields.append(f"{stream}.{field} ({json_type})")

    def summary(self) -> str:
        """The run's last INFO line: what was synced and what it took."""
        with self._lock:
            per_stream = ", ".join(f"{n} {c:,}" for n, c in self.records.items())
            counts = self._skipped_counts()
            skipped = sum(counts.values())
            skipped_by_stream = ", ".join(f"{n} {c:,}" for n, c in counts.items())
            return (
                f"Sync completed in {time.monotonic() - self.started:.1f} s: "
                f"{sum(self.records.values()):,} records ({per_stream or 'none'}), "
                f"{self.requests:,} requests, {self.retries:,} retries, "
                f"{skipped:,} skipped parents"
                + (f" ({skipped_by_stream})" if skipped else "")
            )

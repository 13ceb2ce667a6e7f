"""Child requests made ahead of time in a bounded thread pool.

The SDK syncs a parent's children one parent record at a time, so a latency-bound
API (v3: workflows → jobs → job results) is walked one request after another.
Here a parent's records are read a few ahead, and their children's pages (and the
children's children) are fetched in a pool of ``max_concurrent_requests`` threads.
Only HTTP and JSON decoding run in the pool: the SDK still writes every SCHEMA,
RECORD and STATE message from the main thread in its usual order, so the output
is the same as a serial run's, and retries happen inside each pooled request.

Streams that read the same URL for the same parent (v3 ``jobs`` and
``successful_jobs``) share one fetch: the records are kept until every selected
reader has taken them.
"""

from __future__ import annotations

import collections
import copy
import threading
import typing as t
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

if t.TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from singer_sdk.helpers.types import Context
    from singer_sdk.streams import Stream

    from tap_analytics.client import AnalyticsStream

Record = dict[str, t.Any]


@dataclass
class _Fetch:
    records: Future[list[Record]]
    readers_left: int


class Prefetcher:
    """Fetches the children of upcoming parent records while the main thread writes."""

    _live: t.ClassVar[weakref.WeakSet[Prefetcher]] = weakref.WeakSet()

    def __init__(self, max_workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="prefetch")
        # Parents read ahead of the one being written: enough to keep every
        # worker busy, few enough that memory does not grow with the data.
        self._lookahead = max_workers
        self._fetches: dict[str, _Fetch] = {}
        self._accepting = True
        self._lock = threading.Lock()
        self._live.add(self)

    def take(
        self, stream: AnalyticsStream, context: Context | None
    ) -> list[Record] | None:
        """The records fetched ahead for ``stream`` in ``context``, if any."""
        if context is None:
            return None
        url = stream.get_url(context)
        with self._lock:
            fetch = self._fetches.get(url)
            if fetch is None:
                return None
            fetch.readers_left -= 1
            shared = fetch.readers_left > 0
            if not shared:
                del self._fetches[url]
        records = fetch.records.result()
        # The SDK edits records in place (deselected properties, stream maps), so
        # a reader that is not the last gets its own copy.
        return copy.deepcopy(records) if shared else records

    def read_ahead(
        self,
        parent: AnalyticsStream,
        context: Context | None,
        records: Iterable[Record],
    ) -> Iterator[Record]:
        """Yield ``records``, with the children of the next few already in flight."""
        if not parent.child_streams:
            yield from records
            return
        top_level = context is None
        if top_level:
            self._accepting = True
        window: collections.deque[Record] = collections.deque()
        try:
            for record in records:
                self._submit_children(parent, record, context)
                window.append(record)
                if len(window) > self._lookahead:
                    yield window.popleft()
            yield from window
        finally:
            if top_level:
                # Every descendant has been synced (or the sync was abandoned, as
                # --test does after a few records): drop what nobody will take.
                self._discard()

    @classmethod
    def cancel_all(cls) -> None:
        """Drop queued fetches after a failure and let running ones end.

        Waiting keeps the workers' log lines above the run's last line, the error.
        """
        for prefetcher in list(cls._live):
            prefetcher._pool.shutdown(wait=True, cancel_futures=True)

    def _discard(self) -> None:
        with self._lock:
            self._accepting = False
            for fetch in self._fetches.values():
                fetch.records.cancel()
            self._fetches.clear()

    def _submit_children(
        self, parent: Stream, record: Record, context: Context | None
    ) -> None:
        # Same decisions the SDK makes before syncing children: the parent's
        # filter (post_process, on a copy), its stream map's filter and its
        # child context.
        kept = parent.post_process(dict(record), context)
        if kept is None or not parent.stream_maps[0].get_filter_result(kept):
            return
        child_context = parent.get_child_context(kept, context)
        if child_context is None:
            return
        readers: dict[str, list[AnalyticsStream]] = collections.defaultdict(list)
        for child in parent.child_streams:
            if child.selected or child.has_selected_descendents:
                child = t.cast("AnalyticsStream", child)
                readers[child.get_url(child_context)].append(child)
        with self._lock:
            if not self._accepting:
                return
            for url, streams in readers.items():
                if url not in self._fetches:
                    future = self._pool.submit(self._fetch, streams, child_context)
                    self._fetches[url] = _Fetch(future, len(streams))

    def _fetch(self, readers: list[AnalyticsStream], context: Context) -> list[Record]:
        records = list(readers[0].request_records(context))
        for reader in readers:
            for record in records:
                self._submit_children(reader, record, context)
        return records

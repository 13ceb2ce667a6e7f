"""The page pool: requests fetched concurrently, read in order by the main thread.

The SDK syncs a parent's children one parent record at a time, so a
latency-bound API (v3: workflows → jobs → job results) would be walked one request
after another. Here a top-level parent's records are read a few ahead, and the
requests of their children (and of the children's children) run in a pool of
``max_concurrent_requests`` worker threads. A worker fetches one *page* at a time
and hands it over; the main thread reads each request's pages in order and the SDK
writes every SCHEMA, RECORD and STATE message from it, in its usual order. Retries
happen inside the workers.

Memory has one bound, :data:`PAGE_BUFFER`: pages requested or fetched and not yet
read by the main thread, over the whole run. A worker reserves a place before it
requests a page; without one it puts the request back and takes another, so no
worker ever waits while holding a request. Requests are taken earliest first in
the main thread's reading order, and the request the main thread is waiting for
may always take one page beyond the bound: it can always progress, so the bound
can never stall the run. Memory therefore depends neither on the results per
request, nor on the number of parents, nor on the number of workers.

The same pool reads v1 ``jobs`` in time windows (:mod:`tap_analytics.windows`: one
fetch per window, in ``lastUpdatedAt`` order) and the streams synced after it
(:meth:`~tap_analytics.tap.TapAnalytics.prefetch_streams_after`), under the same
bound; :meth:`Prefetcher.discard` drops windows nobody will read.

Streams that read the same request for the same parent (v3 ``jobs`` and
``successful_jobs``) share one fetch: its pages are kept until the last reader has
read them (earlier readers get copies), so such a request should be small.

Every request a worker sends is paced by the run's one rate limiter
(:mod:`tap_analytics.transport`), like the main thread's.
"""

from __future__ import annotations

import collections
import copy
import heapq
import itertools
import logging
import threading
import time
import typing as t
import weakref

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from singer_sdk.helpers.types import Context
    from singer_sdk.streams import Stream

Record = dict[str, t.Any]


class PagedStream(t.Protocol):
    """A stream whose requests the pool makes (``client.AnalyticsStream``).

    A protocol, so the pool does not import the streams above it. The parent side
    of a fetch (filters, child contexts) is the SDK's :class:`Stream` API.
    """

    def get_url(self, context: Context | None) -> str:
        """The request's URL in ``context``: what identifies a fetch."""
        ...

    def request_records(self, context: Context | None) -> Iterable[Record]:
        """The request's records, each page ended by :data:`PAGE_END` in a worker."""
        ...


#: Where a fetch sits in the main thread's reading order: the index of each
#: ancestor record, outermost first (tuples compare in that order).
Order = tuple[int, ...]

#: Pages requested or fetched ahead and not yet read by the main thread, whole run.
#: At 100-200 records a page this is a few MB, whatever the data and the workers.
PAGE_BUFFER = 32
# A worker with nothing to do for this long ends; the next request starts one.
IDLE_WORKER_SECONDS = 1.0

# In a pool worker, parse_response ends each non-empty page with this marker, so the
# worker sees where a page ends before the SDK requests the next one.
PAGE_END: t.Final[Record] = {}
_worker = threading.local()


def mark_page_end(records: list[Record]) -> list[Record]:
    """``records``, followed by :data:`PAGE_END` when read by a pool worker."""
    if records and getattr(_worker, "pool", None) is not None:
        return [*records, PAGE_END]
    return records


class _QuietWhenAbandoned(logging.Filter):
    """Drops log records of workers of a cancelled pool (see ``cancel_all``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        pool = getattr(_worker, "pool", None)
        return pool is None or not pool.closed


_QUIET_WHEN_ABANDONED = _QuietWhenAbandoned()


class _Fetch:
    """One request's pages: produced by workers, read in order by the main thread."""

    def __init__(
        self,
        order: Order,
        start: Callable[[], Iterable[Record]],
        on_page: Callable[[_Fetch, list[Record]], None],
        readers: int,
    ) -> None:
        self.order = order
        self.start = start
        self.on_page = on_page
        self.source: Iterator[Record] | None = None
        self.pages: list[list[Record] | None] = []  # None: read by every reader
        self.records_seen = 0  # gives each record's children their order
        self.readers = readers
        self.readers_taken = 0
        self.finished = False
        self.generation = 0  # dropped once the pool's generation moves on
        self.dropped = False  # discarded on its own (Prefetcher.discard)
        self.error: BaseException | None = None


def _close(fetch: _Fetch) -> None:
    """End a suspended request now (not in flight: nobody is iterating it).

    So the SDK's request metric is logged before the run's last line, not
    whenever the generator is collected.
    """
    close = getattr(fetch.source, "close", None)
    if close is not None:
        close()


class Prefetcher:
    """Fetches the children of upcoming parent records while the main thread writes."""

    _live: t.ClassVar[weakref.WeakSet[Prefetcher]] = weakref.WeakSet()

    def __init__(self, max_workers: int) -> None:
        # Parents read ahead of the one being written: enough to keep every worker
        # busy; the page bound, not this, is what keeps memory flat.
        self._lookahead = max_workers
        self._page_buffer = PAGE_BUFFER
        self._max_workers = max_workers
        self._workers: list[threading.Thread] = []
        self._cond = threading.Condition()
        self._queue: list[tuple[Order, int, _Fetch]] = []  # runnable, earliest first
        self._sequence = itertools.count()
        self._fetches: dict[str, _Fetch] = {}  # by URL, until the last reader takes it
        self._buffered = 0  # pages reserved or held: the number PAGE_BUFFER bounds
        self._waited_on: _Fetch | None = None  # what the main thread is blocked on
        self._in_flight = 0  # pages being requested by workers right now
        self._generation = 0  # moves on when everything fetched so far is dropped
        self.closed = False
        self._live.add(self)

    # --- main thread ---------------------------------------------------------------

    def take(
        self, stream: PagedStream, context: Context | None
    ) -> Iterator[Record] | None:
        """The records fetched ahead for ``stream`` in ``context``, if any."""
        return self.take_key(stream.get_url(context))

    def take_key(self, key: str) -> Iterator[Record] | None:
        """The records of the request submitted as ``key``, if any."""
        with self._cond:
            fetch = self._fetches.get(key)
            if fetch is None:
                return None
            reader = fetch.readers_taken
            fetch.readers_taken += 1
            if fetch.readers_taken == fetch.readers:
                del self._fetches[key]
        return self._read(fetch, last=reader == fetch.readers - 1)

    def discard(self, keys: Iterable[str]) -> None:
        """Drop the requests submitted as ``keys``: nobody will read them."""
        with self._cond:
            dropped = [f for key in keys if (f := self._fetches.pop(key, None))]
            for fetch in dropped:
                fetch.dropped = True
                # Pages in flight release their reservation in their worker.
                self._buffered -= sum(page is not None for page in fetch.pages)
                fetch.pages.clear()
            queued = [entry for entry in self._queue if entry[2].dropped]
            if queued:
                self._queue = [e for e in self._queue if not e[2].dropped]
                heapq.heapify(self._queue)
            self._cond.notify_all()
        for _, _, fetch in queued:
            _close(fetch)

    def read_ahead(
        self,
        parent: Stream,
        context: Context | None,
        records: Iterable[Record],
    ) -> Iterable[Record]:
        """``records``; for a top-level parent, the next few's children in flight.

        The children of fetched records are submitted by the worker that fetched them.
        """
        if context is not None or not parent.child_streams:
            return records  # as they are: a generator more would cost every record
        return self._read_ahead(parent, context, records)

    def _read_ahead(
        self,
        parent: Stream,
        context: Context | None,
        records: Iterable[Record],
    ) -> Iterator[Record]:
        window: collections.deque[Record] = collections.deque()
        try:
            for index, record in enumerate(records):
                self._submit_children(parent, record, context, (index,))
                window.append(record)
                if len(window) > self._lookahead:
                    yield window.popleft()
            yield from window
        finally:
            # Every descendant has been synced (or the sync was abandoned, as --test
            # does after a few records): drop what nobody will read.
            self._drop_all()

    @classmethod
    def cancel_all(cls) -> None:
        """Abandon every pool at once (a failure or an interrupt ends the run).

        Queued requests are dropped; requests in flight are not waited for: workers
        are daemon threads and exit once their request is answered. Whatever they
        would log from now on (a retry, the SDK's request metrics) is dropped, so
        the run's last line on stderr stays the one that says why it ended.
        """
        handlers = logging.getLogger().handlers
        for handler in handlers:
            handler.addFilter(_QUIET_WHEN_ABANDONED)
        for prefetcher in list(cls._live):
            with prefetcher._cond:
                prefetcher.closed = True
            prefetcher._drop_all()
        # A worker may have been allowed a line just before: give it the GIL for
        # a moment to take the handler's lock, then wait until it has written.
        time.sleep(0.01)
        for handler in handlers:
            handler.acquire()
            handler.release()

    def _read(self, fetch: _Fetch, *, last: bool) -> Iterator[Record]:
        index = 0
        while True:
            with self._cond:
                while index >= len(fetch.pages) and not fetch.finished:
                    self._waited_on = fetch
                    self._cond.notify_all()
                    self._cond.wait()
                self._waited_on = None
                if index >= len(fetch.pages):
                    if fetch.error is not None:
                        raise fetch.error
                    return
                page = fetch.pages[index]
                assert page is not None  # only the last reader releases pages
                if last:
                    fetch.pages[index] = None
                    self._buffered -= 1
                    self._cond.notify_all()
            index += 1
            # The SDK edits records in place (deselected properties, stream maps),
            # so a reader that is not the last gets its own copy.
            yield from (page if last else copy.deepcopy(page))

    def _drop_all(self) -> None:
        with self._cond:
            self._generation += 1
            for _, _, fetch in self._queue:
                _close(fetch)
            self._queue.clear()
            self._fetches.clear()
            # Pages in flight release their reservation when their worker sees
            # that their fetch was dropped; every other page is gone now.
            self._buffered = self._in_flight
            self._cond.notify_all()

    # --- submitting (main thread for top-level parents, workers below) -------------

    def _submit_children(
        self, parent: Stream, record: Record, context: Context | None, order: Order
    ) -> None:
        # Same decisions the SDK makes before syncing children: the parent's filter
        # (post_process, on a copy), its stream map's filter and its child contexts
        # (none for a job whose results are loaded already).
        kept = parent.post_process(dict(record), context)
        if kept is None or not parent.stream_maps[0].get_filter_result(kept):
            return
        for child_context in parent.generate_child_contexts(kept, context):
            if child_context is None:
                continue
            readers: dict[str, list[Stream]] = collections.defaultdict(list)
            for child in parent.child_streams:
                if child.selected or child.has_selected_descendents:
                    url = t.cast("PagedStream", child).get_url(child_context)
                    readers[url].append(child)
            for url, streams in readers.items():
                self.submit(url, order, streams, child_context)

    def submit(
        self,
        key: str,
        order: Order,
        readers: list[Stream],
        context: Context | None,
    ) -> None:
        """Fetch the pages of ``readers[0]``'s request in ``context`` in the pool.

        ``key`` (the request's URL) is how :meth:`take` finds it; ``order`` is where
        the main thread will read it. The children of each fetched record are
        submitted as its page arrives.
        """

        def on_page(fetch: _Fetch, page: list[Record]) -> None:
            for record in page:
                child_order = (*fetch.order, fetch.records_seen)
                fetch.records_seen += 1
                for reader in readers:
                    if reader.child_streams:
                        self._submit_children(reader, record, context, child_order)

        source = t.cast("PagedStream", readers[0])
        fetch = _Fetch(
            order, lambda: source.request_records(context), on_page, len(readers)
        )
        with self._cond:
            if self.closed or key in self._fetches:
                return
            fetch.generation = self._generation
            self._fetches[key] = fetch
            self._enqueue(fetch)
            if len(self._workers) < self._max_workers:
                worker = threading.Thread(
                    target=self._work, name="prefetch", daemon=True
                )
                self._workers.append(worker)
                worker.start()
            self._cond.notify_all()

    # --- workers -----------------------------------------------------------------

    def _enqueue(self, fetch: _Fetch) -> None:
        heapq.heappush(self._queue, (fetch.order, next(self._sequence), fetch))

    def _next(self) -> _Fetch | None:
        """The earliest request with room for one more page (lock held); waits."""
        while not self.closed:
            if self._queue and self._buffered < self._page_buffer:
                fetch = heapq.heappop(self._queue)[2]
            elif self._waited_on is not None and any(
                entry[2] is self._waited_on for entry in self._queue
            ):
                # Beyond the bound, but the main thread cannot go on without it.
                fetch = self._waited_on
                self._queue = [e for e in self._queue if e[2] is not fetch]
                heapq.heapify(self._queue)
            elif self._cond.wait(timeout=IDLE_WORKER_SECONDS) or self._queue:
                continue
            else:  # idle: end, so finished runs leave no threads behind
                self._workers.remove(threading.current_thread())
                return None
            self._buffered += 1  # reserved before the request is made
            self._in_flight += 1
            return fetch
        return None

    def _work(self) -> None:
        _worker.pool = self
        while True:
            with self._cond:
                fetch = self._next()
            if fetch is None:
                return
            page, finished, error = self._fetch_page(fetch)
            if page and fetch.generation == self._generation and not fetch.dropped:
                try:
                    fetch.on_page(fetch, page)
                except Exception as exc:  # e.g. a bad STATE: the main thread says
                    finished, error = True, exc
            with self._cond:
                self._in_flight -= 1
                dropped = fetch.generation != self._generation or fetch.dropped
                if dropped or not page:
                    self._buffered -= 1  # reservation unused
                else:
                    fetch.pages.append(page)
                if dropped:
                    fetch.source = None
                elif finished:
                    fetch.finished = True
                    fetch.error = error
                    fetch.source = None
                else:
                    self._enqueue(fetch)
                self._cond.notify_all()

    @staticmethod
    def _fetch_page(
        fetch: _Fetch,
    ) -> tuple[list[Record], bool, BaseException | None]:
        """The next page, whether it was the last, and the failure that ended it."""
        page: list[Record] = []
        try:
            if fetch.source is None:
                fetch.source = iter(fetch.start())
            for record in fetch.source:
                if record is PAGE_END:
                    return page, False, None
                page.append(record)
        except Exception as exc:  # raised again in the main thread, in order
            return page, True, exc
        return page, True, None

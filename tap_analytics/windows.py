"""v1 ``jobs`` in time windows fetched concurrently, emitted in ``lastUpdatedAt`` order.

Keyset paging is one request after another: page n+1 starts after page n's last
job. Over a network that is one round trip per page. Here the range from the
bookmark (or ``start_date``, or the oldest job) to now is cut into windows
``[start, end)`` by ``lastUpdatedAt``; each window is keyset-paged on its own, all
of them in the run's page pool (:class:`~tap_analytics.concurrency.Prefetcher`,
same workers, same bound on buffered pages), and the main thread reads them one
after another, so records, and the SDK's sorted-stream bookmark, still go in
``lastUpdatedAt`` order.

- **Window 0** is the unbounded list from the start, read by the main thread as
  a serial read would. It says where the jobs begin and how dense they are. After
  :data:`WINDOW_PAGES` full pages, and only if every one of them was waited for
  (at least :data:`MIN_WAIT_SECONDS`, and a good share of its time), the rest of
  the range, up to now, is split into windows of about :data:`WINDOW_PAGES` pages
  at that density; the last window is open-ended. So a handful of pages, or a
  fast network (loopback), is read request for request as with
  ``max_concurrent_requests: 1``.
- **Large windows split again**: after each full page a window estimates its
  remaining pages from the pages it has read (:data:`MIN_SAMPLE_JOBS` jobs at
  least); beyond ``2 * WINDOW_PAGES`` it keeps the first part and hands the rest
  to new windows (real data is skewed: recent weeks hold most jobs). A split
  happens before the window's next request.
- **A window ends** where the next begins: the API has no upper bound, so the
  paginator drops the jobs at or past ``end`` and stops on the page that reached
  them. That page is the one extra request a window may cost.
- **Jobs without a time** (not ended) at a window's end may be below it or not:
  the window emits those it sees before its first job at or past its end, and the
  next window, which lists those at or past its start first, does not emit them
  again (the reader drops the same version seen at the previous window's end).
- **The end of the list** (a short or empty page) seen by any window means that
  nothing was above its last job at that moment, so every later window is empty or
  holds only jobs that changed since (above all others): they are dropped, and
  their jobs are above the bookmark this run ends with, so the next run reads them.
  Jobs that change while the run reads them move above all others, past every
  window still being read or into the last one, which keyset paging handles as
  in a serial read (issue 10).
"""

from __future__ import annotations

import collections
import datetime
import itertools
import math
import statistics
import threading
import typing as t
from dataclasses import dataclass, field

from tap_analytics.pagination import JobsKeysetPaginator

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from tap_analytics.client import AnalyticsStream
    from tap_analytics.concurrency import Prefetcher

Record = dict[str, t.Any]

#: Pages a window is planned to hold. A window costs up to one page beyond its
#: jobs (the page that passes its end, half a page on average), so more windows
#: mean more requests; fewer mean less overlap, since a window is read page after
#: page and the pool's page bound holds only so many pages ahead of the reader.
WINDOW_PAGES = 8
#: Windows a split creates at most: a guess from one page must not create
#: thousands of windows (each an empty request if the guess was far off).
MAX_SPLIT = 256
#: Jobs a density estimate needs at least (a few jobs' span says little).
MIN_SAMPLE_JOBS = 100
#: The wait for a page that makes windows worth it (see KeysetWindows._network_bound):
#: each page's at least, and its share of each page's time at least. A window costs
#: up to a page more than its WINDOW_PAGES, so a smaller share wins little.
MIN_WAIT_SECONDS = 0.001
MIN_WAIT_SHARE = 0.2


def _last_pages() -> collections.deque[float]:
    """A page time per page, of the last WINDOW_PAGES pages only (all a split reads)."""
    return collections.deque(maxlen=WINDOW_PAGES)


@dataclass(eq=False)
class Window:
    """One ``[start, end)`` slice of ``jobs``, keyset-paged by its own paginator."""

    key: str
    paginator: JobsKeysetPaginator
    next: Window | None = None
    first: datetime.datetime | None = None  # its first job's instant
    pages: int = 0  # full pages received
    # window 0's pages: how long the reader waited for each, and was busy with it
    waited_seconds: collections.deque[float] = field(default_factory=_last_pages)
    busy_seconds: collections.deque[float] = field(default_factory=_last_pages)

    @property
    def context(self) -> dict[str, str]:
        return {"window": self.key}


class KeysetWindows:
    """Schedules the windows of one sync of ``jobs`` and reads them in order."""

    def __init__(
        self,
        stream: AnalyticsStream,
        prefetcher: Prefetcher,
        since: datetime.datetime | None,
        page_size: int,
        now: datetime.datetime,
        on_first_split: Callable[[], None],
    ) -> None:
        self._stream = stream
        self._on_first_split: Callable[[], None] | None = on_first_split
        self._prefetcher = prefetcher
        self._page_size = page_size
        self._now = now
        self._lock = threading.Lock()  # the chain of windows, split by workers
        self._windows: dict[str, Window] = {}
        self._numbers = itertools.count()
        self._first = self._open(since, None)

    def paginator(self, context: t.Mapping[str, t.Any]) -> JobsKeysetPaginator:
        """The paginator of the window that ``context`` names."""
        return self._windows[context["window"]].paginator

    def records(self) -> Iterator[Record]:
        """Every window's jobs, window after window (main thread).

        Chained in C (``itertools.chain``): a generator here would add a frame
        to resume per job, and while nothing is split (loopback) every job
        passes through here, as in a serial read. So an error in a window's
        pages does not pass through here either: the windows still queued are
        discarded when the chain is dropped, and at once by the command line,
        which cancels every pool when a run fails (``Prefetcher.cancel_all``).
        """
        return itertools.chain.from_iterable(self._windows_in_order())

    def _windows_in_order(self) -> Iterator[Iterable[Record]]:
        """Each window's jobs as one iterable, in order, once the one before is read."""
        window: Window | None = self._first
        # Window 0 is read here, as a serial read would: while its pages come
        # faster than they are written, a pool would only add thread switches.
        jobs: Iterable[Record] = self._stream.request_records(self._first.context)
        # The jobs without a time the window before emitted after its last job
        # with one: they may be at or past its end, so this window may list them
        # first. The same version is not emitted twice.
        before: dict[t.Any, Record] = {}
        try:
            while window is not None:
                if before:
                    jobs = iter(jobs)
                    yield _without_repeats(jobs, before)
                yield jobs  # the rest, as they come
                before = window.paginator.untimed_at_end
                with self._lock:
                    ended = window.paginator.reached_end_of_list
                    window = None if ended else window.next
                if window is not None:
                    taken = self._prefetcher.take_key(window.key)
                    assert taken is not None, f"window {window.key} was dropped"
                    jobs = taken
        finally:
            self._prefetcher.discard(list(self._windows))  # what nobody will read

    # --- workers, between two pages of a window --------------------------------

    def _open(
        self, start: datetime.datetime | None, end: datetime.datetime | None
    ) -> Window:
        key = f"window-{next(self._numbers)}"
        window = Window(
            key,
            JobsKeysetPaginator(
                self._stream.name,
                start,
                self._page_size,
                end,
                on_page=lambda instants: self._after_page(window, instants),
            ),
        )
        self._windows[key] = window
        return window

    def _submit(self, window: Window) -> None:
        start = window.paginator.since
        # Read in start order; every window sorts before the streams after `jobs`.
        moment = -1 if start is None else int(start.timestamp() * 1_000_000)
        self._prefetcher.submit(window.key, (0, moment), [self._stream], window.context)

    def _after_page(self, window: Window, instants: list[datetime.datetime]) -> None:
        """Drop what follows the end of the list; split a window that looks large."""
        if window.paginator.reached_end_of_list:
            with self._lock:
                later = []
                while window.next is not None:
                    window = window.next
                    later.append(window.key)
            self._prefetcher.discard(later)
            return
        window.pages += 1
        window.first = window.first or (instants[0] if instants else None)
        if window is self._first and not self._network_bound(window):
            return
        # A page of jobs that have not ended (no time) says nothing of density.
        bounds = self._split_points(window, instants[-1]) if instants else []
        if not bounds:
            return
        if self._on_first_split is not None:
            self._on_first_split()
            self._on_first_split = None
        with self._lock:
            end = window.paginator.end
            new = [
                self._open(start, stop)
                for start, stop in zip(bounds, [*bounds[1:], end], strict=True)
            ]
            window.paginator.end = bounds[0]
            for earlier, later_window in zip(
                [window, *new], [*new, window.next], strict=True
            ):
                earlier.next = later_window
        self._stream.logger.debug(
            "Split a window of %s at %s: %d more windows up to %s",
            self._stream.name,
            instants[-1],
            len(new),
            end or "the end of the list",
        )
        for added in new:
            self._submit(added)

    def _network_bound(self, window: Window) -> bool:
        """Whether window 0, read alone so far, should be split now.

        Not before :data:`WINDOW_PAGES` pages: a handful of pages is read as one
        window, request for request as a serial read. And only when each of the
        last :data:`WINDOW_PAGES` pages was waited for (the reader idle, not busy
        with the request or the records) at least :data:`MIN_WAIT_SECONDS`, and
        for at least :data:`MIN_WAIT_SHARE` of the time it took: waiting is what
        windows win back, and a wait on every page is the network's. Taking the
        shortest wait, a busy moment of the machine or of the server decides
        nothing: on loopback, pages wait a few tenths of a millisecond, and
        windows would only add requests and threads (measured on v1-bulk: three
        quarters more CPU, no time gained).
        """
        paginator = window.paginator
        window.waited_seconds.append(paginator.waited_seconds)
        window.busy_seconds.append(paginator.busy_seconds)
        if window.pages < WINDOW_PAGES:
            return False
        waited = min(window.waited_seconds)
        busy = statistics.median(window.busy_seconds)
        return waited >= MIN_WAIT_SECONDS and waited >= MIN_WAIT_SHARE * (waited + busy)

    def _split_points(
        self, window: Window, last: datetime.datetime
    ) -> list[datetime.datetime]:
        """Where to cut the rest of ``window``, its last job received at ``last``.

        The pages received estimate the density; the open-ended window is planned
        up to now (a job changed during the run is later: the last window reads it).
        """
        paginator = window.paginator
        if window.first is None or window.pages * self._page_size < MIN_SAMPLE_JOBS:
            return []
        span = (last - window.first) / window.pages
        end = paginator.end or self._now
        if span <= datetime.timedelta(0) or end <= last:
            return []
        pages = (end - last) / span
        if pages <= 2 * WINDOW_PAGES:
            return []
        count = min(math.ceil(pages / WINDOW_PAGES), MAX_SPLIT)
        step = (end - last) / count
        # Whole seconds (as the API writes them), above the last job received.
        bounds = {_whole_second(last + step * number) for number in range(1, count)}
        return sorted(
            bound
            for bound in bounds
            if bound > last and (paginator.end is None or bound < paginator.end)
        )


def _without_repeats(
    jobs: Iterator[Record], before: dict[t.Any, Record]
) -> Iterator[Record]:
    """``jobs`` up to the first with a time, less the versions in ``before``."""
    for job in jobs:
        if job.get("lastUpdatedAt") is not None:
            yield job
            return
        if before.get(job.get("jobId")) != job:
            yield job


def _whole_second(moment: datetime.datetime) -> datetime.datetime:
    """``moment`` rounded up to a whole second."""
    return datetime.datetime.fromtimestamp(math.ceil(moment.timestamp()), datetime.UTC)

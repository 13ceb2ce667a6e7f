"""Paginators: the SDK's base class, taught the shapes this API pages by.

- ``jobs`` (v1): keyset pages in ``lastUpdatedAt`` order (API.md "A live API" and
  "The real server").
- ``connections``, ``workspaces`` (v1) and ``job_results`` (v3): a cursor in the
  body that is either an opaque token (sent back as ``?next=``) or an absolute URL
  (followed as is); see :meth:`AnalyticsStream.get_http_request`.

Every paginator parses the body through :func:`tap_analytics.responses.json_body`,
which caches it on the response, so a page is decoded once, not once per reader.
"""

from __future__ import annotations

import time
import typing as t
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from singer_sdk.pagination import BaseAPIPaginator

from tap_analytics.errors import APIResponseError, CursorLoopError
from tap_analytics.responses import json_body, records_in
from tap_analytics.timestamps import parse_timestamp
from tap_analytics.urls import safe_url

if t.TYPE_CHECKING:
    import datetime

    import requests

#: The largest ``limit`` the real server takes on its v1 lists (1..100; API.md
#: "The real server"): anything more is a 400, never a silent cap.
MAX_LIMIT = 100

_END_OF_LIST = (None, "")


@dataclass(frozen=True)
class Keyset:
    """One ``jobs`` request: ``updatedAtStart=since``, ``offset`` and ``limit``.

    ``overlap``: the page must start with a job already received (see
    :class:`JobsKeysetPaginator`); ``reread``: the page reads ``since`` again from
    its first job, after a page that did not.
    """

    since: datetime.datetime | None
    offset: int
    limit: int
    overlap: bool = False
    reread: bool = False

    def describe(self) -> str:
        since = "the start" if self.since is None else self.since.isoformat()
        return f"{since} (offset {self.offset})"

    def precedes(self, other: Keyset) -> bool:
        """Whether ``other`` reads further: from a later ``since``, or further
        into the same list. By the end of the page, not its start: pages of one
        job step from ``(since, 0, limit 1)`` to ``(since, 0, limit 2)``."""
        end, other_end = self.offset + self.limit, other.offset + other.limit
        if self.since is None or other.since is None:
            if self.since is None and other.since is None:
                return end < other_end
            return self.since is None
        return (self.since, end) < (other.since, other_end)


class JobsKeysetPaginator(BaseAPIPaginator[Keyset]):
    """``jobs`` in ``lastUpdatedAt`` order, each page continuing after the last job.

    The server sorts and filters by its own update time, which it shows floored
    to seconds as ``lastUpdatedAt``, and not at all on a job that has not ended:
    such a job sits among the others at an instant nobody can see. Let L(T) be
    the server's list for ``updatedAtStart=T``. The paginator keeps the *tail*,
    the jobs received after the last one with a time below T (the only ones that
    may be in L(T)), and the next request is ``(T, offset)``:

    - After a page whose last time T' is above T: T becomes T', the tail drops
      everything up to the last job below T', and the jobs from the first one at
      T' on are certainly the first ones of L(T'). The jobs without a time just
      before it may be in L(T') or not: they are not counted, so at worst they
      are read again, never skipped. Otherwise T stays and the page's jobs are
      counted after the jobs before it.
    - Every page after the first starts one job early (``offset`` = counted - 1,
      ``limit`` = ``page_size`` + 1, at most :data:`MAX_LIMIT`): its first job
      must be one already received, in the version received. Received jobs are
      a prefix of L(T) until one changes, and a job that changes (ends, or is
      updated again) moves to the end of the order: then the job at the offset
      is one never received, the positions shifted, and the offset would skip a
      job (the bookmark would pass it). Such a page is dropped and T read again
      from its first job. Only jobs not received in that version are emitted.
    - A page shorter than its ``limit`` ends the list (the server's ``next`` is
      set on every page with jobs, the last one too, and says nothing).

    The stream emits a page's jobs before the SDK calls :meth:`advance`, and the
    bookmark follows the jobs emitted, so the order of the visible times is
    checked earlier, in :meth:`checked_jobs`: a job out of order would put the
    bookmark past jobs not read yet, and no later run would read them.

    A time window (:mod:`tap_analytics.windows`) reads from ``since`` up to
    ``end``, exclusive: the API has no upper bound, so the jobs from the first one
    with a time at or past ``end`` on are dropped here and the window stops on the
    page that reached it (jobs without a time before it may be below ``end``: they
    are emitted; the next window lists those that are not first, and the reader
    skips them there). ``end`` may move down while the window is read (the window
    is split), never below a job already received.
    """

    def __init__(
        self,
        stream_name: str,
        since: datetime.datetime | None,
        page_size: int,
        end: datetime.datetime | None = None,
        on_page: t.Callable[[list[datetime.datetime]], None] | None = None,
    ) -> None:
        super().__init__(Keyset(since, 0, page_size))
        self._stream_name = stream_name
        self._page_size = page_size
        # jobId -> (time, the job as received), in the order received.
        self._tail: dict[t.Any, tuple[datetime.datetime | None, dict[str, t.Any]]] = {}
        self._page_end: Keyset | None = None
        self._page_full = False
        self._shifted = False
        self.since = since
        self.end = end
        #: The list ended within the window (a short or empty page): nothing was
        #: above the last job at that moment.
        self.reached_end_of_list = False
        self._passed_end = False
        self._instants: list[datetime.datetime] = []
        #: For windows (``on_page`` set): the jobs without a time emitted after the
        #: last job with one, by jobId, as received (the stream edits what it
        #: emits). They may be at or past ``end``: the next window may list them.
        self.untimed_at_end: dict[t.Any, dict[str, t.Any]] = {}
        #: The last page, for the thread that reads the list (window 0 is read by
        #: one thread, serially): how long that thread waited for it (the time from
        #: the previous page's end to this page's arrival, less the thread's own
        #: CPU time in it), and how long it was busy with it (that CPU time: the
        #: request, its decoding; then writing the page, which the stream does
        #: between checked_jobs and has_more).
        self.waited_seconds = 0.0
        self.busy_seconds = 0.0
        self._page_started = (time.monotonic(), time.thread_time())
        self._request_cpu = 0.0
        self._parsed_at = 0.0
        # Called with the times of each page's jobs once the paginator knows
        # whether the list goes on: before the next page is requested, so it may
        # lower `end`.
        self._on_page = on_page

    def _received(self, job: dict[str, t.Any]) -> bool:
        """Whether ``job`` was received before, in this version."""
        entry = self._tail.get(job.get("jobId"))
        return entry is not None and entry[1] == job

    def checked_jobs(self, response: requests.Response) -> list[dict[str, t.Any]]:
        """The page's new jobs in the window, once they continue the order."""
        received = records_in(json_body(response), "data")
        keyset = self.current_value
        # Each job's visible time: its lastUpdatedAt, None until it ends (pending:
        # no key; running, incomplete: null).
        parse = parse_timestamp
        times = [
            None if (value := job.get("lastUpdatedAt")) is None else parse(value)
            for job in received
        ]
        self._check_order(received, times, keyset, response)
        now, cpu = time.monotonic(), time.thread_time()
        started, started_cpu = self._page_started
        self._request_cpu = cpu - started_cpu
        self.waited_seconds = now - started - self._request_cpu
        self._parsed_at = now
        self._shifted = keyset.overlap and not (
            received and self._received(received[0])
        )
        if self._shifted:  # read `since` again; nothing of this page is emitted
            # One job more than a page, as every later page: the first job at
            # `since` was received, and a page of one would hold only that job.
            limit = min(self._page_size + 1, MAX_LIMIT)
            self._page_end = Keyset(keyset.since, 0, limit, reread=True)
            self._instants = []
            return []
        tail = self._tail  # self._received(job), inline: for every job
        new = [
            (job, at)
            for job, at in zip(received, times, strict=True)
            if (entry := tail.get(job.get("jobId"))) is None or entry[1] != job
        ]
        self._page_full = len(received) >= keyset.limit
        self._page_end = self._keyset_after(new, times, keyset, len(received))
        if self.end is not None:
            end = self.end
            past = [i for i, (_, at) in enumerate(new) if at is not None and at >= end]
            if past:
                self._passed_end = True
                new = new[: past[0]]
        if self._on_page is not None:  # windows: their only reader
            self._instants = [at for _, at in new if at is not None]
            timed = len(new)
            while timed and new[timed - 1][1] is None:
                timed -= 1
            if timed:
                self.untimed_at_end = {}
            for job, _ in new[timed:]:
                self.untimed_at_end[job.get("jobId")] = dict(job)
        return [job for job, _ in new]

    def _check_order(
        self,
        received: list[dict[str, t.Any]],
        times: list[datetime.datetime | None],
        keyset: Keyset,
        response: requests.Response,
    ) -> None:
        # The first page may start below `since`: the stream filters those jobs.
        last = keyset.since if self.count else None
        for job, at in zip(received, times, strict=True):
            if at is None:  # no visible time: it may sit anywhere
                continue
            if last is not None and at < last:
                msg = (
                    f"stream '{self._stream_name}': the API did not return jobs in "
                    "lastUpdatedAt order (orderBy or updatedAtStart ignored?): "
                    f"jobId {job.get('jobId')} at {job['lastUpdatedAt']} came after "
                    f"{last.isoformat()} (GET {safe_url(response.url)}); stopped "
                    "before emitting that page, the bookmark is the last job in order"
                )
                raise APIResponseError(msg)
            last = at

    def _keyset_after(
        self,
        new: list[tuple[dict[str, t.Any], datetime.datetime | None]],
        times: list[datetime.datetime | None],
        keyset: Keyset,
        received: int,
    ) -> Keyset:
        """The request after this page; the tail takes the page's new jobs."""
        tail = self._tail
        for job, at in new:
            key = job.get("jobId")
            if key in tail:
                del tail[key]  # an older version moved away
            tail[key] = (at, job)
        since = keyset.since
        last = next((at for at in reversed(times) if at is not None), None)
        if last is not None and (since is None or last > since):
            # Times do not decrease along the tail: the last one below `last` is
            # just before the first at `last` (jobs without a time aside).
            entries = list(tail.items())
            cut = len(entries)
            while cut and (entries[cut - 1][1][0] or last) >= last:
                cut -= 1
            entries = entries[cut:]
            self._tail = tail = dict(entries)
            first_at_last = next(
                i for i, (_, (at, _)) in enumerate(entries) if at == last
            )
            since, counted = last, len(entries) - first_at_last
        else:
            counted = keyset.offset + received
        # Kept as received: the stream edits what it emits. The page's new jobs
        # still in the tail are its last entries (added last, and cut from the
        # front).
        for key in list(tail)[len(tail) - min(len(new), len(tail)) :]:
            at, job = tail[key]
            tail[key] = (at, dict(job))
        limit = min(self._page_size + 1, MAX_LIMIT)
        return Keyset(since, max(counted - 1, 0), limit, overlap=counted > 0)

    def has_more(self, response: requests.Response) -> bool:
        now = time.monotonic()
        self.busy_seconds = self._request_cpu + now - self._parsed_at
        self._page_started = (now, time.thread_time())
        if self._shifted:
            return True
        if self._passed_end:
            return False
        self.reached_end_of_list = not self._page_full
        if self._on_page is not None:
            self._on_page(self._instants)
        return self._page_full

    def get_next(self, response: requests.Response) -> Keyset:
        page_end = self._page_end
        current = self.current_value
        # A shift allows one step back, to read the same instant again.
        rereading = page_end is not None and page_end.reread and not current.reread
        if page_end is None or not (rereading or current.precedes(page_end)):
            msg = (
                f"stream '{self._stream_name}': page {self.count} of GET "
                f"{safe_url(response.url)} made no progress past "
                f"{current.describe()}; stopping instead of looping"
            )
            raise CursorLoopError(msg)
        return page_end


class BodyCursorPaginator(BaseAPIPaginator[str | None]):
    """A cursor read from the body; stops on ``null``, absent or ``""``.

    The SDK only notices a cursor that equals the previous one; a server that
    cycles through two or more would page forever. Any repeat in this stream
    stops the run before the repeated page is requested.
    """

    def __init__(self, stream_name: str) -> None:
        super().__init__(None)
        self._stream_name = stream_name
        self._seen: set[str] = set()

    def continue_if_empty(self, response: requests.Response) -> bool:
        # Only the cursor ends the list; the SDK also stops on an empty page.
        return self.cursor(json_body(response)) is not None

    def cursor(self, body: t.Any) -> str | None:
        """The next-page cursor in ``body`` (v1 shape: ``next``)."""
        value = body.get("next") if isinstance(body, dict) else None
        return None if value in _END_OF_LIST else str(value)

    def get_next(self, response: requests.Response) -> str | None:
        cursor = self.cursor(json_body(response))
        if cursor is None:
            return None
        if cursor in self._seen:
            msg = (
                f"stream '{self._stream_name}': the API repeated a pagination "
                f"cursor after {self.count} pages (GET {safe_url(response.url)}); "
                "stopping instead of looping"
            )
            raise CursorLoopError(msg)
        self._seen.add(cursor)
        return cursor


class V1ListPaginator(BodyCursorPaginator):
    """v1 ``connections`` and ``workspaces``: ``next`` until a short page.

    The real server sets ``next`` on every page with records, the last one too
    (API.md "The real server"), so a page shorter than the ``limit`` of the
    request that fetched it ends the list; read from that request's URL, since a
    ``next`` URL carries its own. An opaque token does not say its ``limit``:
    then ``next`` is followed until an end marker or an empty page.
    """

    def has_more(self, response: requests.Response) -> bool:
        limits = parse_qs(urlsplit(response.request.url or "").query).get("limit")
        if limits and limits[0].isdigit():
            return len(records_in(json_body(response), "data")) >= int(limits[0])
        return True


class PagingCursorPaginator(BodyCursorPaginator):
    """v3 ``job_results``: ``paging.next``, ending when ``have_next_page`` is false."""

    def cursor(self, body: t.Any) -> str | None:
        paging = body.get("paging") if isinstance(body, dict) else None
        if not isinstance(paging, dict) or not paging.get("have_next_page"):
            return None
        value = paging.get("next")
        return None if value in _END_OF_LIST else str(value)

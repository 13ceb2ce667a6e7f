"""Paginators: the SDK's base class, taught the shapes this API pages by.

- ``jobs`` (v1): keyset pages in ``lastUpdatedAt`` order (API.md "A live API").
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

from singer_sdk.pagination import BaseAPIPaginator

from tap_analytics.errors import APIResponseError, CursorLoopError
from tap_analytics.responses import json_body, records_in
from tap_analytics.timestamps import parse_timestamp
from tap_analytics.urls import safe_url

if t.TYPE_CHECKING:
    import datetime

    import requests

_END_OF_LIST = (None, "")


@dataclass(frozen=True)
class Keyset:
    """Where a ``jobs`` page starts: at ``since`` or later, past ``offset`` of them.

    ``offset`` counts only the jobs already received at exactly ``since`` (ties):
    a job that changes moves to the end of the order, which shifts no job we
    still have to read, as it would with ``offset`` paging through the whole list.
    Yet a job received at ``since`` may itself change before the next page: the
    group at ``since`` shrinks and ``offset`` would skip a job. So pages after the
    first ask one job of overlap (see :meth:`JobsKeysetPaginator.query`), and
    ``reread`` marks the page that reads ``since`` again from its first job when
    the overlap showed such a shift.
    """

    since: datetime.datetime | None
    offset: int = 0
    reread: bool = False

    def describe(self) -> str:
        since = "the start" if self.since is None else self.since.isoformat()
        return f"{since} (+{self.offset} tied jobs)"

    def precedes(self, other: Keyset) -> bool:
        if self.since is None or other.since is None:
            return self.since is None and other.since is not None
        return (self.since, self.offset) < (other.since, other.offset)


class JobsKeysetPaginator(BaseAPIPaginator[Keyset]):
    """``jobs`` in ``lastUpdatedAt`` order, each page continuing after the last job.

    Every page after the first starts one job early (``offset - 1``, ``limit + 1``):
    the job received last must come back first. If it does not, a job received
    at that instant changed meanwhile and the group of ties there shifted, so the
    offset would skip a job never emitted (and the bookmark would pass it): the
    page is dropped and the instant read again from its first job, without the
    jobs already received there.

    Stops on a short page or an end-of-list ``next`` (the SDK's paginators stop
    only on an empty page, one request more per sync). A server may cap ``limit``
    below what we asked for: a short page that still has a ``next`` sets the
    cap instead of ending the stream early.

    The stream emits a page's jobs before the SDK calls :meth:`advance`, and the
    bookmark follows the jobs emitted, so the order is checked earlier, in
    :meth:`checked_jobs`: a job out of order would put the bookmark past jobs not
    read yet, and no later run would read them.

    A time window (:mod:`tap_analytics.windows`) reads from ``since`` up to
    ``end``, exclusive: the API has no upper bound, so the jobs at or past ``end``
    are dropped here and the window stops on the page that reached them.
    ``end`` may move down while the window is read (the window is split), never
    below a job already received.
    """

    def __init__(
        self,
        stream_name: str,
        since: datetime.datetime | None,
        page_size: int,
        end: datetime.datetime | None = None,
        on_page: t.Callable[[list[datetime.datetime]], None] | None = None,
    ) -> None:
        super().__init__(Keyset(since))
        self._stream_name = stream_name
        self._page_size = page_size
        self._limit_cap: int | None = None  # the server's cap on `limit`, once seen
        self._sent: tuple[int, int] = (0, page_size)  # offset, limit of the request
        self._page_end: Keyset | None = None
        # The jobs received at the instant the next page starts at (all pages of
        # one group of ties), and the last one: the overlap's check and re-read.
        self._tied_ids: set[t.Any] = set()
        self._last_id: t.Any = None
        self._shifted = False
        self.since = since
        self.end = end
        #: The list ended within the window (a short or empty page, no ``next``):
        #: nothing was above the last job at that moment.
        self.reached_end_of_list = False
        self._passed_end = False
        self._instants: list[datetime.datetime] = []
        #: How long the last page took to answer, and (read serially) to write:
        #: the SDK writes a page's records between parsing it and has_more.
        self.request_seconds = 0.0
        self.write_seconds = 0.0
        self._parsed_at = 0.0
        # Called with each page's instants once the paginator knows whether the
        # list goes on: before the next page is requested, so it may lower `end`.
        self._on_page = on_page

    def _overlaps(self, keyset: Keyset) -> bool:
        return self.count > 0 and not keyset.reread

    def query(self, keyset: Keyset) -> tuple[int, int]:
        """``offset`` and ``limit`` of the request for the page at ``keyset``.

        With the overlap, a page still brings ``page_size`` new jobs, and a full
        sync of n jobs still takes ceil(n / page_size) requests.
        """
        if keyset.reread:
            offset, limit = 0, len(self._tied_ids) + self._page_size
        elif self._overlaps(keyset):
            offset, limit = keyset.offset - 1, self._page_size + 1
        else:
            offset, limit = keyset.offset, self._page_size
        if self._limit_cap is not None:
            limit = min(limit, self._limit_cap)
        self._sent = (offset, limit)
        return self._sent

    def checked_jobs(self, response: requests.Response) -> list[dict[str, t.Any]]:
        """The page's new jobs in the window, once they continue the order."""
        received = records_in(json_body(response), "data")
        keyset = self.current_value
        # The first page may start below `since`: the stream filters those jobs.
        last = keyset.since if self.count else None
        for job in received:
            instant = parse_timestamp(job["lastUpdatedAt"])
            if last is not None and instant < last:
                msg = (
                    f"stream '{self._stream_name}': the API did not return jobs in "
                    "lastUpdatedAt order (orderBy or updatedAtStart ignored?): "
                    f"jobId {job.get('jobId')} at {job['lastUpdatedAt']} came after "
                    f"{last.isoformat()} (GET {safe_url(response.url)}); stopped "
                    "before emitting that page, the bookmark is the last job in order"
                )
                raise APIResponseError(msg)
            last = instant
        self.request_seconds = response.elapsed.total_seconds()
        self._parsed_at = time.monotonic()
        self._shifted = self._overlaps(keyset) and not (
            received
            and received[0].get("jobId") == self._last_id
            and parse_timestamp(received[0]["lastUpdatedAt"]) == keyset.since
        )
        if self._shifted:  # read `since` again; nothing of this page is emitted
            self._page_end = Keyset(keyset.since, 0, reread=True)
            self._instants = []
            return []
        jobs = received[1:] if self._overlaps(keyset) else received
        if keyset.reread:
            jobs = [job for job in jobs if job.get("jobId") not in self._tied_ids]
        self._page_end = self._keyset_after(received, last)
        instants = [parse_timestamp(job["lastUpdatedAt"]) for job in jobs]
        self._instants = instants
        if not jobs:  # the SDK calls has_more only after a page with records
            self.reached_end_of_list = True
            if self._on_page is not None:
                self._on_page(instants)
        if self.end is not None and last is not None and last >= self.end:
            self._passed_end = True
            end = self.end
            return [job for job, at in zip(jobs, instants, strict=True) if at < end]
        return jobs

    def continue_if_empty(self, response: requests.Response) -> bool:
        # A page dropped for a shift is empty, yet the list goes on.
        return self._shifted

    def _keyset_after(
        self, received: list[dict[str, t.Any]], last: datetime.datetime | None
    ) -> Keyset:
        if last is None:  # an empty page
            return self.current_value
        tied = []
        for job in reversed(received):
            if parse_timestamp(job["lastUpdatedAt"]) != last:
                break
            tied.append(job.get("jobId"))
        self._last_id = received[-1].get("jobId")
        ties = len(tied)
        if ties == len(received) and last == self.current_value.since:
            ties += self._sent[0]  # one group of ties across pages
            self._tied_ids.update(tied)
        else:
            self._tied_ids = set(tied)
        return Keyset(last, ties)

    def has_more(self, response: requests.Response) -> bool:
        self.write_seconds = time.monotonic() - self._parsed_at
        if self._shifted:
            return True
        if self._passed_end:
            return False
        body = json_body(response)
        received = len(records_in(body, "data"))
        goes_on = body.get("next") not in _END_OF_LIST
        capped = goes_on and 0 < received < self._sent[1]
        if capped:
            self._limit_cap = received  # the server's cap on `limit`
        more = goes_on and (capped or received >= self._sent[1])
        self.reached_end_of_list = not more
        if self._on_page is not None:
            self._on_page(self._instants)
        return more

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


class PagingCursorPaginator(BodyCursorPaginator):
    """v3 ``job_results``: ``paging.next``, ending when ``have_next_page`` is false."""

    def cursor(self, body: t.Any) -> str | None:
        paging = body.get("paging") if isinstance(body, dict) else None
        if not isinstance(paging, dict) or not paging.get("have_next_page"):
            return None
        value = paging.get("next")
        return None if value in _END_OF_LIST else str(value)

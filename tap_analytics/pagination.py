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

from tap_analytics.errors import APIResponseError, CursorLoopError, safe_url
from tap_analytics.responses import json_body, records_in
from tap_analytics.timestamps import parse_timestamp

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
    """

    since: datetime.datetime | None
    offset: int = 0

    def describe(self) -> str:
        since = "the start" if self.since is None else self.since.isoformat()
        return f"{since} (+{self.offset} tied jobs)"

    def precedes(self, other: Keyset) -> bool:
        if self.since is None or other.since is None:
            return self.since is None and other.since is not None
        return (self.since, self.offset) < (other.since, other.offset)


class JobsKeysetPaginator(BaseAPIPaginator[Keyset]):
    """``jobs`` in ``lastUpdatedAt`` order, each page continuing after the last job.

    Stops on a short page or an end-of-list ``next`` (the SDK's paginators stop
    only on an empty page, one request more per sync). A server may cap ``limit``
    below what we asked for: a short first page that still has a ``next`` sets
    the page size instead of ending the stream early.

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
        self._page_end: Keyset | None = None
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

    def checked_jobs(self, response: requests.Response) -> list[dict[str, t.Any]]:
        """The page's jobs in the window, once they are known to continue the order."""
        jobs = records_in(json_body(response), "data")
        # The first page may start below `since`: the stream filters those jobs.
        last = self.current_value.since if self.count else None
        instants = []
        for job in jobs:
            instant = parse_timestamp(job["lastUpdatedAt"])
            instants.append(instant)
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
        self._page_end = self._keyset_after(jobs, last)
        self._instants = instants
        self.request_seconds = response.elapsed.total_seconds()
        self._parsed_at = time.monotonic()
        if not jobs:  # the SDK calls has_more only after a page with records
            self.reached_end_of_list = True
            if self._on_page is not None:
                self._on_page(instants)
        if self.end is not None and last is not None and last >= self.end:
            self._passed_end = True
            end = self.end
            return [job for job, at in zip(jobs, instants, strict=True) if at < end]
        return jobs

    def _keyset_after(
        self, jobs: list[dict[str, t.Any]], last: datetime.datetime | None
    ) -> Keyset:
        if last is None:  # an empty page
            return self.current_value
        ties = 0
        for job in reversed(jobs):
            if parse_timestamp(job["lastUpdatedAt"]) != last:
                break
            ties += 1
        if ties == len(jobs) and last == self.current_value.since:
            ties += self.current_value.offset  # one group of ties across pages
        return Keyset(last, ties)

    def has_more(self, response: requests.Response) -> bool:
        self.write_seconds = time.monotonic() - self._parsed_at
        if self._passed_end:
            return False
        body = json_body(response)
        received = len(records_in(body, "data"))
        if self.count == 1 and 0 < received < self._page_size and body.get("next"):
            self._page_size = received  # the server's cap on `limit`
        more = body.get("next") not in _END_OF_LIST and received >= self._page_size
        self.reached_end_of_list = not more
        if self._on_page is not None:
            self._on_page(self._instants)
        return more

    def get_next(self, response: requests.Response) -> Keyset:
        page_end = self._page_end
        if page_end is None or not self.current_value.precedes(page_end):
            msg = (
                f"stream '{self._stream_name}': page {self.count} of GET "
                f"{safe_url(response.url)} made no progress past "
                f"{self.current_value.describe()}; stopping instead of looping"
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

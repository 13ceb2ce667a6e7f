"""Paginators: the SDK's classes, taught the two shapes this API uses.

- ``jobs`` (v1): offset/limit, via the SDK's :class:`OffsetPaginator`.
- ``connections``, ``workspaces`` (v1) and ``job_results`` (v3): a cursor in the
  body that is either an opaque token (sent back as ``?next=``) or an absolute URL
  (followed as is); see :meth:`AnalyticsStream.get_http_request`.

Every paginator parses the body through :func:`tap_analytics.responses.json_body`,
which caches it on the response, so a page is decoded once, not once per reader.
"""

from __future__ import annotations

import typing as t

from singer_sdk.pagination import BaseAPIPaginator, OffsetPaginator

from tap_analytics.errors import CursorLoopError, safe_url
from tap_analytics.responses import json_body

if t.TYPE_CHECKING:
    import requests

_END_OF_LIST = (None, "")


class JobsOffsetPaginator(OffsetPaginator):
    """``offset`` += page size until a short page or an end-of-list ``next``.

    The SDK's offset paginator only stops on an empty page, which costs one
    request per sync that returns nothing.

    A server may cap ``limit`` below what we asked for. Taking its first, capped
    page for a short last page would end the stream early, and since the bookmark
    is the latest ``lastUpdatedAt`` seen, the missed jobs would never come back:
    a short first page that still has a ``next`` sets the page size instead.
    """

    def has_more(self, response: requests.Response) -> bool:
        body = json_body(response)
        if body.get("next") in _END_OF_LIST:
            return False
        received = len(body.get("data") or ())
        if self.count == 1 and 0 < received < self._page_size:
            self._page_size = received  # the server's cap on `limit`
        return received >= self._page_size


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

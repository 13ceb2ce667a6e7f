"""Reading response bodies: decode once, refuse non-JSON, find the records.

The paginator and the record parser both read each body; decoding is the
costliest step per page, so the decoded body is cached on the response.
"""

from __future__ import annotations

import typing as t

import msgspec

from tap_analytics.errors import APIResponseError
from tap_analytics.urls import safe_url

if t.TYPE_CHECKING:
    import requests

_DECODER = msgspec.json.Decoder()
_CACHE_ATTRIBUTE = "_tap_analytics_body"


def json_body(response: requests.Response) -> t.Any:
    """The decoded JSON body; an HTML page or other non-JSON 200 is an error."""
    try:
        return response.__dict__[_CACHE_ATTRIBUTE]
    except KeyError:
        pass
    try:
        body = _DECODER.decode(response.content)
    except msgspec.DecodeError:
        content_type = response.headers.get("Content-Type") or "no Content-Type"
        msg = (
            f"expected JSON from GET {safe_url(response.url)} but got "
            f"{content_type} ({len(response.content)} bytes); is base_url right?"
        )
        raise APIResponseError(msg) from None
    response.__dict__[_CACHE_ATTRIBUTE] = body
    return body


def records_in(body: t.Any, key: str) -> list[dict[str, t.Any]]:
    """Records under ``key``: a list, a single object, or the body as a bare array."""
    data = body.get(key) if isinstance(body, dict) else body
    if data is None:
        return []
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list):
        return data
    msg = f"expected a list or an object under '{key}', got {type(data).__name__}"
    raise APIResponseError(msg)

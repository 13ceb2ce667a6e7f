"""Response shapes the sandbox does not produce, checked with `responses` (unit level).

The behaviour these cover is proved over real HTTP elsewhere; here only the odd
shapes: an empty page that still has a token cursor, a token containing ':', a token
endpoint that answers without ``access_token``.
"""

from __future__ import annotations

import pytest
import responses

from tap_analytics.auth import TokenRequestError
from tap_analytics.tap import TapAnalytics
from tests.tap_runner import sync

BASE = "http://api.test"
V3 = {"base_url": BASE, "api_key": "k"}
V1 = {"base_url": BASE, "client_id": "id", "client_secret": "shh"}


def only(stream: str) -> dict:
    catalog = TapAnalytics(config=V1).catalog_dict
    for entry in catalog["streams"]:
        selected = entry["tap_stream_id"] == stream
        for item in entry["metadata"]:
            if item["breadcrumb"] == []:
                item["metadata"]["selected"] = selected
    return catalog


@responses.activate
def test_an_empty_page_with_a_token_cursor_is_not_the_end():
    # A token does not say the `limit` of the page it names, so only an end
    # marker ends the list there, not an empty (or short) page.
    full = [{"workspaceId": f"w{n}"} for n in range(100)]
    responses.post(f"{BASE}/token", json={"access_token": "t", "expires_in": 600})
    pages = [
        ({"limit": "100"}, {"data": full, "next": "cur:2"}),
        ({"next": "cur:2"}, {"data": [], "next": "cur:3"}),
        ({"next": "cur:3"}, {"data": [{"workspaceId": "w100"}], "next": None}),
    ]
    for query, body in pages:
        responses.get(
            f"{BASE}/v1/workspaces",
            json=body,
            match=[responses.matchers.query_param_matcher(query)],
        )
    out = sync(V1, catalog=only("workspaces"))
    assert out.keys("workspaces", "workspaceId") == [f"w{n}" for n in range(101)]


@responses.activate
def test_a_token_response_without_access_token_is_not_echoed():
    responses.post(
        f"{BASE}/token",
        body="access_token=leaked-token-123&token_type=bearer",
        content_type="application/x-www-form-urlencoded",
    )
    with pytest.raises(TokenRequestError) as failure:
        sync(V1, catalog=only("workspaces"))
    assert "leaked-token-123" not in str(failure.value)
    assert "application/x-www-form-urlencoded" in str(failure.value)

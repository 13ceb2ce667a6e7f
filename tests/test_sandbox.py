"""The sandbox API itself, over real HTTP: the contract the tap's tests rely on."""

from __future__ import annotations

import datetime
import email.utils
import itertools
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from tap_analytics.sandbox import SandboxConfig, SandboxServer
from tap_analytics.sandbox.cli import main

ROOT = Path(__file__).resolve().parents[1]
CREDENTIALS = {
    "grant_type": "client_credentials",
    "client_id": "sandbox-client",
    "client_secret": "sandbox-secret",
}
API_KEY = {"x-api-key": "sandbox-key"}


def instant(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value)


def v1_session(server: SandboxServer) -> requests.Session:
    session = requests.Session()
    token = session.post(f"{server.base_url}/token", data=CREDENTIALS).json()
    session.headers["Authorization"] = f"Bearer {token['access_token']}"
    return session


def walk_jobs(server: SandboxServer, **params: Any) -> list[dict[str, Any]]:
    """Follow ``next`` as given until the empty page that ends every v1 list."""
    session = v1_session(server)
    pages = []
    url = f"{server.base_url}/v1/jobs"
    query: dict[str, Any] = params
    while True:
        body = session.get(url, params=query).json()
        pages.append(body)
        if not body.get("next"):
            return pages
        url, query = body["next"], {}


def walk_query(server: SandboxServer, limit: int, **params: str) -> list[Any]:
    """The jobs of one query, paged by ``offset`` (``next`` drops the query)."""
    session = v1_session(server)
    jobs: list[Any] = []
    while True:
        query: dict[str, str | int] = {"limit": limit, "offset": len(jobs), **params}
        page = session.get(f"{server.base_url}/v1/jobs", params=query).json()["data"]
        jobs += page
        if len(page) < limit:
            return jobs


def walk_cursor(
    server: SandboxServer, stream: str, limit: int | None = None
) -> list[dict[str, Any]]:
    """Follow ``next`` the way a correct client does, for both cursor shapes."""
    session = v1_session(server)
    first = {} if limit is None else {"limit": limit}
    pages = [session.get(f"{server.base_url}/v1/{stream}", params=first).json()]
    while pages[-1].get("next"):
        cursor = pages[-1]["next"]
        if cursor.startswith("http"):
            response = session.get(cursor)
        else:
            response = session.get(
                f"{server.base_url}/v1/{stream}?next={quote(cursor)}"
            )
        assert response.status_code == 200, response.text
        pages.append(response.json())
    return pages


def is_error_id(response: requests.Response) -> bool:
    """The real server's 400 body: ``{"errorId": "<uuid>"}``, no message."""
    body = response.json()
    return set(body) == {"errorId"} and uuid.UUID(body["errorId"]).version == 4


# --- token flow and authentication -----------------------------------------------


def test_token_accepts_form_json_and_basic_credentials(sandbox):
    server = sandbox(token_ttl=120)
    url = f"{server.base_url}/token"
    form = requests.post(url, data=CREDENTIALS)
    as_json = requests.post(url, json=CREDENTIALS)
    basic = requests.post(
        url,
        data={"grant_type": "client_credentials"},
        auth=("sandbox-client", "sandbox-secret"),
    )
    tokens = set()
    for response in (form, as_json, basic):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["expires_in"] == 120
        assert body["token_type"] == "Bearer"
        tokens.add(body["access_token"])
    assert len(tokens) == 3
    assert [r["auth"] for r in server.requests] == ["none", "none", "basic"]


def test_tokens_live_as_long_as_the_real_servers_by_default(sandbox):
    # API.md "The real server": 900 s by default; a kinder sandbox would let a
    # long run pass here that needs a new token there.
    server = sandbox()
    body = requests.post(f"{server.base_url}/token", data=CREDENTIALS).json()
    assert body["expires_in"] == 900


@pytest.mark.parametrize(
    ("payload", "status", "error"),
    [
        ({**CREDENTIALS, "client_secret": "wrong"}, 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, 401, "invalid_client"),
        ({**CREDENTIALS, "grant_type": "password"}, 400, "unsupported_grant_type"),
    ],
)
def test_token_rejects_bad_requests(sandbox, payload, status, error):
    server = sandbox()
    response = requests.post(f"{server.base_url}/token", data=payload)
    assert response.status_code == status
    assert response.json() == {"error": error}


def test_data_requests_need_a_valid_unrevoked_token(sandbox):
    server = sandbox()
    jobs = f"{server.base_url}/v1/jobs"
    assert requests.get(jobs).status_code == 401
    bad = requests.get(jobs, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert bad.json() == {"error": "invalid_token"}
    session = v1_session(server)
    assert session.get(jobs).status_code == 200
    server.revoke_tokens()
    assert session.get(jobs).status_code == 401
    session = v1_session(server)
    assert session.get(jobs).status_code == 200
    assert requests.post(f"{server.base_url}/_sandbox/revoke").json() == {"revoked": 1}
    assert session.get(jobs).status_code == 401


def test_expired_tokens_are_rejected(sandbox):
    server = sandbox(token_ttl=0)
    assert v1_session(server).get(f"{server.base_url}/v1/jobs").status_code == 401


def test_v3_needs_the_api_key_and_the_project_when_configured(sandbox):
    server = sandbox(project_uid="project-7")
    url = f"{server.base_url}/v3/workflows"
    assert requests.get(url).status_code == 401
    assert requests.get(url, headers={"x-api-key": "wrong"}).json() == {
        "error": "invalid api key"
    }
    assert requests.get(url, headers=API_KEY).status_code == 403
    wrong_project = {**API_KEY, "x-project-id": "project-8"}
    assert requests.get(url, headers=wrong_project).status_code == 403
    assert requests.get(url, headers={**API_KEY, "x-project-id": "project-7"}).ok
    assert server.dataset["v3"]["workspace"]["project_uid"] == "project-7"
    assert [r["project_id"] for r in server.requests][-2:] == ["project-8", "project-7"]
    assert {r["auth"] for r in server.requests} == {"none", "api-key"}


def test_the_request_log_never_holds_secrets(sandbox):
    server = sandbox()
    session = v1_session(server)
    session.get(f"{server.base_url}/v1/jobs", params={"access_token": "leak"})
    requests.get(f"{server.base_url}/v3/workspace", headers=API_KEY)
    token = str(session.headers["Authorization"]).split()[1]
    logged = json.dumps(server.requests)
    for secret in ("sandbox-secret", "sandbox-key", token, "leak"):
        assert secret not in logged
    first = server.requests[0]
    assert set(first) == {
        "seq",
        "time",
        "method",
        "path",
        "query",
        "status",
        "auth",
        "project_id",
        "fault",
        "served",
    }
    assert (first["method"], first["path"], first["status"]) == ("POST", "/token", 200)
    assert [r["seq"] for r in server.requests] == [1, 2, 3]
    server.clear_requests()
    assert server.requests == []


# --- v1 jobs: the real server's paging, order and filter ----------------------------


def test_jobs_next_is_set_on_every_page_with_jobs_and_keeps_only_limit_and_offset(
    sandbox,
):
    server = sandbox(v1_jobs=250)
    walked = walk_jobs(server, limit=100, updatedAtStart="2024-01-01T00:00Z")
    assert [len(page["data"]) for page in walked] == [100, 100, 50, 0]
    base = f"{server.base_url}/v1/jobs"
    assert [page["next"] for page in walked] == [
        f"{base}?limit=100&offset=100",
        f"{base}?limit=100&offset=200",
        f"{base}?limit=100&offset=300",  # on the short last page too
        "",  # only an empty page ends the links
    ]
    assert walked[0]["previous"] == ""
    assert walked[1]["previous"] == f"{base}?limit=100&offset=0"
    # Without orderBy: creation order (the dataset's), every job once.
    served = [job for page in walked for job in page["data"]]
    assert served == server.dataset["v1"]["jobs"]
    default = v1_session(server).get(base).json()
    assert len(default["data"]) == 20  # the server's default limit


@pytest.mark.parametrize(
    ("count", "end_marker", "pages"),
    [(250, "null", [100, 100, 50]), (200, "absent", [100, 100]), (0, "empty", [0])],
)
def test_older_servers_end_the_page_that_reaches_the_end(
    sandbox, count, end_marker, pages
):
    server = sandbox(v1_jobs=count, end_marker=end_marker)
    walked = walk_jobs(server, limit=100)
    assert [len(page["data"]) for page in walked] == pages
    last = walked[-1]
    assert {
        "null": "next" in last and last["next"] is None,
        "absent": "next" not in last,
        "empty": last.get("next") == "",
    }[end_marker]
    assert walked[0]["previous"] is None
    assert [job for page in walked for job in page["data"]] == server.dataset["v1"][
        "jobs"
    ]


def test_jobs_that_have_not_ended_have_no_time_and_timestamps_are_irregular(sandbox):
    jobs = sandbox(v1_jobs=250).dataset["v1"]["jobs"]
    ids = [job["jobId"] for job in jobs]
    assert all(isinstance(i, int) for i in ids)
    assert len(set(ids)) == 250
    assert ids != sorted(ids)
    by_status = Counter(job["status"] for job in jobs)
    assert set(by_status) == {
        "succeeded",
        "failed",
        "cancelled",
        "pending",
        "running",
        "incomplete",
        None,  # documented nullable: an ended job whose status was not reported
    }
    for job in jobs:
        if job["status"] == "pending":
            assert "lastUpdatedAt" not in job
            assert job["duration"] is None
        elif job["status"] in ("running", "incomplete"):
            assert job["lastUpdatedAt"] is None
        else:
            assert job["lastUpdatedAt"]
    not_ended = [job for job in jobs if not job.get("lastUpdatedAt")]
    assert 0.05 * 250 <= len(not_ended) <= 0.15 * 250
    stamps = [job["lastUpdatedAt"] for job in jobs if job.get("lastUpdatedAt")]
    # whole seconds, UTC with Z, the seconds dropped when zero
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?Z", s) for s in stamps)
    assert not any(s.endswith(":00Z") and len(s) == 20 for s in stamps)
    without_seconds = [s for s in stamps if len(s) == len("2024-03-01T01:30Z")]
    assert 10 <= len(without_seconds) <= 60
    ties = [s for s, n in Counter(stamps).items() if n > 1]
    assert len(ties) >= 2
    assert any(len(t) == len("2024-03-01T01:30Z") for t in ties)
    assert all(instant(s).year == 2024 for s in stamps)


def test_order_by_updated_at_follows_the_hidden_time_with_ties_and_untimed_jobs(
    sandbox,
):
    server = sandbox(v1_jobs=250)
    hidden = server.update_times()
    jobs = walk_query(server, 100, orderBy="updatedAt|ASC")
    assert sorted(j["jobId"] for j in jobs) == sorted(hidden)
    assert [hidden[j["jobId"]] for j in jobs] == sorted(hidden.values())
    shown = [(j["jobId"], j.get("lastUpdatedAt")) for j in jobs]
    moments = [instant(at) for _, at in shown if at]
    assert moments == sorted(moments)
    # a visible time is the hidden one floored to the second
    for job, at in shown:
        if at:
            assert instant(at).timestamp() == hidden[job] // 1_000_000
    # jobs without a time sit between jobs with one, where their time puts them
    positions = [i for i, (_, at) in enumerate(shown) if at is None]
    assert any(0 < i < len(shown) - 1 for i in positions)
    groups = Counter(at for _, at in shown if at)
    tie = next(stamp for stamp, n in groups.items() if n > 2)
    tied = [job for job, at in shown if at == tie]
    assert tied != sorted(tied)  # the sub-second order, not jobId
    # `next` keeps only limit and offset: following it leaves the updatedAt order
    first = walk_jobs(server, limit=100, orderBy="updatedAt|ASC")[0]
    assert first["next"] == f"{server.base_url}/v1/jobs?limit=100&offset=100"


@pytest.mark.parametrize("field", ["updatedAt", "createdAt"])
def test_order_by_desc_reverses_the_order(sandbox, field):
    server = sandbox(v1_jobs=250)
    ascending = walk_query(server, 30, orderBy=f"{field}|ASC")
    descending = walk_query(server, 30, orderBy=f"{field}|DESC")
    assert descending == ascending[::-1]
    assert len(ascending) == 250


@pytest.mark.parametrize("order_by", [None, "updatedAt|ASC"])
def test_updated_at_start_filters_by_the_hidden_time_and_is_parsed_leniently(
    sandbox, order_by
):
    server = sandbox(v1_jobs=250)
    jobs = server.dataset["v1"]["jobs"]
    hidden = server.update_times()
    tie = Counter(j["lastUpdatedAt"] for j in jobs if j.get("lastUpdatedAt"))
    stamp = tie.most_common(1)[0][0]
    moment = instant(stamp)
    # inclusive: every job shown at that second, and every one after it
    expected = sorted(
        job for job, at in hidden.items() if at >= moment.timestamp() * 1_000_000
    )
    assert {j["jobId"] for j in jobs if j.get("lastUpdatedAt") == stamp} <= set(
        expected
    )
    extra = {"orderBy": order_by} if order_by else {}
    spellings = [
        stamp,
        moment.isoformat(),
        moment.astimezone(datetime.timezone(datetime.timedelta(hours=2))).isoformat(),
        moment.replace(tzinfo=None).isoformat(),
    ]
    for spelling in spellings:
        got = walk_query(server, 30, updatedAtStart=spelling, **extra)
        assert sorted(j["jobId"] for j in got) == expected, spelling


@pytest.mark.sends_bad_limits
@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/connections", "/v1/workspaces"])
@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "limit=1000",
        "limit=ten",
        "offset=-1",
        "offset=x",
    ],
)
def test_limit_outside_1_to_100_or_a_negative_offset_is_a_400(sandbox, path, query):
    server = sandbox()
    response = v1_session(server).get(f"{server.base_url}{path}?{query}")
    assert response.status_code == 400
    assert is_error_id(response)


@pytest.mark.parametrize(
    "query",
    [
        "updatedAtStart=yesterday",
        "updatedAtStart=2024-03-01T01:30:00+02:00",  # unencoded "+" arrives as a space
        "orderBy=jobId",
        "orderBy=updatedAt",
        "orderBy=updatedAt|UP",
        "orderBy=lastUpdatedAt|ASC",
    ],
)
def test_bad_jobs_queries_are_a_400(sandbox, query):
    server = sandbox()
    response = v1_session(server).get(f"{server.base_url}/v1/jobs?{query}")
    assert response.status_code == 400
    assert is_error_id(response)
    twice = v1_session(server).get(f"{server.base_url}/v1/jobs?limit=10&limit=20")
    assert twice.status_code == 400


def test_limit_100_is_served_whole_and_offsets_past_the_end_are_empty(sandbox):
    server = sandbox(v1_jobs=130)
    session = v1_session(server)
    first = session.get(f"{server.base_url}/v1/jobs", params={"limit": 100}).json()
    assert len(first["data"]) == 100
    assert first["next"].endswith("limit=100&offset=100")
    beyond = session.get(f"{server.base_url}/v1/jobs", params={"offset": 999}).json()
    assert beyond["data"] == []
    assert beyond["next"] == ""


# --- v1 connections and workspaces ---------------------------------------------------


@pytest.mark.parametrize("shape", ["url", "token"])
@pytest.mark.parametrize("end_marker", ["real", "null", "absent", "empty"])
@pytest.mark.parametrize("stream", ["connections", "workspaces"])
def test_lists_walk_exactly_the_dataset(sandbox, shape, end_marker, stream):
    server = sandbox(
        cursor_shape=shape,
        end_marker=end_marker,
        v1_connections=120,
        v1_workspaces=40,
    )
    pages = walk_cursor(server, stream)  # the server's default limit: 20
    assert [r for page in pages for r in page["data"]] == server.dataset["v1"][stream]
    full = {"connections": 6, "workspaces": 2}[stream]
    # The real server links every page with records; only an empty one ends.
    assert [len(page["data"]) for page in pages] == [20] * full + (
        [0] if end_marker == "real" else []
    )
    cursors = [page["next"] for page in pages[:-1]]
    assert len(set(cursors)) == len(cursors)
    if shape == "token":
        assert all({"=", "+", "/"} <= set(cursor) for cursor in cursors)
    else:
        assert cursors == [
            f"{server.base_url}/v1/{stream}?limit=20&offset={20 * n}"
            for n in range(1, len(cursors) + 1)
        ]
    assert {
        "real": pages[-1].get("next") == "",
        "null": pages[-1].get("next", 0) is None,
        "absent": "next" not in pages[-1],
        "empty": pages[-1].get("next") == "",
    }[end_marker]


@pytest.mark.parametrize("shape", ["url", "token"])
def test_lists_page_by_the_limit_of_the_first_request(sandbox, shape):
    server = sandbox(cursor_shape=shape, v1_connections=450)
    pages = walk_cursor(server, "connections", limit=100)
    assert [len(page["data"]) for page in pages] == [100, 100, 100, 100, 50, 0]
    items = [r for page in pages for r in page["data"]]
    assert items == server.dataset["v1"]["connections"]


def test_cursor_sent_unencoded_forged_or_reused_elsewhere_is_rejected(sandbox):
    server = sandbox(cursor_shape="token")
    session = v1_session(server)
    cursor = session.get(f"{server.base_url}/v1/connections").json()["next"]
    for bad in (cursor, quote(cursor[:-2]), quote(cursor[::-1]), "", "abc"):
        response = session.get(f"{server.base_url}/v1/connections?next={bad}")
        assert response.status_code == 400, bad
        assert response.json() == {"error": "invalid cursor"}
    other = session.get(f"{server.base_url}/v1/workspaces?next={quote(cursor)}")
    assert other.status_code == 400
    ok = session.get(f"{server.base_url}/v1/connections?next={quote(cursor)}")
    assert ok.status_code == 200


def test_next_url_with_re_added_parameters_is_rejected(sandbox):
    server = sandbox()
    session = v1_session(server)
    next_url = session.get(f"{server.base_url}/v1/connections").json()["next"]
    response = session.get(next_url, params={"limit": 20})
    assert response.status_code == 400
    assert response.json() == {"error": "duplicated query parameter"}


@pytest.mark.parametrize("shape", ["token", "url"])
def test_loop_cursor_repeats_the_first_pages_cursor(sandbox, shape):
    server = sandbox(loop_cursor="connections", cursor_shape=shape)
    session = v1_session(server)
    first = session.get(f"{server.base_url}/v1/connections").json()
    link = first["next"]
    url = (
        link
        if shape == "url"
        else f"{server.base_url}/v1/connections?next={quote(link)}"
    )
    second = session.get(url).json()
    assert second["next"] == first["next"]
    assert second["data"] != first["data"]
    workspaces = walk_cursor(server, "workspaces")
    assert len(workspaces) == 2  # 7 workspaces, then the empty page


# --- v3 ----------------------------------------------------------------------------


def test_v3_shapes_and_job_kinds(sandbox):
    server = sandbox()
    base = server.base_url
    data = server.dataset["v3"]
    workspace = requests.get(f"{base}/v3/workspace", headers=API_KEY).json()
    assert workspace == {"data": data["workspace"]}
    assert set(workspace["data"]) == {
        "name",
        "email",
        "plan_name",
        "project_uid",
        "current_month_start",
        "current_month_end",
        "tasks_left",
        "tasks_max",
        "tasks_used",
        "extra_note",  # undocumented, as the real server's records carry more
    }
    workflows = requests.get(f"{base}/v3/workflows", headers=API_KEY).json()["data"]
    assert workflows == data["workflows"]
    assert len(workflows) == 5
    assert all(
        set(s) == {"uid", "name", "step_uid"} for w in workflows for s in w["steps"]
    )
    served_jobs = []
    for workflow in workflows:
        url = f"{base}/v3/workflows/{workflow['uid']}/jobs"
        jobs = requests.get(url, headers=API_KEY).json()["data"]
        assert len(jobs) == 6
        assert {job["workflow_uid"] for job in jobs} == {workflow["uid"]}
        served_jobs += jobs
    assert served_jobs == data["jobs"]

    def kind(job: dict[str, Any]) -> tuple[str, str]:
        rows = job["total_row_count"]
        size = "null" if rows is None else "zero" if rows == 0 else "rows"
        return job["status"], size

    kinds = {kind(job) for job in served_jobs}
    assert {
        ("finished", "rows"),
        ("finished", "zero"),
        ("finished", "null"),
        ("failed", "rows"),
        ("running", "null"),
        ("queued", "null"),
    } <= kinds
    assert {job["status"] for job in served_jobs} == {
        "finished",
        "failed",
        "running",
        "queued",
    }
    missing = requests.get(f"{base}/v3/workflows/nope/jobs", headers=API_KEY)
    assert missing.status_code == 404


def test_v3_bare_data_shape(sandbox):
    server = sandbox(v3_data_shape="bare")
    workflows = requests.get(f"{server.base_url}/v3/workflows", headers=API_KEY).json()
    assert workflows == server.dataset["v3"]["workflows"]
    url = f"{server.base_url}/v3/workflows/{workflows[0]['uid']}/jobs"
    assert isinstance(requests.get(url, headers=API_KEY).json(), list)
    workspace = requests.get(f"{server.base_url}/v3/workspace", headers=API_KEY).json()
    assert workspace["data"]["name"]


def results_pages(server: SandboxServer, job_uid: str) -> list[dict[str, Any]]:
    url = f"{server.base_url}/v3/jobs/{job_uid}/results"
    pages = [requests.get(url, headers=API_KEY).json()]
    while pages[-1]["paging"]["have_next_page"] and len(pages) < 5:
        pages.append(requests.get(pages[-1]["paging"]["next"], headers=API_KEY).json())
    return pages


def successful_uid(server: SandboxServer) -> str:
    return next(
        job["uid"]
        for job in server.dataset["v3"]["jobs"]
        if job["status"] == "finished" and (job["total_row_count"] or 0) > 0
    )


@pytest.mark.parametrize("bare", [False, True])
def test_job_results_paginate_by_absolute_url(sandbox, bare):
    server = sandbox(v3_bare_results=bare)
    uid = successful_uid(server)
    pages = results_pages(server, uid)
    assert [len(page["results"]) for page in pages] == [25, 5]
    assert pages[-1]["paging"] == {"next": None, "have_next_page": False}
    assert pages[0]["paging"]["next"].startswith(f"{server.base_url}/v3/jobs/{uid}/")
    items = [item for page in pages for item in page["results"]]
    assert items == server.dataset["v3"]["job_results"][uid]
    assert all("job_uid" not in item for item in items)
    if bare:
        assert all("job_result_id" not in item and "clicks" in item for item in items)
    else:
        documented = {"job_result_id", "extracted_at", "results"}
        assert all(set(item) == {*documented, "extra_note"} for item in items)


def test_job_results_of_other_jobs_are_empty_or_missing(sandbox):
    server = sandbox()
    data = server.dataset["v3"]
    failed = next(job["uid"] for job in data["jobs"] if job["status"] != "finished")
    assert data["job_results"][failed] == []
    assert results_pages(server, failed) == [
        {"results": [], "paging": {"next": None, "have_next_page": False}}
    ]
    url = f"{server.base_url}/v3/jobs/nope/results"
    assert requests.get(url, headers=API_KEY).status_code == 404
    uid = successful_uid(server)
    forged = f"{server.base_url}/v3/jobs/{uid}/results?cursor=abc"
    assert requests.get(forged, headers=API_KEY).status_code == 400


def test_loop_cursor_on_job_results(sandbox):
    server = sandbox(loop_cursor="job_results")
    pages = results_pages(server, successful_uid(server))
    assert pages[1]["paging"]["next"] == pages[0]["paging"]["next"]
    assert pages[1]["paging"]["have_next_page"] is True


# --- v3 over time: a server clock, jobs that finish between runs ------------------


def epoch(value: str) -> int:
    return int(instant(value).timestamp())


def test_v3_answers_are_dated_by_the_v3_clock_which_follows_the_data(sandbox):
    server = sandbox(v3_workflows=4, v3_jobs_per_workflow=10)
    jobs = server.dataset["v3"]["jobs"]
    finished = [epoch(j["finish_time"]) for j in jobs if j["finish_time"]]
    started = [epoch(j["start_time"]) for j in jobs if j["start_time"]]
    # Every finished job is listed by now, the newest just now.
    assert server.v3_clock == max(finished) >= max(started)
    response = requests.get(f"{server.base_url}/v3/workflows", headers=API_KEY)
    assert response.raw.headers.getlist("Date") == [
        email.utils.formatdate(server.v3_clock, usegmt=True)
    ]
    server.advance_v3(90)
    response = requests.get(f"{server.base_url}/v3/workspace", headers=API_KEY)
    date = email.utils.parsedate_to_datetime(response.headers["Date"])
    assert date.timestamp() == server.v3_clock == max(finished) + 90
    # v1 answers keep the wall clock (tokens and rate limits run on it).
    token = requests.post(f"{server.base_url}/token", data=CREDENTIALS)
    wall = email.utils.parsedate_to_datetime(token.headers["Date"]).timestamp()
    assert abs(wall - time.time()) < 5


def test_advance_v3_finishes_running_jobs_and_adds_jobs_listed_late(sandbox):
    server = sandbox(v3_workflows=4, v3_jobs_per_workflow=10)
    before = server.dataset["v3"]
    running = {j["uid"] for j in before["jobs"] if j["status"] == "running"}
    clock = server.v3_clock

    changed = server.advance_v3(120, finish=2, add=5)

    assert len(changed["finished"]) == 2
    assert set(changed["finished"]) <= running
    assert len(changed["added"]) == 5
    assert server.v3_clock == clock + 120
    after = server.dataset["v3"]
    assert len(after["jobs"]) == len(before["jobs"]) + 5
    by_uid = {job["uid"]: job for job in after["jobs"]}
    finish_times = []
    for uid in changed["finished"] + changed["added"]:
        job = by_uid[uid]
        assert job["status"] == "finished"
        assert job["total_row_count"] == job["row_count"] == 30
        # Listed from now on, up to 5 minutes after it finished.
        finish_times.append(epoch(job["finish_time"]))
        assert clock + 120 - 300 <= finish_times[-1] <= clock + 120
        assert epoch(job["start_time"]) < finish_times[-1]
        url = f"{server.base_url}/v3/workflows/{job['workflow_uid']}/jobs"
        assert job in requests.get(url, headers=API_KEY).json()["data"]
        items = [
            item for page in results_pages(server, uid) for item in page["results"]
        ]
        assert items == after["job_results"][uid]
        assert len(items) == 30
    # Some finished before the newest finish_time a run could see until now.
    assert min(finish_times) < clock
    assert [by_uid[j["uid"]] for j in before["jobs"] if j["uid"] not in running] == [
        j for j in before["jobs"] if j["uid"] not in running
    ]
    # Deterministic: the same seed makes the same changes.
    twin = sandbox(v3_workflows=4, v3_jobs_per_workflow=10)
    assert twin.advance_v3(120, finish=2, add=5) == changed
    assert twin.dataset == server.dataset


def test_advance_v3_over_http_with_extra_fields_and_bare_results(sandbox):
    server = sandbox(extra_field="surprise", v3_bare_results=True)
    base = server.base_url
    response = requests.post(f"{base}/_sandbox/v3-advance?seconds=30&add=2")
    assert response.status_code == 200
    (first, second) = response.json()["added"]
    data = server.dataset["v3"]
    assert requests.get(f"{base}/_sandbox/dataset").json()["v3"] == data
    new = [job for job in data["jobs"] if job["uid"] in (first, second)]
    assert all(isinstance(job["surprise"], str) for job in new)
    items = data["job_results"][first]
    assert all("job_result_id" not in item for item in items)
    assert all(isinstance(item["surprise"], str) for item in items)
    running = sum(job["status"] == "running" for job in data["jobs"])
    refused = requests.post(f"{base}/_sandbox/v3-advance?finish={running + 1}")
    assert refused.status_code == 400
    assert refused.json() == {"error": f"finish: only {running} v3 jobs are running"}
    assert requests.get(f"{base}/_sandbox/v3-advance").status_code == 405


def served_records(server: SandboxServer) -> dict[str, list[dict[str, Any]]]:
    """Every stream's records in the order served (v3: as the tests above show)."""
    v3 = server.dataset["v3"]
    # One page of at most 100 holds every job: the server's order, no `next` needed.
    [first_page, *_] = walk_jobs(server, limit=100, orderBy="updatedAt|ASC")
    assert len(first_page["data"]) == len(server.dataset["v1"]["jobs"]) <= 100
    pages = [results_pages(server, job["uid"]) for job in v3["jobs"]]
    return {
        "jobs": first_page["data"],
        "connections": [
            c for p in walk_cursor(server, "connections") for c in p["data"]
        ],
        "workspaces": [w for p in walk_cursor(server, "workspaces") for w in p["data"]],
        "workspace": [v3["workspace"]],
        "workflows": v3["workflows"],
        "v3_jobs": v3["jobs"],
        "job_results": [item for job in pages for p in job for item in p["results"]],
    }


def test_fields_beyond_the_documents_are_on_every_stream(sandbox):
    server = sandbox(halfway_field="added", retyped_field="score", v1_jobs=100)
    served = served_records(server)
    assert {stream: len(records) > 1 for stream, records in served.items()} == {
        stream: stream != "workspace" for stream in served
    }
    for stream, records in served.items():
        # the default: an undocumented field on every record, one value each
        notes = [r["extra_note"] for r in records]
        assert len(set(notes)) == len(notes), stream
        assert all(note.startswith(f"undocumented-{stream}-") for note in notes)
        # appears at the middle record, in the order served
        added = ["added" in r for r in records]
        first = len(records) // 2
        assert added == [False] * first + [True] * (len(records) - first), stream
        # an integer before that record, a string from it on
        scores = [r["score"] for r in records]
        assert all(isinstance(score, int) for score in scores[:first]), stream
        assert all(isinstance(score, str) for score in scores[first:]), stream


def test_extra_field_can_be_renamed_or_left_out(sandbox):
    renamed = sandbox(extra_field="surprise", v3_bare_results=True)
    v3 = renamed.dataset["v3"]
    rows = [row for items in v3["job_results"].values() for row in items]
    assert rows
    assert all(isinstance(row["surprise"], str) for row in rows)
    assert walk_jobs(renamed)[0]["data"][0]["surprise"]
    plain = sandbox(extra_field=None)
    assert not any("extra_note" in job for job in walk_jobs(plain)[0]["data"])


def test_connections_carry_configurations_and_status_reason(sandbox):
    server = sandbox()
    connections = [
        c for page in walk_cursor(server, "connections") for c in page["data"]
    ]
    assert connections == server.dataset["v1"]["connections"]
    for connection in connections:
        streams = connection["configurations"]["streams"]
        assert streams
        assert all({"name", "syncMode"} <= set(s) for s in streams)
        if connection["status"] in ("inactive", "deprecated"):
            assert isinstance(connection["statusReason"], str)
        else:
            assert connection["statusReason"] is None
    reasons = {c["statusReason"] is None for c in connections}
    assert reasons == {True, False}


# --- faults and misbehaviour -------------------------------------------------------


def test_random_faults_never_hit_the_token_endpoint_and_stop_after_a_streak(sandbox):
    server = sandbox(fault_rate=1.0, max_consecutive_faults=2, fault_retry_after="3")
    session = v1_session(server)
    statuses = [session.get(f"{server.base_url}/v1/jobs").status_code for _ in range(6)]
    assert statuses[2] == statuses[5] == 200
    faults = [s for i, s in enumerate(statuses) if i not in (2, 5)]
    assert set(faults) <= {429, 500, 502, 503, 504}
    log = server.requests
    assert log[0]["path"] == "/token"
    assert log[0]["status"] == 200
    assert [r["fault"] for r in log[1:]] == [s != 200 for s in statuses]


def one_job_pages(server: Any, count: int) -> list[requests.Response]:
    """``count`` distinct /v1/jobs requests of one job each (offsets 0, 1, …)."""
    session = v1_session(server)
    url = f"{server.base_url}/v1/jobs"
    return [session.get(url, params={"offset": i, "limit": 1}) for i in range(count)]


def test_fault_rate_injects_a_share_of_faults_with_retry_after(sandbox):
    server = sandbox(fault_rate=0.3, fault_retry_after="0", max_consecutive_faults=1)
    responses = one_job_pages(server, 100)
    faults = [r for r in responses if r.status_code != 200]
    assert 12 <= len(faults) <= 50
    assert {r.status_code for r in faults} == {429, 500, 502, 503, 504}
    assert all(r.headers["Retry-After"] == "0" for r in faults if r.status_code == 429)
    assert server.dataset == sandbox(fault_rate=0.0).dataset


def test_shed_rate_answers_a_share_with_a_bare_429(sandbox):
    # The real server's load shedding: 429, no Retry-After, no rate headers.
    server = sandbox(shed_rate=0.2, max_consecutive_faults=1)
    responses = one_job_pages(server, 200)
    shed = [r for r in responses if r.status_code != 200]
    assert 20 <= len(shed) <= 60
    assert {r.status_code for r in shed} == {429}
    for response in shed:
        names = {name.lower() for name in response.headers}
        assert not {name for name in names if "ratelimit" in name or "retry" in name}
    # a URL is shed at most max_consecutive_faults times in a row
    session = v1_session(server)
    url = f"{server.base_url}/v1/workspaces"
    statuses = [session.get(url).status_code for _ in range(40)]
    assert all(a == 200 or b == 200 for a, b in itertools.pairwise(statuses))


def test_scripted_faults_answer_the_first_requests_of_a_path(sandbox):
    script = [
        {
            "path": "/v1/workspaces",
            "status": 429,
            "headers": {"Retry-After": "2"},
            "times": 1,
        },
        {"path": "/token", "status": 503, "times": 2},
    ]
    server = sandbox(scripted_faults=script)
    url = f"{server.base_url}/token"
    assert [requests.post(url, data=CREDENTIALS).status_code for _ in range(3)] == [
        503,
        503,
        200,
    ]
    session = v1_session(server)
    first = session.get(f"{server.base_url}/v1/workspaces")
    assert first.status_code == 429
    assert first.headers["Retry-After"] == "2"
    assert "error" in first.json()
    assert session.get(f"{server.base_url}/v1/workspaces").status_code == 200


def test_html_paths_answer_a_login_page(sandbox):
    server = sandbox(html_paths=["/v1/jobs"])
    response = v1_session(server).get(f"{server.base_url}/v1/jobs")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text.startswith("<!DOCTYPE html>")


def test_latency_overlaps_between_concurrent_requests(sandbox):
    server = sandbox(latency_ms=300)
    url = f"{server.base_url}/v3/workspace"
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        codes = list(
            pool.map(lambda _: requests.get(url, headers=API_KEY).status_code, range(4))
        )
    elapsed = time.monotonic() - started
    assert codes == [200] * 4
    assert 0.3 <= elapsed < 1.2  # one after the other would take 1.2 s


def test_unknown_paths_and_methods(sandbox):
    server = sandbox()
    assert requests.get(f"{server.base_url}/v2/jobs").status_code == 404
    assert requests.get(f"{server.base_url}/v1/jobs/").status_code == 404
    assert requests.get(f"{server.base_url}/token").status_code == 405
    assert requests.get(f"{server.base_url}/_sandbox/nope").status_code == 404


# --- determinism, control endpoints, server lifecycle ------------------------------


def test_same_seed_same_dataset_and_bodies(sandbox):
    one, two, other = sandbox(seed=7), sandbox(seed=7), sandbox(seed=8)
    assert one.dataset == two.dataset
    assert one.dataset != other.dataset
    for path in ("/v1/connections", "/v1/jobs"):
        bodies = [
            v1_session(s).get(f"{s.base_url}{path}").text.replace(s.base_url, "")
            for s in (one, two)
        ]
        assert bodies[0] == bodies[1]


def test_sandbox_control_endpoints(sandbox):
    server = sandbox(v1_jobs=3)
    base = server.base_url
    v1_session(server)
    assert requests.get(f"{base}/_sandbox/dataset").json() == server.dataset
    assert requests.get(f"{base}/_sandbox/requests").json() == server.requests
    assert requests.post(f"{base}/_sandbox/clear-requests").json() == {"cleared": 1}
    assert server.requests == []
    assert requests.get(f"{base}/_sandbox/revoke").status_code == 405


def test_server_lifecycle_and_loopback_only():
    with pytest.raises(ValueError, match="loopback"):
        SandboxServer(host="0.0.0.0")
    with pytest.raises(ValueError, match="cursor_shape"):
        SandboxConfig(cursor_shape="cookie")  # type: ignore[arg-type]
    server = SandboxServer(SandboxConfig(v1_jobs=1))
    with pytest.raises(RuntimeError):
        server.base_url  # noqa: B018
    with server:
        session = requests.Session()
        assert session.get(f"{server.base_url}/v1/jobs").status_code == 401
        assert server.base_url.startswith("http://127.0.0.1:")
    with pytest.raises(requests.ConnectionError):
        session.get(f"{server.base_url}/v1/jobs")


# --- command line ------------------------------------------------------------------


def run_module(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tap_analytics.sandbox", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_cli_help_names_every_setting(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    server_flags = ("--config", "--host", "--port", "--ready-file", "--verbose")
    for flag in (*server_flags, "--tls", "--ca-file"):
        assert flag in out
    for name in SandboxConfig.__dataclass_fields__:
        assert f"--{name.replace('_', '-')}" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--host", "0.0.0.0"], "loopback"),
        (["--cursor-shape", "cookie"], "invalid choice"),
        (["--scripted-faults", "{}"], "scripted-faults"),
    ],
)
def test_cli_rejects_bad_arguments(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_serves_until_terminated(tmp_path):
    config = tmp_path / "sandbox.json"
    config.write_text(json.dumps({"v1_jobs": 12, "seed": 1}))
    ready = tmp_path / "ready"
    process = run_module(
        "--config", str(config), "--seed", "7", "--ready-file", str(ready)
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            time.sleep(0.02)
        base_url = ready.read_text()
        dataset = requests.get(f"{base_url}/_sandbox/dataset").json()
        assert len(dataset["v1"]["jobs"]) == 12
        with SandboxServer(SandboxConfig(seed=7, v1_jobs=12)) as twin:
            assert dataset == twin.dataset
    finally:
        process.terminate()
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert out == f"sandbox API listening on {base_url}\n"
    assert err == ""


def test_cli_stops_on_sigint(tmp_path):
    ready = tmp_path / "ready"
    process = run_module("--ready-file", str(ready))
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=10)
    assert process.returncode == 0

"""v1 ``jobs`` against a live API: jobs change while they are paged (issue 10)."""

from __future__ import annotations

import contextlib
import datetime
import io
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
import requests
from singer_sdk.pagination import OffsetPaginator

from tap_analytics.responses import json_body, records_in
from tap_analytics.streams import V1_STREAMS, V1JobsStream
from tap_analytics.tap import TapAnalytics
from tests.tap_runner import Output, run_cli, sync, v1_config
from tests.test_v1 import expected_keysets, instant, keysets

if TYPE_CHECKING:
    from collections.abc import Callable

    from singer_sdk.streams import Stream

    from tap_analytics.sandbox import SandboxServer

Job = dict[str, Any]


def jobs_requests(server: SandboxServer) -> list[dict[str, list[str]]]:
    return [r["query"] for r in server.requests if r["path"] == "/v1/jobs"]


def current_jobs(server: SandboxServer) -> dict[int, datetime.datetime]:
    return {
        job["jobId"]: instant(job["lastUpdatedAt"])
        for job in server.dataset["v1"]["jobs"]
    }


def last_versions(*runs: list[Job]) -> dict[int, datetime.datetime]:
    """The last version of every job emitted, in the order the runs emitted them."""
    latest: dict[int, datetime.datetime] = {}
    for jobs in runs:
        for job in jobs:
            latest[job["jobId"]] = datetime.datetime.fromisoformat(job["lastUpdatedAt"])
    return latest


# --- the paging this issue replaced, kept here only to show what it loses --------


class _OffsetPaginator(OffsetPaginator):
    """offset += page size until a short page or an end-of-list ``next``."""

    def has_more(self, response: requests.Response) -> bool:
        body = json_body(response)
        if body.get("next") in (None, ""):
            return False
        return len(records_in(body, "data")) >= self._page_size


class _OffsetPagedJobs(V1JobsStream):
    """``jobs`` as it was before issue 10: offset pages, declared unsorted."""

    is_sorted = False

    def get_new_paginator(self) -> Any:
        return _OffsetPaginator(start_value=0, page_size=self.page_size)

    def get_url_params(self, context: Any, next_page_token: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": self.page_size, "offset": next_page_token}
        if self._since:
            params["updatedAtStart"] = self._since.isoformat()
            params["orderBy"] = "updatedAt|ASC"
        return params

    def parse_response(self, response: requests.Response) -> list[Job]:
        return records_in(json_body(response), "data")


class _OffsetPagingTap(TapAnalytics):
    def discover_streams(self) -> list[Stream]:
        return [
            (_OffsetPagedJobs if cls is V1JobsStream else cls)(tap=self)
            for cls in V1_STREAMS
        ]


def offset_sync(config: dict[str, Any], state: dict[str, Any] | None = None) -> Output:
    buffer = io.StringIO()
    # Serial, as it was (windows are keyset paging's).
    tap = _OffsetPagingTap(config={**config, "max_concurrent_requests": 1}, state=state)
    with contextlib.redirect_stdout(buffer):
        tap.sync_all()
    return Output.parse(buffer.getvalue())


# --- must show 1: three runs against jobs that keep changing ---------------------


def three_live_runs(
    server: SandboxServer, run: Callable[..., Output], **settings: Any
) -> dict[int, datetime.datetime]:
    """Run 1 full; 5,000 jobs move; run 2 while jobs move and appear on every
    page; freeze; run 3 from run 2's state. The last version of each job emitted."""
    config = v1_config(server, **settings)
    first = run(config)
    server.move_jobs(5_000)
    second = run(config, state=first.final_state)
    server.freeze()
    third = run(config, state=second.final_state)
    runs = (first, second, third)
    return last_versions(*(out.records.get("jobs", []) for out in runs))


LIVE = {"v1_jobs": 20_000, "live_moves_per_page": 3, "live_adds_per_page": 1}

# Serial keyset paging, and concurrent windows (tap_analytics.windows) with default
# settings. The tap uses windows only when pages take longer to arrive than to
# write (about 2 ms for 100 jobs), so the concurrent runs get a sandbox that
# answers in 10 ms instead of at once.
MODES = [
    pytest.param({"max_concurrent_requests": 1}, 0, id="serial"),
    pytest.param({}, 10, id="windows"),
]


def paged_in_windows(server: SandboxServer) -> bool:
    """Whether jobs pages were requested out of order (one serial keyset walk
    asks ever later ``updatedAtStart``; windows ask several at once)."""
    starts = [
        datetime.datetime.fromisoformat(query["updatedAtStart"][0])
        for query in jobs_requests(server)
        if "updatedAtStart" in query
    ]
    return any(later < earlier for earlier, later in itertools.pairwise(starts))


@pytest.mark.parametrize(("settings", "latency_ms"), MODES)
def test_keyset_paging_emits_the_current_version_of_every_job(
    sandbox, settings, latency_ms
):
    server = sandbox(**LIVE, latency_ms=latency_ms)
    emitted = three_live_runs(server, sync, **settings)
    current = current_jobs(server)
    assert len(current) > 20_000  # jobs were added while pages were served
    assert emitted == current  # every jobId, each at its current lastUpdatedAt
    assert paged_in_windows(server) == (settings == {})


def test_offset_paging_loses_jobs_in_the_same_three_runs(sandbox):
    server = sandbox(**LIVE)
    emitted = three_live_runs(server, offset_sync)
    current = current_jobs(server)
    never_emitted = current.keys() - emitted.keys()
    stale = {
        job for job in emitted.keys() & current.keys() if emitted[job] != current[job]
    }
    # What issue 10 measured with the old paging: jobs skipped at page boundaries
    # sit below the bookmark, so no later run asks for them again.
    assert never_emitted or stale
    print(f"offset paging: {len(never_emitted)} never emitted, {len(stale)} stale")


# --- keyset pages: ties across pages, the lenient start, requests --------------


@pytest.mark.parametrize(("workers", "latency_ms"), [(1, 0), (8, 2)])
def test_tie_groups_longer_than_a_page_are_paged_by_offset_within_the_tie(
    sandbox, workers, latency_ms
):
    server = sandbox(v1_jobs=2_000, latency_ms=latency_ms)
    config = v1_config(
        server,
        page_size=3,
        start_date="2024-03-01T01:30Z",
        max_concurrent_requests=workers,
    )
    out = sync(config)
    start = instant("2024-03-01T01:30Z")
    expected = sorted(
        j["jobId"]
        for j in server.dataset["v1"]["jobs"]
        if instant(j["lastUpdatedAt"]) >= start
    )
    assert sorted(out.keys("jobs", "jobId")) == expected  # each job exactly once
    queries = jobs_requests(server)
    assert max(offset for _, offset, _ in keysets(queries)) > 3  # a tie spans pages
    if workers == 1:
        assert len(queries) == math.ceil(len(expected) / 3)
        assert keysets(queries) == expected_keysets(
            out.records["jobs"], 3, first=start.isoformat()
        )
    else:
        # A page of 3 takes longer to arrive (2 ms) than to write: windows are
        # used, each costing at most one page beyond its jobs.
        assert paged_in_windows(server)
        assert len(queries) <= 1.1 * math.ceil(len(expected) / 3)


def test_a_full_sync_of_20000_jobs_makes_ceil_n_over_limit_requests(sandbox):
    server = sandbox(v1_jobs=20_000)
    # Serial: concurrent windows cost up to a page each (see tests/test_v1_windows).
    out = sync(v1_config(server, page_size=250, max_concurrent_requests=1))
    assert sorted(out.keys("jobs", "jobId")) == sorted(current_jobs(server))
    assert len(jobs_requests(server)) == math.ceil(20_000 / 250)
    # the bookmark advanced during the stream, not only at its end
    bookmarks = [
        s["bookmarks"]["jobs"].get("replication_key_value")
        for s in out.states
        if "jobs" in s.get("bookmarks", {})
    ]
    assert len(bookmarks) >= 20
    assert bookmarks == sorted(bookmarks, key=datetime.datetime.fromisoformat)


# --- must show 2: SIGKILL mid-sync, rerun from the last STATE -------------------


def _complete_lines(raw: bytes) -> list[dict[str, Any]]:
    """Messages of a killed run: a line cut by the kill is not a message."""
    messages = []
    for line in raw.split(b"\n"):
        with contextlib.suppress(ValueError):
            messages.append(json.loads(line))
    return messages


@pytest.mark.parametrize(("settings", "latency_ms"), MODES)
def test_a_killed_sync_resumes_from_its_last_state(
    sandbox, tmp_path, settings, latency_ms
):
    jobs, page_size = 100_000, 100
    full_run_pages = math.ceil(jobs / page_size)
    server = sandbox(v1_jobs=jobs, latency_ms=latency_ms)
    config = v1_config(server, page_size=page_size, **settings)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    tap = os.path.join(os.path.dirname(sys.executable), "tap-analytics")
    stdout_path = tmp_path / "killed.jsonl"
    with stdout_path.open("wb") as stdout:
        process = subprocess.Popen(
            [tap, "--config", str(config_path)],
            stdout=stdout,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        # Killed once 60 % of the jobs are on its stdout. (Serially that is also
        # 60 % of the pages requested; windows request up to the pool's page
        # bound ahead of what is written, and a kill loses those pages.)
        written = 0
        with stdout_path.open("rb") as output:
            while written < 0.6 * jobs:
                assert process.poll() is None, "the tap ended before it was killed"
                assert time.monotonic() < deadline
                written += output.read().count(b'"type":"RECORD","stream":"jobs"')
                time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed_at = len(jobs_requests(server))
    assert paged_in_windows(server) == (settings == {})
    killed = _complete_lines(stdout_path.read_bytes())
    states = [m["value"] for m in killed if m["type"] == "STATE"]
    assert states, "no STATE before the kill"
    state_path = tmp_path / "state.json"
    state_path.write_text(json.dumps(states[-1]))

    server.clear_requests()
    rerun = run_cli(
        "--config", str(config_path), "--state", str(state_path), timeout=120
    )
    assert rerun.returncode == 0, rerun.stderr
    rerun_pages = len(jobs_requests(server))
    print(
        f"killed after {killed_at} of {full_run_pages} pages; "
        f"the rerun asked {rerun_pages}"
    )
    assert rerun_pages <= full_run_pages / 2
    emitted = {
        m["record"]["jobId"]
        for m in killed
        if m["type"] == "RECORD" and m["stream"] == "jobs"
    }
    emitted |= set(Output.parse(rerun.stdout).keys("jobs", "jobId"))
    assert emitted == set(current_jobs(server))


# --- must show 3: a server that ignores orderBy ---------------------------------


def test_a_server_ignoring_order_by_ends_the_run_on_one_line(sandbox, tmp_path):
    server = sandbox(v1_jobs=250, ignore_order_by=True)
    bookmark = "2024-06-01T00:00:00+00:00"
    state = {
        "bookmarks": {
            "jobs": {
                "replication_key": "lastUpdatedAt",
                "replication_key_value": bookmark,
            }
        }
    }
    state_path = tmp_path / "state.json"
    state_path.write_text(json.dumps(state))
    run = run_cli(
        "--state", str(state_path), config=v1_config(server), tmp_path=tmp_path
    )
    assert run.returncode == 1
    line = run.last_stderr_line
    assert line.startswith("tap-analytics: error: stream 'jobs': ")
    assert "not return jobs in lastUpdatedAt order" in line
    assert "/v1/jobs" in line
    # What was emitted before the failure (the stream synced first) is whole,
    # and no STATE moved the bookmark past a job that was not emitted.
    out = Output.parse(run.stdout)
    assert sorted(out.keys("connections", "connectionId")) == sorted(
        c["connectionId"] for c in server.dataset["v1"]["connections"]
    )
    assert "jobs" in out.schemas
    assert out.records.get("jobs", []) == []
    assert out.states
    assert all(s["bookmarks"]["jobs"] == state["bookmarks"]["jobs"] for s in out.states)


# --- the sandbox's live mode itself -------------------------------------------------


def _v1_session(server: SandboxServer) -> requests.Session:
    token = requests.post(
        f"{server.base_url}/token",
        data={
            "grant_type": "client_credentials",
            "client_id": server.config.client_id,
            "client_secret": server.config.client_secret,
        },
        timeout=10,
    ).json()["access_token"]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def test_live_mode_changes_jobs_above_all_others_until_frozen(sandbox):
    server = sandbox(v1_jobs=500, live_moves_per_page=4, live_adds_per_page=2)
    before = current_jobs(server)
    session = _v1_session(server)
    url = f"{server.base_url}/v1/jobs"
    page = session.get(url, params={"limit": "10", "orderBy": "updatedAt|ASC"}).json()
    after = current_jobs(server)
    moved = {job for job in before if before[job] != after[job]}
    added = after.keys() - before.keys()
    assert len(moved) == 4
    assert len(added) == 2
    # one new instant, above every job before, written without seconds
    (new_instant,) = {after[job] for job in moved | added}
    assert new_instant > max(before.values())
    raw = {j["jobId"]: j["lastUpdatedAt"] for j in server.dataset["v1"]["jobs"]}
    assert all(len(raw[job]) == len("2024-01-01T00:00Z") for job in moved | added)
    assert len(page["data"]) == 10

    # the ordered view stays sorted and complete; the changed jobs come last
    walked = []
    offset = 0
    server.freeze()
    while True:
        body = session.get(
            url,
            params={"limit": "100", "offset": str(offset), "orderBy": "updatedAt|ASC"},
        ).json()
        walked += body["data"]
        offset += 100
        if not body.get("next"):
            break
    assert current_jobs(server) == after  # frozen: serving changed nothing
    moments = [instant(j["lastUpdatedAt"]) for j in walked]
    assert moments == sorted(moments)
    assert {j["jobId"] for j in walked} == after.keys()
    assert {j["jobId"] for j in walked[-6:]} == moved | added

    # and the read-back over HTTP is the current version too
    served = requests.get(f"{server.base_url}/_sandbox/dataset", timeout=10).json()
    assert served["v1"]["jobs"] == server.dataset["v1"]["jobs"]


def test_jobs_move_between_runs_by_method_and_control_endpoint(sandbox):
    server = sandbox(v1_jobs=300)
    before = current_jobs(server)
    assert current_jobs(server) == before  # not live: nothing changes by itself
    moved = server.move_jobs(25)
    answer = requests.post(
        f"{server.base_url}/_sandbox/move-jobs", params={"count": 5}, timeout=10
    )
    assert answer.status_code == 200
    moved += answer.json()["moved"]
    after = current_jobs(server)
    assert len(set(moved)) == 30
    assert {job for job in before if before[job] != after[job]} == set(moved)
    assert after.keys() == before.keys()
    served = requests.get(f"{server.base_url}/_sandbox/dataset", timeout=10).json()
    assert {
        j["jobId"]: instant(j["lastUpdatedAt"]) for j in served["v1"]["jobs"]
    } == after
    frozen = requests.post(f"{server.base_url}/_sandbox/freeze", timeout=10)
    assert frozen.json() == {"frozen": True}


def test_live_mode_is_deterministic_with_the_seed(sandbox):
    datasets = []
    for _ in range(2):
        server = sandbox(v1_jobs=200, live_moves_per_page=3, live_adds_per_page=1)
        # Serial: how many pages concurrent windows ask depends on timing.
        sync(v1_config(server, page_size=20, max_concurrent_requests=1))
        server.move_jobs(10)
        datasets.append(server.dataset["v1"]["jobs"])
    assert datasets[0] == datasets[1]


# --- the overlap: a job received last changes before the next page -------------


def rereads(queries: list[dict[str, list[str]]]) -> int:
    """Requests that read an instant again: the same ``updatedAtStart`` as the
    request before, at no greater offset (a tie group paged on moves forward)."""
    sent = keysets(queries)
    return sum(
        later[0] == earlier[0] and later[1] <= earlier[1]
        for earlier, later in itertools.pairwise(sent)
    )


def test_a_shifted_tie_group_is_read_again_and_nothing_is_lost(sandbox):
    # Few jobs, many moving on every page (serial, seeded: deterministic): the
    # job received last changes before the next page, which offset k would skip.
    server = sandbox(v1_jobs=100, live_moves_per_page=6)
    config = v1_config(server, page_size=10, max_concurrent_requests=1)
    first = sync(config)
    queries = jobs_requests(server)
    server.freeze()
    second = sync(config, state=first.final_state)

    assert rereads(queries) > 0  # the overlap saw a shift and read it again
    versions = [(j["jobId"], j["lastUpdatedAt"]) for j in first.records["jobs"]]
    assert len(versions) == len(set(versions))  # nothing emitted twice
    emitted = last_versions(first.records["jobs"], second.records.get("jobs", []))
    assert emitted == current_jobs(server)

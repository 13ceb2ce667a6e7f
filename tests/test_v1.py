"""Family v1 against the sandbox over real HTTP (issues 3 and 16)."""

from __future__ import annotations

import datetime
import itertools
import json
import logging
import math
import re
from typing import TYPE_CHECKING, Any

import pytest

from tap_analytics.tap import TapAnalytics
from tests.tap_runner import run_cli, sync, v1_config

if TYPE_CHECKING:
    from tap_analytics.sandbox import SandboxServer
    from tap_analytics.sandbox.app import RequestRecord

V1_KEYS = {"jobs": "jobId", "connections": "connectionId", "workspaces": "workspaceId"}
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")
MAX_LIMIT = 100  # the real server's largest `limit` (API.md "The real server")


def instant(value: str) -> datetime.datetime:
    """Parse the sandbox's timestamps independently of the tap's parser."""
    for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%MZ"):
        try:
            return datetime.datetime.strptime(value, fmt).replace(tzinfo=datetime.UTC)
        except ValueError:
            continue
    raise AssertionError(f"unexpected sandbox timestamp {value!r}")


def version(job: dict[str, Any]) -> tuple[str | None, str | None]:
    """What a warehouse sees of a job's state: its time (None until it ended, as
    RFC 3339) and its status, from a sandbox record or an emitted one."""
    raw = job.get("lastUpdatedAt")
    if raw is None:
        return None, job["status"]
    moment = instant(raw) if raw.endswith("Z") else datetime.datetime.fromisoformat(raw)
    return moment.isoformat(), job["status"]


def micros(moment: datetime.datetime) -> int:
    """An instant as the sandbox's hidden update times count: microseconds."""
    return round(moment.timestamp() * 1_000_000)


def jobs_at_or_after(server: SandboxServer, moment: datetime.datetime) -> list[int]:
    """The jobIds the server lists for ``updatedAtStart=moment``: it filters by its
    hidden update time, so jobs without a visible time are among them."""
    times = server.update_times()
    return sorted(job for job, at in times.items() if at >= micros(moment))


def keysets(
    queries: list[dict[str, list[str]]],
) -> list[tuple[str | None, int, int]]:
    """(updatedAtStart as an instant, offset, limit) of each jobs request."""
    return [
        (
            datetime.datetime.fromisoformat(q["updatedAtStart"][0]).isoformat()
            if "updatedAtStart" in q
            else None,
            int(q["offset"][0]),
            int(q["limit"][0]),
        )
        for q in queries
    ]


def expected_keysets(
    emitted: list[dict[str, str]],
    page_size: int,
    first: str | None = None,
) -> list[tuple[str | None, int, int]]:
    """Keyset paging as issue 10 states it, for jobs that all have a time, from the
    jobs in the order emitted, with one job of overlap: page n+1 starts at the
    lastUpdatedAt of page n's last job, skipping the jobs already received at
    exactly that instant but the last one (asked again, to check that the group did
    not shift), and asks one job more than ``page_size`` (never more than 100):
    (updatedAtStart, offset, limit) of each request."""
    limit = min(page_size + 1, MAX_LIMIT)
    expected: list[tuple[str | None, int, int]] = [(first, 0, page_size)]
    # A request follows every full page: a page shorter than its limit ends.
    for end in range(page_size, len(emitted) + 1, limit - 1):
        last = datetime.datetime.fromisoformat(emitted[end - 1]["lastUpdatedAt"])
        ties = sum(
            datetime.datetime.fromisoformat(job["lastUpdatedAt"]) == last
            for job in emitted[:end]
        )
        expected.append((last.isoformat(), ties - 1, limit))
    return expected


def jobs_pages(server: SandboxServer) -> list[RequestRecord]:
    return [r for r in server.requests if r["path"] == "/v1/jobs"]


def assert_keyset_pages(server: SandboxServer, page_size: int) -> int:
    """The jobs requests of one serial sync of a list that did not change.

    Each page after the first asks one job more than ``page_size`` (at most 100)
    and starts with a job served before (the overlap); every page but the last is
    full and the last is short, so no request is wasted. Returns the jobs served
    again beyond the overlaps: at most one per job without a time, since a job
    without a time just before the first job of a page's last second may or may
    not be listed from that second on, and is counted as not (read again, never
    skipped).
    """
    pages = jobs_pages(server)
    assert [page["status"] for page in pages] == [200] * len(pages)
    limits = [int(page["query"]["limit"][0]) for page in pages]
    assert limits == [page_size] + [min(page_size + 1, MAX_LIMIT)] * (len(pages) - 1)
    sizes = [len(page["served"]) for page in pages]
    assert sizes[:-1] == limits[:-1]  # full pages ...
    assert sizes[-1] < limits[-1]  # ... then the short one that ends the list
    seen: set[int] = set()
    for before, page in itertools.pairwise(pages):
        seen.update(job for job, _ in before["served"])
        assert page["served"][0][0] in seen, page["query"]  # the overlap
    served = [job for page in pages for job, _ in page["served"]]
    again = len(served) - len(set(served)) - (len(pages) - 1)
    untimed = {job for page in pages for job, at in page["served"] if at is None}
    assert 0 <= again <= len(untimed)
    return again


def test_discover_lists_exactly_the_v1_streams(sandbox, tmp_path):
    server = sandbox()
    run = run_cli("--discover", config=v1_config(server), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    catalog = {s["tap_stream_id"]: s for s in json.loads(run.stdout)["streams"]}

    assert set(catalog) == set(V1_KEYS)
    for stream, key in V1_KEYS.items():
        assert catalog[stream]["key_properties"] == [key]
    jobs = catalog["jobs"]
    assert jobs["replication_key"] == "lastUpdatedAt"
    assert jobs["replication_method"] == "INCREMENTAL"
    props = jobs["schema"]["properties"]
    assert props["jobId"]["type"] == ["integer"]
    assert props["lastUpdatedAt"]["format"] == "date-time"
    for nullable in (
        "lastUpdatedAt",  # null until the job ends (API.md "The real server")
        "bytesSynced",
        "connectionId",
        "duration",
        "jobType",
        "rowsSynced",
        "startTime",
        "status",
    ):
        assert "null" in props[nullable]["type"], nullable
    connection = catalog["connections"]["schema"]["properties"]
    assert "null" in connection["schedule"]["type"]
    assert "null" in connection["tags"]["type"]
    assert connection["connectionId"]["type"] == ["string"]
    # what the real server sends beyond the source document (API.md)
    assert connection["configurations"]["type"] == ["object", "null"]
    assert connection["statusReason"]["type"] == ["string", "null"]
    # the documented fields only: undocumented ones join the schema at sync time
    assert not any("extra_note" in s["schema"]["properties"] for s in catalog.values())
    # no request is needed to describe the streams
    assert server.requests == []


def test_about_documents_every_setting(tmp_path):
    run = run_cli("--about", "--format", "markdown")
    assert run.returncode == 0, run.stderr
    rows = {
        line.split("|")[1].strip(): line.split("|")[4].strip()
        for line in run.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| Setting")
    }
    for setting in TapAnalytics.config_jsonschema["properties"]:
        assert rows.get(setting), f"--about has no description for {setting}"


@pytest.mark.parametrize(
    ("page_size", "problem"),
    [
        (500, "must be at most 100"),
        (101, "must be at most 100"),
        (0, "must be at least 1"),
    ],
)
def test_a_page_size_outside_1_to_100_is_a_one_line_error(
    sandbox, tmp_path, page_size, problem
):
    server = sandbox()
    run = run_cli(config=v1_config(server, page_size=page_size), tmp_path=tmp_path)
    assert run.returncode == 1
    assert (
        run.last_stderr_line == f"tap-analytics: error: setting 'page_size' {problem}"
    )
    assert "Traceback" not in run.stderr
    assert server.requests == []  # refused before any request


def list_requests(count: int, cursor_shape: str, end_marker: str) -> int:
    """Requests API.md's rules cost for a list of ``count`` records: the first
    asks 100; a page shorter than the ``limit`` of its request ends the list (a URL
    carries its limit, a token does not), so do an end marker and an empty page."""
    full, rest = divmod(count, 100)
    if end_marker != "real":  # older servers: the page that reaches the end says so
        return max(1, full + (rest > 0))
    if cursor_shape == "url" or count < 100:
        return full + 1  # the short (maybe empty) page ends the list
    return full + (rest > 0) + 1  # a token is followed to the empty page


# Serial, and with default settings (8 concurrent requests): a list of a handful
# of pages is read as one window, request for request as a serial read (windows
# start only after WINDOW_PAGES full pages), so the exact requests hold for both.
@pytest.mark.parametrize("workers", [1, 8])
@pytest.mark.parametrize("cursor_shape", ["url", "token"])
@pytest.mark.parametrize(
    ("jobs", "page_size", "end_marker", "connections", "workspaces"),
    [
        (250, 100, "real", 450, 45),
        (300, 100, "absent", 400, 7),
        (7, 3, "empty", 120, 100),
        (0, 100, "null", 120, 7),
    ],
)
def test_full_sync_emits_exactly_the_dataset(
    sandbox, cursor_shape, jobs, page_size, end_marker, connections, workspaces, workers
):
    server = sandbox(
        v1_jobs=jobs,
        v1_connections=connections,
        v1_workspaces=workspaces,
        cursor_shape=cursor_shape,
        end_marker=end_marker,
        extra_field="undocumentedField",
    )
    out = sync(v1_config(server, page_size=page_size, max_concurrent_requests=workers))

    for stream, key in V1_KEYS.items():
        expected = [record[key] for record in server.dataset["v1"][stream]]
        emitted = out.keys(stream, key)
        assert len(emitted) == len(expected), stream
        assert sorted(emitted) == sorted(expected), stream
        records = out.records.get(stream, [])
        assert all(r["undocumentedField"] for r in records), stream
        # announced as soon as a record brings it (not at all without records)
        announced = out.schemas[stream]["schema"]["properties"]
        assert ("undocumentedField" in announced) == bool(records), stream

    # A page shorter than `limit` ends the stream: no empty page, none wasted.
    assert_keyset_pages(server, page_size)
    assert {q["query"]["orderBy"][0] for q in jobs_pages(server)} == {"updatedAt|ASC"}
    for stream, count in (("connections", connections), ("workspaces", workspaces)):
        sent = [r for r in server.requests if r["path"] == f"/v1/{stream}"]
        assert len(sent) == list_requests(count, cursor_shape, end_marker), stream
        assert sent[0]["query"] == {"limit": ["100"]}  # the server's default is 20
    # one token for the whole run, not one per stream or request
    assert len([r for r in server.requests if r["path"] == "/token"]) == 1


@pytest.mark.parametrize(
    ("connections", "workspaces", "requests_each"),
    [(450, 45, (5, 1)), (400, 100, (5, 2))],
)
def test_connections_and_workspaces_take_ceil_n_over_100_requests(
    sandbox, connections, workspaces, requests_each
):
    # Pages of 100 (the server pages by 20 unless asked), following `next` as
    # given, until a page shorter than 100: 450 -> 5; 400 -> 4 and 1 empty.
    server = sandbox(v1_jobs=0, v1_connections=connections, v1_workspaces=workspaces)
    out = sync(v1_config(server))
    for stream in ("connections", "workspaces"):
        key = V1_KEYS[stream]
        assert sorted(out.keys(stream, key)) == sorted(
            r[key] for r in server.dataset["v1"][stream]
        )
    sent = {
        stream: [r["query"] for r in server.requests if r["path"] == f"/v1/{stream}"]
        for stream in ("connections", "workspaces")
    }
    assert (len(sent["connections"]), len(sent["workspaces"])) == requests_each
    assert sent["connections"] == [
        {"limit": ["100"], **({"offset": [str(100 * n)]} if n else {})}
        for n in range(requests_each[0])
    ]


def test_jobs_that_have_not_ended_are_emitted_as_they_are(sandbox, caplog):
    # The real server gives a pending job no lastUpdatedAt and a running or
    # incomplete one a null one: they are emitted as such, never move the
    # bookmark, and the SDK does not warn about each of them.
    server = sandbox(v1_jobs=2_000)
    served = {job["jobId"]: job for job in server.dataset["v1"]["jobs"]}
    untimed = {job for job, record in served.items() if "lastUpdatedAt" not in record}
    nulls = {
        job for job, record in served.items() if record.get("lastUpdatedAt", 0) is None
    }
    assert {served[job]["status"] for job in untimed} == {"pending"}
    assert {served[job]["status"] for job in nulls} == {"running", "incomplete"}
    assert 0.08 * len(served) < len(untimed | nulls) < 0.15 * len(served)
    with caplog.at_level(logging.WARNING):
        out = sync(v1_config(server, max_concurrent_requests=1))

    emitted = {job["jobId"]: job for job in out.records["jobs"]}
    assert len(out.records["jobs"]) == len(served) == len(emitted)
    assert {job: version(record) for job, record in emitted.items()} == {
        job: version(record) for job, record in served.items()
    }
    assert all(emitted[job]["lastUpdatedAt"] is None for job in untimed | nulls)
    assert all(emitted[job]["duration"] is None for job in untimed)  # pending
    bookmarks = [
        s["bookmarks"]["jobs"]["replication_key_value"]
        for s in out.states
        if "replication_key_value" in s["bookmarks"].get("jobs", {})
    ]
    assert None not in bookmarks
    assert bookmarks == sorted(bookmarks, key=datetime.datetime.fromisoformat)
    latest = max(
        instant(r["lastUpdatedAt"]) for r in served.values() if r.get("lastUpdatedAt")
    )
    assert bookmarks[-1] == latest.isoformat()
    assert "replication value is null" not in caplog.text


def test_timestamps_are_parsed_leniently_and_emitted_as_rfc3339(sandbox):
    server = sandbox(v1_jobs=250)
    raw = {
        job["jobId"]: job.get("lastUpdatedAt") for job in server.dataset["v1"]["jobs"]
    }
    assert any(re.fullmatch(r".*T\d\d:\d\dZ", value or "") for value in raw.values())

    out = sync(v1_config(server))
    for job in out.records["jobs"]:
        if raw[job["jobId"]] is None:
            assert job["lastUpdatedAt"] is None
            continue
        assert RFC3339_UTC.match(job["lastUpdatedAt"]), job["lastUpdatedAt"]
        emitted = datetime.datetime.fromisoformat(job["lastUpdatedAt"])
        assert emitted == instant(raw[job["jobId"]])


def test_rerun_with_final_state_re_emits_only_the_jobs_from_the_bookmark(sandbox):
    server = sandbox(v1_jobs=250)
    first = sync(v1_config(server))
    bookmark = first.final_state["bookmarks"]["jobs"]["replication_key_value"]
    jobs = server.dataset["v1"]["jobs"]
    latest = max(instant(j["lastUpdatedAt"]) for j in jobs if j.get("lastUpdatedAt"))
    assert datetime.datetime.fromisoformat(bookmark) == latest

    server.clear_requests()
    second = sync(v1_config(server), state=first.final_state)
    # The jobs at the bookmark's second, and any job without a time the server
    # sorts after it: what updatedAtStart=<bookmark> lists.
    assert sorted(second.keys("jobs", "jobId")) == jobs_at_or_after(server, latest)
    sent = [r["query"] for r in jobs_pages(server)]
    assert sent[0]["orderBy"] == ["updatedAt|ASC"]
    assert datetime.datetime.fromisoformat(sent[0]["updatedAtStart"][0]) == latest
    assert second.final_state["bookmarks"]["jobs"]["replication_key_value"] == bookmark


@pytest.mark.parametrize("start_date", ["2024-07-01T00:00:00Z", "2024-07-01T12:30Z"])
def test_start_date_yields_exactly_the_jobs_updated_since(sandbox, start_date):
    server = sandbox(v1_jobs=250)
    out = sync(v1_config(server, start_date=start_date))
    expected = jobs_at_or_after(server, instant(start_date))
    assert 0 < len(expected) < 250
    assert sorted(out.keys("jobs", "jobId")) == expected


@pytest.mark.parametrize("suffix", ["Z", "+00:00", ".000000+00:00"])
def test_a_bookmark_written_another_way_resumes_from_the_same_instant(sandbox, suffix):
    # `meltano state set` or a hand-written state may spell the instant otherwise.
    server = sandbox(v1_jobs=250)
    jobs = server.dataset["v1"]["jobs"]
    latest = max(instant(j["lastUpdatedAt"]) for j in jobs if j.get("lastUpdatedAt"))
    bookmark = latest.strftime("%Y-%m-%dT%H:%M:%S") + suffix
    state = {
        "bookmarks": {
            "jobs": {
                "replication_key": "lastUpdatedAt",
                "replication_key_value": bookmark,
            }
        }
    }
    out = sync(v1_config(server), state=state)
    assert sorted(out.keys("jobs", "jobId")) == jobs_at_or_after(server, latest)
    final = out.final_state["bookmarks"]["jobs"]["replication_key_value"]
    assert datetime.datetime.fromisoformat(final) == latest


def test_a_full_sync_of_20000_jobs_takes_ceil_n_over_99_requests(sandbox):
    # Serial: concurrent windows cost up to a page each (see tests/test_v1_windows).
    server = sandbox(v1_jobs=20_000)
    out = sync(v1_config(server, max_concurrent_requests=1))
    assert sorted(out.keys("jobs", "jobId")) == sorted(server.update_times())
    # 100 on the first page, then 99 new a page and one of overlap (limit 100),
    # up to the short page; the few jobs read again after a job without a time
    # cost their place on a page.
    again = assert_keyset_pages(server, 100)
    assert len(jobs_pages(server)) == (20_000 + again - 100) // 99 + 2
    assert len(jobs_pages(server)) == math.ceil(20_000 / 99)
    print(f"20,000 jobs: {len(jobs_pages(server))} requests, {again} jobs read again")
    # the bookmark advanced during the stream, not only at its end
    bookmarks = [
        s["bookmarks"]["jobs"].get("replication_key_value")
        for s in out.states
        if "jobs" in s.get("bookmarks", {})
    ]
    assert len(bookmarks) >= 20
    assert bookmarks == sorted(bookmarks, key=datetime.datetime.fromisoformat)

"""Family v1 against the sandbox over real HTTP (issue 3)."""

from __future__ import annotations

import datetime
import json
import math
import re

import pytest

from tap_analytics.tap import TapAnalytics
from tests.tap_runner import run_cli, sync, v1_config

V1_KEYS = {"jobs": "jobId", "connections": "connectionId", "workspaces": "workspaceId"}
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")


def instant(value: str) -> datetime.datetime:
    """Parse the sandbox's timestamps independently of the tap's parser."""
    for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%MZ"):
        try:
            return datetime.datetime.strptime(value, fmt).replace(tzinfo=datetime.UTC)
        except ValueError:
            continue
    raise AssertionError(f"unexpected sandbox timestamp {value!r}")


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
    first_page: int | None = None,
) -> list[tuple[str | None, int, int]]:
    """Keyset paging as issue 10 states it, from the jobs in the order emitted,
    with one job of overlap: page n+1 starts at the lastUpdatedAt of page n's last
    job, skipping the jobs already received at exactly that instant but the last
    one (asked again, to check that the group did not shift), and asks one job
    more than ``page_size``, the new jobs per page after the first.
    (updatedAtStart, offset, limit) of each request."""
    first_page = page_size if first_page is None else first_page
    expected: list[tuple[str | None, int, int]] = [(first, 0, first_page)]
    for end in range(first_page, len(emitted), page_size):
        last = datetime.datetime.fromisoformat(emitted[end - 1]["lastUpdatedAt"])
        ties = sum(
            datetime.datetime.fromisoformat(job["lastUpdatedAt"]) == last
            for job in emitted[:end]
        )
        expected.append((last.isoformat(), ties - 1, page_size + 1))
    return expected


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
    assert "null" not in props["lastUpdatedAt"]["type"]
    assert props["lastUpdatedAt"]["format"] == "date-time"
    for nullable in (
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


# Serial, and with default settings (8 concurrent requests): a list of a handful
# of pages is read as one window, request for request as a serial read (windows
# start only after WINDOW_PAGES full pages), so the exact requests hold for both.
@pytest.mark.parametrize("workers", [1, 8])
@pytest.mark.parametrize("cursor_shape", ["token", "url"])
@pytest.mark.parametrize(
    ("jobs", "page_size", "end_marker"),
    [(250, 100, "null"), (300, 100, "absent"), (7, 3, "empty"), (0, 100, "null")],
)
def test_full_sync_emits_exactly_the_dataset(
    sandbox, cursor_shape, jobs, page_size, end_marker, workers
):
    server = sandbox(
        v1_jobs=jobs,
        v1_connections=120,
        v1_workspaces=7,
        cursor_page_size=50 if jobs else 7,
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

    job_pages = [r["query"] for r in server.requests if r["path"] == "/v1/jobs"]
    # a page shorter than `limit`, or the end marker, ends the stream: no empty page
    assert len(job_pages) == max(1, math.ceil(jobs / page_size))
    assert keysets(job_pages) == expected_keysets(
        out.records.get("jobs", []), page_size
    )
    # the first page asks page_size jobs, the next ones one more (the overlap)
    assert [q["limit"][0] for q in job_pages[:1]] == [str(page_size)]
    assert {q["limit"][0] for q in job_pages[1:]} <= {str(page_size + 1)}
    assert {q["orderBy"][0] for q in job_pages} == {"updatedAt|ASC"}
    # one token for the whole run, not one per stream or request
    assert len([r for r in server.requests if r["path"] == "/token"]) == 1


def test_timestamps_are_parsed_leniently_and_emitted_as_rfc3339(sandbox):
    server = sandbox(v1_jobs=250)
    raw = {job["jobId"]: job["lastUpdatedAt"] for job in server.dataset["v1"]["jobs"]}
    assert any(re.fullmatch(r".*T\d\d:\d\dZ", value) for value in raw.values())

    out = sync(v1_config(server))
    for job in out.records["jobs"]:
        assert RFC3339_UTC.match(job["lastUpdatedAt"]), job["lastUpdatedAt"]
        emitted = datetime.datetime.fromisoformat(job["lastUpdatedAt"])
        assert emitted == instant(raw[job["jobId"]])


def test_rerun_with_final_state_re_emits_only_the_bookmarked_jobs(sandbox):
    server = sandbox(v1_jobs=250)
    first = sync(v1_config(server))
    bookmark = first.final_state["bookmarks"]["jobs"]["replication_key_value"]
    latest = max(instant(j["lastUpdatedAt"]) for j in server.dataset["v1"]["jobs"])
    assert datetime.datetime.fromisoformat(bookmark) == latest

    server.clear_requests()
    second = sync(v1_config(server), state=first.final_state)
    at_bookmark = sorted(
        j["jobId"]
        for j in server.dataset["v1"]["jobs"]
        if instant(j["lastUpdatedAt"]) == latest
    )
    assert sorted(second.keys("jobs", "jobId")) == at_bookmark
    sent = [r["query"] for r in server.requests if r["path"] == "/v1/jobs"]
    assert sent[0]["orderBy"] == ["updatedAt|ASC"]
    assert datetime.datetime.fromisoformat(sent[0]["updatedAtStart"][0]) == latest
    assert second.final_state["bookmarks"]["jobs"]["replication_key_value"] == bookmark


@pytest.mark.parametrize("start_date", ["2024-07-01T00:00:00Z", "2024-07-01T12:30Z"])
def test_start_date_yields_exactly_the_jobs_updated_since(sandbox, start_date):
    server = sandbox(v1_jobs=250)
    out = sync(v1_config(server, start_date=start_date))
    start = instant(start_date)
    expected = sorted(
        j["jobId"]
        for j in server.dataset["v1"]["jobs"]
        if instant(j["lastUpdatedAt"]) >= start
    )
    assert 0 < len(expected) < 250
    assert sorted(out.keys("jobs", "jobId")) == expected


def test_a_server_cap_on_limit_does_not_end_the_stream_early(sandbox):
    server = sandbox(v1_jobs=250, max_limit=60)
    out = sync(v1_config(server, page_size=100))
    expected = sorted(j["jobId"] for j in server.dataset["v1"]["jobs"])
    assert sorted(out.keys("jobs", "jobId")) == expected
    queries = [r["query"] for r in server.requests if r["path"] == "/v1/jobs"]
    # pages of the server's size, none lost: 60 jobs on the first page (asked
    # 100), then 59 new ones and the overlap (asked 60, the cap)
    paged = expected_keysets(out.records["jobs"], 59, first_page=60)
    assert keysets(queries) == [
        (since, offset, 100 if number == 0 else 60)
        for number, (since, offset, _) in enumerate(paged)
    ]
    assert len(queries) == 1 + math.ceil((250 - 60) / 59)


@pytest.mark.parametrize("suffix", ["Z", "+00:00", ".000000+00:00"])
def test_a_bookmark_written_another_way_resumes_from_the_same_instant(sandbox, suffix):
    # `meltano state set` or a hand-written state may spell the instant otherwise.
    server = sandbox(v1_jobs=250)
    jobs = server.dataset["v1"]["jobs"]
    latest = max(instant(j["lastUpdatedAt"]) for j in jobs)
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
    expected = sorted(j["jobId"] for j in jobs if instant(j["lastUpdatedAt"]) == latest)
    assert sorted(out.keys("jobs", "jobId")) == expected
    final = out.final_state["bookmarks"]["jobs"]["replication_key_value"]
    assert datetime.datetime.fromisoformat(final) == latest

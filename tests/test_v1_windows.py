"""v1 ``jobs`` in concurrent time windows (issue 13), against the sandbox."""

from __future__ import annotations

import collections
import datetime
import json
import logging
import math

from tests.tap_runner import Output, run_cli, sync, v1_config
from tests.test_v1 import instant
from tests.test_v1_live import current_jobs, jobs_requests, paged_in_windows

SPLIT = "Split a window of jobs"


def test_serial_and_windowed_runs_emit_the_same_records_and_bookmark(sandbox, caplog):
    # Skewed data, as real data is: 30,000 jobs over a year, then 3,000 of them
    # moved within the hour above them. 10 ms per request: pages take longer to
    # arrive than to write, so the default settings read in windows.
    server = sandbox(v1_jobs=30_000, latency_ms=10)
    server.move_jobs(3_000)
    serial = sync(v1_config(server, max_concurrent_requests=1))
    assert not paged_in_windows(server)

    server.clear_requests()
    with caplog.at_level(logging.DEBUG, logger="tap-analytics.jobs"):
        windowed = sync(v1_config(server))
    assert paged_in_windows(server)
    splits = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith(SPLIT)
    ]
    assert len(splits) >= 2, splits  # window 0, and a window that turned out large
    print(f"{len(splits)} splits, {len(jobs_requests(server))} jobs requests")

    def multiset(records: list[dict]) -> collections.Counter[str]:
        return collections.Counter(json.dumps(r, sort_keys=True) for r in records)

    for stream in ("jobs", "connections", "workspaces"):
        assert multiset(windowed.records[stream]) == multiset(serial.records[stream])
    assert sorted(r["jobId"] for r in windowed.records["jobs"]) == sorted(
        current_jobs(server)
    )
    bookmark = windowed.final_state["bookmarks"]["jobs"]
    assert bookmark == serial.final_state["bookmarks"]["jobs"]
    # The bookmark advanced during the stream, never backwards.
    marks = [
        s["bookmarks"]["jobs"]["replication_key_value"]
        for s in windowed.states
        if s.get("bookmarks", {}).get("jobs", {}).get("replication_key_value")
    ]
    assert len(marks) >= 30
    assert marks == sorted(marks, key=datetime.datetime.fromisoformat)

    # A window costs at most one page beyond its jobs: close to the pages needed.
    needed = math.ceil(len(current_jobs(server)) / 100)
    assert needed < len(jobs_requests(server)) <= 1.1 * needed
    # connections and workspaces were fetched while jobs was being written
    paths = [r["path"] for r in server.requests]
    last_jobs = max(i for i, path in enumerate(paths) if path == "/v1/jobs")
    assert paths.index("/v1/connections") < last_jobs


def test_a_window_that_fails_ends_the_run_after_the_windows_before_it(
    sandbox, tmp_path
):
    # The 40th jobs request (a window past window 0) answers 403: fatal. The
    # windows before it are written whole, in order, and nothing of the later
    # ones; the last STATE stands at a job written, and a rerun from it completes.
    server = sandbox(
        v1_jobs=20_000,
        latency_ms=10,
        scripted_faults=[{"path": "/v1/jobs", "status": 403, "after": 39}],
    )
    config = v1_config(server)
    run = run_cli(config=config, tmp_path=tmp_path)
    assert run.returncode == 1
    assert run.last_stderr_line.startswith("tap-analytics: error: ")
    assert "403" in run.last_stderr_line
    assert "/v1/jobs" in run.last_stderr_line
    assert paged_in_windows(server)

    out = Output.parse(run.stdout)
    written = [
        datetime.datetime.fromisoformat(job["lastUpdatedAt"])
        for job in out.records["jobs"]
    ]
    assert written == sorted(written)
    everything = {
        job["jobId"]: instant(job["lastUpdatedAt"])
        for job in server.dataset["v1"]["jobs"]
    }
    # Every job below the last one written, none above it (ties: some of them).
    last = written[-1]
    assert 0 < len(written) < len(everything)
    below = {job for job, at in everything.items() if at < last}
    at_last = {job for job, at in everything.items() if at == last}
    assert below <= set(out.keys("jobs", "jobId")) <= below | at_last
    bookmark = out.final_state["bookmarks"]["jobs"]["replication_key_value"]
    assert datetime.datetime.fromisoformat(bookmark) <= last

    rerun = sync(config, state=out.final_state)
    emitted = set(out.keys("jobs", "jobId")) | set(rerun.keys("jobs", "jobId"))
    assert emitted == set(everything)

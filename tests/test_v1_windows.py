"""v1 ``jobs`` in concurrent time windows (issue 13), against the sandbox."""

from __future__ import annotations

import collections
import datetime
import itertools
import json
import logging
import math

from tap_analytics.retry import longest_policy_wait
from tests.tap_runner import Output, run_cli, sync, v1_config
from tests.test_v1 import instant, micros
from tests.test_v1_live import current_jobs, jobs_requests, paged_in_windows

SPLIT = "Split a window of jobs"


def test_serial_and_windowed_runs_emit_the_same_records_and_bookmark(sandbox, caplog):
    # Skewed data, as real data is: 30,000 jobs over a year, then 3,000 of them
    # moved within the hour above them. 10 ms per request: the tap waits for every
    # page, so the default settings read in windows.
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
    # Window 0 at least. Whether a later window turns out large enough to split
    # again depends on where the planned bounds (up to now: the wall clock) fall
    # around the dense hour, so it is not asserted.
    assert splits, splits
    print(f"{len(splits)} splits, {len(jobs_requests(server))} jobs requests")

    def multiset(records: list[dict]) -> collections.Counter[str]:
        return collections.Counter(json.dumps(r, sort_keys=True) for r in records)

    # Every job once, in its current version, as the serial run emits them: a job
    # without a time near a window's end is emitted by that window or the next,
    # not both.
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

    # A window costs at most one page beyond its jobs: close to the pages needed
    # (99 new jobs a page, one of overlap).
    needed = math.ceil(len(current_jobs(server)) / 99)
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
        if job["lastUpdatedAt"] is not None
    ]
    assert written == sorted(written)
    jobs = server.dataset["v1"]["jobs"]
    timed = {
        job["jobId"]: instant(job["lastUpdatedAt"])
        for job in jobs
        if job.get("lastUpdatedAt")
    }
    # Every job the server sorts below the last time written was written (with
    # a time or not), and no job with a time above it.
    last = written[-1]
    ids = set(out.keys("jobs", "jobId"))
    assert 0 < len(ids) < len(jobs)
    below = {job for job, at in server.update_times().items() if at < micros(last)}
    assert below <= ids
    assert not {job for job, at in timed.items() if at > last} & ids
    bookmark = out.final_state["bookmarks"]["jobs"]["replication_key_value"]
    assert datetime.datetime.fromisoformat(bookmark) <= last

    rerun = sync(config, state=out.final_state)
    emitted = ids | set(rerun.keys("jobs", "jobId"))
    assert emitted == {job["jobId"] for job in jobs}


def test_load_shedding_makes_every_window_back_off_and_loses_nothing(sandbox):
    # The real server sheds load with a bare 429 (no Retry-After, no rate
    # headers): here on a fifth of the requests, at 20 ms each, windows reading
    # concurrently. Each shed pauses every thread for the retry policy's wait.
    factor = 0.2
    server = sandbox(v1_jobs=20_000, latency_ms=20, shed_rate=0.2)
    out = sync(v1_config(server, retry_backoff_factor=factor))
    assert paged_in_windows(server)
    assert sorted(out.keys("jobs", "jobId")) == sorted(current_jobs(server))
    for stream, key in (("connections", "connectionId"), ("workspaces", "workspaceId")):
        assert sorted(out.keys(stream, key)) == sorted(
            r[key] for r in server.dataset["v1"][stream]
        )

    sent = [r for r in server.requests if r["path"] != "/token"]
    shed = [r for r in sent if r["status"] == 429]
    jobs = [r for r in sent if r["path"] == "/v1/jobs"]
    answered = sum(r["status"] == 200 for r in jobs)
    needed = math.ceil(20_000 / 99)
    print(
        f"load shedding: {len(jobs)} jobs requests sent, {answered} answered, "
        f"{needed} pages needed; {len(shed)} of {len(sent)} requests shed"
    )
    # The 429s stay the server's share of what is sent: no retry storm, and no
    # more pages than windows cost without shedding.
    assert len(shed) <= 0.3 * len(sent)
    assert answered <= 1.1 * needed
    assert len(jobs) <= 1.1 * needed / (1 - 0.3)
    # Every thread backed off: after a shed is answered (20 ms after it arrived),
    # no request arrives for most of the wait, only those already on their way.
    quiet = 0
    for answer in shed:
        answered_at = answer["time"] + 0.02
        quiet += not [
            r for r in sent if answered_at + 0.04 <= r["time"] <= answered_at + 0.15
        ]
    assert quiet >= 0.9 * len(shed)


def test_requests_shed_at_once_pause_every_thread_once_not_for_minutes(sandbox):
    # 8 windows' requests in flight are shed by the same overload (bare 429s):
    # they count as one shed, not 8 in a row, and no pause is longer than the
    # retry policy's longest wait (factor * 4, the wait before the 3rd retry).
    factor = 0.05
    server = sandbox(
        v1_jobs=5_000,
        latency_ms=20,
        scripted_faults=[{"path": "/v1/jobs", "status": 429, "times": 8, "after": 20}],
    )
    out = sync(
        v1_config(server, retry_backoff_factor=factor, max_concurrent_requests=8)
    )
    assert paged_in_windows(server)
    assert sorted(out.keys("jobs", "jobId")) == sorted(current_jobs(server))

    sent = sorted(server.requests, key=lambda r: r["time"])
    shed = [r for r in sent if r["status"] == 429]
    assert len(shed) == 8
    # The premise: most of them arrived before the first one was answered.
    first_answered = shed[0]["time"] + 0.02
    at_once = sum(r["time"] < first_answered for r in shed)
    longest_gap = max(b["time"] - a["time"] for a, b in itertools.pairwise(sent))
    print(
        f"{at_once} of 8 shed at once; longest gap between requests {longest_gap:.3f} s"
    )
    assert at_once >= 4
    # A pause starts when a 429 is answered (20 ms after it arrived) and lasts
    # at most longest_policy_wait; a little more for the threads to wake up.
    assert longest_gap <= 0.02 + longest_policy_wait(factor) + 0.15

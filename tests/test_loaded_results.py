"""The loaded-results ledger of v3 job_results on its own: rules, STATE size, a year.

Narrow unit cases: the runs over HTTP are in tests/test_v3_incremental.py.
"""

from __future__ import annotations

import bisect
import datetime
import json
import math
import random
import uuid
from dataclasses import dataclass

import requests

from tap_analytics.loaded_results import LoadedResults, RunClock

T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
MINUTE = datetime.timedelta(minutes=1)
HOUR = datetime.timedelta(hours=1)
LOOKBACK = 30 * MINUTE


def iso(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def roundtrip(state: dict) -> dict:
    """The entry as the next run reads it: through JSON, like a STATE message."""
    loaded: dict = json.loads(json.dumps(state))
    return loaded


def test_a_job_listed_late_is_fetched_with_the_lookback_and_lost_without():
    # Run 1 starts at T0 and lists a job that finished then; a job that finished
    # 2 minutes earlier is listed only 4 minutes after it finished, after run 1.
    state: dict = {}
    run1 = LoadedResults(state, LOOKBACK)
    assert run1.wants("seen", iso(T0))
    run1.loaded("seen")
    run1.complete(run_started_at=T0)
    assert state["watermark"] == T0.isoformat()

    late = iso(T0 - 2 * MINUTE)
    assert LoadedResults(roundtrip(state), 5 * MINUTE).wants("late", late)
    # The control: a lookback shorter than the listing lag would lose it.
    assert not LoadedResults(roundtrip(state), 0 * MINUTE).wants("late", late)


def test_the_watermark_never_passes_the_run_start_nor_moves_back():
    state: dict = {}
    run = LoadedResults(state, LOOKBACK)
    # The run started at T0 (server Date) and, an hour later, listed a job that
    # had just finished: W stays at T0, or jobs missing from workflows listed at
    # T0 could fall behind it.
    run.wants("early", iso(T0 - HOUR))
    run.wants("later", iso(T0 + HOUR))
    run.complete(run_started_at=T0)
    assert state["watermark"] == T0.isoformat()

    again = LoadedResults(roundtrip(state), LOOKBACK)
    again.wants("old", iso(T0 - 3 * HOUR))  # the newest listed: older than W
    again.complete(run_started_at=T0 + 2 * HOUR)
    assert again.watermark == T0


def test_loaded_jobs_keep_only_listed_jobs_inside_the_lookback():
    state: dict = {}
    run = LoadedResults(state, LOOKBACK)
    jobs = {
        "newest": T0,  # so the watermark is T0
        "inside": T0 - 10 * MINUTE,
        "at-the-edge": T0 - LOOKBACK,
        "outside": T0 - LOOKBACK - MINUTE,
        "deleted": T0 - 5 * MINUTE,
    }
    for uid, finished in jobs.items():
        assert run.wants(uid, iso(finished))
        run.loaded(uid)
    assert "loaded_jobs" not in state  # held back until published
    run.publish()
    assert state["loaded_jobs"] == list(jobs)  # every one, in case of a kill
    run.complete(run_started_at=T0)
    assert state["loaded_jobs"] == ["at-the-edge", "deleted", "inside", "newest"]

    # Next run: "deleted" is no longer listed, so it goes; the others are
    # skipped, by their uid or by the watermark.
    state = roundtrip(state)
    nxt = LoadedResults(state, LOOKBACK)
    assert not any(
        nxt.wants(uid, iso(f)) for uid, f in jobs.items() if uid != "deleted"
    )
    nxt.complete(run_started_at=T0 + HOUR)
    assert state["loaded_jobs"] == ["at-the-edge", "inside", "newest"]
    assert nxt.size == 3


def test_a_job_without_a_usable_finish_time_is_fetched_every_run():
    state: dict = {}
    for _ in range(2):
        run = LoadedResults(state, LOOKBACK)
        for uid, finished in (("none", None), ("garbage", "soon"), ("number", 7)):
            assert run.wants(uid, finished)
            run.loaded(uid)
        run.complete(run_started_at=T0)
        state = roundtrip(state)
    assert state == {}


def test_a_workflow_to_retry_is_asked_again_from_when_it_was_first_skipped():
    day = 24 * HOUR
    state = {
        "watermark": T0.isoformat(),
        "retry_workflows": {"wf": (T0 - 2 * day).isoformat()},
        "retry_jobs": {"job": (T0 - 3 * day).isoformat()},
    }
    loaded = LoadedResults(roundtrip(state), LOOKBACK)
    # Before its since, the W of runs that read its list covered it.
    assert not loaded.wants("a", iso(T0 - 3 * day), workflow_uid="wf")
    assert loaded.wants("b", iso(T0 - day), workflow_uid="wf")
    assert not loaded.wants("c", iso(T0 - day), workflow_uid="other")
    assert loaded.wants("job", iso(T0 - 30 * day), workflow_uid="other")

    # Skipped again: the since it had stays; a job skipped now gets this run's
    # cutoff.
    entry = roundtrip(state)
    LoadedResults(entry, LOOKBACK).complete(
        T0, skipped_workflows=["wf"], skipped_jobs=["new"]
    )
    assert entry["retry_workflows"] == {"wf": (T0 - 2 * day).isoformat()}
    assert entry["retry_jobs"] == {"new": (T0 - LOOKBACK).isoformat()}
    # Read, or no longer listed: gone from the lists.
    entry = roundtrip(state)
    LoadedResults(entry, LOOKBACK).complete(T0)
    assert "retry_workflows" not in entry
    assert "retry_jobs" not in entry


def test_a_parent_answering_404_for_a_week_is_given_up():
    state = {
        "watermark": T0.isoformat(),
        "retry_jobs": {"j": (T0 - 7 * 24 * HOUR - MINUTE).isoformat()},
        "retry_workflows": {"w": (T0 - 6 * 24 * HOUR).isoformat()},
    }
    entry = roundtrip(state)
    given_up = LoadedResults(entry, LOOKBACK).complete(
        T0, skipped_workflows=["w"], skipped_jobs=["j"]
    )
    assert given_up == ["j"]
    assert "retry_jobs" not in entry
    assert list(entry["retry_workflows"]) == ["w"]


def test_the_run_clock_is_the_date_of_the_first_response():
    clock = RunClock()
    undated = requests.Response()
    clock.observe(undated)
    assert clock.started_at is None  # no Date: not the local clock, which may be ahead
    dated = requests.Response()
    dated.headers["Date"] = "Tue, 31 Dec 2024 23:59:30 GMT"
    clock.observe(dated)
    assert clock.started_at is None  # only the first response counts

    moment = datetime.datetime(2024, 12, 31, 23, 59, 30, tzinfo=datetime.UTC)
    clock = RunClock()
    clock.observe(dated)
    assert clock.started_at == moment
    clock = RunClock()
    dated.headers["Date"] = "Tue, 31 Dec 2024 23:59:30 -0000"  # naive when parsed
    clock.observe(dated)
    assert clock.started_at == moment


# --- a year of hourly runs -----------------------------------------------------------


@dataclass(frozen=True)
class Job:
    uid: str
    workflow: int
    finished: datetime.datetime
    listed: datetime.datetime  # finished + up to 5 minutes
    finish_time: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "finish_time", iso(self.finished))


def test_a_year_of_hourly_runs_keeps_state_small_and_fetches_each_job_once():
    """10 workflows, one successful job each per hour, listed up to 5 minutes
    after it finished; a run every hour that reads the workflows over 10 minutes
    (so a job can be missing from an early list and later than a job in a late
    one); every 97th run killed halfway. Each job is fetched exactly once, and
    after every completed run ``loaded_jobs`` holds exactly the listed jobs that
    finished from the watermark minus the lookback on."""
    rng = random.Random(18)
    workflows = 10
    hours = 366 * 24
    run_length = 10 * MINUTE
    second = datetime.timedelta(seconds=1)
    jobs: list[Job] = []
    for hour in range(hours + 1):
        for workflow in range(workflows):
            finished = T0 + hour * HOUR + rng.randrange(3600) * second
            lag = rng.randint(0, 300) * second
            uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            jobs.append(Job(uid, workflow, finished, finished + lag))
    jobs.sort(key=lambda job: job.finished)
    finish_times = [job.finished for job in jobs]
    fetched: dict[str, int] = {}
    state: dict = {}
    sizes: list[tuple[int, int]] = []  # (uids, bytes) after each completed run
    first = 0  # jobs before this index finished hours before any cutoff
    for run in range(1, hours + 1):
        started = T0 + run * HOUR + rng.randrange(600) * second
        ended = started + run_length
        killed = run % 97 == 0
        state = roundtrip(state)
        ledger = LoadedResults(state, LOOKBACK)
        if ledger.watermark is not None:
            # Jobs that finished 3 hours ago are not fed: they would be skipped.
            assert ledger.watermark - LOOKBACK > started - 3 * HOUR
        while jobs[first].finished < started - 3 * HOUR:
            first += 1
        last = bisect.bisect_right(finish_times, ended, lo=first)
        candidates = jobs[first:last]  # jobs after these are not listed yet
        candidates.sort(key=lambda job: job.workflow)  # the order a run reads
        listed: list[Job] = []
        for job in candidates:
            if killed and job.workflow >= workflows // 2:
                break
            if job.listed > started + run_length * job.workflow / workflows:
                continue  # not listed yet when its workflow was read
            listed.append(job)
            if ledger.wants(job.uid, job.finish_time):
                fetched[job.uid] = fetched.get(job.uid, 0) + 1
                ledger.loaded(job.uid)
        if killed:
            ledger.publish()  # the STATE written at the interrupt
            continue
        ledger.complete(run_started_at=started)
        assert ledger.watermark is not None
        cutoff = ledger.watermark - LOOKBACK
        inside = sorted(job.uid for job in listed if job.finished >= cutoff)
        assert state["loaded_jobs"] == inside
        # The bound: the jobs that finish between the cutoff and the run's end.
        window = (ended - cutoff) / HOUR
        assert len(inside) <= workflows * (math.ceil(window) + 1)
        sizes.append((len(inside), len(json.dumps(state))))

    due = {job.uid for job in jobs if job.listed <= started}
    assert due <= set(fetched)
    assert set(fetched.values()) == {1}
    assert all(size <= 40 * uids + 80 for uids, size in sizes)
    most = max(sizes)
    print(
        f"{len(sizes)} completed runs, {len(fetched)} jobs fetched once each; "
        f"STATE entry after the last run: {sizes[-1][1]} bytes ({sizes[-1][0]} "
        f"uids), largest {max(size for _, size in sizes)} bytes ({most[0]} uids)"
    )

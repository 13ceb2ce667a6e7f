"""Family v3 over time (issue 18): a run fetches only the results it has not loaded.

Every test talks HTTP to the sandbox, changes it between runs with
``advance_v3`` (running jobs finish, new jobs appear, each listed up to 5
minutes after its ``finish_time``) and counts the result pages asked from the
sandbox's request log.
"""

from __future__ import annotations

import datetime
import json
import math
import signal
import threading
from typing import TYPE_CHECKING, Any

import pytest

from tap_analytics import concurrency, loaded_results
from tap_analytics.tap import TapAnalytics
from tests.tap_runner import Output, run_cli, sync, v3_config
from tests.test_interrupts import RunningTap

if TYPE_CHECKING:
    from tap_analytics.sandbox import SandboxServer

ACCOUNT = {  # issue 18: 20 workflows x 30 jobs x 50 results, pages of 25
    "v3_workflows": 20,
    "v3_jobs_per_workflow": 30,
    "v3_results_per_job": 50,
    "v3_results_page_size": 25,
}


def successful(job: dict[str, Any]) -> bool:
    """API.md's filter, written out independently of the tap's code."""
    count = job["total_row_count"]
    return job["status"] == "finished" and count is not None and count > 0


def all_result_ids(server: SandboxServer) -> set[str]:
    data = server.dataset["v3"]
    return {
        item["job_result_id"]
        for job in data["jobs"]
        if successful(job)
        for item in data["job_results"][job["uid"]]
    }


def result_pages(server: SandboxServer) -> list[str]:
    """The job uid of every result page the sandbox was asked for, in order."""
    return [
        r["path"].split("/")[3]
        for r in server.requests
        if r["path"].endswith("/results")
    ]


def pages_of(server: SandboxServer, uids: set[str]) -> int:
    data = server.dataset["v3"]
    size = server.config.v3_results_page_size
    return sum(math.ceil(len(data["job_results"][uid]) / size) for uid in uids)


def instant(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value)


def entry(out: Output) -> dict[str, Any]:
    """The job_results entry of a run's last STATE."""
    state: dict[str, Any] = out.final_state["bookmarks"]["job_results"]
    return state


def test_a_run_asks_only_for_the_results_of_jobs_that_finished_since(sandbox):
    server = sandbox(**ACCOUNT)
    config = v3_config(server)
    data = server.dataset["v3"]
    ok = {job["uid"] for job in data["jobs"] if successful(job)}

    first = sync(config)
    assert sorted(result_pages(server)) == sorted(
        uid for uid in ok for _ in range(2)
    )  # 50 results: two pages each
    # The list of loaded jobs grows to hundreds in a first run; STATE messages
    # carry it only now and then: under 40 bytes per result written.
    results = len(first.records["job_results"])
    assert sum(len(json.dumps(state)) for state in first.states) < 40 * results
    watermark = instant(entry(first)["watermark"])

    server.clear_requests()
    changed = server.advance_v3(60, finish=10, add=20)
    new = set(changed["finished"]) | set(changed["added"])
    jobs = {job["uid"]: job for job in server.dataset["v3"]["jobs"]}
    late = [uid for uid in new if instant(jobs[uid]["finish_time"]) < watermark]
    # The premise: most of them finished before the newest job run 1 saw listed.
    assert len(late) >= 10, late

    second = sync(config, state=first.final_state)
    asked = result_pages(server)
    new_pages = pages_of(server, new)
    assert new_pages == 60
    assert len(asked) <= 1.2 * new_pages + 3
    assert set(asked) == new  # every one of them, nothing else
    assert sorted(second.keys("job_results", "job_result_id")) == sorted(
        item["job_result_id"] for uid in new for item in jobs_results(server, uid)
    )
    # jobs, successful_jobs and workflows stay full snapshots
    assert sorted(second.keys("jobs", "uid")) == sorted(jobs)
    assert len(second.keys("successful_jobs", "uid")) == len(ok) + 30
    # A STATE follows each job's results: a kill loses at most the job in flight.
    assert_state_after_each_job(second)

    server.clear_requests()
    third = sync(config, state=second.final_state)
    assert result_pages(server) == []
    assert third.records.get("job_results", []) == []
    assert len(third.keys("successful_jobs", "uid")) == len(ok) + 30

    union = {
        result
        for out in (first, second, third)
        for result in out.keys("job_results", "job_result_id")
    }
    assert union == all_result_ids(server)
    # The list in STATE holds the jobs inside the lookback, not the history.
    assert len(entry(third)["loaded_jobs"]) <= 31

    # Without state (Meltano's --full-refresh), every job's results again.
    server.clear_requests()
    fresh = sync(config)
    assert len(result_pages(server)) == 2 * (len(ok) + 30)
    assert set(fresh.keys("job_results", "job_result_id")) == union


def jobs_results(server: SandboxServer, uid: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = server.dataset["v3"]["job_results"][uid]
    return items


def assert_state_after_each_job(out: Output) -> None:
    """Each job's last result is followed by a STATE that lists the job."""
    pending: str | None = None
    for message in out.messages:
        if message["type"] == "RECORD" and message["stream"] == "job_results":
            job = message["record"]["job_uid"]
            assert pending in (None, job), f"no STATE after the results of {pending}"
            pending = job
        elif message["type"] == "STATE" and pending is not None:
            assert (
                pending in message["value"]["bookmarks"]["job_results"]["loaded_jobs"]
            )
            pending = None
    assert pending is None


@pytest.mark.parametrize(
    "date_header", [True, False], ids=["server-date", "no-date-header"]
)
def test_a_long_run_cannot_let_a_job_listed_late_fall_behind_its_watermark(
    sandbox, monkeypatch, date_header
):
    # A run reads workflows one after another for as long as results take. Jobs
    # that finish meanwhile in workflows it has already read are missing from
    # it, while later workflows list jobs that finished after them: a watermark
    # at the newest finish_time seen would pass them, and the next run would
    # never ask for their results. Without a Date header (a proxy that strips it)
    # the local clock, years ahead of the sandbox's, must not stand in for it.
    server = sandbox(**ACCOUNT, date_header=date_header)
    config = v3_config(server, max_concurrent_requests=1)
    workflows = [w["uid"] for w in server.dataset["v3"]["workflows"]]
    added: list[str] = []
    api = server._api
    list_jobs = api._v3_workflow_jobs

    def listing_while_hours_pass(workflow_uid: str) -> Any:
        # An hour passes (and 20 jobs finish) just before the 5th and the 15th
        # workflow's jobs are listed.
        if workflow_uid in (workflows[4], workflows[14]):
            added.extend(server.advance_v3(3600, add=20)["added"])
        return list_jobs(workflow_uid)

    monkeypatch.setattr(api, "_v3_workflow_jobs", listing_while_hours_pass)
    first = sync(config)
    monkeypatch.undo()

    emitted = set(first.keys("job_results", "job_uid"))
    jobs = {job["uid"]: job for job in server.dataset["v3"]["jobs"]}
    missed = [uid for uid in added if uid not in emitted]
    newest = max(instant(jobs[uid]["finish_time"]) for uid in added if uid in emitted)
    # The premise: run 1 missed jobs that finished more than the lookback (30
    # minutes) before the newest job it listed.
    assert any(
        instant(jobs[uid]["finish_time"]) < newest - datetime.timedelta(minutes=35)
        for uid in missed
    ), (missed, newest)

    server.clear_requests()
    second = sync(config, state=first.final_state)
    assert set(result_pages(server)) == set(missed)
    union = set(first.keys("job_results", "job_result_id")) | set(
        second.keys("job_results", "job_result_id")
    )
    assert union == all_result_ids(server)


def test_a_killed_run_resumes_without_fetching_again_what_it_wrote(sandbox, tmp_path):
    server = sandbox(**ACCOUNT, latency_ms=3)
    config = v3_config(server)
    data = server.dataset["v3"]
    ok = {job["uid"] for job in data["jobs"] if successful(job)}
    total = len(all_result_ids(server))

    tap = RunningTap(config, tmp_path)
    tap.wait_for_records("job_results", total // 2)
    tap.process.send_signal(signal.SIGKILL)
    tap.process.wait(timeout=10)
    tap._reader.join(5)
    # Whole lines only: SIGKILL may cut the last one.
    killed = Output.parse("".join(line for line in tap.lines if line.endswith("\n")))
    first_asked = result_pages(server)
    written = killed.keys("job_results", "job_result_id")
    assert 0 < len(written) < total
    last = entry(killed)
    loaded = set(last["loaded_jobs"])
    assert "watermark" not in last  # a run that did not complete moves nothing

    server.clear_requests()
    rerun = sync(config, state=killed.final_state)
    asked = result_pages(server)
    # Exactly the jobs the last STATE does not list, each from its first page.
    assert set(asked) == ok - loaded
    assert len(asked) == pages_of(server, ok - loaded)
    assert set(written) | set(rerun.keys("job_results", "job_result_id")) == set(
        all_result_ids(server)
    )

    # What was asked again: jobs the killed run had asked for, not in its last
    # STATE. They are the jobs in flight: written after that STATE (its
    # writing is held back by at most as many results as it lists uids),
    # partly written, or fetched ahead by the pool and not written at all.
    again = (set(first_asked) & set(asked)) - loaded
    counts = {uid: len(ids) for uid, ids in jobs_by_uid(killed).items()}
    after_state = {uid for uid, n in counts.items() if n == 50} - loaded
    partly = {uid for uid, n in counts.items() if n < 50}
    # A STATE is held back while fewer results were written since the last one
    # than it lists uids (49 per job more than the job it adds), plus the job
    # whose STATE the kill came before.
    assert 49 * (len(after_state) - 1) < len(loaded)
    assert partly <= again
    refetched_pages = sum(1 for uid in asked if uid in set(first_asked))
    report = {
        "records written before the kill": len(written),
        "jobs in the last STATE": len(loaded),
        "jobs written after it": len(after_state),
        "jobs partly written": len(partly),
        "jobs asked again": len(again),
        "pages asked again": refetched_pages,
        "pages of the first run": len(first_asked),
        "pages of the rerun": len(asked),
    }
    print(json.dumps(report))
    assert again <= after_state | partly | (set(first_asked) - set(counts))
    # Pages fetched ahead are bounded by the pool (PAGE_BUFFER, plus the one the
    # main thread waits for); a job written into stdout's unflushed buffer is
    # lost with it (under 8 KB: less than a job).
    written_since = len(after_state) + len(partly) + 1
    assert refetched_pages <= 2 * written_since + concurrency.PAGE_BUFFER + 1


def test_an_interrupted_run_keeps_the_loaded_jobs_and_claims_none_unwritten(
    sandbox, tmp_path
):
    server = sandbox(**ACCOUNT, latency_ms=3)
    config = v3_config(server)
    tap = RunningTap(config, tmp_path)
    tap.wait_for_records("job_results", 3000)
    tap.interrupt(signal.SIGTERM)
    assert tap.process.returncode == 143
    out = Output.parse("".join(tap.lines))
    assert out.messages[-1]["type"] == "STATE"
    loaded = entry(out)["loaded_jobs"]
    assert len(loaded) >= 3000 // 50 - 1
    results = jobs_by_uid(out)
    for uid in loaded:
        assert results.get(uid) == {
            item["job_result_id"] for item in jobs_results(server, uid)
        }, uid
    rerun = sync(config, state=out.final_state)
    assert set(rerun.keys("job_results", "job_uid")).isdisjoint(loaded)


def jobs_by_uid(out: Output) -> dict[str, set[str]]:
    results: dict[str, set[str]] = {}
    for record in out.records.get("job_results", []):
        results.setdefault(record["job_uid"], set()).add(record["job_result_id"])
    return results


def test_a_job_that_answered_404_is_asked_again_while_it_is_listed(sandbox):
    # The job that will be added first answers 404 once: the same seed adds the
    # same jobs, so a twin sandbox names it beforehand.
    uid = sandbox().advance_v3(60, add=3)["added"][0]
    path = f"/v3/jobs/{uid}/results"
    server = sandbox(scripted_faults=[{"path": path, "status": 404, "times": 1}])
    config = v3_config(server)
    first = sync(config)
    assert server.advance_v3(60, add=3)["added"][0] == uid
    second = sync(config, state=first.final_state)
    assert uid not in entry(second)["loaded_jobs"]
    assert uid not in second.keys("job_results", "job_uid")

    server.clear_requests()
    third = sync(config, state=second.final_state)
    assert result_pages(server) == [uid, uid]  # 30 results: two pages
    assert uid in entry(third)["loaded_jobs"]
    union = {
        result
        for out in (first, second, third)
        for result in out.keys("job_results", "job_result_id")
    }
    assert union == all_result_ids(server)


@pytest.mark.parametrize(
    ("gone", "jobs_selected"),
    [
        ("a workflow's jobs", True),
        # The job list is then fetched for successful_jobs, which keeps the 404.
        ("a workflow's jobs", False),
        ("a job's results", True),
    ],
)
def test_what_answered_404_is_asked_again_by_the_next_runs_however_old(
    sandbox, gone, jobs_selected
):
    # The run skips a parent that answers 404, as one deleted since it was
    # listed; but a 404 may be passing. W moves on past the skipped jobs, which
    # finished long before: without the STATE naming them, no later run would ask
    # for their results. Here the 404 comes twice, then the parent answers.
    data = sandbox(**ACCOUNT).dataset["v3"]  # a twin: the same seed, the same uids
    workflow = data["workflows"][3]["uid"]
    in_workflow = [j for j in data["jobs"] if j["workflow_uid"] == workflow]
    if gone == "a workflow's jobs":
        path, retry = f"/v3/workflows/{workflow}/jobs", "retry_workflows"
        skipped = {job["uid"] for job in in_workflow if successful(job)}
        named = [workflow]
    else:
        oldest = min(
            (j for j in in_workflow if successful(j)), key=lambda j: j["finish_time"]
        )
        path, retry = f"/v3/jobs/{oldest['uid']}/results", "retry_jobs"
        skipped = {oldest["uid"]}
        named = [oldest["uid"]]
    fault = {"path": path, "status": 404, "times": 2}
    server = sandbox(**ACCOUNT, scripted_faults=[fault])
    config = v3_config(server)
    catalog = TapAnalytics(config=config).catalog_dict
    for stream in catalog["streams"]:
        for item in stream["metadata"]:
            if stream["tap_stream_id"] == "jobs" and item["breadcrumb"] == []:
                item["metadata"]["selected"] = jobs_selected

    def sync_selected(state: dict[str, Any] | None = None) -> Output:
        return sync(config, state=state, catalog=catalog)

    first = sync_selected()
    assert ("jobs" in first.records) == jobs_selected
    assert not skipped & set(first.keys("job_results", "job_uid"))
    # Asked again from the start: the run began without a watermark.
    assert entry(first)[retry] == dict.fromkeys(named)
    # The premise: W moved on, past one of them at least (by more than the
    # lookback, 30 minutes).
    watermark = instant(entry(first)["watermark"])
    assert any(
        instant(job["finish_time"]) < watermark - datetime.timedelta(minutes=35)
        for job in data["jobs"]
        if job["uid"] in skipped
    )

    second = sync_selected(first.final_state)  # the 404 again
    assert not skipped & set(second.keys("job_results", "job_uid"))
    assert entry(second)[retry] == dict.fromkeys(named)  # one entry still
    assert instant(entry(second)["watermark"]) >= watermark

    server.clear_requests()
    third = sync_selected(second.final_state)
    assert set(result_pages(server)) == skipped
    assert retry not in entry(third)
    union = {
        result
        for out in (first, second, third)
        for result in out.keys("job_results", "job_result_id")
    }
    assert union == all_result_ids(server)


def test_a_state_this_tap_did_not_write_is_one_line_naming_the_key(sandbox, tmp_path):
    server = sandbox()
    state = tmp_path / "state.json"
    for value, expected in (
        ({"watermark": "yesterday"}, "watermark is not an ISO-8601 date-time"),
        ({"loaded_jobs": "abc"}, "loaded_jobs is not a list of job uids"),
        (
            {"retry_workflows": ["w"]},
            "retry_workflows is not an object of workflow uids to ISO-8601 "
            "date-times or null",
        ),
        (
            {"retry_jobs": {"j": "soon"}},
            "retry_jobs is not an object of job uids to ISO-8601 date-times or null",
        ),
    ):
        state.write_text(json.dumps({"bookmarks": {"job_results": value}}))
        run = run_cli(
            "--state", str(state), config=v3_config(server), tmp_path=tmp_path
        )
        assert run.returncode == 1
        assert run.last_stderr_line == (
            f"tap-analytics: error: the STATE's bookmarks.job_results.{expected}: "
            "remove that entry (or run with --full-refresh in Meltano) to fetch "
            "every job's results"
        )
        assert "Traceback" not in run.stderr


def test_a_run_that_skips_every_job_logs_no_warning_and_says_what_it_did(
    sandbox, tmp_path
):
    server = sandbox()
    config = v3_config(server)
    first = run_cli(config=config, tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    state = tmp_path / "state.json"
    state.write_text(json.dumps(Output.parse(first.stdout).final_state))
    server.clear_requests()

    second = run_cli("--state", str(state), config=config, tmp_path=tmp_path)

    assert second.returncode == 0, second.stderr[-2000:]
    assert result_pages(server) == []
    levels = {line.split(" | ")[1].strip() for line in second.stderr.splitlines()}
    assert levels == {"INFO"}, second.stderr[-2000:]
    (line,) = [ln for ln in second.stderr.splitlines() if "Fetched the results" in ln]
    loaded = entry(Output.parse(second.stdout))
    assert line.endswith(
        "Fetched the results of 0 jobs not loaded before; STATE now: watermark "
        f"{loaded['watermark']}, {len(loaded['loaded_jobs'])} job uids "
        "(lookback 30 minutes)"
    )


def test_state_output_stays_small_when_jobs_have_one_result_each(sandbox):
    # The worst case for the list's cost: a uid per result. Each STATE lists
    # at most twice as many uids as results were written since the one before.
    server = sandbox(v3_workflows=2000, v3_jobs_per_workflow=1, v3_results_per_job=1)
    out = sync(v3_config(server))
    results = len(out.records["job_results"])
    assert results > 1000
    assert len(out.states) < 30
    assert sum(len(json.dumps(state)) for state in out.states) < 2 * 80 * results


def test_the_loaded_results_are_made_in_the_main_thread(sandbox, monkeypatch):
    # Pool workers ask it which jobs to fetch; made by the first of them, it would
    # read (and add) its state entry while the main thread writes the state.
    made_in: list[str] = []
    init = loaded_results.LoadedResults.__init__

    def recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
        made_in.append(threading.current_thread().name)
        init(self, *args, **kwargs)

    monkeypatch.setattr(loaded_results.LoadedResults, "__init__", recording_init)
    server = sandbox(latency_ms=5)
    out = sync(v3_config(server, max_concurrent_requests=8))
    assert made_in == [threading.main_thread().name]
    assert set(out.keys("job_results", "job_result_id")) == all_result_ids(server)

"""Family v3 on a live API (issue 11): deleted parents, rate limits, bounded memory."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tap_analytics import concurrency
from tap_analytics.sandbox import SandboxConfig
from tap_analytics.sandbox.data import generate
from tap_analytics.tap import TapAnalytics
from tests.tap_runner import Output, run_cli, sync, v1_config, v3_config


def successful(job: dict[str, Any]) -> bool:
    """API.md's filter, written out independently of the tap's code."""
    count = job["total_row_count"]
    return job["status"] == "finished" and count is not None and count > 0


def expected_keys(
    data: dict[str, Any],
    gone_workflows: set[str] = frozenset(),  # type: ignore[assignment]
    gone_jobs: set[str] = frozenset(),  # type: ignore[assignment]
) -> dict[str, list[str]]:
    """What a run must emit when these parents answer 404 for their children."""
    jobs = [j for j in data["jobs"] if j["workflow_uid"] not in gone_workflows]
    ok = [j["uid"] for j in jobs if successful(j)]
    return {
        "workflows": sorted(w["uid"] for w in data["workflows"]),
        "jobs": sorted(j["uid"] for j in jobs),
        "successful_jobs": sorted(ok),
        "job_results": sorted(
            item["job_result_id"]
            for uid in ok
            if uid not in gone_jobs
            for item in data["job_results"][uid]
        ),
    }


def emitted_keys(out: Output) -> dict[str, list[str]]:
    return {
        "workflows": sorted(out.keys("workflows", "uid")),
        "jobs": sorted(out.keys("jobs", "uid")),
        "successful_jobs": sorted(out.keys("successful_jobs", "uid")),
        "job_results": sorted(out.keys("job_results", "job_result_id")),
    }


def test_deleted_workflows_and_jobs_are_skipped_with_one_warning_each(
    sandbox, tmp_path
):
    server = sandbox(
        v3_workflows=8,
        v3_jobs_per_workflow=6,
        v3_results_per_job=30,
        v3_deleted_workflows=2,
        v3_deleted_jobs=3,
    )
    gone = server.deleted
    assert len(gone["workflows"]) == 2
    assert len(gone["jobs"]) == 3
    run = run_cli(config=v3_config(server), tmp_path=tmp_path)

    assert run.returncode == 0, run.stderr[-2000:]
    expected = expected_keys(server.dataset["v3"], gone["workflows"], gone["jobs"])
    assert emitted_keys(Output.parse(run.stdout)) == expected
    warnings = [line for line in run.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 5, warnings
    for uid in gone["workflows"]:
        (line,) = [w for w in warnings if uid in w]
        assert f"workflows '{uid}'" in line
        assert f"/v3/workflows/{uid}/jobs" in line
        assert "404" in line
    for uid in gone["jobs"]:
        (line,) = [w for w in warnings if uid in w]
        assert f"successful_jobs '{uid}'" in line
        assert f"/v3/jobs/{uid}/results" in line
    # Nothing of a deleted parent was asked for twice: a 404 is not retried.
    child_paths = [r["path"] for r in server.requests if r["status"] == 404]
    assert len(child_paths) == len(set(child_paths)) == 5


def test_skipped_parents_are_counted_in_the_run_stats(sandbox):
    server = sandbox(v3_workflows=5, v3_deleted_workflows=1, v3_deleted_jobs=2)
    tap = TapAnalytics(config=v3_config(server))
    tap.sync_all()
    assert tap.run_stats.skipped_parents == {"jobs": 1, "job_results": 2}


def test_a_job_deleted_while_its_results_are_read_keeps_the_pages_read(
    sandbox, tmp_path
):
    config: dict[str, Any] = {
        "v3_workflows": 2,
        "v3_results_per_job": 60,
        "v3_results_page_size": 25,
    }
    data = generate(SandboxConfig(**config)).as_dict()["v3"]
    job = next(j["uid"] for j in data["jobs"] if successful(j))
    path = f"/v3/jobs/{job}/results"
    fault = {"path": path, "status": 404, "after": 1, "times": 5}
    server = sandbox(**config, scripted_faults=[fault])
    run = run_cli(config=v3_config(server), tmp_path=tmp_path)

    assert run.returncode == 0, run.stderr[-2000:]
    results = Output.parse(run.stdout).keys("job_results", "job_result_id")
    first_page = [item["job_result_id"] for item in data["job_results"][job][:25]]
    expected = expected_keys(data, gone_jobs={job})["job_results"] + first_page
    assert sorted(results) == sorted(expected)
    (warning,) = [line for line in run.stderr.splitlines() if "WARNING" in line]
    assert job in warning
    assert "after 25 records" in warning
    assert [r["status"] for r in server.requests if r["path"] == path] == [200, 404]


def test_a_404_on_the_workflows_list_stays_fatal(sandbox, tmp_path):
    fault = {"path": "/v3/workflows", "status": 404, "times": 10}
    server = sandbox(scripted_faults=[fault])
    run = run_cli(config=v3_config(server), tmp_path=tmp_path)
    assert run.returncode == 1
    assert run.last_stderr_line.startswith(
        f"tap-analytics: error: GET {server.base_url}/v3/workflows answered 404"
    ), run.last_stderr_line
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("workers", [8, 2])
def test_one_page_of_buffer_is_enough_for_any_number_of_workers(
    sandbox, monkeypatch, workers
):
    # The tightest bound: the main thread can still always get the page it waits
    # for, while the workers of later parents find no room.
    monkeypatch.setattr(concurrency, "PAGE_BUFFER", 1)
    server = sandbox(v3_workflows=6, v3_results_per_job=70, v3_results_page_size=10)
    out = sync(v3_config(server, max_concurrent_requests=workers))
    assert emitted_keys(out) == expected_keys(server.dataset["v3"])


@pytest.mark.parametrize("client_limit", [None, 40])
def test_a_server_rate_limit_of_40_per_second_is_respected(sandbox, client_limit):
    # The v3-latency benchmark's shape, at 8 workflows instead of 20 (about 190
    # requests: 4.7 s at 40/s).
    server = sandbox(
        latency_ms=20,
        v3_workflows=8,
        v3_jobs_per_workflow=20,
        v3_results_per_job=50,
        v3_results_page_size=25,
        rate_limit_per_second=40,
    )
    started = time.monotonic()
    out = sync(v3_config(server, max_requests_per_second=client_limit))
    wall = time.monotonic() - started

    assert emitted_keys(out) == expected_keys(server.dataset["v3"])
    statuses = [r["status"] for r in server.requests]
    served = statuses.count(200)
    assert statuses.count(429) <= 0.05 * len(statuses), statuses.count(429)
    assert wall <= 1.3 * served / 40, (wall, served)


def test_max_requests_per_second_paces_token_and_data_requests(sandbox):
    server = sandbox()  # family v1: a token request, then data requests
    sync(v1_config(server, page_size=50, max_requests_per_second=20))
    log = server.requests
    assert log[0]["path"] == "/token"
    assert len(log) >= 10
    # The token request took a slot too: the first data request waited for the next.
    assert log[1]["time"] - log[0]["time"] >= 0.025
    # Requests leave 50 ms apart; arrival can jitter, never bunch up overall.
    span = log[-1]["time"] - log[0]["time"]
    assert span >= 0.8 * (len(log) - 1) / 20, (span, len(log))

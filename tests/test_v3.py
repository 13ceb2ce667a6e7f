"""Family v3 against the sandbox over real HTTP (issue 4)."""

from __future__ import annotations

import json

import pytest

from tap_analytics.tap import TapAnalytics
from tests.tap_runner import V3_KEYS, run_cli, sync, v3_config


def successful(job: dict) -> bool:
    """API.md's filter, written out independently of the tap's code."""
    count = job["total_row_count"]
    return job["status"] == "finished" and count is not None and count > 0


def test_discover_lists_exactly_the_v3_streams(sandbox, tmp_path):
    server = sandbox()
    run = run_cli("--discover", config=v3_config(server), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    catalog = {s["tap_stream_id"]: s for s in json.loads(run.stdout)["streams"]}
    assert {name: s["key_properties"] for name, s in catalog.items()} == {
        name: [key] for name, key in V3_KEYS.items()
    }


@pytest.mark.parametrize(
    ("shape", "bare_results", "concurrency"),
    [("list", False, 8), ("bare", False, 1), ("list", True, 3)],
)
def test_sync_emits_exactly_every_record_of_all_five_streams(
    sandbox, shape, bare_results, concurrency
):
    server = sandbox(
        v3_workflows=6,
        v3_jobs_per_workflow=8,
        v3_results_per_job=30,
        v3_results_page_size=25,
        v3_data_shape=shape,
        v3_bare_results=bare_results,
        extra_field="undocumentedField",
        project_uid="project-7",
    )
    out = sync(
        v3_config(server, project_uid="project-7", max_concurrent_requests=concurrency)
    )
    data = server.dataset["v3"]

    assert out.keys("workspace", "name") == [data["workspace"]["name"]]
    assert sorted(out.keys("workflows", "uid")) == sorted(
        w["uid"] for w in data["workflows"]
    )
    assert sorted(out.keys("jobs", "uid")) == sorted(j["uid"] for j in data["jobs"])

    expected_successful = sorted(j["uid"] for j in data["jobs"] if successful(j))
    assert 0 < len(expected_successful) < len(data["jobs"])
    assert sorted(out.keys("successful_jobs", "uid")) == expected_successful
    assert all(successful(job) for job in out.records["successful_jobs"])

    results = out.records["job_results"]
    expected_count = sum(len(data["job_results"][uid]) for uid in expected_successful)
    assert len(results) == expected_count > 0
    assert len({r["job_result_id"] for r in results}) == expected_count
    assert {r["job_uid"] for r in results} == set(expected_successful)
    if not bare_results:
        expected_ids = {
            item["job_result_id"]
            for uid in expected_successful
            for item in data["job_results"][uid]
        }
        assert {r["job_result_id"] for r in results} == expected_ids

    workflow_of = {j["uid"]: j["workflow_uid"] for j in data["jobs"]}
    assert all(j["workflow_uid"] == workflow_of[j["uid"]] for j in out.records["jobs"])
    # The undocumented field is kept on every record: at its top, or for a bare
    # result row (wrapped by the tap as `results`), inside the row.
    for stream in V3_KEYS:
        for record in out.records[stream]:
            bare_row = stream == "job_results" and bare_results
            kept = record["results"] if bare_row else record
            assert kept["undocumentedField"].startswith("undocumented-"), stream

    # results are requested only for successful jobs, and each page once
    result_paths = [
        r["path"] for r in server.requests if r["path"].endswith("/results")
    ]
    assert {p.split("/")[3] for p in result_paths} == set(expected_successful)
    pages_needed = sum(
        -(-len(data["job_results"][uid]) // 25) for uid in expected_successful
    )
    assert len(result_paths) == pages_needed
    # each workflow's job list is fetched once for both jobs and successful_jobs
    job_lists = [r for r in server.requests if r["path"].endswith("/jobs")]
    assert len(job_lists) == len(data["workflows"])
    assert {r["project_id"] for r in server.requests} == {"project-7"}
    assert {r["auth"] for r in server.requests} == {"api-key"}


def test_bare_result_ids_are_stable_across_runs(sandbox):
    server = sandbox(v3_bare_results=True)
    first = sync(v3_config(server))
    second = sync(v3_config(server))
    ids = sorted(out["job_result_id"] for out in first.records["job_results"])
    assert ids == sorted(out["job_result_id"] for out in second.records["job_results"])


def test_state_stays_small_with_2000_workflows(sandbox):
    server = sandbox(v3_workflows=2000, v3_jobs_per_workflow=1, v3_results_per_job=1)
    out = sync(v3_config(server))
    assert len(out.records["workflows"]) == 2000
    final = json.dumps(out.final_state)
    assert len(final.encode()) < 10_000, final[:500]


def test_concurrent_and_serial_runs_emit_the_same_output(sandbox):
    server = sandbox(v3_workflows=8, v3_jobs_per_workflow=6, latency_ms=5)
    serial = sync(v3_config(server, max_concurrent_requests=1))
    serial_requests = len(server.requests)
    server.clear_requests()
    concurrent = sync(v3_config(server, max_concurrent_requests=8))

    def multiset(out):
        return {
            stream: sorted(json.dumps(r, sort_keys=True) for r in records)
            for stream, records in out.records.items()
        }

    assert multiset(concurrent) == multiset(serial)
    assert len(server.requests) == serial_requests  # no page fetched twice
    assert concurrent.final_state == serial.final_state
    # every RECORD follows its stream's SCHEMA, and SCHEMA is sent once per stream
    # (not once per parent), then once more when the first record brings the
    # sandbox's undocumented extra_note
    schemas = [m for m in concurrent.messages if m["type"] == "SCHEMA"]
    assert sorted(m["stream"] for m in schemas) == sorted([*V3_KEYS, *V3_KEYS])
    for stream in V3_KEYS:
        first, second = (m["schema"] for m in schemas if m["stream"] == stream)
        assert set(second["properties"]) - set(first["properties"]) == {"extra_note"}


def test_deselecting_a_jobs_property_leaves_successful_jobs_whole(sandbox):
    server = sandbox()
    config = v3_config(server)
    catalog = TapAnalytics(config=config).catalog_dict
    for stream in catalog["streams"]:
        if stream["tap_stream_id"] == "jobs":
            for entry in stream["metadata"]:
                if entry["breadcrumb"] == ["properties", "status"]:
                    entry["metadata"]["selected"] = False
    out = sync(config, catalog=catalog)
    data = server.dataset["v3"]
    assert all("status" not in job for job in out.records["jobs"])
    expected = sorted(j["uid"] for j in data["jobs"] if successful(j))
    assert sorted(out.keys("successful_jobs", "uid")) == expected
    assert all(job["status"] == "finished" for job in out.records["successful_jobs"])
    expected_results = sum(len(data["job_results"][uid]) for uid in expected)
    assert len(out.records["job_results"]) == expected_results


def test_children_of_parents_filtered_by_a_stream_map_are_not_requested(sandbox):
    server = sandbox(v3_workflows=10)
    kept = server.dataset["v3"]["workflows"][3]["uid"]
    config = v3_config(
        server, stream_maps={"workflows": {"__filter__": f"uid == '{kept}'"}}
    )
    out = sync(config)
    assert out.keys("workflows", "uid") == [kept]
    assert {j["workflow_uid"] for j in out.records["jobs"]} == {kept}
    job_lists = [r["path"] for r in server.requests if r["path"].endswith("/jobs")]
    assert job_lists == [f"/v3/workflows/{kept}/jobs"]
    kept_jobs = {
        j["uid"] for j in server.dataset["v3"]["jobs"] if j["workflow_uid"] == kept
    }
    result_jobs = {
        r["path"].split("/")[3]
        for r in server.requests
        if r["path"].endswith("/results")
    }
    assert result_jobs <= kept_jobs

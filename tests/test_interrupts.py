"""SIGINT, SIGTERM and a closed stdout: never a success, nothing lost on rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from tap_analytics.schema_contract import STATE_KEY
from tap_analytics.timestamps import parse_timestamp
from tests.tap_runner import Output, sync, v1_config, v3_config
from tests.test_v1_live import paged_in_windows

TAP = os.path.join(os.path.dirname(sys.executable), "tap-analytics")
V1_KEYS = {"jobs": "jobId", "connections": "connectionId", "workspaces": "workspaceId"}
KEYS = {
    "v1": V1_KEYS,
    "v1-windows": V1_KEYS,
    "v3": {
        "workflows": "uid",
        "jobs": "uid",
        "successful_jobs": "uid",
        "job_results": "job_result_id",
    },
}


class RunningTap:
    """``tap-analytics`` in a subprocess, its stdout read line by line as it comes."""

    def __init__(
        self,
        config: dict[str, Any],
        tmp_path: Any,
        state: dict[str, Any] | None = None,
    ) -> None:
        path = tmp_path / "config.json"
        path.write_text(json.dumps(config))
        argv = [TAP, "--config", str(path)]
        if state is not None:
            (tmp_path / "state.json").write_text(json.dumps(state))
            argv += ["--state", str(tmp_path / "state.json")]
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        self.lines.extend(self.process.stdout)

    def wait_for_records(self, stream: str, count: int, timeout: float = 30) -> None:
        needle = f'"type":"RECORD","stream":"{stream}"'
        deadline = time.monotonic() + timeout
        while sum(needle in line for line in list(self.lines)) < count:
            assert self.process.poll() is None, "the run ended before the signal"
            assert time.monotonic() < deadline, f"fewer than {count} {stream} records"
            time.sleep(0.01)

    def interrupt(self, signum: int) -> tuple[float, str]:
        """Send ``signum``; seconds until the process ended, and its stderr."""
        sent = time.monotonic()
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout=10)
        finally:
            self.process.kill()
        ended = time.monotonic() - sent
        self._reader.join(5)
        assert self.process.stderr is not None
        return ended, self.process.stderr.read()


def expected_keys(server: Any, family: str, stream: str, key: str) -> set[Any]:
    data = server.dataset[family[:2]]
    if stream == "successful_jobs":
        return {
            job["uid"]
            for job in data["jobs"]
            if job["status"] == "finished" and (job["total_row_count"] or 0) > 0
        }
    if stream == "job_results":
        return {item[key] for items in data["job_results"].values() for item in items}
    return {record[key] for record in data[stream]}


SCENARIOS = {
    # v1 jobs: 150 pages of 20, one after another (about 3 s at 10 ms each)
    "v1": (
        {"v1_jobs": 3000, "v1_connections": 30, "latency_ms": 10},
        lambda server: v1_config(server, page_size=20, max_concurrent_requests=1),
        ("jobs", 200),
    ),
    # v1 jobs in concurrent windows (default settings): 1,000 pages of 20, about
    # 8 at a time; interrupted with windows queued, in flight and buffered
    "v1-windows": (
        {"v1_jobs": 20_000, "v1_connections": 30, "latency_ms": 10},
        lambda server: v1_config(server, page_size=20),
        ("jobs", 2_000),
    ),
    # v3: children of 40 workflows fetched 4 at a time, 30 ms per request
    "v3": (
        {"v3_workflows": 40, "v3_jobs_per_workflow": 10, "latency_ms": 30},
        lambda server: v3_config(server, max_concurrent_requests=4),
        ("job_results", 50),
    ),
}


@pytest.mark.parametrize(
    ("family", "signum", "exit_code"),
    [
        ("v1", signal.SIGINT, 130),
        ("v1", signal.SIGTERM, 143),
        ("v1-windows", signal.SIGINT, 130),
        ("v3", signal.SIGINT, 130),
        ("v3", signal.SIGTERM, 143),
    ],
)
def test_an_interrupted_sync_exits_non_zero_and_a_rerun_completes_it(
    sandbox, tmp_path, family, signum, exit_code
):
    fields, make_config, (stream, count) = SCENARIOS[family]
    server = sandbox(**fields)
    config = make_config(server)
    tap = RunningTap(config, tmp_path)
    tap.wait_for_records(stream, count)
    seconds, stderr = tap.interrupt(signum)

    assert tap.process.returncode == exit_code
    assert seconds < 2, seconds
    last_line = stderr.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last_line.startswith(f"tap-analytics: interrupted by {name}"), last_line
    assert "rerun with the last STATE resumes" in last_line
    assert "Traceback" not in stderr

    assert all(line.endswith("\n") for line in tap.lines)  # whole messages only
    first = Output.parse("".join(tap.lines))  # and each one valid JSON
    assert first.messages[-1]["type"] == "STATE"
    key = KEYS[family][stream]
    assert len(first.keys(stream, key)) < len(
        expected_keys(server, family, stream, key)
    )

    if family == "v1-windows":
        assert paged_in_windows(server)
    rerun = sync(config, state=first.final_state)
    for name, key in KEYS[family].items():
        union = set(first.keys(name, key)) | set(rerun.keys(name, key))
        assert union == expected_keys(server, family, name, key), name


def test_the_state_at_an_interrupt_skips_nothing_after_the_bookmark(sandbox, tmp_path):
    # An interrupted incremental run that started from a bookmark. For an unsorted
    # stream the SDK's progress markers hold the highest value seen, with records
    # below it maybe unread: the STATE at the interrupt must not promote them, and
    # a sorted stream's bookmark may only stand at a record already written.
    server = sandbox(v1_jobs=3000, v1_connections=30, latency_ms=10)
    jobs = server.dataset["v1"]["jobs"]
    middle = sorted(parse_timestamp(j["lastUpdatedAt"]) for j in jobs)[len(jobs) // 2]
    since = {"replication_key": "lastUpdatedAt", "replication_key_value": ""}
    since["replication_key_value"] = middle.isoformat()
    config = v1_config(server, page_size=20)
    tap = RunningTap(config, tmp_path, state={"bookmarks": {"jobs": since}})
    tap.wait_for_records("jobs", 200)
    tap.interrupt(signal.SIGTERM)
    first = Output.parse("".join(tap.lines))

    jobs_state = first.final_state["bookmarks"]["jobs"]
    # the bookmark and the fields the schema contract typed; no progress markers
    assert set(jobs_state) == {"replication_key", "replication_key_value", STATE_KEY}
    written = [parse_timestamp(value) for value in first.keys("jobs", "lastUpdatedAt")]
    assert middle <= parse_timestamp(jobs_state["replication_key_value"])
    assert parse_timestamp(jobs_state["replication_key_value"]) <= max(written)

    rerun = sync(config, state=first.final_state)
    union = set(first.keys("jobs", "jobId")) | set(rerun.keys("jobs", "jobId"))
    due = {j["jobId"] for j in jobs if parse_timestamp(j["lastUpdatedAt"]) >= middle}
    assert len(due) > len(first.keys("jobs", "jobId"))  # interrupted mid-stream
    assert union == due


def test_a_closed_stdout_is_one_line_and_a_failure(sandbox, tmp_path):
    server = sandbox(v1_jobs=3000, latency_ms=5)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(v1_config(server, page_size=20)))
    tap = subprocess.Popen(
        [TAP, "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert tap.stdout is not None
    assert tap.stderr is not None
    for _ in range(50):  # the target reads a little, then dies
        assert tap.stdout.readline()
    tap.stdout.close()
    stderr = tap.stderr.read()
    assert tap.wait(timeout=30) == 1
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("tap-analytics: error: the target closed the pipe")
    assert "Traceback" not in stderr
    assert "Exception ignored" not in stderr
    assert "BrokenPipeError" not in stderr

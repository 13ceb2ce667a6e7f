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

from tap_analytics.interrupts import RunInterrupted, held, raise_interrupted
from tap_analytics.schema_contract import STATE_KEY
from tap_analytics.timestamps import parse_timestamp
from tests.tap_runner import (
    V1_KEYS,
    Output,
    read_batch,
    sync,
    uncovered_jobs_at_each_state,
    v1_config,
    v3_config,
)
from tests.test_v1_live import paged_in_windows

TAP = os.path.join(os.path.dirname(sys.executable), "tap-analytics")
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
        #: The records of each BATCH file, read as its message came (None: gone).
        self.batches: list[list[dict[str, Any]] | None] = []
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A run that does not end in time is sent SIGABRT: its threads' stacks
            # then go to stderr, for the failure to show (see interrupt).
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        # As a target does: each BATCH file is read when its message comes.
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if '"type":"BATCH"' in line:
                self.batches.append(read_batch(json.loads(line)))
            self.lines.append(line)

    def output(self) -> Output:
        return Output.parse("".join(self.lines), self.batches)

    def records_so_far(self, stream: str) -> int:
        needle = f'"stream":"{stream}"'
        lines = list(self.lines)
        batched = [line for line in lines if '"type":"BATCH"' in line]
        return sum(f'"type":"RECORD",{needle}' in line for line in lines) + sum(
            len(records or [])
            for line, records in zip(batched, list(self.batches), strict=False)
            if needle in line
        )

    def wait_for_records(self, stream: str, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.records_so_far(stream) < count:
            assert self.process.poll() is None, "the run ended before the signal"
            assert time.monotonic() < deadline, f"fewer than {count} {stream} records"
            time.sleep(0.01)

    def interrupt(self, signum: int) -> tuple[float, str]:
        """Send ``signum``; seconds until the process ended, and its stderr."""
        sent = time.monotonic()
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)
            self.process.wait(timeout=10)
            assert self.process.stderr is not None
            stacks = self.process.stderr.read()[-6000:]
            msg = f"still running 10 s after {signum!r}:\n{stacks}"
            raise AssertionError(msg) from None
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


def with_batches(config: dict[str, Any], root: Any) -> dict[str, Any]:
    """``config`` with BATCH messages of 100 records, files under ``root``."""
    root.mkdir()
    batch_config = {"encoding": {"format": "jsonl"}, "batch_size": 100}
    batch_config["storage"] = {"root": root.as_uri()}
    return {**config, "batch_config": batch_config}


@pytest.mark.parametrize(
    ("family", "signum", "exit_code", "batch"),
    [
        ("v1", signal.SIGINT, 130, False),
        ("v1", signal.SIGTERM, 143, False),
        ("v1-windows", signal.SIGINT, 130, False),
        ("v3", signal.SIGINT, 130, False),
        ("v3", signal.SIGTERM, 143, False),
        ("v1", signal.SIGINT, 130, True),
        ("v1-windows", signal.SIGTERM, 143, True),
        ("v3", signal.SIGINT, 130, True),
    ],
)
def test_an_interrupted_sync_exits_non_zero_and_a_rerun_completes_it(
    sandbox, tmp_path, family, signum, exit_code, batch
):
    fields, make_config, (stream, count) = SCENARIOS[family]
    server = sandbox(**fields)
    config = make_config(server)
    if batch:
        config = with_batches(config, tmp_path / "batches")
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
    first = tap.output()  # and each one valid JSON
    assert first.messages[-1]["type"] == "STATE"
    key = KEYS[family][stream]
    assert len(first.keys(stream, key)) < len(
        expected_keys(server, family, stream, key)
    )

    if batch:
        # Every batch announced was read (the tap waited for that), the STATE
        # passes no job of a batch not announced before it, and no file is left.
        assert None not in tap.batches
        assert not any(m["type"] == "RECORD" for m in first.messages)
        if family.startswith("v1"):
            assert uncovered_jobs_at_each_state(first, server.update_times()) == 0
        assert list((tmp_path / "batches").iterdir()) == []
    if family == "v1-windows":
        assert paged_in_windows(server)
    rerun = sync(config, state=first.final_state)
    for name, key in KEYS[family].items():
        union = set(first.keys(name, key)) | set(rerun.keys(name, key))
        assert union == expected_keys(server, family, name, key), name


@pytest.mark.parametrize("family", ["v1", "v1-windows"])
def test_a_killed_batch_run_rerun_from_its_last_state_loses_nothing(
    sandbox, tmp_path, family
):
    # SIGKILL: no handler, no last STATE, no hand-over. The batches the tap had
    # announced and the target had not opened yet die with it; a target stops at
    # the first one it cannot open, so the STATE it could reach is the last one
    # before that, and the rerun starts there.
    fields, make_config, (stream, count) = SCENARIOS[family]
    server = sandbox(**fields)
    config = with_batches(make_config(server), tmp_path / "batches")
    tap = RunningTap(config, tmp_path)
    tap.wait_for_records(stream, count)
    tap.process.kill()
    tap.process.wait(timeout=10)
    tap._reader.join(5)
    first = tap.output()

    jobs = server.dataset["v1"]["jobs"]
    assert uncovered_jobs_at_each_state(first, server.update_times()) == 0
    assert len(first.keys("jobs", "jobId")) < len(jobs)  # killed mid-stream
    assert list((tmp_path / "batches").iterdir()) == []  # nothing left on disk
    state = first.final_state if first.states else None
    rerun = sync(config, state=state)
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
    timed = sorted(
        parse_timestamp(j["lastUpdatedAt"]) for j in jobs if j.get("lastUpdatedAt")
    )
    middle = timed[len(timed) // 2]
    since = {"replication_key": "lastUpdatedAt", "replication_key_value": ""}
    since["replication_key_value"] = middle.isoformat()
    config = v1_config(server, page_size=20)
    tap = RunningTap(config, tmp_path, state={"bookmarks": {"jobs": since}})
    tap.wait_for_records("jobs", 200)
    tap.interrupt(signal.SIGTERM)
    first = tap.output()

    jobs_state = first.final_state["bookmarks"]["jobs"]
    # the bookmark and the fields the schema contract typed; no progress markers
    assert set(jobs_state) == {"replication_key", "replication_key_value", STATE_KEY}
    written = [
        parse_timestamp(value)
        for value in first.keys("jobs", "lastUpdatedAt")
        if value is not None  # a job that has not ended
    ]
    assert middle <= parse_timestamp(jobs_state["replication_key_value"])
    assert parse_timestamp(jobs_state["replication_key_value"]) <= max(written)

    rerun = sync(config, state=first.final_state)
    union = set(first.keys("jobs", "jobId")) | set(rerun.keys("jobs", "jobId"))
    # What updatedAtStart=<middle> lists: the server's own update time at or after
    # it, jobs that have not ended included.
    due = {
        job
        for job, at in server.update_times().items()
        if at >= middle.timestamp() * 1_000_000
    }
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


def test_a_failed_batch_run_hands_over_what_it_wrote_and_exits_1(sandbox, tmp_path):
    # The 31st jobs page answers 403: the run fails after 30 pages of 25 jobs, 7
    # batches of 100 and 50 jobs in an open one. Those reach the target too, as
    # RECORD messages would, in a batch after the last STATE (which covers only
    # the 7 before it).
    server = sandbox(
        v1_jobs=3000,
        v1_connections=30,
        scripted_faults=[{"path": "/v1/jobs", "status": 403, "after": 30}],
    )
    config = with_batches(
        v1_config(server, page_size=25, max_concurrent_requests=1),
        tmp_path / "batches",
    )
    tap = RunningTap(config, tmp_path)
    tap.process.wait(timeout=60)
    tap._reader.join(5)
    assert tap.process.returncode == 1
    assert tap.process.stderr is not None
    last_line = tap.process.stderr.read().strip().splitlines()[-1]
    assert last_line.startswith("tap-analytics: error: "), last_line
    assert "403" in last_line

    output = tap.output()
    assert None not in tap.batches  # every batch announced was read
    assert uncovered_jobs_at_each_state(output, server.update_times()) == 0
    assert len(set(output.keys("jobs", "jobId"))) == 30 * 25  # each written once
    assert len(output.keys("jobs", "jobId")) == 30 * 25
    assert output.messages[-1]["type"] == "BATCH"  # no STATE after the failure
    assert list((tmp_path / "batches").iterdir()) == []


def test_an_interrupt_inside_held_waits_for_the_end_of_the_block():
    # The step a held block guards (e.g. recording the opens read from inotify)
    # runs to its end; the interrupt is raised then, not lost.
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    steps = []

    def held_step() -> None:
        with held():
            raise_interrupted(signal.SIGTERM, lambda: None)  # what the handler runs
            steps.append("the rest of the block")

    try:
        with pytest.raises(RunInterrupted) as raised:
            held_step()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert steps == ["the rest of the block"]
    assert raised.value.signum == signal.SIGTERM

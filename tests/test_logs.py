"""Logs a person reads at INFO: progress, one summary, no noise (issue 12).

Every test runs the installed command, so stderr is exactly what a user or
Meltano sees (the SDK's console handler and format included).
"""

from __future__ import annotations

import datetime
import itertools
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.tap_runner import V1_KEYS, CliRun, Output, run_cli, v1_config, v3_config

V3_STREAMS = ("workspace", "workflows", "jobs", "successful_jobs", "job_results")
SUMMARY = re.compile(
    r"Sync completed in [\d.]+ s: (?P<total>[\d,]+) records \((?P<streams>[^)]*)\), "
    r"(?P<requests>[\d,]+) requests, (?P<retries>[\d,]+) retries, "
    r"(?P<skipped>[\d,]+) skipped parents"
)
PROGRESS = re.compile(
    r"^(?P<stream>\w+): (?P<records>[\d,]+) records so far \([\d,]+ records/s\)$"
)


@dataclass
class LogLine:
    time: datetime.datetime
    level: str
    logger: str
    message: str


def log_lines(stderr: str) -> list[LogLine]:
    """The SDK's console lines (`time | level | logger | message`); others fail."""
    lines = []
    for text in stderr.splitlines():
        if text.startswith("tap-analytics: "):  # the CLI's own last line
            continue
        stamp, level, logger, message = (part.strip() for part in text.split("|", 3))
        lines.append(
            LogLine(
                datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f"),
                level,
                logger,
                message,
            )
        )
    return lines


def number(text: str) -> int:
    return int(text.replace(",", ""))


def summary_of(run: CliRun) -> dict[str, object]:
    lines = [line for line in log_lines(run.stderr) if SUMMARY.search(line.message)]
    assert len(lines) == 1, run.stderr[-3000:]
    assert lines[0] == log_lines(run.stderr)[-1]  # the last line of the run
    found = SUMMARY.search(lines[0].message)
    assert found
    per_stream = dict(part.rsplit(" ", 1) for part in found["streams"].split(", "))
    return {
        "total": number(found["total"]),
        "records": {name: number(count) for name, count in per_stream.items()},
        "requests": number(found["requests"]),
        "retries": number(found["retries"]),
        "skipped": number(found["skipped"]),
    }


def successful(job: dict) -> bool:
    """API.md's filter, written out independently of the tap's code."""
    count = job["total_row_count"]
    return job["status"] == "finished" and count is not None and count > 0


def test_a_long_stream_logs_progress_at_the_interval(sandbox, tmp_path):
    # 40 pages of 10 jobs at 100 ms each, one after another (concurrent windows
    # would make it short): a jobs stream of at least 4 s.
    server = sandbox(v1_jobs=400, latency_ms=100)
    run = run_cli(
        config=v1_config(
            server, page_size=10, progress_interval=1, max_concurrent_requests=1
        ),
        tmp_path=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = log_lines(run.stderr)
    began = next(i for i, ln in enumerate(lines) if "sync of 'jobs'" in ln.message)
    ended = next(
        i for i, ln in enumerate(lines) if "sync of 'workspaces'" in ln.message
    )
    jobs = lines[began : ended + 1]
    progress = [PROGRESS.match(line.message) for line in jobs[1:-1]]
    counts = [number(m["records"]) for m in progress if m and m["stream"] == "jobs"]
    assert len(counts) >= 3, run.stderr
    assert counts == sorted(counts)
    assert 0 < counts[-1] <= 400
    # No silence longer than the interval plus a page and honest slack for a
    # shared machine, from the stream's first line to the next stream's.
    gaps = [(b.time - a.time).total_seconds() for a, b in itertools.pairwise(jobs)]
    assert max(gaps) < 2.5, gaps


def test_summary_counts_what_the_sandbox_served_and_the_tap_emitted(sandbox, tmp_path):
    server = sandbox(fault_rate=0.2, fault_retry_after="0", max_consecutive_faults=2)
    run = run_cli(
        config=v1_config(server, page_size=20, retry_backoff_factor=0.01),
        tmp_path=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = Output.parse(run.stdout)
    summary = summary_of(run)

    served = {stream: len(server.dataset["v1"][stream]) for stream in V1_KEYS}
    emitted = {stream: len(records) for stream, records in out.records.items()}
    assert summary["records"] == served == emitted
    assert summary["total"] == sum(served.values())
    assert summary["requests"] == len(server.requests)  # the token request too
    faults = len([r for r in server.requests if r["fault"]])
    assert faults >= 3
    assert summary["retries"] == faults  # each fault was retried once
    assert summary["skipped"] == 0


def test_clean_runs_have_no_warning_error_or_metric_line(sandbox, tmp_path):
    server = sandbox()
    for config in (v1_config(server), v3_config(server)):
        run = run_cli(config=config, tmp_path=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        lines = log_lines(run.stderr)
        assert {line.level for line in lines} == {"INFO"}, run.stderr
        assert not [line for line in lines if "METRIC" in line.message]
        # today: 9 for v1, 13 for v3 (a first run lists the fields the schema
        # gained, the sandbox's undocumented extra_note, on one line)
        assert len(lines) <= 15, run.stderr


def test_v3_logs_one_beginning_sync_per_stream_not_per_parent(sandbox, tmp_path):
    server = sandbox(v3_workflows=6, v3_jobs_per_workflow=5)
    run = run_cli(config=v3_config(server), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    began = [
        re.match(r"Beginning sync of '(\w+)'", line.message)
        for line in log_lines(run.stderr)
    ]
    assert sorted(m[1] for m in began if m) == sorted(V3_STREAMS)
    data = server.dataset["v3"]
    summary = summary_of(run)
    assert summary["records"] == {
        "workspace": 1,
        "workflows": len(data["workflows"]),
        "jobs": len(data["jobs"]),
        "successful_jobs": len([job for job in data["jobs"] if successful(job)]),
        "job_results": sum(len(rows) for rows in data["job_results"].values()),
    }
    assert summary["requests"] == len(server.requests)


def test_metric_lines_come_when_asked_for(sandbox, tmp_path):
    server = sandbox(v1_jobs=30)
    asked = run_cli(config=v1_config(server, log_metrics=True), tmp_path=tmp_path)
    data_requests = len([r for r in server.requests if r["path"] != "/token"])
    assert data_requests >= 3
    debug = run_cli(
        config=v1_config(server),
        tmp_path=tmp_path,
        env={"TAP_ANALYTICS_LOGLEVEL": "DEBUG"},
    )
    for run in (asked, debug):
        assert run.returncode == 0, run.stderr[-3000:]
        durations = re.findall(
            r'METRIC: .*"metric":"http_request_duration"', run.stderr
        )
        assert len(durations) == data_requests


def test_a_failure_ends_with_one_line_and_no_error_line_before_it(sandbox, tmp_path):
    server = sandbox(
        scripted_faults=[{"path": "/v1/workspaces", "status": 503, "times": 10}]
    )
    run = run_cli(
        config=v1_config(server, retry_backoff_factor=0.01), tmp_path=tmp_path
    )
    assert run.returncode == 1
    assert run.last_stderr_line.startswith("tap-analytics: error: ")
    assert "503" in run.last_stderr_line
    lines = log_lines(run.stderr)
    assert {line.level for line in lines} == {"INFO", "WARNING"}
    retries = [line.message for line in lines if line.level == "WARNING"]
    assert len(retries) == 3
    assert all(message.startswith("Retry ") for message in retries)
    assert "Traceback" not in run.stderr


def test_a_target_closing_the_pipe_leaves_no_error_line(sandbox, tmp_path):
    server = sandbox(v1_jobs=20_000)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(v1_config(server)))
    tap = Path(sys.executable).parent / "tap-analytics"
    # A "target" that reads one message and exits.
    done = subprocess.run(
        f"'{tap}' --config '{config}' | head -n 1 > /dev/null",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    noisy = [
        line
        for line in done.stderr.splitlines()
        if "| ERROR" in line or "unhandled error" in line or "Giving up" in line
    ]
    assert noisy == [], done.stderr[-3000:]

"""BATCH messages (``batch_config``): exact, ordered against STATE, no file left behind.

The runs read every BATCH file the moment its message is written, as a target
does (``tests.tap_runner.TargetStdout``); the tap waits for that.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
from typing import TYPE_CHECKING, Any

import pytest

from tap_analytics import batches
from tap_analytics.cli import failure_message
from tap_analytics.tap import TapAnalytics
from tests.tap_runner import (
    run_cli,
    sync,
    uncovered_jobs_at_each_state,
    v1_config,
    v3_config,
)
from tests.test_interrupts import KEYS, expected_keys
from tests.test_v1_live import paged_in_windows

if TYPE_CHECKING:
    from pathlib import Path


def batch_config(root: Path, batch_size: int = 100) -> dict[str, Any]:
    return {
        "encoding": {"format": "jsonl"},
        "storage": {"root": root.as_uri()},
        "batch_size": batch_size,
    }


def batch_descriptors() -> set[str]:
    """This process's descriptors that a batch run opens: unnamed files ('/tmp/#12
    (deleted)') and inotify instances."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.endswith("(deleted)") or "inotify" in target:
                found.add(f"{fd} -> {target}")
    return found


SCENARIOS = {
    # 3,000 jobs in pages of 20: 30 batches of 100 jobs, a STATE after each
    "v1": (
        {"v1_jobs": 3000, "v1_connections": 230},
        {"page_size": 20, "max_concurrent_requests": 1},
    ),
    # the same in concurrent time windows (10 ms per page makes them split)
    "v1-windows": (
        {"v1_jobs": 3000, "v1_connections": 230, "latency_ms": 10},
        {"page_size": 20},
    ),
    # children batched across parents; job_results over 2 pages per job
    "v3": ({"v3_workflows": 12, "v3_jobs_per_workflow": 10}, {}),
}


@pytest.mark.parametrize("family", list(SCENARIOS))
def test_batches_hold_exactly_the_dataset_and_precede_their_state(
    sandbox, tmp_path, family
):
    fields, settings = SCENARIOS[family]
    server = sandbox(**fields)
    make_config = v3_config if family == "v3" else v1_config
    before = batch_descriptors()
    config = make_config(server, batch_config=batch_config(tmp_path), **settings)
    output = sync(config)

    types = [message["type"] for message in output.messages]
    assert "RECORD" not in types
    assert types.count("BATCH") > 10
    for name, key in KEYS[family].items():
        got = output.keys(name, key)
        assert len(got) == len(set(got)), f"{name}: a record in two batches"
        assert set(got) == expected_keys(server, family, name, key), name
    assert all(len(m["records"]) <= 100 for m in output.messages if "records" in m)
    if family.startswith("v1"):
        assert types.count("STATE") >= 3000 // 100  # one per batch of jobs at least
        assert uncovered_jobs_at_each_state(output, server.update_times()) == 0
        assert paged_in_windows(server) == (family == "v1-windows")
    # No batch file anywhere: nothing in the storage root, no descriptor left.
    assert list(tmp_path.iterdir()) == []
    assert batch_descriptors() <= before


def test_stream_maps_apply_to_what_the_batch_files_hold(sandbox, tmp_path):
    server = sandbox()
    maps = {"workspaces": {"name": "'hidden'", "__alias__": "spaces"}}
    config = v1_config(server, batch_config=batch_config(tmp_path), stream_maps=maps)
    output = sync(config)
    spaces = output.records["spaces"]
    assert len(spaces) == len(server.dataset["v1"]["workspaces"])
    assert {record["name"] for record in spaces} == {"hidden"}


def test_a_schema_change_ends_the_batch_before_the_new_schema(sandbox, tmp_path):
    # A new field from the middle connection on (no other undocumented field):
    # the schema contract grows the schema there, and only there.
    server = sandbox(extra_field=None, halfway_field="added")
    output = sync(v1_config(server, batch_config=batch_config(tmp_path)))
    connections = [
        (
            m["type"],
            len(m.get("records", [])),
            "added" in m.get("schema", {}).get("properties", {}),
        )
        for m in output.messages
        if m.get("stream") == "connections" and m["type"] in ("SCHEMA", "BATCH")
    ]
    # 120 connections: 60 under the first SCHEMA, the rest under the second (in
    # two batches: the STATE after 100 records closes one).
    assert connections[:3] == [
        ("SCHEMA", 0, False),
        ("BATCH", 60, False),
        ("SCHEMA", 0, True),
    ]
    assert [kind for kind, _, _ in connections[3:]] == ["BATCH", "BATCH"]
    assert sum(count for _, count, _ in connections[3:]) == 60
    batched = output.records["connections"]
    assert not any("added" in record for record in batched[:60])
    assert all("added" in record for record in batched[60:])


def test_a_target_that_opens_no_batch_file_fails_the_run_in_one_line(
    sandbox, tmp_path, monkeypatch
):
    monkeypatch.setattr(batches, "BATCH_READ_TIMEOUT", 0.5)
    server = sandbox()
    config = v1_config(server, batch_config=batch_config(tmp_path, batch_size=50))
    tap = TapAnalytics(config=config)
    with (
        contextlib.redirect_stdout(io.StringIO()),  # reads no BATCH file
        pytest.raises(batches.BatchNotReadError) as failure,
    ):
        tap.sync_all()
    message = failure_message(failure.value)
    assert message is not None
    assert "\n" not in message
    assert message.startswith("the target opened no BATCH file for 0 s")
    assert "unset batch_config" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("batch_setting", "problem"),
    [
        ({"encoding": {"format": "parquet"}}, "encoding.format must be jsonl"),
        (
            {"encoding": {"format": "jsonl", "compression": "gzip"}},
            "encoding.compression must be none",
        ),
        (
            {"encoding": {"format": "jsonl"}, "storage": {"root": "s3://bucket/x"}},
            "storage.root must be a local directory",
        ),
        (
            {"encoding": {"format": "jsonl"}, "storage": {"root": "/no/such/dir"}},
            "storage.root is not an existing directory",
        ),
    ],
)
def test_an_unusable_batch_config_is_one_line(
    sandbox, tmp_path, batch_setting, problem
):
    server = sandbox()
    config = v1_config(server, batch_config=batch_setting)
    run = run_cli(config=config, tmp_path=tmp_path)
    assert run.returncode == 1
    assert run.stdout == ""
    prefix = "tap-analytics: error: setting 'batch_config': "
    assert run.last_stderr_line.startswith(prefix + problem)


def test_a_batch_file_that_cannot_be_written_ends_the_run_in_one_line(
    sandbox, tmp_path
):
    # Files of at most 1 KiB (RLIMIT_FSIZE: the kernel refuses more, as a full
    # disk would): the first batch handed over cannot be flushed. One line naming
    # the setting, and no BATCH message or STATE for what was not written.
    server = sandbox()
    config = v1_config(server, batch_config=batch_config(tmp_path, batch_size=50))
    directory = str(tmp_path)

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    run = run_cli(config=config, tmp_path=tmp_path, preexec_fn=limit_file_size)
    assert run.returncode == 1
    assert run.last_stderr_line == (
        f"tap-analytics: error: cannot write a batch file in {directory} (setting "
        "'batch_config.storage.root'): File too large"
    )
    assert "Traceback" not in run.stderr
    assert '"type":"BATCH"' not in run.stdout
    assert '"type":"STATE"' not in run.stdout


def test_a_storage_root_where_no_file_can_be_made_fails_before_any_request(
    sandbox, tmp_path
):
    server = sandbox()
    config = v1_config(
        server,
        batch_config={
            "encoding": {"format": "jsonl"},
            "storage": {"root": "file:///proc"},
        },
    )
    run = run_cli(config=config, tmp_path=tmp_path)
    assert run.returncode == 1
    assert run.last_stderr_line.startswith(
        "tap-analytics: error: cannot write a batch file in /proc (setting "
        "'batch_config.storage.root'): "
    )
    assert server.requests == []

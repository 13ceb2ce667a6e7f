"""A tap killed mid-run under ``meltano run`` is a failed run, and the next one heals.

The tap gets SIGTERM (or SIGKILL: no handler, and the batch files it had not handed
over die with it) while it pages through v1 jobs (the sandbox answers slowly,
so the run is long). Meltano must exit non-zero and say the extractor failed, and a
second ``meltano run``, from whatever state Meltano kept, must leave every table
with exactly the sandbox's keys: nothing lost to the interruption.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from tap_analytics.sandbox import SandboxConfig, SandboxServer
from tests.tap_runner import assert_limits_in_range

from .conftest import ROOT, Meltano, PgDatabase
from .test_meltano_postgres import PRIMARY_KEYS, expected_keys, snapshot

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.e2e

# 3,000 jobs in pages of 20 at 20 ms each: a run of several seconds to cut into.
SLOW_SANDBOX = SandboxConfig(seed=42, v1_jobs=3000, latency_ms=20)


@pytest.fixture(scope="module")
def slow_sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SLOW_SANDBOX) as server:
        yield server
    assert_limits_in_range(server)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # ended meanwhile
            # "pid (comm) state ppid ...": comm may hold spaces, so split after ")"
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def find_tap(meltano_pid: int) -> int | None:
    """The tap-analytics process among the descendants of ``meltano run``."""
    pending = [meltano_pid]
    while pending:
        for child in children_of(pending.pop()):
            try:
                argv = (Path("/proc") / str(child) / "cmdline").read_bytes()
            except OSError:
                continue
            if b"bin/tap-analytics\0" in argv:
                return child
            pending.append(child)
    return None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_meltano_run_of_an_interrupted_tap_is_not_a_success(
    meltano: Meltano,
    pg_database: PgDatabase,
    slow_sandbox: SandboxServer,
    meltano_env: dict[str, str],
    signum: int,
    tmp_path: Path,
) -> None:
    # Each signal's test from scratch: no table, no state kept by Meltano.
    with psycopg.connect(**pg_database.conninfo()) as conn:
        conn.execute("DROP SCHEMA IF EXISTS analytics_v1 CASCADE")
    env = {
        **meltano_env,
        **pg_database.target_env(),
        "MELTANO_DATABASE_URI": f"sqlite:///{tmp_path / 'meltano.db'}",
        "TAP_ANALYTICS_BASE_URL": slow_sandbox.base_url,
        "TAP_ANALYTICS_PAGE_SIZE": "20",
    }
    argv = [str(meltano.executable), "run", "tap-analytics", "target-postgres"]
    slow_sandbox.clear_requests()
    run = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while len([r for r in slow_sandbox.requests if r["path"] == "/v1/jobs"]) < 20:
            assert run.poll() is None, run.communicate()[0].decode()[-4000:]
            assert time.monotonic() < deadline, "the tap never reached v1 jobs"
            time.sleep(0.05)
        tap = find_tap(run.pid)
        assert tap is not None
        os.kill(tap, signum)
        output = run.communicate(timeout=120)[0].decode()
    finally:
        run.kill()
    pages = len([r for r in slow_sandbox.requests if r["path"] == "/v1/jobs"])
    assert pages < 3000 // 20  # stopped mid-stream
    assert run.returncode != 0, output[-4000:]
    # Meltano logs "Run completed" after failed runs too, so its verdict is the
    # exit code and this line (a tap exiting 0 got neither). After SIGKILL the
    # target fails too, at the first batch file that died with the tap.
    assert re.search(r"Extractor (and loader )?failed", output), output[-4000:]
    if signum == signal.SIGTERM:
        assert "interrupted by SIGTERM" in output

    # The next run starts from the state Meltano kept and completes every table.
    meltano.check("run", "tap-analytics", "target-postgres", env=env, timeout=300)
    tables = snapshot(pg_database)
    expected = expected_keys(slow_sandbox.dataset)
    for table in PRIMARY_KEYS["v1"]:
        loaded = tables["v1", table]
        assert loaded.keys == frozenset(expected["v1", table]), table
        assert loaded.rows == loaded.distinct_keys, table

"""Benchmark tap-analytics against a plain ``requests`` loop, both on the sandbox API.

    python scripts/bench.py [--scenario NAME|all] [--scale 1.0]
                            [--repeat 1] [--smoke]

For each scenario one sandbox runs as a separate process for the whole scenario, and
each contender runs as a subprocess with stdout to /dev/null, so interpreter startup
and peak RSS count the same way for all of them:

- ``tap``: the real ``tap-analytics --config cfg.json``, with each scenario's tap
  settings (v1-latency and v3-latency: also ``tap (serial)``,
  ``max_concurrent_requests: 1``; v3-latency: also ``tap, next run``, with
  ``--state`` from an untimed ``tap`` run just before: nothing new since, so no
  result is fetched again);
- ``plain loop``: ``python scripts/bench.py --plain-loop SCENARIO BASE_URL``, which
  fetches the same pages one after another and writes one JSON line per record.

The tap's modules are byte-compiled first, as an installed tap's are (see
``compile_tap``). An untimed plain-loop run first warms the sandbox up. Wall time,
peak RSS and CPU time of each contender come from a tiny launcher process
(``perf_counter`` around the spawn, ``os.wait4`` for that one child's rusage,
its children included: the BATCH reader too), requests from the sandbox's
request log and records from the children's own counters on stderr. Two more
columns (Linux only) say how far to trust a wall time: the sandbox's CPU time during
the run (is the server the bottleneck?) and the CPU time other processes took (is the
machine busy with something else?).

``--smoke`` uses tiny datasets, counts the records of each contender once more from
its real output (untimed), and fails unless every contender emitted the same records
and made the same requests: v1 ``jobs`` excepted, where the tap's keyset pages bring
99 new jobs each (one of overlap, ``limit`` at most 100) against the loop's 100.

Scenarios ``v1-bulk-postgres`` and ``v1-latency-postgres`` time whole pipelines into
one PostgreSQL (``scripts/pg-test-db.sh``) instead, each run into a new database:
``meltano run tap-analytics target-postgres`` as ``meltano.yml`` has it (BATCH), the
same with RECORD messages, and dlt's ``rest_api`` pipeline built from the source
document (``scripts/dlt_pipeline.py``, in its own virtualenv from
``scripts/dlt-setup.sh``), the baseline. A run counts only if every table then holds
exactly the sandbox's rows (count and distinct keys). ``--smoke`` skips them.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import functools
import importlib.util
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

import requests

if TYPE_CHECKING:
    import resource
    from collections.abc import Callable, Sequence

PAGE_SIZE = 100  # v1: the tap's `page_size`, the loop's `limit` (the API's largest)
CLIENT_ID = "sandbox-client"
CLIENT_SECRET = "sandbox-secret"
API_KEY = "sandbox-key"
TAP = Path(sysconfig.get_path("scripts")) / "tap-analytics"
ROOT = Path(__file__).resolve().parent.parent
MELTANO = ROOT / ".venv-meltano" / "bin" / "meltano"
DLT_PYTHON = ROOT / ".venv-dlt" / "bin" / "python"
V1_TABLES = ("jobs", "connections", "workspaces")
# Each contender's schema, and its column for each table's primary key.
POSTGRES_LOADS = {
    "meltano": ("analytics_v1", ("jobId", "connectionId", "workspaceId")),
    "dlt": ("dlt_v1", ("job_id", "connection_id", "workspace_id")),
}
# The plain loop and the batch reader log their counts as the SDK's `METRIC: {...}`
# lines; the tap's count is in the line that ends its run, as users see it. (The
# SDK's METRIC lines, off by default, cost the tap some 4 % more CPU: one per
# request, which the loop does not write.)
_METRIC = re.compile(r"METRIC: (\{.*\})$", re.MULTILINE)
_SYNC_COMPLETED = re.compile(r"Sync completed in [\d.]+ s: ([\d,]+) records")
_STOP_GRACE_SECONDS = 10.0
_POLL_SECONDS = 0.05

T = TypeVar("T")

# The tap with its per-record schema contract skipped (records written as they come).
WITHOUT_CONTRACT = "tap (serial, no schema contract)"


@dataclass(frozen=True)
class Scenario:
    name: str
    family: Literal["v1", "v3"]
    settings: dict[str, int | str]  # sandbox settings, named as SandboxConfig fields
    smoke: dict[str, int | str]  # the same, tiny enough for --smoke
    scaled: tuple[str, ...]  # the data sizes that --scale multiplies
    # (label, tap settings) of each tap run; the plain loop always runs last.
    taps: tuple[tuple[str, dict[str, Any]], ...] = ()
    # Also time the first tap's next run, from the STATE of one before it (v3:
    # nothing new since, so no result is fetched again).
    next_run: bool = False
    # Pipelines into PostgreSQL (Meltano, then dlt as the baseline) instead.
    postgres: bool = False

    def sandbox_settings(self, *, smoke: bool, scale: float) -> dict[str, int | str]:
        base = self.smoke if smoke else self.settings
        return {
            name: max(1, round(int(value) * scale)) if name in self.scaled else value
            for name, value in base.items()
        }


#: v1-bulk's and v1-latency's data, timed for the tap alone and end to end.
V1_BULK_DATA: dict[str, int | str] = {
    "v1_jobs": 200_000,
    "v1_connections": 20_000,
    "v1_workspaces": 2_000,
    "latency_ms": 0,
}
V1_LATENCY_DATA: dict[str, int | str] = {
    "latency_ms": 20,
    "v1_jobs": 40_000,
    "v1_connections": 1_000,
    "v1_workspaces": 100,
}

SCENARIOS = {
    # CPU-bound: no latency, so the time goes to parsing, validating and writing.
    "v1-bulk": Scenario(
        name="v1-bulk",
        family="v1",
        settings=V1_BULK_DATA,
        # The sandbox plays the real server (limit 1..100, jobs without a time).
        # Smoke: 8 pages, too few to split `jobs` into windows (that takes 8 full
        # ones), so its requests are a serial run's, whatever the timing.
        smoke={
            "v1_jobs": 750,
            "v1_connections": 230,
            "v1_workspaces": 25,
            "latency_ms": 0,
        },
        scaled=("v1_jobs", "v1_connections", "v1_workspaces"),
        taps=(
            ("tap", {}),
            ("tap (serial)", {"max_concurrent_requests": 1}),
            # Read by `bench.py --batch-reader`, which opens every batch file.
            # Serial: with output this cheap, loopback pages already count as slow
            # to arrive, and windows would make the requests differ from the loop's.
            (
                "tap (BATCH, serial)",
                {
                    "batch_config": {"encoding": {"format": "jsonl"}},
                    "max_concurrent_requests": 1,
                },
            ),
            # What the schema contract costs: the sandbox's undocumented extra_note
            # is on every record, so `tap (serial)` checks each one (issue 17:
            # within 3 %). Serial both, so that no window decision differs.
            (WITHOUT_CONTRACT, {"max_concurrent_requests": 1}),
        ),
    ),
    # Latency-bound v1: `jobs` keyset pages in concurrent time windows, the other
    # streams' pages fetched while `jobs` is written.
    "v1-latency": Scenario(
        name="v1-latency",
        family="v1",
        settings=V1_LATENCY_DATA,
        # Too few pages to split `jobs` into windows (so the requests are those
        # of a serial run); the other streams are still fetched ahead.
        smoke={
            "latency_ms": 20,
            "v1_jobs": 650,
            "v1_connections": 230,
            "v1_workspaces": 25,
        },
        scaled=("v1_jobs", "v1_connections", "v1_workspaces"),
        taps=(
            ("tap", {}),
            ("tap (serial)", {"max_concurrent_requests": 1}),
        ),
    ),
    # Latency-bound: many small child requests, where concurrency pays.
    "v3-latency": Scenario(
        name="v3-latency",
        family="v3",
        settings={
            "latency_ms": 20,
            "v3_workflows": 20,
            "v3_jobs_per_workflow": 20,
            "v3_results_per_job": 50,
            "v3_results_page_size": 25,
        },
        smoke={
            "latency_ms": 20,
            "v3_workflows": 3,
            "v3_jobs_per_workflow": 5,
            "v3_results_per_job": 50,
            "v3_results_page_size": 25,
        },
        scaled=("v3_workflows",),
        taps=(
            # 8 is the tap's default; the serial run shows what concurrency buys.
            ("tap", {"max_concurrent_requests": 8}),
            ("tap (serial)", {"max_concurrent_requests": 1}),
        ),
        next_run=True,
    ),
    # Large results (issue 11): peak RSS must not grow with results per job, nor
    # with the number of workers.
    "v3-large": Scenario(
        name="v3-large",
        family="v3",
        settings={
            "latency_ms": 0,
            "v3_workflows": 40,
            "v3_jobs_per_workflow": 20,
            "v3_results_per_job": 4_000,
            "v3_results_page_size": 200,
        },
        smoke={
            "latency_ms": 0,
            "v3_workflows": 3,
            "v3_jobs_per_workflow": 4,
            "v3_results_per_job": 450,
            "v3_results_page_size": 200,
        },
        scaled=("v3_workflows",),
        taps=tuple(
            (f"tap ({workers} workers)", {"max_concurrent_requests": workers})
            for workers in (32, 8, 1)
        ),
    ),
    # v3-latency's data behind a server that allows 40 requests/s (issue 11).
    "v3-rate-limit": Scenario(
        name="v3-rate-limit",
        family="v3",
        settings={
            "latency_ms": 20,
            "v3_workflows": 20,
            "v3_jobs_per_workflow": 20,
            "v3_results_per_job": 50,
            "v3_results_page_size": 25,
            "rate_limit_per_second": 40,
        },
        smoke={
            "latency_ms": 20,
            "v3_workflows": 3,
            "v3_jobs_per_workflow": 5,
            "v3_results_per_job": 50,
            "v3_results_page_size": 25,
            "rate_limit_per_second": 40,
        },
        scaled=("v3_workflows",),
        taps=(
            ("tap", {}),
            ("tap (40/s)", {"max_requests_per_second": 40}),
        ),
    ),
    # End to end: v1-bulk's and v1-latency's data into PostgreSQL, Meltano against
    # dlt, on the sandbox playing the real server (API.md).
    "v1-bulk-postgres": Scenario(
        name="v1-bulk-postgres",
        family="v1",
        settings=V1_BULK_DATA,
        smoke={},
        scaled=("v1_jobs", "v1_connections", "v1_workspaces"),
        postgres=True,
    ),
    "v1-latency-postgres": Scenario(
        name="v1-latency-postgres",
        family="v1",
        settings=V1_LATENCY_DATA,
        smoke={},
        scaled=("v1_jobs", "v1_connections", "v1_workspaces"),
        postgres=True,
    ),
}


@dataclass(frozen=True)
class Contender:
    label: str
    argv: tuple[str, ...]
    singer: bool  # stdout is Singer messages (else one record per line)
    # A next run: ``--state state_file``, written from an untimed run of ``first``.
    state_file: Path | None = None
    first: tuple[str, ...] = ()
    env: dict[str, str] | None = None  # the whole environment, when not this one's
    load: Load | None = None  # loads into PostgreSQL: the database, made anew per run


@dataclass(frozen=True)
class Load:
    """A contender's database (made anew before each run) and where its rows go."""

    database: str
    schema: str
    keys: tuple[str, ...]  # each V1_TABLES's primary key column
    expected: tuple[int, ...]  # each V1_TABLES's rows in the sandbox
    fresh: tuple[Path, ...] = ()  # files removed before each run (Meltano's state)


@dataclass(frozen=True)
class Measurement:
    wall: float
    cpu: float
    peak_rss_mb: float
    records: int
    requests: int  # answered, 429s not counted
    rejected: int  # answered 429
    paths: dict[str, int]  # requests answered other than 429, by path
    sandbox_cpu: float | None
    others_cpu: float | None


@dataclass
class Outcome:
    contender: Contender
    runs: list[Measurement] = field(default_factory=list)
    failure: str | None = None


class ChildFailedError(Exception):
    """A contender exited non-zero; the message ends with its stderr."""


# --- the tap without its schema contract (runs in its own process) ----------------


def tap_without_schema_contract(config: str) -> None:
    """``tap-analytics --config CONFIG`` where every record passes the schema
    contract's check at once: ``bool(record)``, and no field typed to check."""
    # Imported here: the benchmark's own process never loads the tap.
    from tap_analytics import cli, schema_contract

    def refresh(contract: schema_contract.SchemaContract) -> None:
        contract.covers = bool
        contract.typed = ()
        contract.null_fields = ()

    schema_contract.SchemaContract._refresh = refresh  # type: ignore[method-assign,assignment]
    sys.argv = [str(TAP), "--config", config]
    cli.main()


# --- the plain loop (runs in its own process) --------------------------------------


def plain_loop(scenario: str, base_url: str) -> None:
    """Fetch the tap's pages serially and write each record as a JSON line."""
    session = requests.Session()
    out = sys.stdout
    count = 0

    def get(url: str, params: dict[str, Any] | None = None) -> Any:
        response = session.get(url, params=params, timeout=60)
        while response.status_code == 429:  # v3-rate-limit: wait as told, again
            time.sleep(float(response.headers["Retry-After"]))
            response = session.get(url, params=params, timeout=60)
        response.raise_for_status()
        return response.json()

    def emit(records: list[dict[str, Any]]) -> None:
        nonlocal count
        for record in records:
            out.write(json.dumps(record) + "\n")
        count += len(records)

    if SCENARIOS[scenario].family == "v1":
        token = session.post(
            f"{base_url}/token",
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            },
            timeout=60,
        )
        token.raise_for_status()
        session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        # API.md "The real server": `limit` 1..100, `next` set on every page with
        # records, so a page shorter than `limit` ends a list.
        offset = 0
        while True:
            body = get(f"{base_url}/v1/jobs", {"limit": PAGE_SIZE, "offset": offset})
            emit(body["data"])
            if len(body["data"]) < PAGE_SIZE:
                break
            offset += PAGE_SIZE
        for stream in ("connections", "workspaces"):
            body = get(f"{base_url}/v1/{stream}", {"limit": PAGE_SIZE})
            emit(body["data"])
            while len(body["data"]) == PAGE_SIZE:
                body = get(body["next"])  # an absolute URL that keeps the limit
                emit(body["data"])
    else:
        session.headers["x-api-key"] = API_KEY
        emit([get(f"{base_url}/v3/workspace")["data"]])
        workflows = get(f"{base_url}/v3/workflows")["data"]
        emit(workflows)
        for workflow in workflows:
            jobs = get(f"{base_url}/v3/workflows/{workflow['uid']}/jobs")["data"]
            emit(jobs)
            successful = [
                job
                for job in jobs
                if job["status"] == "finished" and (job["total_row_count"] or 0) > 0
            ]
            # Written twice, as the tap writes them in `jobs` and `successful_jobs`.
            emit(successful)
            for job in successful:
                url: str | None = f"{base_url}/v3/jobs/{job['uid']}/results"
                while url is not None:
                    body = get(url)
                    # Child records carry their parent's key, as the tap's do.
                    emit([{**row, "job_uid": job["uid"]} for row in body["results"]])
                    paging = body["paging"]
                    url = paging["next"] if paging["have_next_page"] else None
    out.flush()
    point = {"type": "counter", "metric": "record_count", "value": count}
    print(f"METRIC: {json.dumps(point)}", file=sys.stderr)


def batch_reader() -> None:
    """Read the tap's stdout as a target would: every BATCH file, whole.

    Writes the records (a JSON line each, as the plain loop writes them), so that
    ``--smoke`` counts what the batch files held. A file at a time, not a line at
    a time: the reader stands in for the target, and a write per record (one
    system call each under PYTHONUNBUFFERED) would be charged to the tap.
    """
    out = sys.stdout.buffer
    count = 0
    for line in sys.stdin.buffer:
        message = json.loads(line)
        if message["type"] != "BATCH":
            continue
        for url in message["manifest"]:
            with open(url.removeprefix("file://"), "rb") as batch:
                records = batch.read()
            out.write(records)
            count += records.count(b"\n")
    out.flush()
    point = {"type": "counter", "metric": "record_count", "value": count}
    print(f"METRIC: {json.dumps(point)}", file=sys.stderr)


# --- the sandbox process ------------------------------------------------------------


def _wait_rusage(
    proc: subprocess.Popen[Any], options: int = 0
) -> resource.struct_rusage | None:
    """Reap ``proc`` with its own rusage; None while it runs (with os.WNOHANG)."""
    pid, status, usage = os.wait4(proc.pid, options)
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen did not reap it
    return usage


def _rss_mb(maxrss: int) -> float:
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    return maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


class Sandbox:
    """``python -m tap_analytics.sandbox`` in a process of its own, for one scenario."""

    def __init__(self, settings: dict[str, int | str], workdir: Path) -> None:
        flags = [
            part
            for name, value in settings.items()
            for part in ("--" + name.replace("_", "-"), str(value))
        ]
        ready = workdir / "sandbox.url"
        self.log_path = workdir / "sandbox.log"
        started = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tap_analytics.sandbox",
                    "--port",
                    "0",
                    "--ready-file",
                    str(ready),
                    *flags,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.peak_rss_mb: float | None = None
        try:
            # No deadline: generating 10x v1-bulk takes over a minute. A sandbox
            # that dies is noticed at once.
            while not ready.exists():
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"the sandbox exited with {self.proc.returncode}:\n"
                        + self.log_path.read_text(errors="replace")
                    )
                time.sleep(_POLL_SECONDS)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - started
        self.base_url = ready.read_text(encoding="utf-8").strip()
        self._control = requests.Session()

    def stop(self) -> None:
        """SIGTERM (the sandbox shuts down cleanly), SIGKILL if that hangs."""
        if self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        while (usage := _wait_rusage(self.proc, os.WNOHANG)) is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                usage = _wait_rusage(self.proc)
                break
            time.sleep(_POLL_SECONDS)
        if usage is not None:
            self.peak_rss_mb = _rss_mb(usage.ru_maxrss)

    def clear_requests(self) -> None:
        self._control.post(
            f"{self.base_url}/_sandbox/clear-requests", timeout=60
        ).raise_for_status()

    def request_counts(self) -> tuple[int, int, dict[str, int]]:
        """Requests answered other than 429, requests answered 429, and the first
        by path."""
        response = self._control.get(f"{self.base_url}/_sandbox/requests", timeout=60)
        response.raise_for_status()
        entries = [e for e in response.json() if not e["path"].startswith("/_sandbox/")]
        rejected = sum(entry["status"] == 429 for entry in entries)
        paths = Counter(e["path"] for e in entries if e["status"] != 429)
        return len(entries) - rejected, rejected, dict(paths)

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the sandbox so far (None off Linux)."""
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return None
        # Fields after the parenthesised command name; utime and stime are 14, 15.
        fields = stat.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy_cpu_seconds() -> float | None:
    """CPU time the whole machine has spent busy (None off Linux).

    Less the contender's and the sandbox's, it is what other processes took during
    a run: on a shared machine, the sign that a wall time is not to be trusted.
    """
    try:
        with open("/proc/stat") as stat:
            ticks = [int(field) for field in stat.readline().split()[1:]]
    except OSError:
        return None
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # up to steal


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


# --- running and measuring the contenders -------------------------------------------


def _contenders(scenario: Scenario, base_url: str, workdir: Path) -> list[Contender]:
    def tap(label: str, settings: dict[str, Any]) -> Contender:
        config = workdir / f"tap-config-{len(taps)}.json"
        # The tap as users run it: its settings' defaults, and its count read from
        # the line that ends its run; with BATCH the reader's count of what the
        # files held is the one that counts.
        tap_config = {"base_url": base_url, **settings}
        config.write_text(json.dumps(tap_config))
        argv: tuple[str, ...] = (str(TAP), "--config", str(config))
        if label == WITHOUT_CONTRACT:
            argv = (sys.executable, __file__, "--tap-without-schema-contract", argv[-1])
        if "batch_config" not in settings:
            return Contender(label, argv, singer=True)
        # The batch files are read while the tap runs: the tap waits for that.
        reader = (sys.executable, __file__, "--batch-reader")
        pipeline = f"{shlex.join(argv)} | {shlex.join(reader)}"
        return Contender(label, ("/bin/sh", "-c", pipeline), singer=False)

    taps: list[Contender] = []
    if scenario.family == "v1":
        credentials = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        for label, settings in scenario.taps or (("tap", {}),):
            taps.append(tap(label, {**credentials, "page_size": PAGE_SIZE, **settings}))
    else:
        for label, settings in scenario.taps:
            taps.append(tap(label, {"api_key": API_KEY, **settings}))
    if scenario.next_run:
        state = workdir / "state.json"
        first = taps[0]
        argv = (*first.argv, "--state", str(state))
        taps.append(
            Contender(f"{first.label}, next run", argv, True, state, first.argv)
        )
    loop = Contender(
        "plain loop",
        (sys.executable, __file__, "--plain-loop", scenario.name, base_url),
        singer=False,
    )
    return [*taps, loop]


def _postgres_contenders(
    sandbox: Sandbox, settings: dict[str, int | str], workdir: Path
) -> list[Contender]:
    """``meltano run`` with BATCH and with RECORD messages, then dlt (the baseline)."""
    server = _pg_test_db("ensure")
    expected = tuple(int(settings[f"v1_{table}"]) for table in V1_TABLES)

    def load(name: str, kind: str, *fresh: Path) -> Load:
        schema, keys = POSTGRES_LOADS[kind]
        return Load(f"bench_{name}", schema, keys, expected, fresh)

    # Only what configures the pipeline, as in tests/e2e: nothing inherited.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TAP_ANALYTICS", "TARGET_", "MELTANO_"))
    }
    system_db = workdir / "meltano.db"
    meltano_env = {
        **env,
        "MELTANO_DATABASE_URI": f"sqlite:///{system_db}",
        "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
        "MELTANO_CLI_DISABLE_VERSION_CHECK": "true",
        "TAP_ANALYTICS_BASE_URL": sandbox.base_url,
        "TAP_ANALYTICS_CLIENT_ID": CLIENT_ID,
        "TAP_ANALYTICS_CLIENT_SECRET": CLIENT_SECRET,
        "TARGET_POSTGRES_HOST": server["PGHOST"],
        "TARGET_POSTGRES_PORT": server["PGPORT"],
        "TARGET_POSTGRES_USER": server["PGUSER"],
        "TARGET_POSTGRES_PASSWORD": server["PGPASSWORD"],
    }
    run = (str(MELTANO), "run", "tap-analytics", "target-postgres")
    dlt_url = (
        f"postgresql://{server['PGUSER']}:{server['PGPASSWORD']}@{server['PGHOST']}"
        f":{server['PGPORT']}/bench_dlt"
    )
    return [
        Contender(
            "meltano (BATCH)",
            run,
            singer=False,
            env={**meltano_env, "TARGET_POSTGRES_DATABASE": "bench_batch"},
            load=load("batch", "meltano", system_db),
        ),
        Contender(
            "meltano (RECORD)",
            run,
            singer=False,
            env={
                **meltano_env,
                "TARGET_POSTGRES_DATABASE": "bench_record",
                "MELTANO_ENVIRONMENT": "demo",  # meltano.yml's RECORD environment
            },
            load=load("record", "meltano", system_db),
        ),
        Contender(
            "dlt",
            (
                str(DLT_PYTHON),
                str(ROOT / "scripts" / "dlt_pipeline.py"),
                sandbox.base_url,
                dlt_url,
                POSTGRES_LOADS["dlt"][0],
            ),
            singer=False,
            env=env,
            load=load("dlt", "dlt"),
        ),
    ]


def _pg_test_db(*args: str) -> dict[str, str]:
    """``scripts/pg-test-db.sh ARGS``: its KEY=VALUE connection info."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "pg-test-db.sh"), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"scripts/pg-test-db.sh {shlex.join(args)}: {done.stderr}")
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def _prepare(load: Load) -> None:
    """An empty database, and no state from the run before."""
    _pg_test_db("create", load.database)
    for path in load.fresh:
        path.unlink(missing_ok=True)


def _loaded_rows(load: Load) -> int:
    """Rows in the contender's tables, once each holds exactly the sandbox's."""
    import psycopg  # the project's dev dependency; only these scenarios need it

    server = _pg_test_db("ensure")
    problems, total = [], 0
    with psycopg.connect(
        host=server["PGHOST"],
        port=int(server["PGPORT"]),
        user=server["PGUSER"],
        password=server["PGPASSWORD"],
        dbname=load.database,
    ) as conn:
        for table, key, want in zip(V1_TABLES, load.keys, load.expected, strict=True):
            rows, keys = conn.execute(
                f'SELECT count(*), count(DISTINCT "{key}") '
                f'FROM "{load.schema}"."{table}"'
            ).fetchone() or (0, 0)
            total += rows
            if rows != want or keys != want:
                problems.append(f"{table}: {rows:,} rows, {keys:,} keys of {want:,}")
    if problems:
        raise ChildFailedError("wrong rows in PostgreSQL: " + "; ".join(problems))
    return total


# Spawns a contender, times it, and writes its exit code and rusage to a file. Spawned
# from this script, a contender would inherit its peak RSS: on exec, Linux carries the
# high-water mark of the old address space into ru_maxrss, and subprocess execs from a
# vfork of this process, which holds request logs of up to tens of MB. This bare
# interpreter peaks near 10 MB, below any contender.
_LAUNCHER = """\
import json, os, sys, time
report, *argv = sys.argv[1:]
started = time.perf_counter()
pid = os.posix_spawn(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(report, "w") as out:
    json.dump({
        "wall": wall,
        "exit": os.waitstatus_to_exitcode(status),
        "cpu": usage.ru_utime + usage.ru_stime,
        "maxrss": usage.ru_maxrss,
    }, out)
"""


def _stderr_tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def measure(contender: Contender, sandbox: Sandbox, workdir: Path) -> Measurement:
    """One timed run with stdout to /dev/null, spawned through ``_LAUNCHER``."""
    stderr_path = workdir / "stderr.log"
    report_path = workdir / "launch.json"
    if contender.load is not None:
        _prepare(contender.load)
    sandbox.clear_requests()
    sandbox_cpu, busy = sandbox.cpu_seconds(), _busy_cpu_seconds()
    launch = (sys.executable, "-I", "-S", "-c", _LAUNCHER, str(report_path))
    with stderr_path.open("wb") as stderr:
        launcher = subprocess.run(
            [*launch, *contender.argv],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=contender.env,
            cwd=ROOT,  # the Meltano project
            check=False,
        )
    sandbox_cpu = _delta(sandbox_cpu, sandbox.cpu_seconds())
    busy = _delta(busy, _busy_cpu_seconds())
    if launcher.returncode:
        raise ChildFailedError(f"launcher failed:\n{_stderr_tail(stderr_path)}")
    report = json.loads(report_path.read_text())
    if report["exit"]:
        raise ChildFailedError(f"exit {report['exit']}:\n{_stderr_tail(stderr_path)}")
    if contender.load is not None:
        records = _loaded_rows(contender.load)
    else:
        records = _reported_records(stderr_path.read_text())
    cpu = report["cpu"]
    requests, rejected, paths = sandbox.request_counts()
    return Measurement(
        wall=report["wall"],
        cpu=cpu,
        peak_rss_mb=_rss_mb(report["maxrss"]),
        records=records,
        requests=requests,
        rejected=rejected,
        paths=paths,
        sandbox_cpu=sandbox_cpu,
        others_cpu=(
            None
            if busy is None or sandbox_cpu is None
            # Clock ticks are coarse: do not report a few negative hundredths.
            else max(0.0, busy - cpu - sandbox_cpu)
        ),
    )


def _reported_records(stderr: str) -> int:
    """The records a contender says it wrote: METRIC lines, or the tap's last line."""
    metrics = [json.loads(m) for m in _METRIC.findall(stderr)]
    if metrics:
        return sum(m["value"] for m in metrics if m["metric"] == "record_count")
    completed = _SYNC_COMPLETED.findall(stderr)
    if len(completed) != 1:
        raise ChildFailedError(f"no count of records in its stderr:\n{stderr[-2000:]}")
    return int(completed[0].replace(",", ""))


def count_output(contender: Contender, workdir: Path) -> int:
    """Records in the contender's real output, from an untimed run."""
    stderr_path = workdir / "stderr.log"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            contender.argv, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        assert proc.stdout is not None
        count = sum(
            not contender.singer or json.loads(line)["type"] == "RECORD"
            for line in proc.stdout
        )
        proc.wait()
    if proc.returncode:
        raise ChildFailedError(f"exit {proc.returncode}:\n{_stderr_tail(stderr_path)}")
    return count


def write_first_state(contender: Contender) -> None:
    """The last STATE of an untimed run of ``contender.first``, for its next run."""
    assert contender.state_file is not None
    done = subprocess.run(contender.first, capture_output=True, text=True, check=False)
    if done.returncode:
        raise ChildFailedError(f"exit {done.returncode}:\n{done.stderr[-2000:]}")
    states = [
        m for m in map(json.loads, done.stdout.splitlines()) if m["type"] == "STATE"
    ]
    contender.state_file.write_text(json.dumps(states[-1]["value"]))


def keyset_pages(jobs: int) -> int:
    """The tap's v1 ``jobs`` requests for a list that does not change: 100 jobs on
    the first page, then 99 new ones a page and one of overlap, up to the page
    shorter than its ``limit`` (a job read again after one without a time costs
    its place; the smoke datasets have too few for a page more)."""
    return 1 if jobs < PAGE_SIZE else (jobs - PAGE_SIZE) // (PAGE_SIZE - 1) + 2


def smoke_problems(
    outcomes: list[Outcome],
    counted: dict[str, int],
    v1_jobs: int | None,
    next_run_requests: int,
) -> list[str]:
    """Where the contenders disagree on records or requests, or a counter lies.

    A next run must ask for no result page: ``next_run_requests`` in all.
    """
    problems = []
    for outcome in outcomes:
        label = outcome.contender.label
        for run in outcome.runs:
            if run.records != counted[label]:
                problems.append(
                    f"{label}: reported {run.records} records, wrote {counted[label]}"
                )
    baseline = outcomes[-1]  # the plain loop
    expected = baseline.runs[0]
    for outcome in outcomes[:-1]:
        for run in outcome.runs:
            label = outcome.contender.label
            if outcome.contender.state_file is not None:
                if run.requests != next_run_requests:
                    problems.append(
                        f"{label}: {run.requests} requests, not {next_run_requests}"
                    )
                continue
            if run.records != expected.records:
                problems.append(
                    f"{label}: {run.records} records, plain loop {expected.records}"
                )
            paths = dict(expected.paths)
            if v1_jobs is not None:  # the loop: v1_jobs // 100 + 1 pages of offset
                paths["/v1/jobs"] = keyset_pages(v1_jobs)
            if run.paths != paths:
                problems.append(f"{label}: requests {run.paths}, expected {paths}")
    return problems


# --- reporting ----------------------------------------------------------------------


def _cell(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _median(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def table(outcomes: list[Outcome]) -> str:
    rows = [
        f"| run | wall s | ratio to {outcomes[-1].contender.label} | records/s "
        "| peak RSS MB | requests | 429s | CPU s | sandbox CPU s | others' CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    loop = outcomes[-1]
    loop_wall = statistics.median(r.wall for r in loop.runs) if loop.runs else None
    for outcome in outcomes:
        label = outcome.contender.label
        if outcome.failure is not None:
            rows.append(f"| {label} | FAILED | | | | | | | | |")
            continue
        runs = outcome.runs
        wall = statistics.median(r.wall for r in runs)
        records = runs[-1].records
        cells = [
            label,
            _cell(wall, 2),
            _cell(None if loop_wall is None else wall / loop_wall, 2),
            _cell(records / wall, 0),
            _cell(max(r.peak_rss_mb for r in runs), 1),
            f"{runs[-1].requests:,}",
            f"{max(r.rejected for r in runs):,}",
            _cell(statistics.median(r.cpu for r in runs), 2),
            _cell(_median([r.sandbox_cpu for r in runs]), 2),
            _cell(_median([r.others_cpu for r in runs]), 2),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def machine() -> str:
    now = datetime.datetime.now().astimezone()
    return (
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; {now:%Y-%m-%d %H:%M %Z}"
    )


# --- driver -------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _attempt(scenario: Scenario, outcome: Outcome, run: Callable[[], T]) -> T | None:
    """``run()``, or None with the contender marked failed (it is skipped after)."""
    if outcome.failure is not None:
        return None
    try:
        return run()
    except ChildFailedError as exc:
        outcome.failure = str(exc)
        log(f"{scenario.name}: {outcome.contender.label} FAILED, {exc}")
        return None


def run_scenario(scenario: Scenario, args: argparse.Namespace, out: IO[str]) -> bool:
    """Benchmark one scenario and print its table; False when anything failed."""
    settings = scenario.sandbox_settings(smoke=args.smoke, scale=args.scale)
    log(f"{scenario.name}: starting the sandbox ({settings})")
    counted: dict[str, int] = {}  # records in the real output, for --smoke
    with tempfile.TemporaryDirectory(prefix="tap-analytics-bench-") as tmp:
        workdir = Path(tmp)
        if scenario.postgres:
            log(f"{scenario.name}: setting up Meltano, dlt and PostgreSQL")
            for setup in ("meltano-setup.sh", "dlt-setup.sh"):
                subprocess.run(["bash", str(ROOT / "scripts" / setup)], check=True)
        sandbox = Sandbox(settings, workdir)
        try:
            log(f"{scenario.name}: sandbox ready in {sandbox.startup_seconds:.1f} s")
            if scenario.postgres:
                contenders = _postgres_contenders(sandbox, settings, workdir)
            else:
                contenders = _contenders(scenario, sandbox.base_url, workdir)
            outcomes = [Outcome(c) for c in contenders]
            loop = Outcome(_contenders(scenario, sandbox.base_url, workdir)[-1])
            # Untimed warm-up: the sandbox renders cursor pages on first request
            # and caches them, which must not be charged to the first contender.
            warm_up = _attempt(
                scenario, loop, functools.partial(count_output, loop.contender, workdir)
            )
            for outcome in outcomes:
                if outcome.contender.state_file is not None:
                    first = functools.partial(write_first_state, outcome.contender)
                    _attempt(scenario, outcome, first)
            # Repeats interleave the contenders, so drift hits them all alike, and
            # each repeat starts one contender later, so none always runs first
            # (right after the sandbox started, or after the plain loop).
            for repeat in range(args.repeat):
                shift = repeat % len(outcomes)
                for outcome in outcomes[shift:] + outcomes[:shift]:
                    run = _attempt(
                        scenario,
                        outcome,
                        functools.partial(measure, outcome.contender, sandbox, workdir),
                    )
                    if run is not None:
                        outcome.runs.append(run)
                        log(
                            f"{scenario.name}: {outcome.contender.label}: "
                            f"{run.wall:.2f} s, {run.records:,} records, "
                            f"{run.requests:,} requests"
                        )
            if args.smoke and warm_up is not None:
                counted[loop.contender.label] = warm_up
                for outcome in outcomes[:-1]:
                    count = _attempt(
                        scenario,
                        outcome,
                        functools.partial(count_output, outcome.contender, workdir),
                    )
                    if count is not None:
                        counted[outcome.contender.label] = count
        finally:
            sandbox.stop()
            for contender in contenders if scenario.postgres else ():
                if contender.load is not None:
                    _pg_test_db("drop", contender.load.database)
    failed = any(o.failure is not None for o in outcomes) or loop.failure is not None
    # v3: the workspace, the workflows and one job list per workflow
    next_run_requests = 2 + int(settings.get("v3_workflows", 0))
    v1_jobs = settings.get("v1_jobs")
    problems = (
        smoke_problems(
            outcomes,
            counted,
            None if v1_jobs is None else int(v1_jobs),
            next_run_requests,
        )
        if args.smoke and not failed
        else []
    )
    notes = [
        f"scale {args.scale:g}",
        *(["smoke"] if args.smoke else []),
        *([f"median of {args.repeat} runs"] if args.repeat > 1 else []),
    ]
    sizes = ", ".join(
        f"{name}={value:,}" if isinstance(value, int) else f"{name}={value}"
        for name, value in settings.items()
    )
    out.write(
        f"\n### {scenario.name} ({', '.join(notes)})\n\n"
        f"Sandbox: {sizes}; ready in {sandbox.startup_seconds:.1f} s, "
        f"peak RSS {_cell(sandbox.peak_rss_mb, 1)} MB.\n\n{table(outcomes)}\n"
    )
    if args.smoke and not failed:
        verdict = "OK" if not problems else "FAILED\n- " + "\n- ".join(problems)
        out.write(f"\nsmoke: {verdict}\n")
    out.flush()
    return not failed and not problems


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark tap-analytics against a plain requests loop."
    )
    parser.add_argument(
        "--scenario", choices=[*SCENARIOS, "all"], default="all", help="default: all"
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply the data sizes (v1: every stream; v3: workflows)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="timed runs per contender (median)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny datasets; fail unless records and requests agree",
    )
    parser.add_argument(
        "--plain-loop",
        nargs=2,
        metavar=("SCENARIO", "BASE_URL"),
        help="internal: run the plain loop against a sandbox",
    )
    parser.add_argument(
        "--batch-reader",
        action="store_true",
        help="internal: read BATCH files named on stdin, as a target does",
    )
    parser.add_argument(
        "--tap-without-schema-contract",
        metavar="CONFIG",
        help="internal: run the tap with its schema contract skipped",
    )
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.repeat < 1:
        parser.error("--scale must be positive and --repeat at least 1")
    return args


def compile_tap() -> None:
    """Byte-compile the tap's modules, as installing it from a wheel does.

    An editable install (``make install``) has no bytecode of the tap until an
    import writes it, and none is written with ``PYTHONDONTWRITEBYTECODE`` set (as
    in many containers): each run would compile the tap's 5,000 lines again, 60 ms
    that no installed tap spends. Python still checks each file's timestamp, so
    the bytecode is never stale.
    """
    spec = importlib.util.find_spec("tap_analytics")  # found, not imported
    for location in (spec.submodule_search_locations or []) if spec else []:
        compileall.compile_dir(location, quiet=1)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plain_loop is not None:
        plain_loop(*args.plain_loop)
        return 0
    if args.batch_reader:
        batch_reader()
        return 0
    if args.tap_without_schema_contract is not None:
        tap_without_schema_contract(args.tap_without_schema_contract)
        return 0
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    if args.smoke:  # PostgreSQL, Meltano and dlt: no smoke-sized run of those
        names = [name for name in names if not SCENARIOS[name].postgres]
    print(machine(), flush=True)
    compile_tap()
    ok = True
    for name in names:
        ok = run_scenario(SCENARIOS[name], args, sys.stdout) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

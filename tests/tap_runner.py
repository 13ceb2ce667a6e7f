"""Run the tap against the sandbox and collect what it wrote, the way a target would."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tap_analytics.tap import TapAnalytics
from tap_analytics.timestamps import parse_timestamp

if TYPE_CHECKING:
    from collections.abc import Callable

#: Each stream's primary key, by family.
V1_KEYS = {"jobs": "jobId", "connections": "connectionId", "workspaces": "workspaceId"}
V3_KEYS = {
    "workspace": "name",
    "workflows": "uid",
    "jobs": "uid",
    "successful_jobs": "uid",
    "job_results": "job_result_id",
}


def read_batch(message: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The records of a BATCH message's files, read now as a target would; None
    when a file cannot be opened any more (its tap is gone)."""
    records: list[dict[str, Any]] = []
    for url in message["manifest"]:
        try:
            with open(url.removeprefix("file://"), "rb") as batch:
                records.extend(json.loads(line) for line in batch)
        except FileNotFoundError:
            return None
    return records


class TargetStdout(io.StringIO):
    """stdout for an in-process run with ``batch_config``: it opens each BATCH
    file as soon as its message is written, as a target does (the tap waits for
    that), and keeps the records it held in ``batches``."""

    def __init__(self) -> None:
        super().__init__()
        self._partial = ""
        self.batches: list[list[dict[str, Any]] | None] = []

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            if '"type":"BATCH"' in line:
                self.batches.append(read_batch(json.loads(line)))
        return super().write(text)


@dataclass
class Output:
    """The Singer messages of one run, grouped by type.

    A BATCH message counts as the records its files held (``batches``, read when
    the message came): they go to ``records`` and to the message's ``records``.
    Reading stops at a batch that could not be read, as a target would fail there:
    what follows it was never loaded.
    """

    messages: list[dict[str, Any]]
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    states: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def parse(
        cls, text: str, batches: list[list[dict[str, Any]] | None] | None = None
    ) -> Output:
        messages = [json.loads(line) for line in text.splitlines() if line.strip()]
        records: dict[str, list[dict[str, Any]]] = defaultdict(list)
        schemas: dict[str, dict[str, Any]] = {}
        states: list[dict[str, Any]] = []
        unread = iter(batches or [])
        for index, message in enumerate(messages):
            if message["type"] in ("RECORD", "BATCH"):
                assert message["stream"] in schemas, f"{message['type']} before SCHEMA"
            if message["type"] == "RECORD":
                records[message["stream"]].append(message["record"])
            elif message["type"] == "BATCH":
                loaded = next(unread)
                if loaded is None:  # the target fails here
                    messages = messages[:index]
                    break
                message["records"] = loaded
                records[message["stream"]].extend(loaded)
            elif message["type"] == "SCHEMA":
                schemas[message["stream"]] = message
            elif message["type"] == "STATE":
                states.append(message["value"])
        return cls(messages, dict(records), schemas, states)

    def keys(self, stream: str, key: str) -> list[Any]:
        return [record[key] for record in self.records.get(stream, [])]

    @property
    def final_state(self) -> dict[str, Any]:
        return self.states[-1]


def uncovered_jobs_at_each_state(output: Output, update_times: dict[int, int]) -> int:
    """Jobs a STATE's bookmark passes before any BATCH announced them.

    A rerun from a STATE asks for the jobs at or after its bookmark: every job
    below it must be in a batch announced before that STATE. ``update_times`` are
    the server's hidden update times (``server.update_times()``, microseconds), so
    jobs without a visible ``lastUpdatedAt`` are counted too.
    """
    announced: set[int] = set()
    uncovered = 0
    for message in output.messages:
        if message["type"] == "BATCH" and message["stream"] == "jobs":
            announced.update(job["jobId"] for job in message["records"])
        elif message["type"] == "STATE":
            jobs_state = message["value"].get("bookmarks", {}).get("jobs", {})
            if bookmark := jobs_state.get("replication_key_value"):
                mark = int(parse_timestamp(bookmark).timestamp() * 1_000_000)
                uncovered += sum(
                    job_id not in announced
                    for job_id, updated in update_times.items()
                    if updated < mark
                )
    return uncovered


def middle_bookmark(server: Any) -> str:
    """The visible ``lastUpdatedAt`` of the job with a time halfway through the
    server's order: a bookmark some jobs are before and some after."""
    timed = [job for job in server.dataset["v1"]["jobs"] if job.get("lastUpdatedAt")]
    times = server.update_times()
    timed.sort(key=lambda job: times[job["jobId"]])
    return str(timed[len(timed) // 2]["lastUpdatedAt"])


def jobs_updated_since(server: Any, bookmark: str) -> set[int]:
    """The jobIds the server lists for ``updatedAtStart=bookmark``: those whose
    hidden update time is at or after it (jobs without a visible time included)."""
    since = int(parse_timestamp(bookmark).timestamp() * 1_000_000)
    return {job for job, updated in server.update_times().items() if updated >= since}


def assert_limits_in_range(server: Any) -> None:
    """Every request to ``/v1/*`` asked a ``limit`` the real server takes (1..100).

    The sandbox answers others with a 400 as the real server does; this makes a
    test that sent one fail even if it expected the failure for another reason.
    """
    bad = [
        f"{entry['path']}?limit={limit}"
        for entry in server.requests
        if entry["path"].startswith("/v1/")
        for limit in entry["query"].get("limit", [])
        if not (limit.isdigit() and 1 <= int(limit) <= 100)
    ]
    assert not bad, f"requests with a limit outside 1..100: {bad[:5]}"


def v1_config(server: Any, **extra: Any) -> dict[str, Any]:
    return {
        "base_url": server.base_url,
        "client_id": server.config.client_id,
        "client_secret": server.config.client_secret,
        **extra,
    }


def v3_config(server: Any, **extra: Any) -> dict[str, Any]:
    return {"base_url": server.base_url, "api_key": server.config.api_key, **extra}


def sync(
    config: dict[str, Any],
    state: dict[str, Any] | None = None,
    catalog: dict[str, Any] | None = None,
) -> Output:
    """Sync in this process (fast), capturing stdout as a target would read it."""
    buffer = TargetStdout()
    tap = TapAnalytics(config=config, state=state, catalog=catalog)
    with contextlib.redirect_stdout(buffer):
        tap.sync_all()
    return Output.parse(buffer.getvalue(), buffer.batches)


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def last_stderr_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def run_cli(
    *args: str,
    config: dict[str, Any] | None = None,
    tmp_path: Any = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    preexec_fn: Callable[[], None] | None = None,
) -> CliRun:
    """Run the installed ``tap-analytics`` command, as Meltano or a shell would
    (``preexec_fn``: set a limit of its process, say)."""
    argv = [os.path.join(os.path.dirname(sys.executable), "tap-analytics"), *args]
    if config is not None:
        path = tmp_path / "config.json"
        path.write_text(json.dumps(config))
        argv += ["--config", str(path)]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
        preexec_fn=preexec_fn,
    )
    return CliRun(done.returncode, done.stdout, done.stderr)

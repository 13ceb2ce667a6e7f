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
from typing import Any

from tap_analytics.tap import TapAnalytics


@dataclass
class Output:
    """The Singer messages of one run, grouped by type."""

    messages: list[dict[str, Any]]
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    states: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Output:
        messages = [json.loads(line) for line in text.splitlines() if line.strip()]
        records: dict[str, list[dict[str, Any]]] = defaultdict(list)
        schemas: dict[str, dict[str, Any]] = {}
        states: list[dict[str, Any]] = []
        for message in messages:
            if message["type"] == "RECORD":
                assert message["stream"] in schemas, "RECORD before its SCHEMA"
                records[message["stream"]].append(message["record"])
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
    buffer = io.StringIO()
    tap = TapAnalytics(config=config, state=state, catalog=catalog)
    with contextlib.redirect_stdout(buffer):
        tap.sync_all()
    return Output.parse(buffer.getvalue())


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
) -> CliRun:
    """Run the installed ``tap-analytics`` command, as Meltano or a shell would."""
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
    )
    return CliRun(done.returncode, done.stdout, done.stderr)

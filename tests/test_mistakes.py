"""A user's mistake gets one clear line: its exact text and exit code (issue 20).

Every test runs the installed command against the sandbox, as a user would; the
file a line names is the one the test wrote.
"""

from __future__ import annotations

import copy
import json
import re
import socketserver
import threading
from typing import TYPE_CHECKING

import pytest
from singer_sdk.exceptions import InvalidStreamSortException

from tap_analytics.cli import failure_message
from tap_analytics.settings import unknown_settings
from tap_analytics.tap import TapAnalytics
from tests.tap_runner import (
    CliRun,
    Output,
    jobs_updated_since,
    middle_bookmark,
    run_cli,
    v1_config,
)

if TYPE_CHECKING:
    from pathlib import Path

LOG_LINE = re.compile(
    r"^[\d-]+ [\d:,]+ \| (?P<level>\w+) +\| [\w.-]+ +\| (?P<text>.*)$"
)
JOBS_BOOKMARK = {"replication_key": "lastUpdatedAt"}


def log_messages(stderr: str, level: str) -> list[str]:
    matches = (LOG_LINE.match(line) for line in stderr.splitlines())
    return [m["text"] for m in matches if m and m["level"] == level]


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("start_dat", "did you mean 'start_date'?"),
        ("max_concurent_requests", "did you mean 'max_concurrent_requests'?"),
        ("colour", "tap-analytics --about lists the settings"),
    ],
)
def test_an_unknown_setting_is_a_warning_and_the_run_goes_on(
    sandbox, tmp_path, name, hint
):
    server = sandbox()
    # Were it read as start_date, this would select no job at all.
    config = v1_config(server, **{name: "2099-01-01T00:00:00Z"})
    run = run_cli(config=config, tmp_path=tmp_path)
    assert run.returncode == 0, run.last_stderr_line
    assert log_messages(run.stderr, "WARNING") == [
        f"unknown setting '{name}' is ignored; {hint}"
    ]
    jobs = Output.parse(run.stdout).keys("jobs", "jobId")
    assert sorted(jobs) == sorted(job["jobId"] for job in server.dataset["v1"]["jobs"])
    assert "Sync completed in" in run.last_stderr_line


def test_the_sdk_settings_are_known():
    schema = copy.deepcopy(TapAnalytics.config_jsonschema)
    TapAnalytics.append_builtin_config(schema)
    config = {
        "client_id": "c",
        "client_secret": "s",
        "stream_maps": {},
        "stream_map_config": {},
        "faker_config": {},
        "flattening_enabled": True,
        "flattening_max_depth": 1,
        "flattening_max_key_length": 60,
        "flattening_separator": "__",
        "batch_config": {},
        "emit_activate_version_messages": True,
    }
    assert unknown_settings(config, schema) == []
    assert unknown_settings({**config, "start_dat": "x"}, schema) == [
        "unknown setting 'start_dat' is ignored; did you mean 'start_date'?"
    ]


def test_emit_activate_version_messages_is_a_known_setting(sandbox, tmp_path):
    # The SDK reads it and --about advertises activate-version: it is no
    # unknown setting, and it does what it says on the full-table streams.
    server = sandbox()
    config = v1_config(server, emit_activate_version_messages=True)
    run = run_cli(config=config, tmp_path=tmp_path)
    assert run.returncode == 0, run.last_stderr_line
    assert log_messages(run.stderr, "WARNING") == []
    messages = [json.loads(line) for line in run.stdout.splitlines()]
    activated = [m["stream"] for m in messages if m["type"] == "ACTIVATE_VERSION"]
    assert sorted(set(activated)) == ["connections", "workspaces"]


def state_cases(path):
    unwrapped = path.with_suffix(".unwrapped.json")
    another_tap = "(a state of another tap?): give this tap's last STATE, or no --state"
    return {
        "as Meltano stores it": (
            {"singer_state": {"bookmarks": {"jobs": JOBS_BOOKMARK}}},
            f'holds a state as Meltano stores it ({{"singer_state": …}}): give the '
            f'tap the object under "singer_state": jq .singer_state {path} > '
            f"{unwrapped}",
        ),
        "bookmark on another key": (
            {
                "bookmarks": {
                    "jobs": {
                        "replication_key": "updated_at",
                        "replication_key_value": "2030-01-01T00:00:00Z",
                    }
                }
            },
            "has a bookmark of stream 'jobs' on 'updated_at', not on "
            f"'lastUpdatedAt' {another_tap} (a full sync)",
        ),
        "bookmark on no key": (
            {"bookmarks": {"jobs": {"replication_key_value": "2030-01-01T00:00:00Z"}}},
            "has a bookmark of stream 'jobs' on no replication_key, not on "
            f"'lastUpdatedAt' {another_tap} (a full sync)",
        ),
        "bookmark not a timestamp": (
            {"bookmarks": {"jobs": {**JOBS_BOOKMARK, "replication_key_value": 12345}}},
            "has a bookmark of stream 'jobs' on 'lastUpdatedAt' whose value is not "
            f"an ISO-8601 timestamp {another_tap} (a full sync)",
        ),
        # Shapes the SDK (and the schema contract) would end in a traceback on.
        "bookmarks not an object": (
            {"bookmarks": []},
            "has bookmarks that are an array, not an object "
            f"{another_tap} (a full sync)",
        ),
        "another family's bookmark not an object": (
            {"bookmarks": {"workflows": "x"}},
            "has a bookmark of stream 'workflows' that is a string, not an object "
            f"{another_tap} (a full sync)",
        ),
        "inferred_properties not an object": (
            {"bookmarks": {"connections": {"inferred_properties": []}}},
            "has inferred_properties of stream 'connections' that are an array, not "
            f"an object {another_tap} (a full sync)",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "as Meltano stores it",
        "bookmark on another key",
        "bookmark on no key",
        "bookmark not a timestamp",
        "bookmarks not an object",
        "another family's bookmark not an object",
        "inferred_properties not an object",
    ],
)
def test_a_state_that_is_not_this_taps_fails_before_anything_is_emitted(
    sandbox, tmp_path, case
):
    server = sandbox()
    path = tmp_path / "state.json"
    state, problem = state_cases(path)[case]
    path.write_text(json.dumps(state))
    run = run_cli("--state", str(path), config=v1_config(server), tmp_path=tmp_path)
    assert run.returncode == 1
    assert run.last_stderr_line == f"tap-analytics: error: --state {path} {problem}"
    assert run.stdout == ""
    assert server.requests == []


def test_the_state_under_singer_state_is_the_one_to_give(sandbox, tmp_path):
    server = sandbox()
    bookmark = middle_bookmark(server)
    state = {
        "bookmarks": {"jobs": {**JOBS_BOOKMARK, "replication_key_value": bookmark}}
    }
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state))  # what `jq .singer_state` gives
    run = run_cli("--state", str(path), config=v1_config(server), tmp_path=tmp_path)
    assert run.returncode == 0, run.last_stderr_line
    emitted = Output.parse(run.stdout).keys("jobs", "jobId")
    expected = jobs_updated_since(server, bookmark)
    assert sorted(emitted) == sorted(expected)
    assert 0 < len(expected) < len(server.dataset["v1"]["jobs"])


BAD_JSON = '{"client_secret": "s3cr3t-in-a-broken-file", '


@pytest.mark.parametrize("option", ["--config", "--state", "--catalog"])
def test_invalid_json_names_the_file_and_never_its_content(sandbox, tmp_path, option):
    server = sandbox()
    path = tmp_path / "broken.json"
    path.write_text(BAD_JSON)
    args = [option, str(path)]
    if option != "--config":
        config = tmp_path / "config.json"
        config.write_text(json.dumps(v1_config(server)))
        args += ["--config", str(config)]
    run = run_cli(*args)
    assert run.returncode == 1
    assert run.last_stderr_line == (
        f"tap-analytics: error: {option} {path} is not valid JSON: Expecting "
        f"property name enclosed in double quotes at line 1 column {len(BAD_JSON) + 1}"
    )
    assert "s3cr3t" not in run.stderr + run.stdout
    assert server.requests == []


@pytest.mark.parametrize(
    ("content", "kind"), [("[]", "an array"), ('"x"', "a string"), ("3", "a number")]
)
def test_a_file_without_a_json_object_is_one_line(sandbox, tmp_path, content, kind):
    server = sandbox()
    path = tmp_path / "state.json"
    path.write_text(content)
    run = run_cli("--state", str(path), config=v1_config(server), tmp_path=tmp_path)
    assert run.returncode == 1
    assert run.last_stderr_line == (
        f"tap-analytics: error: --state {path} must hold a JSON object, not {kind}"
    )


def test_a_missing_config_file_is_one_line(tmp_path):
    path = tmp_path / "config.json"
    run = run_cli("--config", str(path))
    assert run.returncode == 1
    assert (
        run.last_stderr_line == f"tap-analytics: error: --config {path} was not found"
    )


def test_a_missing_state_file_is_a_usage_error(sandbox, tmp_path):
    path = tmp_path / "state.json"
    run = run_cli("--state", str(path), config=v1_config(sandbox()), tmp_path=tmp_path)
    assert run.returncode == 2
    assert run.last_stderr_line == (
        f"Error: Invalid value for '--state': '{path}': No such file or directory"
    )


def test_a_v1_config_without_its_secret_is_one_line(sandbox, tmp_path):
    server = sandbox()
    config = {"base_url": server.base_url, "client_id": server.config.client_id}
    run = run_cli(config=config, tmp_path=tmp_path)
    assert run.returncode == 1
    assert run.last_stderr_line == (
        "tap-analytics: error: api_version v1 needs client_secret"
    )
    assert server.requests == []


def test_records_out_of_order_are_reported_as_such():
    # The SDK's check behind the tap's own: no run of the tap reaches it (the
    # paginator and the state check stop first), so it is tested as a unit.
    error = InvalidStreamSortException("Latest value 'a' is smaller than 'b'.")
    assert failure_message(error) == (
        "records out of replication-key order: Latest value 'a' is smaller than 'b'."
    )


def run_v3_against(
    handler: type[socketserver.StreamRequestHandler], tmp_path: Path
) -> tuple[CliRun, str]:
    """The tap (v3, no waits between retries) against a server of ``handler``'s
    answers on a real socket; the run and the server's base URL."""
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base_url = f"http://127.0.0.1:{server.server_address[1]}"
        config = {"base_url": base_url, "api_key": "k", "retry_backoff_factor": 0}
        run = run_cli(config=config, tmp_path=tmp_path)
        server.shutdown()
    return run, base_url


class _OneAnswerHandler(socketserver.StreamRequestHandler):
    """Reads a request's head, then writes ``answer(path)`` as it is."""

    def handle(self) -> None:
        path = self.rfile.readline().split()[1]
        while self.rfile.readline() not in (b"\r\n", b""):
            pass  # the rest of the request's head
        self.wfile.write(self.answer(path))

    def answer(self, path: bytes) -> bytes:
        raise NotImplementedError


class _CutShortHandler(_OneAnswerHandler):
    """Answers every request with a chunked body that ends mid-chunk."""

    def answer(self, path: bytes) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b'Transfer-Encoding: chunked\r\n\r\n40\r\n{"data": ['
        )


def test_a_response_cut_short_is_named_not_called_unreachable(tmp_path):
    # The server answered, then its body ended early (requests'
    # ChunkedEncodingError, retried as the policy says): the host was reached, so
    # the line names what went wrong instead of "connection refused".
    run, base_url = run_v3_against(_CutShortHandler, tmp_path)
    assert run.returncode == 1
    assert run.last_stderr_line == (
        f"tap-analytics: error: GET {base_url}/v3/workflows failed: "
        "ChunkedEncodingError (gave up after 4 attempts)"
    )


@pytest.mark.parametrize("batch_size", [0, -5])
def test_a_batch_size_below_one_is_one_line(sandbox, tmp_path, batch_size):
    # 0 used to mean the default (10,000), silently.
    server = sandbox()
    batch_config = {"encoding": {"format": "jsonl"}, "batch_size": batch_size}
    config = v1_config(server, batch_config=batch_config)
    run = run_cli(config=config, tmp_path=tmp_path)
    assert run.returncode == 1
    assert run.last_stderr_line == (
        "tap-analytics: error: setting 'batch_config.batch_size' must be at least 1"
    )
    assert server.requests == []


class _RedirectLoopHandler(_OneAnswerHandler):
    """Answers every request with a redirect to itself, and counts them."""

    requests = 0

    def answer(self, path: bytes) -> bytes:
        type(self).requests += 1
        return (
            b"HTTP/1.1 302 Found\r\nLocation: " + path + b"\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        )


def test_a_failure_that_is_not_retried_does_not_say_it_gave_up(tmp_path):
    # A redirect loop (requests' TooManyRedirects) is not one of the failures the
    # policy retries: the line names it, without "gave up after 4 attempts".
    run, base_url = run_v3_against(_RedirectLoopHandler, tmp_path)
    assert run.returncode == 1
    assert run.last_stderr_line == (
        f"tap-analytics: error: GET {base_url}/v3/workflows failed: TooManyRedirects"
    )
    # One request, followed 30 times: not retried.
    assert _RedirectLoopHandler.requests == 31

"""HTTPS as in production: a test CA trusted the standard way, one retry policy."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
import requests

from tap_analytics import retry
from tap_analytics.sandbox import SandboxConfig, SandboxServer
from tests.tap_runner import (
    Output,
    assert_limits_in_range,
    run_cli,
    sync,
    v1_config,
    v3_config,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

V1_KEYS = {"jobs": "jobId", "connections": "connectionId", "workspaces": "workspaceId"}
V3_KEYS = {"workflows": "uid", "jobs": "uid"}


@pytest.fixture
def tls_sandbox() -> Iterator[Callable[..., SandboxServer]]:
    """``tls_sandbox(**config_fields)`` starts an HTTPS sandbox; teardown stops it."""
    servers: list[SandboxServer] = []

    def start(**fields: Any) -> SandboxServer:
        server = SandboxServer(SandboxConfig(**fields), tls=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    for server in servers:
        assert_limits_in_range(server)


def assert_exact(out: Output, server: SandboxServer, family: str, keys: dict) -> None:
    for stream, key in keys.items():
        expected = sorted(r[key] for r in server.dataset[family][stream])
        assert sorted(out.keys(stream, key)) == expected, stream


def test_v1_syncs_exactly_over_https_with_the_ca_from_the_environment(
    tls_sandbox, tmp_path
):
    # absolute next links must be https too, or the tap would refuse them
    server = tls_sandbox(v1_jobs=120, v1_connections=150)
    assert server.base_url.startswith("https://127.0.0.1:")
    run = run_cli(
        config=v1_config(server, page_size=25),
        tmp_path=tmp_path,
        env={"REQUESTS_CA_BUNDLE": server.ca_file},
    )
    assert run.returncode == 0, run.last_stderr_line
    assert_exact(Output.parse(run.stdout), server, "v1", V1_KEYS)
    tokens = [r["status"] for r in server.requests if r["path"] == "/token"]
    assert tokens == [200]
    assert {r["auth"] for r in server.requests if r["path"] != "/token"} == {"bearer"}


def test_v3_syncs_exactly_over_https_concurrently(tls_sandbox, monkeypatch):
    server = tls_sandbox(v3_workflows=5, v3_results_per_job=30, v3_results_page_size=7)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca_file)
    out = sync(v3_config(server, max_concurrent_requests=4))
    assert_exact(out, server, "v3", V3_KEYS)
    data = server.dataset["v3"]
    expected_results = {
        item["job_result_id"]
        for items in data["job_results"].values()
        for item in items
    }
    assert expected_results  # result pages follow absolute https links
    assert set(out.keys("job_results", "job_result_id")) == expected_results
    assert len(out.keys("job_results", "job_result_id")) == len(expected_results)


@pytest.mark.parametrize("family", ["v1", "v3"])
def test_an_untrusted_certificate_fails_at_once_with_one_line(
    tls_sandbox, tmp_path, family
):
    server = tls_sandbox()
    config = v1_config(server) if family == "v1" else v3_config(server)
    started = time.monotonic()
    # no REQUESTS_CA_BUNDLE: the system's trust store does not know the test CA
    run = run_cli(config=config, tmp_path=tmp_path, env={"REQUESTS_CA_BUNDLE": ""})
    assert time.monotonic() - started < 10  # not retried with 2+4+8 s waits
    assert run.returncode == 1
    last = run.last_stderr_line
    assert last.startswith("tap-analytics: error: TLS certificate of https://"), last
    assert "not trusted" in last
    assert "REQUESTS_CA_BUNDLE" in last
    assert "Traceback" not in run.stderr
    assert server.requests == []  # no request got past the handshake


def test_an_unreachable_https_token_url_fails_within_20_s(tmp_path):
    # Port 9 (discard) is closed on loopback: every connection is refused at once,
    # so the run takes the default policy's waits (2 + 4 + 8 s, up to 10 % more)
    # and nothing else; a transport retry below it would add minutes.
    config = {
        "base_url": "https://127.0.0.1:9",
        "client_id": "id",
        "client_secret": "secret-value",
    }
    started = time.monotonic()
    run = run_cli(config=config, tmp_path=tmp_path, timeout=60)
    elapsed = time.monotonic() - started
    assert 14 <= elapsed <= 20, elapsed
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if "tap-analytics: " in line]
    assert errors == [run.last_stderr_line]
    assert "Traceback" not in run.stderr
    assert run.last_stderr_line == (
        "tap-analytics: error: cannot reach token_url https://127.0.0.1:9/token: "
        "connection refused or host unreachable (gave up after 4 attempts)"
    )
    assert "secret-value" not in run.stderr


def test_a_503_retry_after_from_an_https_token_url_is_capped_by_the_tap(
    tls_sandbox, monkeypatch
):
    # An hour's Retry-After, which a transport-level retry would sleep through;
    # the tap's policy caps it (the cap is lowered here to keep the test short).
    server = tls_sandbox(
        v1_jobs=5,
        scripted_faults=[
            {"path": "/token", "status": 503, "headers": {"Retry-After": "3600"}}
        ],
    )
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca_file)
    monkeypatch.setattr(retry, "MAX_RETRY_AFTER_SECONDS", 1.0)
    outputs: list[Output] = []
    worker = threading.Thread(
        target=lambda: outputs.append(sync(v1_config(server))), daemon=True
    )
    started = time.monotonic()
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "slept through Retry-After: 3600"
    assert 1.0 <= time.monotonic() - started < 10
    assert_exact(outputs[0], server, "v1", V1_KEYS)
    tokens = [r["status"] for r in server.requests if r["path"] == "/token"]
    assert tokens == [503, 200]


def test_sandbox_cli_serves_https_and_writes_the_ca_file(tmp_path):
    ready, ca_file = tmp_path / "ready", tmp_path / "ca.pem"
    argv = ["--tls", "--ca-file", str(ca_file), "--ready-file", str(ready)]
    process = subprocess.Popen(
        [sys.executable, "-m", "tap_analytics.sandbox", *argv, "--v1-jobs", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            time.sleep(0.02)
        base_url = ready.read_text()
        assert base_url.startswith("https://127.0.0.1:")
        dataset = requests.get(f"{base_url}/_sandbox/dataset", verify=str(ca_file))
        assert len(dataset.json()["v1"]["jobs"]) == 3
    finally:
        process.terminate()
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert out.splitlines() == [
        f"sandbox API listening on {base_url}",
        f"export REQUESTS_CA_BUNDLE={ca_file}",
    ]


def test_https_to_a_plain_http_port_names_the_tls_handshake(sandbox, tmp_path):
    server = sandbox()
    base_url = server.base_url.replace("http://", "https://")
    config = {**v3_config(server), "base_url": base_url, "retry_backoff_factor": 0.01}
    run = run_cli(config=config, tmp_path=tmp_path)
    assert run.returncode == 1
    last = run.last_stderr_line
    assert last.startswith(f"tap-analytics: error: cannot reach GET {base_url}/v3/")
    assert "TLS handshake failed" in last
    assert "Traceback" not in run.stderr


def test_v1_next_links_naming_an_internal_host_are_read_on_base_url(
    tls_sandbox, tmp_path
):
    # A self-hosted server writes its internal host, over plain http, into
    # `next`; the link keeps only limit and offset (API.md "The real server").
    # Each next page is read on base_url with that query: exact, and every
    # request (with the token) went over https to the server the user named.
    internal = "http://airbyte-airbyte-server-svc:8001"
    server = tls_sandbox(v1_jobs=120, v1_connections=250, v1_workspaces=150)
    server.config.link_origin = internal  # before the first page is rendered
    run = run_cli(
        config=v1_config(server),
        tmp_path=tmp_path,
        env={"REQUESTS_CA_BUNDLE": server.ca_file},
    )
    assert run.returncode == 0, run.last_stderr_line
    assert_exact(Output.parse(run.stdout), server, "v1", V1_KEYS)
    offsets = {
        path: [
            r["query"].get("offset", ["0"])[0]
            for r in server.requests
            if r["path"] == path
        ]
        for path in ("/v1/connections", "/v1/workspaces")
    }
    assert offsets == {
        "/v1/connections": ["0", "100", "200"],
        "/v1/workspaces": ["0", "100"],
    }


def test_v3_next_link_to_plain_http_stops_with_one_line(tls_sandbox, tmp_path):
    # paging.next on the same host and port, but http: following it would send
    # the API key unencrypted. One line naming the URL, exit 1, the link never
    # requested.
    server = tls_sandbox(v3_workflows=1, v3_jobs_per_workflow=2)
    plain = server.base_url.replace("https://", "http://")
    server.config.link_origin = plain
    run = run_cli(
        config=v3_config(server),
        tmp_path=tmp_path,
        env={"REQUESTS_CA_BUNDLE": server.ca_file},
    )
    assert run.returncode == 1
    line = run.last_stderr_line
    assert "refusing to follow a next-page URL on another scheme or host" in line
    assert f"({plain}/v3/jobs/" in line
    assert server.config.api_key not in run.stderr
    results = [r for r in server.requests if r["path"].endswith("/results")]
    assert results
    assert not [r for r in results if "cursor" in r["query"]]
    assert "Traceback" not in run.stderr

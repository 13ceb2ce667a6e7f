"""Faults, token trouble and bad input: exact records or one clear line (issue 6)."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from tap_analytics.transport import RateLimiter
from tests.tap_runner import V1_KEYS, Output, run_cli, sync, v1_config, v3_config

# Retry timing is tested on its own below; elsewhere short waits keep tests fast.
FAST_RETRIES = {"retry_backoff_factor": 0.01}


def assert_exact_v1(out: Output, server) -> None:
    for stream, key in V1_KEYS.items():
        expected = sorted(r[key] for r in server.dataset["v1"][stream])
        assert sorted(out.keys(stream, key)) == expected, stream


def test_v1_with_20_percent_faults_emits_exactly_the_dataset(sandbox):
    server = sandbox(fault_rate=0.2, fault_retry_after="0", max_consecutive_faults=2)
    out = sync(v1_config(server, page_size=20, **FAST_RETRIES))
    assert_exact_v1(out, server)
    faults = [r for r in server.requests if r["fault"]]
    assert len(faults) >= 5
    assert {r["status"] for r in faults} <= {429, 500, 502, 503, 504}


def test_v3_with_20_percent_faults_emits_exactly_the_dataset(sandbox):
    server = sandbox(fault_rate=0.2, fault_retry_after="0", max_consecutive_faults=2)
    out = sync(v3_config(server, **FAST_RETRIES))
    data = server.dataset["v3"]
    assert sorted(out.keys("jobs", "uid")) == sorted(j["uid"] for j in data["jobs"])
    expected_results = sum(len(items) for items in data["job_results"].values())
    assert len(set(out.keys("job_results", "job_result_id"))) == expected_results
    assert len(out.keys("job_results", "job_result_id")) == expected_results
    assert len([r for r in server.requests if r["fault"]]) >= 3


def test_cli_with_faults_exits_0(sandbox, tmp_path):
    server = sandbox(fault_rate=0.2, fault_retry_after="0")
    run = run_cli(config=v1_config(server, **FAST_RETRIES), tmp_path=tmp_path)
    assert run.returncode == 0, run.last_stderr_line
    assert_exact_v1(Output.parse(run.stdout), server)


def test_short_lived_tokens_are_refreshed_before_expiry(sandbox):
    server = sandbox(token_ttl=2, latency_ms=60, v1_jobs=800)
    started = time.monotonic()
    # Serial, so that the run outlives the tokens (concurrent windows end sooner).
    out = sync(v1_config(server, page_size=10, max_concurrent_requests=1))
    assert time.monotonic() - started > 4  # the run outlives two token lifetimes
    assert_exact_v1(out, server)
    assert len([r for r in server.requests if r["path"] == "/token"]) >= 2
    assert not [r for r in server.requests if r["status"] == 401]


@pytest.mark.parametrize(("workers", "jobs"), [(1, 300), (8, 1_500)])
def test_tokens_revoked_mid_run_are_replaced_once(sandbox, workers, jobs):
    # Enough pages that the run (concurrent: windows) is still going at 0.8 s.
    server = sandbox(latency_ms=60, v1_jobs=jobs)
    revoker = threading.Timer(0.8, server.revoke_tokens)
    revoker.start()
    out = sync(v1_config(server, page_size=10, max_concurrent_requests=workers))
    revoker.join()
    assert_exact_v1(out, server)
    paths = [(r["path"], r["status"]) for r in server.requests]
    first_401 = next(i for i, (_, status) in enumerate(paths) if status == 401)
    # Every request in flight at the revocation is rejected (serially: one), and
    # one new token serves them all and every request after them.
    rejected = [p for p in paths if p[1] == 401]
    assert 1 <= len(rejected) <= workers + 1
    assert ("/token", 200) in paths[first_401 : first_401 + len(rejected) + 1]
    assert len([p for p in paths if p[0] == "/token"]) == 2


def test_retry_after_is_honoured(sandbox):
    server = sandbox(
        scripted_faults=[
            {"path": "/v1/workspaces", "status": 429, "headers": {"Retry-After": "2"}}
        ]
    )
    # a 10 s factor would wait 10-11 s: only Retry-After explains a ~2 s wait
    out = sync(v1_config(server, retry_backoff_factor=10))
    assert_exact_v1(out, server)
    hits = [r for r in server.requests if r["path"] == "/v1/workspaces"]
    assert hits[0]["status"] == 429
    waited = hits[1]["time"] - hits[0]["time"]
    assert 1.9 <= waited < 3.0, waited


def test_retry_after_overrides_the_computed_wait(sandbox):
    server = sandbox(
        scripted_faults=[
            {"path": "/v1/workspaces", "status": 503, "headers": {"Retry-After": "1"}}
        ]
    )
    sync(v1_config(server, retry_backoff_factor=10))
    hits = [r for r in server.requests if r["path"] == "/v1/workspaces"]
    assert 0.9 <= hits[1]["time"] - hits[0]["time"] < 2.5


def test_gives_up_after_three_retries(sandbox, tmp_path):
    server = sandbox(
        scripted_faults=[{"path": "/v1/workspaces", "status": 503, "times": 10}]
    )
    run = run_cli(config=v1_config(server, **FAST_RETRIES), tmp_path=tmp_path)
    assert run.returncode != 0
    assert len([r for r in server.requests if r["path"] == "/v1/workspaces"]) == 4
    assert "/v1/workspaces" in run.last_stderr_line
    assert "503" in run.last_stderr_line
    assert "gave up after 4 attempts" in run.last_stderr_line


def test_records_and_state_before_a_fatal_error_are_intact(sandbox, tmp_path):
    # streams run jobs, connections, workspaces: break the last one
    server = sandbox(html_paths=["/v1/workspaces"])
    run = run_cli(config=v1_config(server), tmp_path=tmp_path)
    assert run.returncode != 0
    out = Output.parse(run.stdout)  # every line is complete JSON
    for stream in ("jobs", "connections"):
        key = V1_KEYS[stream]
        expected = sorted(r[key] for r in server.dataset["v1"][stream])
        assert sorted(out.keys(stream, key)) == expected
    assert out.final_state["bookmarks"]["jobs"]["replication_key_value"]
    assert "workspaces" not in out.records


SECRET = "s3cr3t-Value-that-must-not-leak"


def failure_cases(server):
    good = v1_config(server)
    return {
        "looping cursor": (good, ["repeated a pagination cursor", "connections"]),
        "html page": (good, ["expected JSON", "/v1/workspaces", "text/html"]),
        "wrong client secret": (
            dict(good, client_secret=SECRET),
            ["token_url", "/token", "401"],
        ),
        "no credentials": ({"base_url": server.base_url}, ["no credentials"]),
        "secret of the wrong type": (
            dict(good, client_secret=987654321987),
            ["client_secret", "string"],
        ),
        "unreachable server": (
            dict(good, base_url="http://127.0.0.1:9", retry_backoff_factor=0.1),
            ["127.0.0.1:9", "cannot reach", "gave up after 4 attempts"],
        ),
        "both families": (dict(good, api_key=SECRET), ["api_key", "client_id"]),
        "bad start_date": (dict(good, start_date="last tuesday"), ["start_date"]),
        "base_url not a URL": (dict(good, base_url="api.example.com"), ["base_url"]),
        "bad stream map": (
            dict(good, stream_maps={"jobs": {"x": "md5(("}}),
            ["stream_maps", "md5(("],
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "looping cursor",
        "html page",
        "wrong client secret",
        "no credentials",
        "secret of the wrong type",
        "unreachable server",
        "both families",
        "bad start_date",
        "base_url not a URL",
        "bad stream map",
    ],
)
def test_failures_end_with_one_clear_line(sandbox, tmp_path, case):
    server = sandbox(
        loop_cursor="connections" if case == "looping cursor" else None,
        # full pages of connections, so the tap follows the repeated `next`
        v1_connections=300 if case == "looping cursor" else 120,
        html_paths=["/v1/workspaces"] if case == "html page" else [],
    )
    config, expected_words = failure_cases(server)[case]
    started = time.monotonic()
    run = run_cli(config=config, tmp_path=tmp_path)
    assert time.monotonic() - started < 15
    assert run.returncode != 0
    last = run.last_stderr_line
    assert last.startswith("tap-analytics: error: "), last
    for word in expected_words:
        assert word in last, (word, last)
    assert "Traceback" not in run.stderr
    for secret in (SECRET, "987654321987", server.config.client_secret):
        assert secret not in run.stdout + run.stderr, secret


def test_looping_cursor_emits_nothing_from_the_repeated_page(sandbox, tmp_path):
    server = sandbox(loop_cursor="connections", v1_connections=300)
    run = run_cli(config=v1_config(server), tmp_path=tmp_path)
    assert run.returncode != 0
    emitted = Output.parse(run.stdout).keys("connections", "connectionId")
    assert len(emitted) == len(set(emitted)) == 200  # pages 1 and 2, not 2 again
    assert len([r for r in server.requests if r["path"] == "/v1/connections"]) == 2


def test_v3_looping_results_cursor_is_an_error(sandbox, tmp_path):
    server = sandbox(loop_cursor="job_results", v3_results_per_job=80)
    run = run_cli(config=v3_config(server), tmp_path=tmp_path)
    assert run.returncode != 0
    assert "repeated a pagination cursor" in run.last_stderr_line
    assert "Traceback" not in run.stderr
    assert server.config.api_key not in run.stdout + run.stderr


def test_debug_log_level_keeps_the_traceback_and_the_secrets(sandbox, tmp_path):
    server = sandbox(html_paths=["/v1/jobs"])
    run = run_cli(
        config=v1_config(server),
        tmp_path=tmp_path,
        env={"TAP_ANALYTICS_LOGLEVEL": "DEBUG"},
    )
    assert run.returncode != 0
    assert "Traceback" in run.stderr
    assert run.last_stderr_line.startswith("tap-analytics: error: expected JSON")
    assert server.config.client_secret not in run.stdout + run.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"client_id": "x", ', "not valid JSON"),
        (None, "was not found"),
    ],
)
def test_an_unreadable_config_file_is_one_line(tmp_path, content, expected):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    run = run_cli("--config", str(path))
    assert run.returncode != 0
    assert run.last_stderr_line.startswith("tap-analytics: error: ")
    assert expected in run.last_stderr_line
    assert "Traceback" not in run.stderr


def test_token_endpoint_faults_are_retried(sandbox):
    server = sandbox(scripted_faults=[{"path": "/token", "status": 503, "times": 2}])
    out = sync(v1_config(server, **FAST_RETRIES))
    assert_exact_v1(out, server)
    tokens = [r["status"] for r in server.requests if r["path"] == "/token"]
    assert tokens == [503, 503, 200]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PAGE_SIZE", "abc", "TAP_ANALYTICS_PAGE_SIZE (setting 'page_size') must be"),
        ("STREAM_MAPS", "{x", "TAP_ANALYTICS_STREAM_MAPS (setting 'stream_maps')"),
    ],
)
def test_a_badly_typed_setting_from_the_environment_is_one_line(
    sandbox, variable, value, expected
):
    server = sandbox()
    env = {
        "TAP_ANALYTICS_BASE_URL": server.base_url,
        "TAP_ANALYTICS_API_KEY": server.config.api_key,
        f"TAP_ANALYTICS_{variable}": value,
    }
    run = run_cli("--config", "ENV", env=env)
    assert run.returncode == 1
    assert run.last_stderr_line.startswith("tap-analytics: error: environment")
    assert expected in run.last_stderr_line
    assert "Traceback" not in run.stderr
    assert server.requests == []


def test_a_bare_429_pauses_every_thread_for_the_policy_wait():
    # Load shedding: a 429 without Retry-After or rate headers. Every request
    # waits factor * 2**(n-1) after the n-th in a row; a success starts over.
    limiter = RateLimiter(None, backoff_factor=0.2)

    def answer(status: int) -> requests.Response:
        response = requests.Response()
        response.status_code = status
        return response

    def wait_after(*statuses: int) -> float:
        """How long two threads wait for a request after these answers: the less."""
        for status in statuses:
            limiter.after_response(limiter.before_request(), answer(status))
        waits: list[float] = []

        def request() -> None:
            started = time.monotonic()
            limiter.before_request()
            waits.append(time.monotonic() - started)

        threads = [threading.Thread(target=request) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return min(waits)

    assert 0.18 <= wait_after(429) < 0.3
    assert 0.38 <= wait_after(429) < 0.5  # the second in a row
    assert wait_after(200) < 0.05  # a success ends the pause and the streak
    assert 0.18 <= wait_after(429) < 0.3
    # A 429 with Retry-After, or with rate headers, is the server's word instead.
    limited = answer(429)
    limited.headers["Retry-After"] = "0"
    limiter.after_response(limiter.before_request(), answer(200))
    limiter.after_response(limiter.before_request(), limited)
    started = time.monotonic()
    limiter.before_request()
    assert time.monotonic() - started < 0.05

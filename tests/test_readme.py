"""The shell examples of the README and of docs/ work as written (issues 12, 20).

Every fenced ``bash`` block of README.md and of docs/*.md (read in that order: the
README, then the docs by name) is either run here (``RUN``), in that order, in one
shell in a temporary directory with the tap installed (the README's first block
starts the sandbox the others use); or run by tests/e2e/test_readme_meltano.py
(``RUN_IN_E2E``: Meltano into a throwaway PostgreSQL role and database); or listed in
``NOT_RUN`` word for word with what it needs (the real API, a network install). A
block in none of them fails the test: an edit must say which.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from tap_analytics.sandbox import SandboxConfig, SandboxServer

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```bash\n(.*?)^```$", re.MULTILINE | re.DOTALL)

# Run in reading order, known by their first line (the rest may change freely).
RUN = (
    "python -m tap_analytics.sandbox --port 0 --ready-file sandbox.url &",
    "cat > config-v3.json <<EOF",
    "echo '{}' > state.json",
    'curl -s -X POST "$(cat sandbox.url)/_sandbox/move-jobs?count=5" > moved.json'
    '    # {"moved": [ids]}',
    "cat > config-mapped.json <<EOF",
    "python -m tap_analytics.sandbox --tls --ca-file sandbox-ca.pem --port 0 "
    "--ready-file tls.url &",
)
# Run by tests/e2e/test_readme_meltano.py (Meltano, a throwaway PostgreSQL role and
# database, and the sandbox), known by their first line; the first one only names the
# variables the test sets (with a role, a database and a sandbox of its own).
RUN_IN_E2E = (
    'export TAP_ANALYTICS_BASE_URL="$(cat sandbox.url)"',
    'sudo -u postgres psql -c "CREATE ROLE $TARGET_POSTGRES_USER LOGIN PASSWORD '
    "'$TARGET_POSTGRES_PASSWORD'\"",
    "bash scripts/meltano-setup.sh     # .venv-meltano with Meltano 4.4, then "
    "`meltano install`",
    ".venv-meltano/bin/meltano state list",
    "TAP_ANALYTICS__SELECT='[\"jobs.*\"]' .venv-meltano/bin/meltano run "
    "tap-analytics target-postgres",
)
# Not run here, word for word, with what they need.
NOT_RUN = {
    "make install\n. .venv/bin/activate\n": (
        "a network install; this test runs in the virtualenv it makes"
    ),
    "make demo   # fresh machine → virtualenvs, sandbox API, both families into "
    "DuckDB, row counts\nmake test   # ruff, mypy, import layers, pytest (incl. "
    "end-to-end into a real PostgreSQL)\n": "Meltano, DuckDB and PostgreSQL; CI runs "
    "make test",
    "cat > config.json <<'EOF'\n"
    '{"base_url": "https://api.example.com", "client_id": "…", "client_secret": "…",\n'
    ' "start_date": "2024-01-01T00:00:00Z"}\n'
    "EOF\n"
    'echo \'{"base_url": "https://api.example.com", "api_key": "…"}\' '
    "> config-v3.json\n"
    "tap-analytics --config config.json --discover > catalog.json\n"
    "tap-analytics --config config.json --catalog catalog.json | target-jsonl\n": (
        "the real API and target-jsonl"
    ),
    ".venv/bin/python scripts/bench.py --scenario v1-bulk --repeat 3\n": (
        "minutes of CPU; tests/test_bench_smoke.py runs the benchmark on tiny data"
    ),
}


def readme_blocks() -> list[str]:
    """The bash blocks of the README and of docs/, in reading order."""
    return [block for path in DOCUMENTS for block in BLOCK.findall(path.read_text())]


def test_every_readme_block_is_run_or_named_with_what_it_needs():
    blocks = readme_blocks()
    unknown = [
        block
        for block in blocks
        if block not in NOT_RUN and block.splitlines()[0] not in RUN + RUN_IN_E2E
    ]
    assert unknown == [], "add each new bash block to RUN, RUN_IN_E2E or NOT_RUN"
    first_lines = [b.splitlines()[0] for b in blocks if b not in NOT_RUN]
    assert [line for line in first_lines if line not in RUN_IN_E2E] == list(RUN)
    assert [line for line in first_lines if line in RUN_IN_E2E] == list(RUN_IN_E2E)
    assert set(NOT_RUN) <= set(blocks), "NOT_RUN names a block the docs lost"


def records(path: Path, stream: str) -> list[dict]:
    messages = (json.loads(line) for line in path.read_text().splitlines())
    return [
        m["record"]
        for m in messages
        if m.get("stream") == stream and m["type"] == "RECORD"
    ]


def test_readme_blocks_run_as_written(tmp_path):
    script = ["set -euo pipefail"]
    for number, block in enumerate(readme_blocks()):
        if block not in NOT_RUN and block.splitlines()[0] in RUN:
            script += [f"echo '--- block {number}' >&2", block]
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    # Files, not pipes: the sandbox the blocks start in the background keeps
    # its copies of stdout and stderr open until it is stopped.
    out_path, err_path = tmp_path / "script.out", tmp_path / "script.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        shell = subprocess.Popen(
            ["bash", "-c", "\n".join(script)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group: the sandbox goes with it
        )
        try:
            shell.wait(timeout=120)
        finally:
            os.killpg(shell.pid, signal.SIGTERM)
    assert shell.returncode == 0, err_path.read_text()[-3000:]

    # The numbers the README states are the sandbox's defaults.
    server = SandboxServer(SandboxConfig()).start()
    try:
        data = server.dataset
    finally:
        server.stop()
    jobs = data["v1"]["jobs"]
    total = sum(len(data["v1"][name]) for name in ("jobs", "connections", "workspaces"))
    null_connections = len([job for job in jobs if job["connectionId"] is None])
    counts = re.findall(r"^\d+$", out_path.read_text(), re.MULTILINE)
    assert counts[0] == str(total) == "377"
    results = sum(len(rows) for rows in data["v3"]["job_results"].values())
    assert counts[1] == str(results) == "390"
    assert counts[2] == str(null_connections) == "40"
    assert counts[3] == str(total)  # the same sync over HTTPS

    # State: the second run resumed from the first's bookmark.
    state = json.loads((tmp_path / "state.json").read_text())
    bookmark = state["bookmarks"]["jobs"]["replication_key_value"]
    assert bookmark == max(
        job["lastUpdatedAt"]
        for job in records(tmp_path / "output.jsonl", "jobs")
        if job["lastUpdatedAt"] is not None  # a job that has not ended
    )
    assert 0 < len(records(tmp_path / "next.jsonl", "jobs")) < len(jobs)

    # docs/architecture.md: the five jobs the sandbox ended through its control
    # endpoint come in the next run from that state, not before the bookmark (the
    # server's own time is above it; lastUpdatedAt shows it floored to the second).
    moved_ids = json.loads((tmp_path / "moved.json").read_text())["moved"]
    assert len(set(moved_ids)) == 5
    final = {job["jobId"]: job for job in records(tmp_path / "moved.jsonl", "jobs")}
    for job_id in moved_ids:
        assert datetime.fromisoformat(final[job_id]["lastUpdatedAt"]) >= (
            datetime.fromisoformat(bookmark)
        )

    # The stream map hashed every non-null connectionId and kept the nulls.
    mapped = records(tmp_path / "mapped.jsonl", "jobs")
    assert len(mapped) == len(jobs)
    by_id = {job["jobId"]: job["connectionId"] for job in jobs}
    for job in mapped:
        original = by_id[job["jobId"]]
        assert (job["connectionId"] is None) == (original is None)
        if original is not None:
            assert re.fullmatch(r"[0-9a-f]{32}", job["connectionId"])


def test_state_file_must_exist_as_the_readme_says(tmp_path):
    tap = Path(sys.executable).parent / "tap-analytics"
    (tmp_path / "config.json").write_text(json.dumps({"api_key": "k"}))
    done = subprocess.run(
        [str(tap), "--config", "config.json", "--state", "state.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "state.json" in done.stderr

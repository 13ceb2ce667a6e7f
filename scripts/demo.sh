#!/usr/bin/env bash
# Demo: sandbox API -> tap-analytics (both families) -> DuckDB, through Meltano.
#
#   scripts/demo.sh            (make demo)
#
# 1. installs Meltano (.venv-meltano) and the plugins (.meltano/) when needed;
# 2. starts the sandbox API on a free loopback port (stopped on exit, whatever happens);
# 3. runs `meltano run tap-analytics target-duckdb` (v1 -> schema analytics_v1) and
#    `meltano run tap-analytics-v3 target-duckdb` (v3 -> schema analytics_v3), in
#    meltano.yml's environment `demo` (RECORD messages: target-duckdb reads no BATCH);
# 4. prints the row count of every table next to the sandbox's own count.
#
# The DuckDB file (output/warehouse.duckdb) and Meltano's state (.meltano/) are kept, so a
# second run extracts v1 jobs incrementally, asks v3 for no job results it loaded before,
# and merges every stream on its primary key: the counts stay the same. It exits non-zero
# when a step fails or a count differs.
#
# Environment: DEMO_SEED (42), DEMO_DUCKDB (output/warehouse.duckdb).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SEED="${DEMO_SEED:-42}"
DUCKDB_FILE="${DEMO_DUCKDB:-$ROOT/output/warehouse.duckdb}"
MELTANO="${MELTANO_VENV:-$ROOT/.venv-meltano}/bin/meltano"
TAP_PYTHON="$ROOT/.meltano/extractors/tap-analytics/venv/bin/python"
DUCKDB_PYTHON="$ROOT/.meltano/loaders/target-duckdb/venv/bin/python"

step() { printf '\n==> %s\n' "$*" >&2; }

step "installing Meltano and the plugins (skipped when up to date)"
bash "$ROOT/scripts/meltano-setup.sh"

workdir="$(mktemp -d)"
sandbox_pid=""
cleanup() {
    if [[ -n "$sandbox_pid" ]] && kill -0 "$sandbox_pid" 2>/dev/null; then
        kill -TERM "$sandbox_pid" 2>/dev/null || true
        wait "$sandbox_pid" 2>/dev/null || true
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "starting the sandbox API (seed $SEED)"
# The tap's plugin venv has the project installed (editable), sandbox included.
"$TAP_PYTHON" -m tap_analytics.sandbox --port 0 --ready-file "$workdir/ready" --seed "$SEED" \
    >"$workdir/sandbox.log" 2>&1 &
sandbox_pid=$!
for _ in $(seq 1 100); do
    [[ -s "$workdir/ready" ]] && break
    if ! kill -0 "$sandbox_pid" 2>/dev/null; then
        echo "demo: the sandbox exited early:" >&2
        cat "$workdir/sandbox.log" >&2
        exit 1
    fi
    sleep 0.1
done
[[ -s "$workdir/ready" ]] || { echo "demo: the sandbox did not start in 10 s" >&2; exit 1; }
base_url="$(head -n 1 "$workdir/ready" | tr -d '[:space:]')"
echo "sandbox API at $base_url" >&2

# Configuration through env vars only: nothing secret is written to a file.
export MELTANO_SEND_ANONYMOUS_USAGE_STATS=false
export MELTANO_CLI_DISABLE_VERSION_CHECK=true
export TAP_ANALYTICS_BASE_URL="$base_url"
export TAP_ANALYTICS_CLIENT_ID=sandbox-client
export TAP_ANALYTICS_CLIENT_SECRET=sandbox-secret
export TAP_ANALYTICS_V3_API_KEY=sandbox-key
export TARGET_DUCKDB_FILEPATH="$DUCKDB_FILE"
mkdir -p "$(dirname "$DUCKDB_FILE")"

# target-duckdb reads RECORD messages only: meltano.yml's demo environment sends those
# (its dev environment sends BATCH messages, for target-postgres).
export MELTANO_ENVIRONMENT=demo

step "meltano run tap-analytics target-duckdb   (v1 -> analytics_v1)"
"$MELTANO" run tap-analytics target-duckdb

step "meltano run tap-analytics-v3 target-duckdb   (v3 -> analytics_v3)"
"$MELTANO" run tap-analytics-v3 target-duckdb

step "rows per table in $DUCKDB_FILE"
# The sandbox's own counts, to compare with: its dataset, from its control endpoint.
"$TAP_PYTHON" - "$base_url" >"$workdir/expected.json" <<'PY'
import json
import sys
import urllib.request

with urllib.request.urlopen(f"{sys.argv[1]}/_sandbox/dataset", timeout=30) as response:
    data = json.load(response)
v1, v3 = data["v1"], data["v3"]


def successful(job: dict) -> bool:
    count = job.get("total_row_count")
    return count is not None and count > 0 and job.get("status") == "finished"


ok = [job for job in v3["jobs"] if successful(job)]
print(json.dumps({
    "analytics_v1.jobs": len(v1["jobs"]),
    "analytics_v1.connections": len(v1["connections"]),
    "analytics_v1.workspaces": len(v1["workspaces"]),
    "analytics_v3.workspace": 1,
    "analytics_v3.workflows": len(v3["workflows"]),
    "analytics_v3.jobs": len(v3["jobs"]),
    "analytics_v3.successful_jobs": len(ok),
    "analytics_v3.job_results": sum(len(v3["job_results"].get(j["uid"], [])) for j in ok),
}))
PY
# Read with the duckdb that wrote the file (the loader's venv), read-only.
"$DUCKDB_PYTHON" - "$DUCKDB_FILE" "$workdir/expected.json" <<'PY'
import json
import sys

import duckdb

path, expected_file = sys.argv[1], sys.argv[2]
expected = json.load(open(expected_file))
conn = duckdb.connect(path, read_only=True)
tables = conn.execute(
    "SELECT table_schema || '.' || table_name FROM information_schema.tables"
    " WHERE table_schema IN ('analytics_v1', 'analytics_v3') ORDER BY 1"
).fetchall()
found = {name for (name,) in tables}
failed = False
print(f"{'table':<32} {'rows':>7} {'sandbox':>8}")
for name in sorted(found | set(expected)):
    rows = None
    if name in found:
        schema, table = name.split(".")
        rows = conn.execute(f'SELECT count(*) FROM "{schema}"."{table}"').fetchone()[0]
    want = expected.get(name)
    mark = "" if rows == want else "   <-- MISMATCH"
    failed |= rows != want
    print(f"{name:<32} {rows if rows is not None else '-':>7} {want if want is not None else '-':>8}{mark}")
sys.exit(1 if failed else 0)
PY
echo "demo: ok (run it again: same counts, rows merged on their primary keys)" >&2

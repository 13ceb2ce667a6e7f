"""End to end into DuckDB (``make demo``'s loader): fields beyond the documents.

Both families run twice through ``meltano run … target-duckdb`` (in ``make demo``'s
Meltano environment, RECORD messages) into one DuckDB file,
from the sandbox of ``SANDBOX_CONFIG`` (extra_note on every record, ``added`` from each
stream's middle record on, ``score`` an integer before it and a string from it on,
``configurations`` and ``statusReason`` on connections). target-duckdb follows a
SCHEMA message mid-stream: it loads the records before it, then adds the new columns
(``ALTER TABLE … ADD COLUMN``). Its column names are lower case. After each run every
table holds exactly the sandbox's keys, each field's values in its column, and the
second run adds no column (issue 17).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from .conftest import ROOT, Meltano
from .test_meltano_postgres import (
    EXTRACTORS,
    PRIMARY_KEYS,
    RUNS,
    SCHEMAS,
    TABLES,
    assert_fields_beyond_the_documents,
    assert_score_columns,
    served_records,
)

if TYPE_CHECKING:
    from pathlib import Path

    from tap_analytics.sandbox import SandboxServer

pytestmark = pytest.mark.e2e

#: The column types DuckDB gives `score`'s values: (integer, text).
DUCKDB = ("HUGEINT", "VARCHAR")

DUCKDB_PYTHON = (
    ROOT / ".meltano" / "loaders" / "target-duckdb" / "venv" / "bin" / "python"
)

# Run with the loader's own duckdb, read-only: every table's column types and rows.
READ_TABLES = """
import json, sys
import duckdb
conn = duckdb.connect(sys.argv[1], read_only=True)
tables = {}
for schema, table in conn.execute(
    "SELECT table_schema, table_name FROM information_schema.tables"
).fetchall():
    columns = dict(conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = ? AND table_name = ?", [schema, table]
    ).fetchall())
    rows = conn.execute(f'SELECT * FROM "{schema}"."{table}"')
    names = [d[0] for d in rows.description]
    tables[f"{schema}.{table}"] = {
        "columns": columns,
        "rows": [dict(zip(names, row)) for row in rows.fetchall()],
    }
json.dump(tables, sys.stdout, default=str)
"""


@dataclass(frozen=True)
class DuckTable:
    columns: dict[str, str]  # name -> data type, as DuckDB names them
    rows: list[dict[str, Any]]

    def by_key(self, key: str) -> dict[str, dict[str, Any]]:
        return {str(row[key.lower()]): row for row in self.rows}


def read_tables(path: Path) -> dict[tuple[str, str], DuckTable]:
    done = subprocess.run(
        [str(DUCKDB_PYTHON), "-c", READ_TABLES, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = json.loads(done.stdout)
    return {
        (family, table): DuckTable(**found[f"{SCHEMAS[family]}.{table}"])
        for family, table in TABLES
        if f"{SCHEMAS[family]}.{table}" in found
    }


@dataclass(frozen=True)
class Loaded:
    served: dict[tuple[str, str], dict[str, Any]]
    snapshots: list[dict[tuple[str, str], DuckTable]]


@pytest.fixture(scope="module")
def loaded(
    meltano: Meltano,
    e2e_sandbox: SandboxServer,
    meltano_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Loaded:
    path = tmp_path_factory.mktemp("duckdb") / "warehouse.duckdb"
    # `make demo`'s environment: RECORD messages (target-duckdb reads no BATCH).
    env = {
        **meltano_env,
        "MELTANO_ENVIRONMENT": "demo",
        "TARGET_DUCKDB_FILEPATH": str(path),
    }
    snapshots = []
    for _ in range(RUNS):
        for family in ("v1", "v3"):
            meltano.check("run", EXTRACTORS[family], "target-duckdb", env=env)
        snapshots.append(read_tables(path))
    return Loaded(served_records(e2e_sandbox.dataset), snapshots)


@pytest.mark.parametrize("run", range(RUNS), ids=[f"run{n + 1}" for n in range(RUNS)])
@pytest.mark.parametrize(
    ("family", "table"), TABLES, ids=[f"{f}-{t}" for f, t in TABLES]
)
def test_every_field_is_a_filled_column(
    loaded: Loaded, run: int, family: str, table: str
) -> None:
    where = f"{SCHEMAS[family]}.{table} after run {run + 1}"
    tables = loaded.snapshots[run]
    assert (family, table) in tables, f"{where}: table missing"
    got = tables[family, table]
    served = loaded.served[family, table]
    rows = got.by_key(PRIMARY_KEYS[family][table])
    assert len(got.rows) == len(rows) == len(served), f"{where}: rows or duplicates"
    assert set(rows) == set(served), where
    assert_fields_beyond_the_documents(where, got.columns, rows, served, DUCKDB)


def test_where_the_values_of_the_field_whose_type_changes_are(loaded: Loaded) -> None:
    assert_score_columns(loaded.snapshots[-1], DUCKDB)


def test_connections_configurations_is_a_json_column(loaded: Loaded) -> None:
    got = loaded.snapshots[0]["v1", "connections"]
    assert got.columns["configurations"] == "JSON"
    assert got.columns["statusreason"] == "VARCHAR"
    rows = got.by_key("connectionId")
    for key, record in loaded.served["v1", "connections"].items():
        assert json.loads(rows[key]["configurations"]) == record["configurations"]
        assert rows[key]["statusreason"] == record["statusReason"], key


def test_the_second_run_adds_no_column(loaded: Loaded) -> None:
    first, second = loaded.snapshots
    for table in TABLES:
        assert second[table].columns == first[table].columns, table

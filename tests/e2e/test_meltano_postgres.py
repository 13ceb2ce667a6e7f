"""End to end: sandbox API -> tap-analytics (via Meltano) -> target-postgres.

Each family's pipeline runs twice, with BATCH messages (meltano.yml), into one fresh
database (v1 into schema analytics_v1, v3 into analytics_v3; both have a ``jobs``
table). After each run every table must hold
exactly the sandbox's records: the same number of rows, the same set of primary keys,
no duplicates. The second run starts from the state the first one saved (v1 ``jobs`` is
incremental), so it also proves that re-sent records are merged, not appended.

The sandbox sends fields the documents do not list (see ``SANDBOX_CONFIG``): each must
be a filled column for exactly the records that had it, every value of the field whose
type changes in some column, and the second run must add no column (issue 17).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from .conftest import SANDBOX_CONFIG, Meltano, PgDatabase, clean_env

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from tap_analytics.sandbox import SandboxServer

pytestmark = pytest.mark.e2e

RUNS = 2
SCHEMAS = {"v1": "analytics_v1", "v3": "analytics_v3"}
EXTRACTORS = {"v1": "tap-analytics", "v3": "tap-analytics-v3"}
PRIMARY_KEYS = {
    "v1": {"jobs": "jobId", "connections": "connectionId", "workspaces": "workspaceId"},
    "v3": {
        "workspace": "name",
        "workflows": "uid",
        "jobs": "uid",
        "successful_jobs": "uid",
        "job_results": "job_result_id",
    },
}
TABLES = [
    (family, table) for family, tables in PRIMARY_KEYS.items() for table in tables
]


#: Fields beyond the documents the sandbox sends (SANDBOX_CONFIG): every record has
#: extra_note; `added` appears at each stream's middle record; `score` is an integer
#: before it and a string from it on. A v1 connection has two more, documented since.
UNDOCUMENTED = ("extra_note", "added", "score")
BEYOND_SOURCE_DOCUMENT = ("configurations", "statusReason")


@dataclass(frozen=True)
class TableSnapshot:
    rows: int
    keys: frozenset[str]
    distinct_keys: int
    soft_deleted: int
    columns: dict[str, str]  # name -> data type
    # key -> the values of the columns of the fields beyond the documents
    beyond: dict[str, dict[str, Any]]


Snapshot = dict[tuple[str, str], TableSnapshot]


def is_successful(job: dict[str, Any]) -> bool:
    """The contract's filter, restated here rather than imported from the tap."""
    count = job.get("total_row_count")
    return count is not None and count > 0 and job.get("status") == "finished"


def keys_of(records: Iterable[dict[str, Any]], key: str) -> list[str]:
    return [str(record[key]) for record in records]


def expected_keys(dataset: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    """Every table's primary keys, computed from the sandbox's own records."""
    v1, v3 = dataset["v1"], dataset["v3"]
    successful = [job for job in v3["jobs"] if is_successful(job)]
    results = [
        item for job in successful for item in v3["job_results"].get(job["uid"], [])
    ]
    return {
        ("v1", "jobs"): keys_of(v1["jobs"], "jobId"),
        ("v1", "connections"): keys_of(v1["connections"], "connectionId"),
        ("v1", "workspaces"): keys_of(v1["workspaces"], "workspaceId"),
        ("v3", "workspace"): [str(v3["workspace"]["name"])],
        ("v3", "workflows"): keys_of(v3["workflows"], "uid"),
        ("v3", "jobs"): keys_of(v3["jobs"], "uid"),
        ("v3", "successful_jobs"): keys_of(successful, "uid"),
        ("v3", "job_results"): keys_of(results, "job_result_id"),
    }


def snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def columns_of(conn: psycopg.Connection[Any], schema: str, table: str) -> set[str]:
    return {
        row[0]
        for row in conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = %s",
            (schema, table),
        )
    }


def has_column(
    conn: psycopg.Connection[Any], schema: str, table: str, column: str
) -> bool:
    return column in columns_of(conn, schema, table)


def key_column(conn: psycopg.Connection[Any], schema: str, table: str, key: str) -> str:
    """The column the loader made of ``key`` (as is, or snake-cased by some loaders)."""
    columns = columns_of(conn, schema, table)
    for candidate in (key, snake_case(key), key.lower()):
        if candidate in columns:
            return candidate
    raise AssertionError(
        f"{schema}.{table}: no column for key {key!r} in {sorted(columns)}"
    )


def snapshot(database: PgDatabase) -> Snapshot:
    tables: Snapshot = {}
    with psycopg.connect(**database.conninfo()) as conn:
        existing = {
            (row[0], row[1])
            for row in conn.execute(
                "SELECT table_schema, table_name FROM information_schema.tables"
            )
        }
        for family, table in TABLES:
            schema = SCHEMAS[family]
            if (schema, table) not in existing:
                continue
            column = key_column(conn, schema, table, PRIMARY_KEYS[family][table])
            query = sql.SQL("SELECT {col}::text FROM {tbl}").format(
                col=sql.Identifier(column), tbl=sql.Identifier(schema, table)
            )
            keys = [row[0] for row in conn.execute(query)]
            soft_deleted = 0
            if has_column(conn, schema, table, "_sdc_deleted_at"):
                deleted = sql.SQL(
                    "SELECT count(*) FROM {tbl} WHERE _sdc_deleted_at IS NOT NULL"
                ).format(tbl=sql.Identifier(schema, table))
                soft_deleted = conn.execute(deleted).fetchone()[0]  # type: ignore[index]
            columns = column_types(conn, schema, table)
            tables[family, table] = TableSnapshot(
                rows=len(keys),
                keys=frozenset(keys),
                distinct_keys=len(set(keys)),
                soft_deleted=soft_deleted,
                columns=columns,
                beyond=beyond_values(conn, schema, table, column, columns),
            )
    return tables


def column_types(
    conn: psycopg.Connection[Any], schema: str, table: str
) -> dict[str, str]:
    return {
        row[0]: row[1]
        for row in conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = %s",
            (schema, table),
        )
    }


def beyond_values(
    conn: psycopg.Connection[Any],
    schema: str,
    table: str,
    key: str,
    columns: dict[str, str],
) -> dict[str, dict[str, Any]]:
    """Per key, the columns made of fields beyond the documents (variants too)."""
    names = [
        name
        for name in columns
        if name.split("__v_")[0] in (*UNDOCUMENTED, *BEYOND_SOURCE_DOCUMENT)
    ]
    if not names:
        return {}
    query = sql.SQL("SELECT {key}::text, {cols} FROM {tbl}").format(
        key=sql.Identifier(key),
        cols=sql.SQL(", ").join(sql.Identifier(name) for name in names),
        tbl=sql.Identifier(schema, table),
    )
    return {
        row[0]: dict(zip(names, row[1:], strict=True)) for row in conn.execute(query)
    }


def served_records(dataset: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every table's records as the sandbox served them, by primary key (as text)."""
    v1, v3 = dataset["v1"], dataset["v3"]
    successful = [job for job in v3["jobs"] if is_successful(job)]
    lists = {
        ("v1", "jobs"): v1["jobs"],
        ("v1", "connections"): v1["connections"],
        ("v1", "workspaces"): v1["workspaces"],
        ("v3", "workspace"): [v3["workspace"]],
        ("v3", "workflows"): v3["workflows"],
        ("v3", "jobs"): v3["jobs"],
        ("v3", "successful_jobs"): successful,
        ("v3", "job_results"): [
            item for job in successful for item in v3["job_results"][job["uid"]]
        ],
    }
    return {
        table: {
            str(record[PRIMARY_KEYS[table[0]][table[1]]]): record for record in records
        }
        for table, records in lists.items()
    }


@dataclass(frozen=True)
class Loaded:
    expected: dict[tuple[str, str], list[str]]
    served: dict[tuple[str, str], dict[str, Any]]  # table -> key -> record
    snapshots: list[Snapshot]
    states: list[dict[str, Any]]
    v1_jobs_queries: list[list[dict[str, list[str]]]]  # per run: /v1/jobs query params
    logs: list[str]  # every meltano run's output


def state_of(meltano: Meltano, env: dict[str, str], state_id: str) -> dict[str, Any]:
    result = meltano.check("state", "get", state_id, env=env)
    text = result.stdout.strip()
    start = text.find("{")
    assert start >= 0, f"no state printed for {state_id}: {text!r}"
    state: dict[str, Any] = json.loads(text[start:])
    return state


@pytest.fixture(scope="module")
def loaded(
    meltano: Meltano,
    pg_database: PgDatabase,
    e2e_sandbox: SandboxServer,
    meltano_env: dict[str, str],
) -> Loaded:
    """Run both pipelines twice into one database; snapshot tables after each run."""
    env = {**meltano_env, **pg_database.target_env()}
    snapshots: list[Snapshot] = []
    states: list[dict[str, Any]] = []
    jobs_queries: list[list[dict[str, list[str]]]] = []
    logs: list[str] = []
    for _ in range(RUNS):
        e2e_sandbox.clear_requests()
        for family in ("v1", "v3"):
            run = meltano.check("run", EXTRACTORS[family], "target-postgres", env=env)
            logs.append(run.stdout + run.stderr)
        jobs_queries.append(
            [r["query"] for r in e2e_sandbox.requests if r["path"] == "/v1/jobs"]
        )
        snapshots.append(snapshot(pg_database))
        states.append(state_of(meltano, env, "ci:tap-analytics-to-target-postgres"))
    dataset = e2e_sandbox.dataset
    return Loaded(
        expected_keys(dataset),
        served_records(dataset),
        snapshots,
        states,
        jobs_queries,
        logs,
    )


def test_sandbox_data_exercises_the_filters(e2e_sandbox: SandboxServer) -> None:
    """Guard the test's own premise: some v3 jobs are successful, some are not."""
    jobs = e2e_sandbox.dataset["v3"]["jobs"]
    successful = [job for job in jobs if is_successful(job)]
    assert 0 < len(successful) < len(jobs)
    assert len(e2e_sandbox.dataset["v1"]["jobs"]) > 100  # more than one page


@pytest.mark.parametrize("run", range(RUNS), ids=[f"run{n + 1}" for n in range(RUNS)])
@pytest.mark.parametrize(
    ("family", "table"), TABLES, ids=[f"{f}-{t}" for f, t in TABLES]
)
def test_table_holds_exactly_the_sandbox_rows(
    loaded: Loaded, run: int, family: str, table: str
) -> None:
    tables = loaded.snapshots[run]
    where = f"{SCHEMAS[family]}.{table} after run {run + 1}"
    assert (family, table) in tables, f"{where}: table missing"
    got = tables[family, table]
    want = loaded.expected[family, table]
    assert len(set(want)) == len(want), f"sandbox keys of {family}/{table} repeat"
    assert got.distinct_keys == got.rows, f"{where}: duplicate primary keys"
    assert got.soft_deleted == 0, f"{where}: {got.soft_deleted} rows marked deleted"
    assert got.rows == len(want), f"{where}: {got.rows} rows, sandbox has {len(want)}"
    missing = sorted(set(want) - got.keys)
    unexpected = sorted(got.keys - set(want))
    assert not missing, f"{where}: missing keys {missing[:5]}"
    assert not unexpected, f"{where}: unexpected keys {unexpected[:5]}"


@pytest.mark.parametrize("run", range(RUNS), ids=[f"run{n + 1}" for n in range(RUNS)])
@pytest.mark.parametrize(
    ("family", "table"), TABLES, ids=[f"{f}-{t}" for f, t in TABLES]
)
def test_fields_beyond_the_documents_are_filled_columns(
    loaded: Loaded, run: int, family: str, table: str
) -> None:
    """extra_note filled in every row, `added` in exactly the rows that had it, and
    every value of `score` in a column of its type: `score` for the type of the
    stream's first value, `score__v_<type>` for the others (issue 17)."""
    got = loaded.snapshots[run][family, table]
    where = f"{SCHEMAS[family]}.{table} after run {run + 1}"
    served = loaded.served[family, table]
    assert_fields_beyond_the_documents(where, got.columns, got.beyond, served, POSTGRES)


#: A target's column types for `score`'s values: (integer, text).
POSTGRES = ("bigint", "text")


def assert_fields_beyond_the_documents(
    where: str,
    columns: dict[str, str],
    rows: dict[Any, dict[str, Any]],
    served: dict[Any, dict[str, Any]],
    types: tuple[str, str],
) -> None:
    """Each served record's row (by key) has its extra_note, its `added` (null where
    it had none), and its `score` in exactly one column, of its type."""
    python_types = dict(zip(types, (int, str), strict=True))
    score_columns = {
        name: python_types[kind]
        for name, kind in columns.items()
        if name.split("__v_")[0] == "score"
    }
    assert "score" in score_columns, where
    for key, record in served.items():
        row = rows[key]
        assert row["extra_note"] == record["extra_note"], (where, key)
        assert row["added"] == record.get("added"), (where, key)
        holders = {n: row[n] for n in score_columns if row[n] is not None}
        assert list(holders.values()) == [record["score"]], (where, key, holders)
        [holder] = holders
        assert isinstance(record["score"], score_columns[holder]), (where, holder)
    assert any("added" in record for record in served.values()), where


def assert_score_columns(
    snapshot: Mapping[tuple[str, str], Any], types: tuple[str, str]
) -> None:
    """The first value a stream served decides `score`'s column type; the values of
    the other type are in `score__v_string` (v3 workspace: one record, a string).
    ``snapshot``: each table's (family, name) to what has its ``columns``."""
    integer, text = types
    for table in TABLES:
        columns = snapshot[table].columns
        score = {name: kind for name, kind in columns.items() if "score" in name}
        if table == ("v3", "workspace"):
            assert score == {"score": text}, table
        else:
            assert score == {"score": integer, "score__v_string": text}, table


def test_where_the_values_of_the_field_whose_type_changes_are(loaded: Loaded) -> None:
    assert_score_columns(loaded.snapshots[-1], POSTGRES)


def test_connections_configurations_is_a_jsonb_column(loaded: Loaded) -> None:
    got = loaded.snapshots[0]["v1", "connections"]
    assert got.columns["configurations"] == "jsonb"
    assert got.columns["statusReason"] == "text"
    for key, record in loaded.served["v1", "connections"].items():
        row = got.beyond[key]
        assert row["configurations"] == record["configurations"], key
        assert row["statusReason"] == record["statusReason"], key


def test_the_second_run_adds_no_column(loaded: Loaded) -> None:
    first, second = loaded.snapshots
    for table in TABLES:
        assert second[table].columns == first[table].columns, table


def test_runs_load_batch_files_not_record_messages(loaded: Loaded) -> None:
    """meltano.yml's ci environment sends BATCH messages, and target-postgres reads
    them: its summary counts batch manifests and not a single RECORD message."""
    summary = re.compile(
        r"completed processing \d+ lines of input \(\d+ schemas, (\d+) records, "
        r"(\d+) batch manifests"
    )
    for log in loaded.logs:
        [(records, manifests)] = summary.findall(log)
        assert (int(records), int(manifests) > 0) == (0, True), log[-2000:]


def test_v1_jobs_rerun_is_incremental(loaded: Loaded) -> None:
    """Each run saves a bookmark and the next run asks from it (so it really merged)."""
    for state in loaded.states:
        bookmarks = state.get("singer_state", state).get("bookmarks", {})
        assert bookmarks.get("jobs", {}).get("replication_key_value"), state
    for run, queries in enumerate(loaded.v1_jobs_queries[1:], start=2):
        assert queries, f"run {run}: no /v1/jobs request"
        assert queries[0].get("updatedAtStart"), f"run {run}: {queries[0]}"


def test_jobs_that_have_not_ended_load_with_a_null_time(
    loaded: Loaded, pg_database: PgDatabase, e2e_sandbox: SandboxServer
) -> None:
    """The real server gives a job no lastUpdatedAt until it ends: the rows load,
    with a null in a nullable column, and their status."""
    not_ended = {
        str(job["jobId"]): job["status"]
        for job in e2e_sandbox.dataset["v1"]["jobs"]
        if job.get("lastUpdatedAt") is None
    }
    assert len(not_ended) > 10
    with psycopg.connect(**pg_database.conninfo()) as conn:
        columns = [
            key_column(conn, SCHEMAS["v1"], "jobs", name)
            for name in ("jobId", "status", "lastUpdatedAt")
        ]
        query = sql.SQL("SELECT {}::text, {} FROM {} WHERE {} IS NULL").format(
            sql.Identifier(columns[0]),
            sql.Identifier(columns[1]),
            sql.Identifier(SCHEMAS["v1"], "jobs"),
            sql.Identifier(columns[2]),
        )
        rows = conn.execute(query).fetchall()
    assert dict(rows) == not_ended


# --- Meltano project checks ---------------------------------------------------


def test_config_list_redacts_secrets(meltano: Meltano) -> None:
    secret, key = "e2e-secret-4f1c9b", "e2e-key-7d2a0e"
    env = {
        **clean_env(),
        "MELTANO_CLI_LOG_FORMAT": "uncolored",
        "TAP_ANALYTICS_CLIENT_SECRET": secret,
        "TAP_ANALYTICS_API_KEY": key,
    }
    listed = meltano.check("config", "list", "tap-analytics", env=env)
    output = listed.stdout + listed.stderr
    assert secret not in output
    assert key not in output
    for name in ("client_secret", "api_key"):
        line = next(
            ln for ln in listed.stdout.splitlines() if ln.startswith(f"{name} ")
        )
        assert "(redacted)" in line, line
    # The values are set (--unsafe shows them): hidden because they are sensitive.
    unsafe = meltano.check("config", "--unsafe", "list", "tap-analytics", env=env)
    assert secret in unsafe.stdout
    assert key in unsafe.stdout


def test_config_list_redacts_loader_password(meltano: Meltano) -> None:
    password = "e2e-password-93b1f0"
    env = {
        **clean_env(),
        "MELTANO_CLI_LOG_FORMAT": "uncolored",
        "TARGET_POSTGRES_PASSWORD": password,
    }
    listed = meltano.check("config", "list", "target-postgres", env=env)
    assert password not in listed.stdout + listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("password "))
    assert "(redacted)" in line, line


@pytest.mark.parametrize(
    ("extractor", "streams"),
    [
        ("tap-analytics", {"jobs", "connections", "workspaces"}),
        (
            "tap-analytics-v3",
            {"workspace", "workflows", "jobs", "successful_jobs", "job_results"},
        ),
    ],
)
def test_invoke_discover_prints_catalog(
    meltano: Meltano,
    meltano_env: dict[str, str],
    extractor: str,
    streams: set[str],
) -> None:
    result = meltano.check("invoke", extractor, "--discover", env=meltano_env)
    catalog = json.loads(result.stdout)
    found = {stream["tap_stream_id"] for stream in catalog["streams"]}
    assert found == streams
    for stream in catalog["streams"]:
        assert stream["key_properties"], stream["tap_stream_id"]
        assert stream["schema"]["properties"], stream["tap_stream_id"]
    assert SANDBOX_CONFIG.client_secret not in result.stderr

"""The README's Meltano and PostgreSQL examples work as written (issue 12).

The blocks are read from README.md by their first line (``RUN_IN_E2E`` in
tests/test_readme.py, which fails on a block that is in no list) and run word for
word with bash in the project root, in the environment the README tells the user to
set: the variables its first Meltano block exports, with the sandbox's URL and
credentials and a throwaway PostgreSQL role and database as values, and nothing else
that configures Meltano or a plugin (its system database is a temporary file, so no
state leaks in). The environment is Meltano's default, ``dev``, as the README's state
ID says.

One walk through the section, into three new databases the README's ``createdb``
block makes:

1. ``createdb``, then install and run both extractors: every table holds exactly the
   sandbox's keys, and Meltano saved a state under each ID the README names.
2. A plain ``meltano run`` into a second, empty database: state makes it load only the
   jobs at the bookmark (connections and workspaces are full table). The README's
   state block then lists the IDs, reloads every job with ``--full-refresh`` and clears
   the v1 state, and only that one.
3. The one-run selection block into a third database loads v1 ``jobs`` alone (all of
   them: the state was cleared); ``tap-analytics-v3`` run with that variable still
   exported loads all five of its streams (with ``--full-refresh``: Meltano kept v3's
   state, by which every job's results are loaded, in the first database).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from tests.test_readme import RUN_IN_E2E, readme_blocks

from .conftest import ROOT, SANDBOX_CONFIG, Meltano, PgDatabase, clean_env
from .test_meltano_postgres import Snapshot, expected_keys, snapshot

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tap_analytics.sandbox import SandboxServer

pytestmark = pytest.mark.e2e

ENVIRONMENT_BLOCK, CREATEDB_BLOCK, RUN_BOTH_BLOCK, STATE_BLOCK, SELECT_BLOCK = (
    RUN_IN_E2E
)
DEFAULT_PG_PORT = 5432
V1_STATE_ID = "dev:tap-analytics-to-target-postgres"
V3_STATE_ID = "dev:tap-analytics-v3-to-target-postgres"
V3_SELECT = [
    "workspace.*",
    "workflows.*",
    "jobs.*",
    "successful_jobs.*",
    "job_results.*",
]


def readme_block(first_line: str) -> str:
    [block] = [b for b in readme_blocks() if b.splitlines()[0] == first_line]
    return block


def readme_variables() -> set[str]:
    """The variables the README's Meltano section tells the user to export."""
    return set(re.findall(r"\b([A-Z][A-Z0-9_]*)=", readme_block(ENVIRONMENT_BLOCK)))


def readme_env(
    sandbox: SandboxServer, database: PgDatabase, system_db: Path
) -> dict[str, str]:
    values = {
        "TAP_ANALYTICS_BASE_URL": sandbox.base_url,
        "TAP_ANALYTICS_CLIENT_ID": SANDBOX_CONFIG.client_id,
        "TAP_ANALYTICS_CLIENT_SECRET": SANDBOX_CONFIG.client_secret,
        "TAP_ANALYTICS_V3_API_KEY": SANDBOX_CONFIG.api_key,
        "TARGET_POSTGRES_HOST": database.host,
        "TARGET_POSTGRES_USER": database.user,
        "TARGET_POSTGRES_PASSWORD": database.password,
        "TARGET_POSTGRES_DATABASE": database.dbname,
    }
    assert set(values) == readme_variables(), "the README's variables changed"
    if database.port != DEFAULT_PG_PORT:  # the README relies on the loader's default
        values["TARGET_POSTGRES_PORT"] = str(database.port)
    return {**clean_env(), **values, **isolated(system_db)}


def isolated(system_db: Path) -> dict[str, str]:
    """Test isolation only: a fresh system database, no calls home."""
    return {
        "MELTANO_DATABASE_URI": f"sqlite:///{system_db}",
        "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
        "MELTANO_CLI_DISABLE_VERSION_CHECK": "true",
        "MELTANO_CLI_LOG_FORMAT": "uncolored",
    }


def run_block(first_line: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one README block with bash in the project root; it must succeed."""
    block = readme_block(first_line)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"README block exited {result.returncode}:\n{block}\n"
            f"--- stdout (tail) ---\n{result.stdout[-3000:]}\n"
            f"--- stderr (tail) ---\n{result.stderr[-6000:]}",
            pytrace=False,
        )
    return result


def state_ids(meltano: Meltano, env: dict[str, str]) -> set[str]:
    return set(meltano.check("state", "list", env=env).stdout.split())


def bookmark(meltano: Meltano, env: dict[str, str]) -> str:
    text = meltano.check("state", "get", V1_STATE_ID, env=env).stdout
    state: dict[str, Any] = json.loads(text[text.find("{") :])
    value: str = state["singer_state"]["bookmarks"]["jobs"]["replication_key_value"]
    return value


def database_exists(database: PgDatabase) -> bool:
    with psycopg.connect(**{**database.conninfo(), "dbname": "postgres"}) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", (database.dbname,)
        ).fetchone()
    return row is not None and row[0] == 1


def keys(tables: Snapshot) -> dict[tuple[str, str], frozenset[str]]:
    return {table: got.keys for table, got in tables.items()}


@dataclass(frozen=True)
class Walkthrough:
    expected: dict[tuple[str, str], frozenset[str]]
    jobs_at_first_bookmark: frozenset[str]
    created_before: bool  # the first database existed before the createdb block
    created: bool
    first: Snapshot  # both extractors into the first database
    config_list: str
    ids_after_first: set[str]
    resumed: Snapshot  # plain run into the second, empty database
    state_list_output: str  # stdout of the README's state block
    refreshed: Snapshot  # second database after the state block
    ids_after_clear: set[str]
    selected: Snapshot  # third database: one-run selection, then v3


@pytest.fixture(scope="module")
def walkthrough(
    meltano: Meltano,
    e2e_sandbox: SandboxServer,
    new_pg_database: Callable[[], PgDatabase],
    tmp_path_factory: pytest.TempPathFactory,
) -> Walkthrough:
    system_db = tmp_path_factory.mktemp("meltano-readme") / "meltano.db"
    databases = [new_pg_database() for _ in range(3)]
    first, second, third = (readme_env(e2e_sandbox, db, system_db) for db in databases)

    created_before = database_exists(databases[0])
    run_block(CREATEDB_BLOCK, first)
    created = database_exists(databases[0])
    listed = run_block(RUN_BOTH_BLOCK, first)
    first_snapshot = snapshot(databases[0])
    ids_after_first = state_ids(meltano, first)
    mark = datetime.fromisoformat(bookmark(meltano, first))

    run_block(CREATEDB_BLOCK, second)
    meltano.check("run", "tap-analytics", "target-postgres", env=second)
    resumed = snapshot(databases[1])
    state_block = run_block(STATE_BLOCK, second)
    refreshed = snapshot(databases[1])
    ids_after_clear = state_ids(meltano, second)

    run_block(CREATEDB_BLOCK, third)
    run_block(SELECT_BLOCK, third)
    # Exported this time, not only for one command: still v1's alone.
    exported = {**third, "TAP_ANALYTICS__SELECT": '["jobs.*"]'}
    meltano.check(
        "run", "--full-refresh", "tap-analytics-v3", "target-postgres", env=exported
    )
    selected = snapshot(databases[2])

    dataset = e2e_sandbox.dataset
    return Walkthrough(
        expected={
            table: frozenset(found) for table, found in expected_keys(dataset).items()
        },
        # What updatedAtStart=<bookmark> lists: the jobs the server sorts at or
        # after it by its own update time (a job without a time may be among them).
        jobs_at_first_bookmark=frozenset(
            str(job)
            for job, at in e2e_sandbox.update_times().items()
            if at >= mark.timestamp() * 1_000_000
        ),
        created_before=created_before,
        created=created,
        first=first_snapshot,
        config_list=listed.stdout + listed.stderr,
        ids_after_first=ids_after_first,
        resumed=resumed,
        state_list_output=state_block.stdout,
        refreshed=refreshed,
        ids_after_clear=ids_after_clear,
        selected=selected,
    )


def test_createdb_block_creates_the_database(walkthrough: Walkthrough) -> None:
    assert not walkthrough.created_before
    assert walkthrough.created


def test_both_extractors_load_exactly_the_sandbox_rows(
    walkthrough: Walkthrough,
) -> None:
    assert keys(walkthrough.first) == walkthrough.expected
    for table, got in walkthrough.first.items():
        assert got.distinct_keys == got.rows, f"{table}: duplicate keys"


def test_config_list_block_redacts_secrets(walkthrough: Walkthrough) -> None:
    output = walkthrough.config_list
    assert SANDBOX_CONFIG.client_secret not in output
    line = next(ln for ln in output.splitlines() if ln.startswith("client_secret "))
    assert "(redacted)" in line, line


def test_state_is_saved_under_the_readme_state_ids(walkthrough: Walkthrough) -> None:
    assert walkthrough.ids_after_first == {V1_STATE_ID, V3_STATE_ID}


def test_run_into_an_empty_database_resumes_from_meltano_state(
    walkthrough: Walkthrough,
) -> None:
    resumed, expected = keys(walkthrough.resumed), walkthrough.expected
    assert 0 < len(walkthrough.jobs_at_first_bookmark) < len(expected["v1", "jobs"])
    assert resumed == {
        ("v1", "jobs"): walkthrough.jobs_at_first_bookmark,
        ("v1", "connections"): expected["v1", "connections"],
        ("v1", "workspaces"): expected["v1", "workspaces"],
    }


def test_state_block_lists_refreshes_and_clears(walkthrough: Walkthrough) -> None:
    assert set(walkthrough.state_list_output.split()) == {V1_STATE_ID, V3_STATE_ID}
    v1_tables = {t: k for t, k in walkthrough.expected.items() if t[0] == "v1"}
    assert keys(walkthrough.refreshed) == v1_tables  # --full-refresh: every job
    assert walkthrough.ids_after_clear == {V3_STATE_ID}  # v1's alone is gone


def test_select_for_one_run_leaves_the_other_extractor_alone(
    walkthrough: Walkthrough,
) -> None:
    expected = walkthrough.expected
    v3_tables = {t: k for t, k in expected.items() if t[0] == "v3"}
    assert keys(walkthrough.selected) == {
        ("v1", "jobs"): expected["v1", "jobs"],
        **v3_tables,
    }


def in_project(meltano: Meltano, project: Path, *args: str) -> str:
    """stdout of ``meltano ARGS`` run in the Meltano project at ``project``."""
    result = subprocess.run(
        [str(meltano.executable), *args],
        cwd=project,
        env={**clean_env(), **isolated(project / "meltano.db")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def selection(meltano: Meltano, project: Path, extractor: str) -> list[str]:
    extras = json.loads(
        in_project(meltano, project, "config", "print", "--extras", extractor)
    )
    patterns: list[str] = extras["_select"]
    return patterns


def test_meltano_select_changes_one_extractor_only(
    meltano: Meltano, tmp_path: Path
) -> None:
    """The README's claim about ``meltano.yml``, on a copy of it (``meltano select``
    rewrites the file): each extractor's own ``select`` keeps the other's apart, and
    without it ``tap-analytics-v3`` would take v1's."""
    shutil.copy(ROOT / "meltano.yml", tmp_path / "meltano.yml")
    v1_before = selection(meltano, tmp_path, "tap-analytics")
    assert "connections.*" in v1_before
    assert selection(meltano, tmp_path, "tap-analytics-v3") == V3_SELECT

    in_project(meltano, tmp_path, "select", "tap-analytics", "--rm", "connections", "*")
    v1_after = selection(meltano, tmp_path, "tap-analytics")
    assert v1_after == [p for p in v1_before if p != "connections.*"]
    assert selection(meltano, tmp_path, "tap-analytics-v3") == V3_SELECT

    # Without its own list, v3 inherits v1's: why meltano.yml gives it one.
    text = (tmp_path / "meltano.yml").read_text()
    own_select = "    select:\n" + "".join(f"    - {p}\n" for p in V3_SELECT)
    assert own_select in text
    (tmp_path / "meltano.yml").write_text(text.replace(own_select, ""))
    assert selection(meltano, tmp_path, "tap-analytics-v3") == v1_after

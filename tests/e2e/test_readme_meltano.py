"""The Meltano and PostgreSQL examples of the README and docs/ work as written
(issues 12, 20).

The blocks are read from README.md and docs/ by their first line (``RUN_IN_E2E`` in
tests/test_readme.py, which fails on a block that is in no list) and run word for
word with bash in the project root, in the environment the README tells the user to
set: the variables its first Meltano block exports, with the sandbox's URL and
credentials and a new PostgreSQL role and database as values, and nothing else that
configures Meltano or a plugin (its system database is a temporary file, so no state
leaks in). The environment is Meltano's default, ``dev``, as the README's state ID
says.

The README's role-and-database block runs ``sudo -u postgres psql …`` and ``sudo -u
postgres createdb …``, as a user does on a machine with PostgreSQL. Here ``sudo`` is
a stand-in on the block's PATH that runs the command as the test server's superuser:
as root, the ``postgres`` user (``runuser``, as scripts/pg-test-db.sh does); otherwise
the test role over TCP, when it is a superuser (as in the CI service). psql and
createdb themselves are the real ones. Every role and database made is dropped.

One walk through the section, into three new roles and databases that block makes:

1. the role-and-database block, then install and run both extractors: every table
   holds exactly the sandbox's keys (psql counts the jobs), and Meltano saved a state
   under each ID docs/usage.md names.
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
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from tests.test_readme import RUN_IN_E2E, readme_blocks

from .conftest import (
    ROOT,
    SANDBOX_CONFIG,
    Meltano,
    PgDatabase,
    clean_env,
    unavailable,
)
from .test_meltano_postgres import Snapshot, expected_keys, snapshot

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tap_analytics.sandbox import SandboxServer

pytestmark = pytest.mark.e2e

(
    ENVIRONMENT_BLOCK,
    ROLE_AND_DATABASE_BLOCK,
    RUN_BOTH_BLOCK,
    STATE_BLOCK,
    SELECT_BLOCK,
) = RUN_IN_E2E
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


# `sudo`, for the README's role-and-database block: see its comment.
SUDO_STAND_IN_DIR = Path(__file__).resolve().parent / "bin"


def readme_block(first_line: str) -> str:
    [block] = [b for b in readme_blocks() if b.splitlines()[0] == first_line]
    return block


def readme_variables() -> set[str]:
    """The variables the README's Meltano section tells the user to export."""
    return set(re.findall(r"\b([A-Z][A-Z0-9_]*)=", readme_block(ENVIRONMENT_BLOCK)))


def readme_env(
    sandbox: SandboxServer, database: PgDatabase, system_db: Path, admin: Admin
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
    if database.port != DEFAULT_PG_PORT:  # the README relies on the default port
        values["TARGET_POSTGRES_PORT"] = values["PGPORT"] = str(database.port)
    return {**clean_env(), **values, **isolated(system_db), **admin.env()}


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


def connect_postgres(server: PgDatabase) -> psycopg.Connection[Any]:
    return psycopg.connect(**{**server.conninfo(), "dbname": "postgres"})


@dataclass(frozen=True)
class Admin:
    """The test server's superuser, behind the ``sudo`` stand-in at ``bin_dir``."""

    server: PgDatabase  # the test role: host, port and its own credentials

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{SUDO_STAND_IN_DIR}{os.pathsep}{clean_env()['PATH']}",
            "ADMIN_PGHOST": self.server.host,
            "ADMIN_PGPORT": str(self.server.port),
            "ADMIN_PGUSER": self.server.user,
            "ADMIN_PGPASSWORD": self.server.password,
        }

    def psql(self, command: str) -> None:
        subprocess.run(
            ["sudo", "-u", "postgres", "psql", "-X", "-q", "-c", command],
            env={**clean_env(), **self.env()},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    def owner_of(self, database: PgDatabase) -> str | None:
        """The owner of ``database``, or None when there is no such database."""
        with connect_postgres(self.server) as conn:
            row = conn.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                (database.dbname,),
            ).fetchone()
        return None if row is None else str(row[0])

    def can_login(self, role: str) -> bool:
        with connect_postgres(self.server) as conn:
            row = conn.execute(
                "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,)
            ).fetchone()
        return row is not None and bool(row[0])


@pytest.fixture(scope="module")
def admin(new_pg_database: Callable[[], PgDatabase]) -> Admin:
    server = new_pg_database()  # a name only: connection info of the test role
    if os.geteuid() != 0:
        with connect_postgres(server) as conn:
            row = conn.execute(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
        if not (row and row[0]):
            unavailable(f"creating roles needs root or a superuser, not {server.user}")
    return Admin(server)


@pytest.fixture(scope="module")
def new_owned_database(
    admin: Admin, new_pg_database: Callable[[], PgDatabase]
) -> Iterator[Callable[[], PgDatabase]]:
    """Connection info of a role and a database that do not exist yet (the README's
    block creates them); both are dropped at teardown."""
    made: list[PgDatabase] = []

    def make() -> PgDatabase:
        name = new_pg_database().dbname
        made.append(
            replace(
                admin.server,
                dbname=name,
                user=f"{name}_owner",
                password=uuid.uuid4().hex,
            )
        )
        return made[-1]

    try:
        yield make
    finally:
        for database in made:
            admin.psql(f'DROP DATABASE IF EXISTS "{database.dbname}" WITH (FORCE)')
            admin.psql(f'DROP ROLE IF EXISTS "{database.user}"')


def keys(tables: Snapshot) -> dict[tuple[str, str], frozenset[str]]:
    return {table: got.keys for table, got in tables.items()}


@dataclass(frozen=True)
class Walkthrough:
    expected: dict[tuple[str, str], frozenset[str]]
    jobs_at_first_bookmark: frozenset[str]
    owner_before: str | None  # the first database's owner before the README's block
    could_login_before: bool  # its role
    owner: str | None  # after the block
    could_login: bool
    role: str
    first: Snapshot  # both extractors into the first database
    config_list: str
    jobs_counted: str  # stdout of the block running both extractors (psql's count)
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
    admin: Admin,
    new_owned_database: Callable[[], PgDatabase],
    tmp_path_factory: pytest.TempPathFactory,
) -> Walkthrough:
    system_db = tmp_path_factory.mktemp("meltano-readme") / "meltano.db"
    databases = [new_owned_database() for _ in range(3)]
    first, second, third = (
        readme_env(e2e_sandbox, db, system_db, admin) for db in databases
    )

    owner_before = admin.owner_of(databases[0])
    could_login_before = admin.can_login(databases[0].user)
    run_block(ROLE_AND_DATABASE_BLOCK, first)
    owner = admin.owner_of(databases[0])
    could_login = admin.can_login(databases[0].user)
    listed = run_block(RUN_BOTH_BLOCK, first)
    first_snapshot = snapshot(databases[0])
    ids_after_first = state_ids(meltano, first)
    mark = datetime.fromisoformat(bookmark(meltano, first))

    run_block(ROLE_AND_DATABASE_BLOCK, second)
    meltano.check("run", "tap-analytics", "target-postgres", env=second)
    resumed = snapshot(databases[1])
    state_block = run_block(STATE_BLOCK, second)
    refreshed = snapshot(databases[1])
    ids_after_clear = state_ids(meltano, second)

    run_block(ROLE_AND_DATABASE_BLOCK, third)
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
        owner_before=owner_before,
        could_login_before=could_login_before,
        owner=owner,
        could_login=could_login,
        role=databases[0].user,
        first=first_snapshot,
        config_list=listed.stdout + listed.stderr,
        jobs_counted=listed.stdout,
        ids_after_first=ids_after_first,
        resumed=resumed,
        state_list_output=state_block.stdout,
        refreshed=refreshed,
        ids_after_clear=ids_after_clear,
        selected=selected,
    )


def test_role_and_database_block_creates_both(walkthrough: Walkthrough) -> None:
    assert walkthrough.owner_before is None
    assert not walkthrough.could_login_before
    assert walkthrough.could_login  # and it logged in: the tables below are its own
    assert walkthrough.owner == walkthrough.role


def test_both_extractors_load_exactly_the_sandbox_rows(
    walkthrough: Walkthrough,
) -> None:
    assert keys(walkthrough.first) == walkthrough.expected
    for table, got in walkthrough.first.items():
        assert got.distinct_keys == got.rows, f"{table}: duplicate keys"


def test_run_block_counts_the_loaded_jobs(walkthrough: Walkthrough) -> None:
    # psql's table: a header, a rule, the count, "(1 row)".
    lines = [line.strip() for line in walkthrough.jobs_counted.splitlines()]
    count = lines[lines.index("(1 row)") - 1]
    assert count == str(len(walkthrough.expected["v1", "jobs"])) == "250"


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

"""v3 through Meltano into PostgreSQL while jobs finish between runs (issue 18).

``meltano run tap-analytics-v3 target-postgres`` twice, with running jobs finishing
and new jobs appearing in between (listed up to 5 minutes after their
``finish_time``): after each run every table holds exactly the sandbox's rows, the
second run asks only for the new jobs' results (Meltano passes it the state the
first one saved). (``--full-refresh`` loading every job's results again is shown by
the README walkthrough, tests/e2e/test_readme_meltano.py.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from tap_analytics.sandbox import SandboxConfig, SandboxServer

from .test_meltano_postgres import PRIMARY_KEYS, expected_keys, snapshot, state_of

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .conftest import Meltano, PgDatabase

pytestmark = pytest.mark.e2e

# 10 workflows x 10 jobs, 30 results per successful job (2 pages of 25).
ACCOUNT = SandboxConfig(seed=42, v3_workflows=10, v3_jobs_per_workflow=10)
STATE_ID = "ci:tap-analytics-v3-to-target-postgres"


@pytest.fixture(scope="module")
def account() -> Iterator[SandboxServer]:
    with SandboxServer(ACCOUNT) as server:
        yield server


def result_pages(server: SandboxServer) -> list[str]:
    return [
        r["path"].split("/")[3]
        for r in server.requests
        if r["path"].endswith("/results")
    ]


def assert_tables_hold_exactly(database: PgDatabase, server: SandboxServer) -> None:
    tables = snapshot(database)
    expected = expected_keys(server.dataset)
    for table in PRIMARY_KEYS["v3"]:
        loaded = tables["v3", table]
        assert loaded.rows == loaded.distinct_keys, f"{table}: duplicate keys"
        assert loaded.soft_deleted == 0, table
        assert loaded.keys == frozenset(expected["v3", table]), table


def test_two_runs_with_jobs_finishing_between_them(
    meltano: Meltano,
    pg_database: PgDatabase,
    account: SandboxServer,
    meltano_env: dict[str, str],
) -> None:
    env = {
        **meltano_env,
        **pg_database.target_env(),
        "TAP_ANALYTICS_BASE_URL": account.base_url,
    }
    successful = len(expected_keys(account.dataset)["v3", "successful_jobs"])

    meltano.check("run", "tap-analytics-v3", "target-postgres", env=env)
    assert_tables_hold_exactly(pg_database, account)
    assert len(result_pages(account)) == 2 * successful
    first_state = state_of(meltano, env, STATE_ID)
    assert first_state["singer_state"]["bookmarks"]["job_results"]["watermark"]

    account.clear_requests()
    changed = account.advance_v3(60, finish=3, add=5)
    new = set(changed["finished"]) | set(changed["added"])

    meltano.check("run", "tap-analytics-v3", "target-postgres", env=env)
    assert_tables_hold_exactly(pg_database, account)
    asked = result_pages(account)
    assert set(asked) == new
    assert len(asked) == 2 * len(new)
    loaded = state_of(meltano, env, STATE_ID)["singer_state"]["bookmarks"]
    assert new <= set(loaded["job_results"]["loaded_jobs"])
    # The jobs that finished are upserted in their final version.
    with psycopg.connect(**pg_database.conninfo()) as conn:
        statuses: list[Any] = conn.execute(
            "SELECT status FROM analytics_v3.jobs WHERE uid = ANY(%s)",
            (changed["finished"],),
        ).fetchall()
    assert [row[0] for row in statuses] == ["finished"] * 3

"""Fixtures for the end-to-end tests: Meltano, PostgreSQL and the sandbox API.

- ``meltano``: runs ``scripts/meltano-setup.sh`` once per session (Meltano in
  ``.venv-meltano``, plugins in ``.meltano/``; a few seconds when already installed).
- ``pg_database``: a throwaway PostgreSQL database from ``scripts/pg-test-db.sh``,
  dropped at teardown; ``new_pg_database`` names ones the test creates itself (also
  dropped). Without PostgreSQL the test is skipped; under ``CI=true`` it fails instead.
- ``e2e_sandbox``: the sandbox API in this process, on a free loopback port.
- ``meltano_env``: the environment for a Meltano subprocess: the sandbox's credentials,
  a fresh Meltano system database (so no state leaks in from other runs) and nothing
  inherited that could configure a plugin by accident.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tap_analytics.sandbox import SandboxConfig, SandboxServer
from tests.tap_runner import assert_limits_in_range

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
SETUP_TIMEOUT = 900
PG_UNAVAILABLE = 3  # exit code of scripts/pg-test-db.sh when PostgreSQL cannot be had

# Beyond the documents, as the real server (its defaults: extra_note on every
# record, configurations and statusReason on connections), and a field that
# appears halfway through every stream and one whose type changes there.
SANDBOX_CONFIG = SandboxConfig(seed=42, halfway_field="added", retyped_field="score")

# Env vars that configure Meltano or a plugin; never inherited by the subprocesses.
_PLUGIN_ENV_PREFIXES = ("TAP_ANALYTICS", "TARGET_POSTGRES", "TARGET_DUCKDB", "MELTANO_")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: end-to-end tests through Meltano (need Meltano and PostgreSQL)"
    )


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> None:
    """Skip on a developer machine; fail under CI, where skipping would hide a gap."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class Meltano:
    """The Meltano CLI of this project."""

    executable: Path

    def run(
        self, *args: str, env: dict[str, str], timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run ``meltano ARGS`` in the project root; the caller checks the result."""
        return subprocess.run(
            [str(self.executable), *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def check(
        self, *args: str, env: dict[str, str], timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run ``meltano ARGS``; a non-zero exit fails the test, showing the output."""
        result = self.run(*args, env=env, timeout=timeout)
        if result.returncode != 0:
            pytest.fail(
                f"meltano {' '.join(args)} exited {result.returncode}\n"
                f"--- stdout (tail) ---\n{result.stdout[-4000:]}\n"
                f"--- stderr (tail) ---\n{result.stderr[-8000:]}",
                pytrace=False,
            )
        return result


@pytest.fixture(scope="session")
def meltano() -> Meltano:
    result = subprocess.run(
        ["bash", str(SCRIPTS / "meltano-setup.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SETUP_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"scripts/meltano-setup.sh exited {result.returncode}\n"
            f"{result.stderr[-8000:]}",
            pytrace=False,
        )
    venv = Path(os.environ.get("MELTANO_VENV", ROOT / ".venv-meltano"))
    return Meltano(venv / "bin" / "meltano")


@dataclass(frozen=True)
class PgDatabase:
    host: str
    port: int
    user: str
    password: str
    dbname: str

    def conninfo(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": self.dbname,
        }

    def target_env(self) -> dict[str, str]:
        """Settings of the target-postgres loader, as Meltano env vars."""
        return {
            "TARGET_POSTGRES_HOST": self.host,
            "TARGET_POSTGRES_PORT": str(self.port),
            "TARGET_POSTGRES_USER": self.user,
            "TARGET_POSTGRES_PASSWORD": self.password,
            "TARGET_POSTGRES_DATABASE": self.dbname,
        }


def _pg_script(*args: str) -> dict[str, str]:
    try:
        result = subprocess.run(
            ["bash", str(SCRIPTS / "pg-test-db.sh"), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"PostgreSQL unavailable: scripts/pg-test-db.sh: {exc}")
        raise AssertionError("unreachable") from exc
    if result.returncode == PG_UNAVAILABLE:
        unavailable(result.stderr.strip() or "PostgreSQL unavailable")
    if result.returncode != 0:
        pytest.fail(
            f"scripts/pg-test-db.sh {' '.join(args)} exited {result.returncode}\n"
            f"{result.stderr}",
            pytrace=False,
        )
    info: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            info[key] = value
    return info


@pytest.fixture(scope="module")
def pg_database() -> Iterator[PgDatabase]:
    name = f"e2e_{uuid.uuid4().hex[:12]}"
    info = _pg_script("create", name)
    database = PgDatabase(
        host=info["PGHOST"],
        port=int(info["PGPORT"]),
        user=info["PGUSER"],
        password=info["PGPASSWORD"],
        dbname=info["PGDATABASE"],
    )
    try:
        yield database
    finally:
        if not os.environ.get("E2E_KEEP_DATABASE"):
            _pg_script("drop", name)


@pytest.fixture(scope="module")
def new_pg_database() -> Iterator[Callable[[], PgDatabase]]:
    """Makes connection info for databases that do not exist yet (a test creates them
    itself, as the README does); every one of them is dropped at teardown."""
    server = _pg_script("ensure")
    names: list[str] = []

    def make() -> PgDatabase:
        names.append(f"e2e_{uuid.uuid4().hex[:12]}")
        return PgDatabase(
            host=server["PGHOST"],
            port=int(server["PGPORT"]),
            user=server["PGUSER"],
            password=server["PGPASSWORD"],
            dbname=names[-1],
        )

    try:
        yield make
    finally:
        if not os.environ.get("E2E_KEEP_DATABASE"):
            for name in names:
                _pg_script("drop", name)


@pytest.fixture(scope="module")
def e2e_sandbox() -> Iterator[SandboxServer]:
    # Defaults, the real server's ways: 250 v1 jobs (3 pages: 100, then 99 new
    # ones and one of overlap; a tenth without lastUpdatedAt), 120 connections (2
    # pages of 100), 7 workspaces; 5 v3 workflows x 6 jobs, 30 results per
    # successful job (2 pages).
    with SandboxServer(SANDBOX_CONFIG) as server:
        yield server
    assert_limits_in_range(server)


def clean_env() -> dict[str, str]:
    """This process's environment minus all that configures Meltano or a plugin."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith(_PLUGIN_ENV_PREFIXES)
    }


@pytest.fixture(scope="module")
def meltano_env(
    e2e_sandbox: SandboxServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Env for a Meltano subprocess: sandbox credentials, a fresh system database."""
    system_db = tmp_path_factory.mktemp("meltano") / "meltano.db"
    config = SANDBOX_CONFIG
    env = clean_env()
    env.update(
        {
            "MELTANO_DATABASE_URI": f"sqlite:///{system_db}",
            "MELTANO_ENVIRONMENT": "ci",
            "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
            "MELTANO_CLI_DISABLE_VERSION_CHECK": "true",
            "MELTANO_CLI_LOG_FORMAT": "uncolored",
            "TAP_ANALYTICS_BASE_URL": e2e_sandbox.base_url,
            "TAP_ANALYTICS_CLIENT_ID": config.client_id,
            "TAP_ANALYTICS_CLIENT_SECRET": config.client_secret,
            "TAP_ANALYTICS_V3_API_KEY": config.api_key,
        }
    )
    return env

"""What Meltano hands the tap, and what a user copies out of Meltano (issue 20).

- The config file Meltano writes for each extractor holds no setting the tap would
  warn about as unknown.
- ``meltano state get`` prints the state wrapped (``{"singer_state": …}``): given as
  is to ``--state`` it is one line that says how to unwrap it, and the command that
  line shows gives a state the tap resumes from.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tap_analytics.settings import unknown_settings
from tap_analytics.tap import TapAnalytics
from tests.tap_runner import (
    Output,
    jobs_updated_since,
    middle_bookmark,
    run_cli,
    v1_config,
)

from .conftest import Meltano, unavailable

if TYPE_CHECKING:
    from tap_analytics.sandbox import SandboxServer

pytestmark = pytest.mark.e2e


def dumped_config(meltano: Meltano, env: dict[str, str], extractor: str) -> Any:
    result = meltano.check("invoke", "--dump=config", extractor, env=env)
    return json.loads(result.stdout[result.stdout.index("{") :])


@pytest.mark.parametrize("extractor", ["tap-analytics", "tap-analytics-v3"])
def test_meltano_passes_no_setting_the_tap_does_not_know(
    meltano: Meltano, meltano_env: dict[str, str], extractor: str
) -> None:
    env = {
        **meltano_env,
        # Settings left unset by default, so that the dump holds them too.
        "TAP_ANALYTICS_START_DATE": "2024-01-01T00:00:00Z",
        "TAP_ANALYTICS_STREAM_MAPS": '{"jobs": {"__alias__": "jobs"}}',
        "TAP_ANALYTICS_FLATTENING_ENABLED": "false",
    }
    config = dumped_config(meltano, env, extractor)
    assert {"base_url", "start_date", "stream_maps", "flattening_enabled"} <= set(
        config
    )
    schema = json.loads(json.dumps(TapAnalytics.config_jsonschema))
    TapAnalytics.append_builtin_config(schema)
    assert unknown_settings(config, schema) == []


def test_a_state_from_meltano_state_get_says_how_to_unwrap_it(
    meltano: Meltano,
    meltano_env: dict[str, str],
    e2e_sandbox: SandboxServer,
    tmp_path: Path,
) -> None:
    if shutil.which("jq") is None:
        unavailable("jq is not installed (the error line tells users to run it)")
    bookmark = middle_bookmark(e2e_sandbox)
    singer_state = {
        "bookmarks": {
            "jobs": {
                "replication_key": "lastUpdatedAt",
                "replication_key_value": bookmark,
            }
        }
    }
    # Meltano takes and gives the state wrapped, both ways.
    stored = json.dumps({"singer_state": singer_state})
    state_id = "ci:tap-analytics-to-target-postgres"
    meltano.check("state", "set", "--force", state_id, stored, env=meltano_env)
    printed = meltano.check("state", "get", state_id, env=meltano_env).stdout
    wrapped = tmp_path / "meltano-state.json"
    wrapped.write_text(printed[printed.index("{") :])
    assert json.loads(wrapped.read_text()) == {"singer_state": singer_state}

    config = v1_config(e2e_sandbox)
    failed = run_cli("--state", str(wrapped), config=config, tmp_path=tmp_path)
    assert failed.returncode == 1
    assert failed.stdout == ""
    how = 'give the tap the object under "singer_state": '
    assert failed.last_stderr_line == (
        f"tap-analytics: error: --state {wrapped} holds a state as Meltano stores "
        f'it ({{"singer_state": …}}): {how}jq .singer_state {wrapped} > '
        f"{tmp_path / 'meltano-state.unwrapped.json'}"
    )

    command = failed.last_stderr_line.split(how, 1)[1]
    subprocess.run(["bash", "-c", command], cwd=tmp_path, check=True, timeout=30)
    unwrapped = shlex.split(command)[-1]
    assert json.loads(Path(unwrapped).read_text()) == singer_state
    resumed = run_cli("--state", unwrapped, config=config, tmp_path=tmp_path)
    assert resumed.returncode == 0, resumed.last_stderr_line
    expected = jobs_updated_since(e2e_sandbox, bookmark)
    assert 0 < len(expected) < len(e2e_sandbox.dataset["v1"]["jobs"])
    assert sorted(Output.parse(resumed.stdout).keys("jobs", "jobId")) == sorted(
        expected
    )

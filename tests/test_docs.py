"""The README and meltano.yml describe the settings the code has, no more, no fewer."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tap_analytics.batches import DEFAULT_BATCH_SIZE
from tap_analytics.tap import TapAnalytics

ROOT = Path(__file__).resolve().parent.parent


def builtin_settings() -> set[str]:
    """The settings the SDK adds for its capabilities (stream maps, flattening…)."""
    schema: dict = {"type": "object", "properties": {}}
    TapAnalytics.append_builtin_config(schema)
    return set(schema["properties"])


def tap_settings() -> set[str]:
    schema = copy.deepcopy(TapAnalytics.config_jsonschema)
    TapAnalytics.append_builtin_config(schema)
    return set(schema["properties"])


def test_readme_settings_table_matches_the_code():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    documented = {
        name
        for line in table.splitlines()
        if line.startswith("| `")
        for name in re.findall(r"`([a-z_]+)`", line.split("|")[1])
    }
    assert documented == tap_settings()


def test_meltano_yml_declares_every_tap_setting_and_marks_secrets():
    project = yaml.safe_load((ROOT / "meltano.yml").read_text())
    extractor = next(
        p for p in project["plugins"]["extractors"] if p["name"] == "tap-analytics"
    )
    declared = {s["name"]: s for s in extractor["settings"]}
    own = tap_settings() - builtin_settings()
    assert own <= set(declared)
    assert set(declared) <= tap_settings()
    secrets = {
        name
        for name, spec in TapAnalytics.config_jsonschema["properties"].items()
        if spec.get("secret")
    }
    assert secrets == {"client_secret", "api_key"}
    assert {n for n, s in declared.items() if s.get("sensitive")} == secrets


def test_each_extractor_selects_its_own_streams():
    # tap-analytics-v3 inherits tap-analytics' `select` unless it has its own.
    project = yaml.safe_load((ROOT / "meltano.yml").read_text())
    extractors = {p["name"]: p for p in project["plugins"]["extractors"]}
    credentials = {
        "tap-analytics": {"client_id": "c", "client_secret": "s"},
        "tap-analytics-v3": {"api_key": "k"},
    }
    for name, config in credentials.items():
        streams = TapAnalytics(config=config).streams
        assert sorted(extractors[name]["select"]) == sorted(f"{s}.*" for s in streams)


def test_about_says_what_batch_config_reads_and_refuses():
    # The README documents batch_size (default 10,000) and that gzip is refused;
    # --about, the settings reference Meltano shows, says the same.
    about = subprocess.run(
        [
            str(Path(sys.executable).parent / "tap-analytics"),
            "--about",
            "--format=json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    batch = json.loads(about.stdout)["settings"]["properties"]["batch_config"]
    size = batch["properties"]["batch_size"]
    assert size["default"] == DEFAULT_BATCH_SIZE == 10_000
    compression = batch["properties"]["encoding"]["properties"]["compression"]
    assert "gzip is refused" in compression["description"]
    assert "none" in compression["enum"]


def test_meltano_yml_declares_the_sdk_settings_the_readme_lists():
    project = yaml.safe_load((ROOT / "meltano.yml").read_text())
    extractor = next(
        p for p in project["plugins"]["extractors"] if p["name"] == "tap-analytics"
    )
    declared = {s["name"] for s in extractor["settings"]}
    assert declared == tap_settings()

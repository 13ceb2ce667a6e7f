"""The README and meltano.yml describe the settings the code has, no more, no fewer."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

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

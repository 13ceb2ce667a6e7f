"""The lock installs what pyproject.toml asks for, pinned; the pre-commit hook is local.

`make install` installs requirements-dev.lock with ``--require-hashes``, so a fresh
clone gets the versions the tests passed with; `make lock` writes it (issue 20).
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements-dev.lock"
# `name==version [; marker] \` then its `--hash=sha256:…` lines.
PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)(?: ; (?P<marker>.+?))? \\$"
)


def locked() -> dict[str, tuple[Version, Marker | None, int]]:
    """Each locked package: its version, its environment marker, its hash count."""
    pins: dict[str, tuple[Version, Marker | None, int]] = {}
    name = ""
    for line in LOCK.read_text().splitlines():
        if match := PIN.match(line):
            name = canonicalize_name(match["name"])
            marker = Marker(match["marker"]) if match["marker"] else None
            pins[name] = (Version(match["version"]), marker, 0)
        elif line.strip().startswith("--hash=sha256:"):
            version, marker, hashes = pins[name]
            pins[name] = (version, marker, hashes + 1)
        else:
            assert not line.strip() or line.lstrip().startswith("#"), line
    return pins


def dev_requirements() -> list[Requirement]:
    """The project's dependencies, the `dev` group (and its groups), the build's."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    groups = pyproject["dependency-groups"]

    def group(name: str) -> list[str]:
        items = groups[name]
        return [
            requirement
            for item in items
            for requirement in (
                group(item["include-group"]) if isinstance(item, dict) else [item]
            )
        ]

    texts = [
        *pyproject["project"]["dependencies"],
        *group("dev"),
        *pyproject["build-system"]["requires"],
    ]
    return [Requirement(text) for text in texts]


def test_the_lock_pins_every_requirement_with_hashes_and_names_no_index():
    text = LOCK.read_text()
    assert "://" not in text  # no index URL, no direct URL
    assert not [line for line in text.splitlines() if line.startswith("-")]
    pins = locked()
    assert len(pins) > 30
    assert all(hashes >= 1 for _, _, hashes in pins.values())
    for requirement in dev_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not locked: run `make lock`"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} is outside {requirement.specifier}: run `make lock`"
        )


def test_the_test_environment_has_the_locked_versions():
    mismatched = {
        name: (str(version), importlib.metadata.version(name))
        for name, (version, marker, _) in locked().items()
        if marker is None or marker.evaluate()
        if Version(importlib.metadata.version(name)) != version
    }
    assert mismatched == {}, "the virtualenv is not the lock's: run `make install`"


def test_pre_commit_runs_make_lint_locally_only():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    assert [repo["repo"] for repo in config["repos"]] == ["local"]
    hooks = config["repos"][0]["hooks"]
    assert [(hook["entry"], hook["language"]) for hook in hooks] == [
        ("make lint", "unsupported")
    ]
    makefile = (ROOT / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    for check in ("ruff check", "ruff format --check", "mypy"):
        assert check in lint, check

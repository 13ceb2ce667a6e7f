"""The layers contract (pyproject.toml's [tool.importlinter]) holds, and has teeth.

`make lint` runs lint-imports on the tree as it is; these tests run it on a copy of
the package with one import added, and show that it fails on an upward import,
type-only ones included, and on a module that picks no layer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with the project's contracts, on the package copied in ``tree``."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(
        ROOT / "tap_analytics",
        tmp_path / "tap_analytics",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return tmp_path


def add_line(path: Path, line: str) -> None:
    """Put ``line`` right after the module's ``from __future__`` import."""
    text = path.read_text()
    future = "from __future__ import annotations\n"
    assert future in text, path
    path.write_text(text.replace(future, future + line + "\n", 1))


def test_the_tree_as_it_is_keeps_every_contract(tree):
    run = lint_imports(tree)
    assert run.returncode == 0, run.stdout
    assert "Contracts: 2 kept, 0 broken." in run.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # A leaf reaching up to the tap (the circle issue 20 found, type-only).
        (
            "urls.py",
            "import typing\n"
            "if typing.TYPE_CHECKING:\n"
            "    from tap_analytics import tap",
            "tap_analytics.urls is not allowed to import tap_analytics.tap",
        ),
        # The page pool reaching up to the streams it serves.
        (
            "concurrency.py",
            "from tap_analytics import client",
            "tap_analytics.concurrency is not allowed to import tap_analytics.client",
        ),
        # The tap importing the sandbox, which only tests and the bench use.
        (
            "client.py",
            "from tap_analytics import sandbox",
            "tap_analytics.client is not allowed to import tap_analytics.sandbox",
        ),
        # The sandbox importing a module of the tap.
        (
            "sandbox/app.py",
            "from tap_analytics import urls",
            "tap_analytics.sandbox is not allowed to import tap_analytics.urls",
        ),
    ],
)
def test_an_import_against_the_layers_fails_lint(tree, module, line, broken):
    add_line(tree / "tap_analytics" / module, line)
    run = lint_imports(tree)
    assert run.returncode == 1
    assert broken in run.stdout


def test_a_module_without_a_layer_fails_lint(tree):
    helpers = tree / "tap_analytics" / "helpers.py"
    helpers.write_text('"""Somewhere to put things."""\n')
    run = lint_imports(tree)
    assert run.returncode == 1
    assert "tap_analytics.helpers" in run.stdout
    assert "not listed as layers" in run.stdout


def test_the_architecture_page_quotes_the_contract_as_it_is():
    # docs/architecture.md quotes pyproject.toml's [tool.importlinter] whole: a
    # module added to a layer must show there too.
    pyproject = (ROOT / "pyproject.toml").read_text()
    start = pyproject.index("[tool.importlinter]")
    end = pyproject.find("\n[", pyproject.rindex("[[tool.importlinter.contracts]]"))
    contract = pyproject[start : end if end > 0 else None].strip()
    quoted = (ROOT / "docs" / "architecture.md").read_text()
    assert f"```toml\n{contract}\n```" in quoted

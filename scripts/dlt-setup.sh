#!/usr/bin/env bash
# Install dlt (with its PostgreSQL destination) into a virtualenv of its own, for the
# benchmark's end-to-end scenarios (scripts/bench.py, scripts/dlt_pipeline.py).
#
#   scripts/dlt-setup.sh
#
# dlt is a contender, not a dependency of the tap: it never enters the project's
# virtualenv or pyproject.toml. Idempotent and quick when already installed.
#
# Environment: DLT_VENV (.venv-dlt), DLT_VERSION (1.31.0), PYTHON (python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DLT_VENV:-$ROOT/.venv-dlt}"
VERSION="${DLT_VERSION:-1.31.0}"
PYTHON="${PYTHON:-python3}"

log() { echo "dlt-setup: $*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("dlt"))' 2>/dev/null || true)"
if [[ "$installed" != "$VERSION" ]]; then
    log "installing dlt[postgres]==$VERSION into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "dlt[postgres]==$VERSION"
fi
log "ready: $VENV/bin/python"

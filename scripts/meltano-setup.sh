#!/usr/bin/env bash
# Install Meltano into its own virtualenv and the project's plugins into .meltano/.
#
#   scripts/meltano-setup.sh
#
# Idempotent and quick when nothing changed (a few seconds): Meltano is installed only
# when missing or at another version, and `meltano install` skips plugins whose
# pip_url did not change. The tap is installed editable (`pip_url: -e .`), so code
# changes need no reinstall; when pyproject.toml changes (new dependencies), the tap's
# plugin venv is rebuilt.
#
# Layout:
#   .venv-meltano/                 Meltano only (its pins: click<8.6, sqlalchemy<2.1)
#   .meltano/extractors/...        tap-analytics (editable), one venv per plugin
#   .meltano/loaders/...           target-postgres, target-duckdb
#
# Environment: MELTANO_VENV (.venv-meltano), MELTANO_VERSION (4.4.1), PYTHON (python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${MELTANO_VENV:-$ROOT/.venv-meltano}"
VERSION="${MELTANO_VERSION:-4.4.1}"
PYTHON="${PYTHON:-python3}"
MELTANO="$VENV/bin/meltano"

log() { echo "meltano-setup: $*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("meltano"))' 2>/dev/null || true)"
if [[ "$installed" != "$VERSION" ]]; then
    log "installing meltano==$VERSION into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "meltano==$VERSION"
fi

export MELTANO_SEND_ANONYMOUS_USAGE_STATS=false
export MELTANO_CLI_DISABLE_VERSION_CHECK=true

# Rebuild the tap's venv when its dependencies may have changed.
stamp="$ROOT/.meltano/tap-analytics.pyproject.sha256"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ -x "$ROOT/.meltano/extractors/tap-analytics/venv/bin/tap-analytics" ]] \
    && [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    log "pyproject.toml changed: reinstalling tap-analytics"
    "$MELTANO" install --clean --plugin-type extractor tap-analytics
fi

"$MELTANO" install
mkdir -p "$ROOT/.meltano" "$ROOT/output"

# Byte-compile Meltano, every plugin and the tap once, as pip does by default:
# plugin venvs are installed without it, and where PYTHONDONTWRITEBYTECODE is set
# (as in many CI and Docker images) nothing is ever cached, so every `meltano run`
# compiled all three programs' imports from source again (measured: 2.8 s of
# target-postgres's start alone). Quick when up to date.
log "byte-compiling Meltano, the plugins and the tap"
for venv in "$VENV" "$ROOT"/.meltano/*/*/venv; do
    "$venv/bin/python" -m compileall -q -j 0 "$venv/lib" >/dev/null || true
done
"$VENV/bin/python" -m compileall -q -j 0 "$ROOT/tap_analytics" >/dev/null || true
echo "$want" >"$stamp"
log "ready: $MELTANO"

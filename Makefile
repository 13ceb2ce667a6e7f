# The two commands a newcomer needs: `make demo` (run the tap) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SOURCES := tap_analytics tests scripts
# Every package `make install` installs, pinned with hashes (written by `make lock`).
LOCK := requirements-dev.lock
# The tool that writes the lock, pinned so that a rerun writes the same file.
UV_VERSION := 0.13.8
# `make lock LOCK_FLAGS=--upgrade` moves every pin to the newest version allowed.
LOCK_FLAGS ?=

.PHONY: install lock lint test demo bench clean

install: $(VENV)/.installed

# The locked versions (pip included), then the tap itself, editable and built with
# the locked setuptools: nothing unpinned is downloaded. Again when either input
# changes.
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Runtime dependencies and the `dev` group of pyproject.toml, for Python 3.11-3.13 on
# any platform, resolved in a throwaway virtualenv. Existing pins are kept unless
# pyproject.toml rules them out (or LOCK_FLAGS=--upgrade). The lock names no index:
# pip installs it from wherever pip is configured to look.
lock:
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT \
	&& $(PYTHON) -m venv "$$tmp" \
	&& "$$tmp/bin/python" -m pip install --quiet uv==$(UV_VERSION) \
	&& "$$tmp/bin/uv" pip compile pyproject.toml --group dev --universal \
		--python-version 3.11 --generate-hashes --custom-compile-command 'make lock' \
		--quiet $(LOCK_FLAGS) --output-file $(LOCK)
	@! grep -n -e '://' -e '^-' $(LOCK) || { echo "$(LOCK) names an index" >&2; exit 1; }

# Every static check, the one entry point of CI and of the pre-commit hook:
# style, types, and the layers of pyproject.toml's [tool.importlinter].
lint: install
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy tap_analytics scripts tests
	$(BIN)/lint-imports

# The end-to-end tests (tests/e2e) install Meltano and its plugins on first use
# (scripts/meltano-setup.sh) and start PostgreSQL when it is stopped.
test: lint
	$(BIN)/pytest

# Sandbox API -> both families -> DuckDB through Meltano; prints rows per table.
demo:
	bash scripts/demo.sh

# Tap vs a plain requests loop against the sandbox, and meltano run vs dlt into
# PostgreSQL (installs dlt into .venv-dlt); see docs/performance.md.
bench: install
	$(BIN)/python scripts/bench.py --scenario all

clean:
	rm -rf $(VENV) .venv-meltano .meltano output .mypy_cache .ruff_cache .pytest_cache

# The two commands a newcomer needs: `make demo` (run the tap) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SOURCES := tap_analytics tests scripts

.PHONY: install lint typecheck test demo bench clean

install: $(VENV)/.installed

# Reinstall when the dependencies change.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

lint: install
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

typecheck: install
	$(BIN)/mypy tap_analytics scripts tests

# The end-to-end tests (tests/e2e) install Meltano and its plugins on first use
# (scripts/meltano-setup.sh) and start PostgreSQL when it is stopped.
test: lint typecheck
	$(BIN)/pytest

# Sandbox API -> both families -> DuckDB through Meltano; prints rows per table.
demo:
	bash scripts/demo.sh

# Tap vs a plain requests loop against the sandbox, and meltano run vs dlt into
# PostgreSQL (installs dlt into .venv-dlt); see README "Performance".
bench: install
	$(BIN)/python scripts/bench.py --scenario all

clean:
	rm -rf $(VENV) .venv-meltano .meltano output .mypy_cache .ruff_cache .pytest_cache

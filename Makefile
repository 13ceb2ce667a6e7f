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
	$(BIN)/mypy tap_analytics

test: lint typecheck
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .meltano output .mypy_cache .ruff_cache .pytest_cache

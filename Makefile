PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck fmt clean clean-data bench bench-stages

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/sluice run

test: $(STAMP)
	$(BIN)/python -m pytest

# Benchmarks, not tests: several minutes, results in bench/results/ (see bench/README.md).
bench: $(STAMP)
	$(BIN)/python -m bench.stages.all
	$(BIN)/python -m bench.e2e

bench-stages: $(STAMP)
	$(BIN)/python -m bench.stages.all

lint: $(STAMP)
	$(BIN)/ruff check sluice tests bench
	$(BIN)/ruff format --check sluice tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format sluice tests bench
	$(BIN)/ruff check --fix sluice tests bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Deletes SLUICE_DATA_DIR (./.sluice): every event stored by the embedded servers.
clean-data: $(STAMP)
	$(BIN)/sluice reset --yes

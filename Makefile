# Everything runs from the project's own virtualenv; `make run` and `make test` create it on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-installs when pyproject.toml changes (new dependency, new console script).
INSTALLED := $(VENV)/.installed

.PHONY: run test lint

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $@

run: $(INSTALLED)
	$(BIN)/cqrs-console migrate
	$(BIN)/streamlit run app.py --server.port 8501 --server.headless true

test: $(INSTALLED)
	$(BIN)/pytest -p no:cacheprovider

lint: $(INSTALLED)
	$(BIN)/ruff check .

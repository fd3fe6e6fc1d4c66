# Everything a fresh machine with only python3 needs: each target builds .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.run-installed

demo: $(VENV)/.run-installed
	$(BIN)/launcher run configs/demo.jsonl --config configs/demo.toml

lint: $(VENV)/.test-installed
	$(BIN)/ruff check launcher tests benchmarks
	$(BIN)/ruff format --check launcher tests benchmarks

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy --strict launcher

unit: $(VENV)/.test-installed
	$(BIN)/pytest -q

test: lint typecheck unit

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis ledgers

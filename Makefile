# Two commands do all set-up from a fresh clone:
#   make demo   -- the classic experiment (nocopy vs pickled copies)
#   make test   -- ruff, mypy --strict on src/, and the pytest suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck pytest venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[pandas,bench]'
	touch $@

$(VENV)/.installed-all: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[all,dev]'
	touch $@ $(VENV)/.installed-demo

venv: $(VENV)/.installed-all

demo: $(VENV)/.installed-demo
	$(BIN)/python examples/classic_experiment.py

lint: $(VENV)/.installed-all
	$(BIN)/ruff check src tests examples

typecheck: $(VENV)/.installed-all
	$(BIN)/mypy

pytest: $(VENV)/.installed-all
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache bench-out

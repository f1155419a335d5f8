# Two commands do all set-up from a fresh clone:
#   make demo   -- the classic experiment (nocopy vs every peer: nocopy bench seed)
#   make test   -- ruff, mypy --strict on src/, and the pytest suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck pytest docs venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# What `make demo` installs: the benchmark's needs. Ray is a peer too, but a
# large install: `make demo DEMO_EXTRAS=pandas,bench,ray` includes it
# (`make test`'s venv has it already); without it the bench skips Ray with a note.
DEMO_EXTRAS ?= pandas,bench

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[$(DEMO_EXTRAS)]'
	touch $@

$(VENV)/.installed-all: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[all,dev]'
	touch $@ $(VENV)/.installed-demo

venv: $(VENV)/.installed-all

# The classic experiment against every installed peer: table on stdout,
# every number in bench-out/seed.json, the plot in bench-out/seed.png.
demo: $(VENV)/.installed-demo
	$(BIN)/nocopy bench seed --json bench-out/seed.json --plot bench-out/seed.png

lint: $(VENV)/.installed-all
	$(BIN)/ruff check src tests examples
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-all
	$(BIN)/mypy

pytest: $(VENV)/.installed-all
	$(BIN)/python -m pytest $(PYTEST_ARGS)

$(VENV)/.installed-docs: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[docs]'
	touch $@

# The documentation site in site/; --strict makes a broken link, an unresolved
# reference or an undocumented public name an error (docs/_hooks.py).
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: lint typecheck docs pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache bench-out

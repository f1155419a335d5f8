# Two commands do all set-up from a fresh clone:
#   make demo   -- the classic experiment (nocopy vs every peer: nocopy bench seed)
#   make test   -- ruff, mypy --strict on src/, the sdist and wheel (built, checked,
#                  installed in a fresh venv and smoke-tested there), and the pytest
#                  suite under coverage (child interpreters and spawned workers included),
#                  then the suite again on every other CPython the machine has (3.12, 3.13)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PYTEST_ARGS ?= --durations=20
DIST := dist
WHEEL_VENV := .venv-wheel

.PHONY: demo test lint typecheck docs dist smoke pytest coverage venv clean other-pythons venv-on pytest-on

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

# PyTorch (the torch extra, not in "all": a CPU build is GBs) only on the Pythons that
# have a CPU wheel at hand (this machine: cp311 among pip's find-links); the torch
# tests skip elsewhere. `make test TORCH_PYTHONS=` installs it nowhere.
TORCH_PYTHONS ?= 3.11

$(VENV)/.installed-all: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[all,dev,docs]'
	v=$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	  case " $(TORCH_PYTHONS) " in *" $$v "*) $(PIP) install -q --only-binary torch -e '.[torch]';; \
	  *) echo "note: no torch on Python $$v here (TORCH_PYTHONS=$(TORCH_PYTHONS)): its tests skip";; esac
	touch $@ $(VENV)/.installed-demo

venv: $(VENV)/.installed-all

# The classic experiment against every installed peer: table on stdout,
# every number in bench-out/seed.json, the plot in bench-out/seed.png.
demo: $(VENV)/.installed-demo
	$(BIN)/nocopy bench seed --json-out bench-out/seed.json --plot bench-out/seed.png

lint: $(VENV)/.installed-all
	$(BIN)/ruff check src tests examples
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-all
	$(BIN)/mypy

# The sdist, and the wheel built from it, as they would be uploaded.
dist: $(VENV)/.installed-all
	rm -rf $(DIST)
	$(BIN)/python -m build --quiet --outdir $(DIST) .
	$(BIN)/python -m twine check --strict $(DIST)/*

# The documentation site in site/; --strict makes a broken link, an unresolved
# reference or an undocumented public name an error (docs/_hooks.py).
docs: $(VENV)/.installed-all
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	@echo "The site is in $(CURDIR)/site: open $(CURDIR)/site/index.html," \
	  "or serve it with $(BIN)/python -m http.server -d site 8000"

# The wheel as users install it: a new venv each time, numpy only (no extras,
# not editable), run as `python -I` from an empty directory outside the tree.
smoke: dist
	rm -rf $(WHEEL_VENV)
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q $(DIST)/*.whl
	tmp=$$(mktemp -d) && cd "$$tmp" && \
	  $(CURDIR)/$(WHEEL_VENV)/bin/python -I $(CURDIR)/tests/smoke/wheel_smoke.py; \
	  rc=$$?; rm -rf "$$tmp"; exit $$rc

# Measured by coverage ([tool.coverage] in pyproject.toml): every Python process
# the tests start writes its own .coverage.* file (see [tool.coverage.run]).
pytest: $(VENV)/.installed-all
	rm -f .coverage .coverage.*
	$(BIN)/python -m coverage run -m pytest $(PYTEST_ARGS)

# The suite, then one report of every process's data, enforcing fail_under.
# A process killed before it saved (the crash tests SIGKILL workers) leaves an
# unreadable data file: combine counts it as "errored" and keeps it; the -W
# silences its per-file warning and the rm drops it.
coverage: pytest
	$(BIN)/python -W "ignore:Data file '" -m coverage combine
	rm -f .coverage.*
	$(BIN)/python -m coverage report

# The suite on every other CPython the machine has: a venv each (.venv-3.12, ...) with the
# same install as .venv (less the docs tools), pytest without coverage (coverage is measured
# and enforced once, above): every test not marked slow, then CPython's own pool tests of
# that version (tests/test_stdlib_conformance.py). The other slow tests (benchmarks, soak,
# Ray clusters, the slowest fault and fuzz tests) run on the default Python only.
# scripts/other-pythons.sh installs the venvs one by one, then runs the versions' suites
# side by side (a log each, in ci-logs/, printed at the end), so that `make test` stays
# within ~45 minutes on 2 cores. scripts/find-python.sh looks in pyenv's versions and on
# PATH; a version the machine lacks is skipped with a note.
OTHER_PYTHONS ?= 3.12 3.13 3.14

other-pythons:
	MAKE="$(MAKE)" scripts/other-pythons.sh $(OTHER_PYTHONS)

venv-on:
	test -x .venv-$(PY_VERSION)/bin/python || $(PY_EXE) -m venv .venv-$(PY_VERSION)
	test -f .venv-$(PY_VERSION)/.installed -a .venv-$(PY_VERSION)/.installed -nt pyproject.toml || { \
	  .venv-$(PY_VERSION)/bin/python -m pip install -q --upgrade pip && \
	  .venv-$(PY_VERSION)/bin/python -m pip install -q -e '.[all,dev]' && \
	  touch .venv-$(PY_VERSION)/.installed; }

pytest-on:
	@echo "== the suite on Python $(PY_VERSION)"
	.venv-$(PY_VERSION)/bin/python -m pytest -p no:cacheprovider -m "not slow" $(PYTEST_ARGS)
	.venv-$(PY_VERSION)/bin/python -m pytest -p no:cacheprovider tests/test_stdlib_conformance.py $(PYTEST_ARGS)

test: lint typecheck docs smoke coverage other-pythons

clean:
	rm -rf $(VENV) .venv-3.* $(WHEEL_VENV) $(DIST) .mypy_cache .ruff_cache .pytest_cache bench-out ci-logs .coverage .coverage.*

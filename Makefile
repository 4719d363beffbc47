# The two set-up commands of the README: `make demo` (the main job) and `make test` (lint, then the whole
# suite: what CI runs). `make test-fast` leaves out the end-to-end runs marked slow (the inner loop).
# All create the isolated environment in .venv if it is missing and install the package into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast lint install clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

demo: install
	$(PY) -m mindcv_xception.demo

clean:
	rm -rf $(VENV) runs .ruff_cache

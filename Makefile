# One command each: `make demo` (set up + run the main job on the embedded data set),
# `make test` (set up + run the test suite) and `make docs` (set up + build the documentation site
# into site/, warnings as errors). All create .venv with pip when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test docs bench

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test,docs]'
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m fedpriv demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

# --strict: a warning (a broken link or anchor, an API reference to a missing object) fails the build.
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d site

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_reconstruction.py

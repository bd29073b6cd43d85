# Two commands: `make demo` (train the tiny model on the bundled demo mixture, CPU)
# and `make test` (the whole test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Tests simulate an 8-device TPU slice on the CPU; see tests/conftest.py. They run in one pytest-xdist
# worker per core (at most 4; each file on one worker, so module fixtures are built once):
# `make test PYTEST_WORKERS=0` runs them in this process.
PYTEST_ARGS ?=
PYTEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, len(os.sched_getaffinity(0))))")

.PHONY: demo test venv venv-test clean-demo bench

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import jax, flax, optax, seqio, gin, orbax.checkpoint"
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(PIP) install --quiet --disable-pip-version-check -r requirements-test.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, transformers, pytest"
	touch $@

venv: $(VENV)/.runtime
venv-test: $(VENV)/.test

demo: $(VENV)/.runtime
	$(PY) -m xmtf_jax.demo

test: $(VENV)/.test
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist=loadfile $(PYTEST_ARGS) tests

bench: $(VENV)/.test
	$(PY) benchmarks/input_pipeline.py
	$(PY) benchmarks/train_step.py

clean-demo:
	rm -rf runs/demo

# One entry for set-up, tests, the demo and benchmarks; everything installs itself into .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# One BLAS thread per process: tests and the demo run several ranks on 2 cores.
export OMP_NUM_THREADS ?= 1

.PHONY: install test test-unit test-distributed demo bench clean

install: $(STAMP)

# torch first and pinned: 2.13.0 is the CPU build on this machine's disk; any other version
# resolves to a multi-GB CUDA build. setup.py's range then admits what is installed.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest tests

test-unit: install
	$(PY) -m pytest tests/unit

test-distributed: install
	$(PY) -m pytest tests/distributed

demo: install
	$(PY) tools/demo.py --run-dir demo_run

bench: install
	@set -e; for b in bench/*.py; do \
	  case $$b in bench/hfgen.py) continue;; esac; \
	  echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf $(VENV) demo_run .pytest_cache

# One entry for set-up, tests, the demo, the findings and benchmarks; everything installs itself into .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# One BLAS thread per process: tests and the demo run several ranks on 2 cores.
export OMP_NUM_THREADS ?= 1

.PHONY: install test test-unit test-distributed test-faults test-gpu demo demo-quick findings \
	ablate-sft bench clean

install: $(STAMP)

# torch first and pinned: 2.13.0 is the CPU build on this machine's disk; any other version
# resolves to a multi-GB CUDA build. setup.py's range then admits what is installed.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The CPU lanes hide CUDA from their own processes, so on a GPU node they still test the CPU
# path; the GPU lane then runs with the GPU visible (and skips, with the reason, without one).
test: install
	CUDA_VISIBLE_DEVICES= $(PY) -m pytest tests --ignore=tests/gpu
	$(PY) -m pytest tests/gpu

test-unit: install
	CUDA_VISIBLE_DEVICES= $(PY) -m pytest tests/unit

test-distributed: install
	CUDA_VISIBLE_DEVICES= $(PY) -m pytest tests/distributed

test-faults: install
	CUDA_VISIBLE_DEVICES= $(PY) -m pytest tests/faults

test-gpu: install
	$(PY) -m pytest tests/gpu

demo: install
	$(PY) tools/demo.py --run-dir demo_run

# The same commands as the demo, on a smaller corpus for 4 steps.
demo-quick: install
	$(PY) tools/demo.py --quick --run-dir demo_run_quick

# e-Llama's three findings at toy scale: findings_run/REPORT.md.
findings: install
	$(PY) tools/reproduce_findings.py --run-dir findings_run --force

# The multi-task SFT paper's two ablations at toy scale: sft_run/ablate.
ablate-sft: install
	$(PY) tools/ablate_sft.py --out sft_run/ablate

bench: install
	@set -e; for b in bench/*.py; do \
	  case $$b in bench/hfgen.py|bench/workers.py) continue;; esac; \
	  echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf $(VENV) demo_run demo_run_quick findings_run sft_run .pytest_cache

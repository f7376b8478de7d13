# Two entry points (see README): `make demo` runs the whole pipeline on the embedded synthetic corpus,
# `make test` runs the test suite. Both create the virtual environment and install the Debian
# packages they need when missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CORES ?= 2
# Debian packages: espeak-ng + sox speak the synthetic corpus; the test suite also starts a real
# one-node SLURM (slurm-wlm, munge) and renders the report in headless Chromium.
APT_DEMO := espeak-ng sox
APT_TEST := $(APT_DEMO) slurm-wlm munge chromium
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test venv apt-demo apt-test lint clean-demo

$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import ercpipe, torch, snakemake, opensmile, facenet_pytorch, open_clip" 
	touch $(STAMP)

venv: $(STAMP)

apt-demo:
	@bash .ci/apt-ensure $(APT_DEMO)

apt-test:
	@bash .ci/apt-ensure $(APT_TEST)

demo: apt-demo $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) all
	$(VENV)/bin/snakemake --cores $(CORES) --report results/report.html

# One pytest-xdist worker per core plus one, at most 4 (each holds torch and a DAG run's memory, ~2 GiB at peak;
# tests/conftest.py keeps each module on one worker). The extra worker fills the time the others spend waiting on
# subprocesses, SLURM and Snakemake's polling: on 2 cores the suite took 17 min 47 s with 3 workers (168 % CPU)
# against 22-23 min with 2 (earlier fresh-clone runs). TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= $(shell python3 -c "import os; print(min(4, len(os.sched_getaffinity(0)) + 1))")
test: apt-test $(STAMP)
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --maxprocesses 4 tests

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

# The demo's outputs and logs only: a real run's outputs, logs, conda environments (.snakemake/conda) and
# Snakemake's records stay.
clean-demo:
	rm -rf raw/synthetic features/*_demo anchors/demo_faces* results/*_demo results/benchmarks/*/*_demo* \
		results/benchmarks/*/demo_faces* results/benchmarks.tsv results/benchmarks.html results/report.html \
		logs/*/*_demo* logs/*/demo_faces* logs/*/.*_demo*.lock logs/*/.demo_faces*.lock

# The README's two commands: `make demo` (the main job) and `make test` (the tests).
# Each sets itself up: a virtualenv, torch pinned first (a CPU wheel; a bare `torch` would pull CUDA),
# then this package with its test extras.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUN    ?= runs/addition
# the fast suite on two processes (CI has 2 cores; each test is single-threaded), a test file per
# process at a time so a module's fixtures are built once (with a one-core job beside: 12 min 51 s,
# against 17 min 51 s in one process)
TEST_WORKERS ?= 2

.PHONY: setup demo test test-slow test-engines bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: setup        ## train the addition preset and run every analysis, the report at the end
	$(VENV)/bin/llc-watch pipeline --preset addition --out $(RUN)

test: setup        ## the fast suite (what CI runs): import layers, the tests, the docstrings' examples
	$(VENV)/bin/lint-imports
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q --doctest-modules llc_watch

test-slow: setup   ## the long statistical runs
	$(PY) -m pytest -q -m slow

$(VENV)/.engines: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,slurm,ray,dask]'
	touch $@

test-engines: $(VENV)/.engines   ## real submitit / Ray / Dask executors
	$(PY) -m pytest -q -m engines

bench: setup       ## benchmark tables (ours vs devinterp, batched probes vs sklearn)
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_llc.py
	$(PY) benchmarks/bench_probes.py

clean:
	rm -rf $(VENV) runs .pytest_cache

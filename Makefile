# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv, install torch==2.13.0 FIRST (the local CPU wheel; an unpinned
# torch would pull gigabytes of CUDA packages), then capsim with its extras.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.capsim-installed

.PHONY: setup demo test wheel-test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[trace,dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/capsim predict --model mixtral --hardware dgx-h100 --devices 2 --batch 32

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

wheel-test: $(STAMP)
	scripts/wheel_check.sh $(BIN)/python

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_predict.py
	$(BIN)/python benchmarks/bench_traces.py
	$(BIN)/python benchmarks/bench_sweep.py
	$(BIN)/python benchmarks/bench_provision.py
	$(BIN)/python benchmarks/bench_serve.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

# Two commands for a fresh machine: `make demo` (set up, then train on the built-in data)
# and `make test` (set up, then run the whole test suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench bench-steps bench-gap clean

$(BIN)/mobileconv: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/mobileconv

demo: setup
	$(BIN)/mobileconv train --out runs/demo --overwrite

test: setup
	$(BIN)/python -m pytest -q -n 2 tests

bench: setup
	$(BIN)/python benchmarks/mixconv_speed.py

bench-steps: setup
	$(BIN)/python benchmarks/cpu_steps.py

bench-gap: setup
	$(BIN)/python benchmarks/mixnet_gap.py

clean:
	rm -rf $(VENV) runs

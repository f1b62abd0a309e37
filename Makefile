# make run    start the engine on its defaults and run the original 10-client workload
# make test   lint, type-check and run the whole test suite
# make bench  the side-by-side benchmark suite (see docs/benchmarks.md)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint system-packages clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python clients/python/main_job.py

system-packages:
	sh scripts/install-system-packages.sh

lint: $(STAMP)
	$(BIN)/ruff check zmqbalance tests clients bench
	$(BIN)/ruff format --check zmqbalance tests clients bench
	$(BIN)/mypy

test: $(STAMP) system-packages lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

-include bench/Makefile.inc

# Quick start: `make demo` and `make test`. Both create .venv if missing and install oefray with its
# dev extra; the install step is skipped while pyproject.toml is unchanged since the last install.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.oefray-installed
DEMO   ?= demo-out

.PHONY: demo test install bench clean

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: install
	bash scripts/demo.sh $(DEMO)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/decay_fit.py
	$(BIN)/python benchmarks/preprocess.py
	$(BIN)/python benchmarks/train_overhead.py

clean:
	rm -rf $(DEMO) .pytest_cache

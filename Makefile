# Quick start: `make demo` and `make test`. Both create .venv if missing and install oefray with its
# dev extra; the install step is skipped while pyproject.toml is unchanged since the last install.
# The install step also puts Debian's `chromium` on the machine (the report's browser test needs it).
# The dev extra brings the BIDS validator (bids-validator-deno, with the deno runtime as a wheel):
# validator, schema and runtime are all in the wheels, nothing is fetched when it first runs.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.oefray-installed
BROWSER_STAMP := $(VENV)/.chromium-checked
DEMO   ?= demo-out

.PHONY: demo test install bench clean

install: $(STAMP) $(BROWSER_STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

# Chromium for the report's browser test, installed when missing: as root directly, else with sudo.
# It never fails the install: if it cannot install, it says so in one line and the browser test
# reports what is missing. Tried once per venv (the stamp); `rm $(BROWSER_STAMP)` to try again.
$(BROWSER_STAMP): | $(VENV)/bin/python
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	    echo "make: chromium not found and no apt-get here; install Chromium yourself for the report's browser test" >&2; \
	else \
	    if [ "$$(id -u)" -eq 0 ]; then as_root=; \
	    elif command -v sudo >/dev/null 2>&1; then as_root=sudo; \
	    else as_root=none; fi; \
	    if [ "$$as_root" = none ]; then \
	        echo "make: chromium not found and neither root nor sudo; as root: apt-get install -y chromium" >&2; \
	    elif { $$as_root apt-get update -qq && \
	           $$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	           >$(VENV)/chromium-install.log 2>&1; then \
	        echo "make: installed chromium for the report's browser test"; \
	    else \
	        echo "make: could not install chromium (see $(VENV)/chromium-install.log); the report's browser test will fail" >&2; \
	    fi; \
	fi
	@touch $(BROWSER_STAMP)

demo: install
	bash scripts/demo.sh $(DEMO)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/decay_fit.py
	$(BIN)/python benchmarks/preprocess.py
	$(BIN)/python benchmarks/gzip_reads.py
	$(BIN)/python benchmarks/features_read.py
	$(BIN)/python benchmarks/train_overhead.py
	$(BIN)/python benchmarks/qq.py
	$(BIN)/python benchmarks/qq_whole_brain.py

clean:
	rm -rf $(DEMO) .pytest_cache

# The short front door. `make test` builds everything from nothing, then runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
NOX    := $(BIN)/nox
PROFILE ?= paper
PACK ?= 1
STAMP  := $(VENV)/.installed

.PHONY: setup test test-quick benchmark reference sensitivity reproduce-table2 perf lint clean-venv

# One shared virtual environment for every nox session (a CUDA torch build is ~5.8 GB:
# one copy per session would be absurd). Re-installed when pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(NOX) -s tests

test-quick: $(STAMP)
	$(NOX) -s tests -- -m "not slow" -q -n 2

# Retrain the offline `quick` suite into runs/quick/ and compare it run by run with the
# committed reference (results/quick/); the tracked tree is left as it was.
benchmark: $(STAMP)
	$(NOX) -s benchmark

# Regenerate the committed reference results/quick/ and results/leaderboard.md on purpose.
reference: $(STAMP)
	$(NOX) -s reference

# Re-measure the quick suite's numerical noise (results/quick/sensitivity/), which `compare` uses.
sensitivity: $(STAMP)
	$(NOX) -s sensitivity

reproduce-table2: $(STAMP)
	$(NOX) -s reproduce_table2 -- --profile $(PROFILE) --pack-seeds $(PACK)

perf: $(STAMP)
	$(NOX) -s perf

lint: $(STAMP)
	$(NOX) -s lint

clean-venv:
	rm -rf $(VENV)

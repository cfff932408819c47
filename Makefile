# Everything a fresh machine needs goes through these targets: each one creates .venv and installs the
# project first (once; again when pyproject.toml changes).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
SWEEP  ?= positions
ARGS   ?=

.PHONY: install quickstart test test-full sweep bench repro clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)   ## train a tiny dropout SRResNet on the bundled photos (CPU, < 10 min), print the 8-degradation table
	$(PY) -m src.train $(ARGS)

test: $(STAMP)         ## the fast suite (CPU, no network)
	$(PY) -m pytest -m "not slow" -q $(ARGS)

test-full: $(STAMP)    ## everything, slow tests included
	$(PY) -m pytest -q $(ARGS)

sweep: $(STAMP)        ## a study of the paper: make sweep SWEEP=positions ARGS="scale=cpu"
	$(PY) -m src.train --config-dir sweeps --config-name $(SWEEP) -m $(ARGS)

bench: $(STAMP)        ## speed figures as ratios, written to bench.json
	$(PY) -m src.bench $(ARGS)

clean:
	rm -rf .pytest_cache outputs multirun

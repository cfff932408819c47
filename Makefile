# Everything a fresh machine needs goes through these targets: each one creates .venv and installs the
# project first (once; again when pyproject.toml changes).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
SWEEP  ?= positions
ARGS   ?=
# The torch a fresh .venv gets (pyproject accepts any torch>=2.4, so a venv that already has one keeps it).
TORCH  ?= torch==2.13.0

.PHONY: install quickstart test test-full sweep bench gpu-check report repro clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check '$(TORCH)'
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)   ## train a narrow 16-block dropout SRResNet on the bundled photos (CPU, < 10 min), print the 8-degradation table
	$(PY) -m src.train $(ARGS)

test: $(STAMP)         ## the fast suite (CPU, no network)
	$(PY) -m pytest -m "not slow" -q $(ARGS)

test-full: $(STAMP)    ## everything, slow tests included
	$(PY) -m pytest -q $(ARGS)

sweep: $(STAMP)        ## a study of the paper: make sweep SWEEP=positions ARGS="size=cpu"
	$(PY) -m src.train --config-dir sweeps --config-name $(SWEEP) -m $(ARGS)

bench: $(STAMP)        ## speed figures as ratios, written to bench.json
	$(PY) -m src.bench $(ARGS)

gpu-check: $(STAMP)    ## every GPU-only path against its bound, < 8 min (make gpu-check; device=cpu: the tiny CPU self-check)
	$(PY) -m src.gpucheck $(if $(device),device=$(device)) $(ARGS)

RESULTS := docs/results
# The kornia-codec campaign (committed without weights) and, once published, the real-codec one with its weights.
STUDIES := $(RESULTS)/repro_small_kornia $(wildcard $(addprefix $(RESULTS)/,repro_small repro_probabilities repro_positions repro_rrdb repro_bicubic))
# Interpretation of the campaign's models, one folder per sitting (docs/results/interp/<seeds>), pooled by merge.
comma   := ,
space   := $(subst ,, )
INTERP  := $(subst $(space),$(comma),$(strip $(sort $(wildcard $(RESULTS)/interp/*))))
# The same for the RRDB pair (docs/results/interp_rrdb/<seeds>, pooled into interp_rrdb_seeds).
INTERP_RRDB := $(subst $(space),$(comma),$(strip $(sort $(wildcard $(RESULTS)/interp_rrdb/*))))
report: $(STAMP)       ## rebuild every table and figure of docs/results from the committed result files (no training)
	$(PY) -m src.report $(STUDIES) out=$(RESULTS) readme=README.md
	$(if $(INTERP),$(PY) -m src.analyze merge sources=[$(INTERP)] out=$(RESULTS)/interp_seeds hydra.output_subdir=null)
	$(if $(INTERP_RRDB),$(PY) -m src.analyze merge sources=[$(INTERP_RRDB)] out=$(RESULTS)/interp_rrdb_seeds hydra.output_subdir=null)
	$(PY) -m src.report scorecard $(RESULTS) readme=README.md

RUNS  := $(or $(SR_RUNS_DIR),runs)
REPRO := $(RUNS)/repro_small/sweep
repro: $(STAMP)        ## the reduced-scale campaign (p=0 vs p=0.7, 3 seeds, both protocols; CPU, ~2 h on 2 cores): publishes its small files to docs/results/repro_small, rebuilds docs/results, interpretation over the seeds
	OMP_NUM_THREADS=1 $(PY) -m src.train --config-dir sweeps --config-name repro_small -m
	$(PY) -m src.report $(REPRO) publish=$(RESULTS)/repro_small out=$(RESULTS)
	rm -rf $(RESULTS)/interp
	OMP_NUM_THREADS=1 $(PY) -m src.analyze all groups="{p0:'$(REPRO)/dropout.p-0.0_*',p0.7:'$(REPRO)/dropout.p-0.7_*'}" out=$(RESULTS)/interp/all-seeds
	$(MAKE) report

clean:
	rm -rf .pytest_cache outputs multirun

# Two commands on a fresh clone:  `make demo`  and  `make test`.
# Each creates .venv and fills it; torch is pinned to the 2.13.0 CPU build
# (an unpinned torch would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.genre-installed
TORCH  := torch==2.13.0
EVENTS ?= 20000
# RANKER=off runs the demo with the blend scorer and skips training the ranker.
RANKER ?= auto
RANKER_DIR := .cache/models/ranker

.PHONY: install system-deps typecheck demo test test-fast lint schemas bench ranker evaluate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[cpu,train,embedded,dev]'
	touch $(STAMP)

install: $(STAMP)

# Export the ONNX encoder (skipped when up to date), train and export the ranker
# the first time (15-25 minutes on 2 cores), then replay MovieLens-100k.
demo: $(STAMP)
	$(BIN)/genre export encoder > /dev/null
	@if [ "$(RANKER)" != "off" ] && [ ! -f $(RANKER_DIR)/manifest.json ]; then $(MAKE) ranker; fi
	$(BIN)/genre demo --events $(EVENTS) --ranker $(RANKER)

# Train the ranker on the first 80% of MovieLens-100k and export it to ONNX.
ranker: $(STAMP)
	$(BIN)/genre export encoder > /dev/null
	$(BIN)/genre train > /dev/null
	$(BIN)/genre export ranker > /dev/null

# The GENRE ranker against every baseline on the temporal split (about 15 minutes).
evaluate: $(STAMP)
	$(BIN)/genre export encoder > /dev/null
	$(BIN)/genre evaluate --json

# System tools the suite needs besides .venv (Prometheus, for the dashboard test);
# installed with apt-get as root or through sudo, a no-op when already on PATH.
system-deps:
	bash deploy/install-system-deps.sh

# Lint, then the whole suite: unit, integration (real broker), end-to-end.
test: $(STAMP) system-deps
	$(BIN)/genre export encoder > /dev/null
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Unit tests only (real ONNX sessions, no broker): about 80 s on 2 cores.
test-fast: $(STAMP)
	$(BIN)/genre export encoder > /dev/null
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

# mypy sees the installed layout (genre.core is core/, genre.llm is llm/ ...: the
# package-dir map in pyproject.toml) through a tree of links in .cache/typecheck, so
# imports between the project's own packages are type-checked too.
TYPECHECK := .cache/typecheck
typecheck: $(STAMP)
	rm -rf $(TYPECHECK)/genre
	$(BIN)/python -c "import os, tomllib; m = tomllib.load(open('pyproject.toml', 'rb'))['tool']['setuptools']['package-dir']; os.makedirs('$(TYPECHECK)/genre'); [os.symlink(os.path.abspath(os.path.join('genre', f)), os.path.join('$(TYPECHECK)/genre', f)) for f in os.listdir('genre') if f.endswith('.py')]; [os.symlink(os.path.abspath(src), os.path.join('$(TYPECHECK)', *pkg.split('.'))) for pkg, src in m.items() if pkg.count('.') == 1]"
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p genre

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory typecheck

schemas: $(STAMP)
	$(BIN)/python -c "from genre.schemas.jsonschema import write_all; write_all()"
	$(BIN)/python -c "from genre.schemas.openapi import write_openapi; write_openapi()"

bench: $(STAMP)
	$(BIN)/python bench/bench_encoder.py
	$(BIN)/python bench/bench_ranker.py

clean:
	rm -rf $(VENV) .cache/demo-run

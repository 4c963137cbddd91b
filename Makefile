# Two commands on a fresh clone:  `make demo`  and  `make test`.
# Each creates .venv and fills it; torch is pinned to the 2.13.0 CPU build
# (an unpinned torch would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.genre-installed
TORCH  := torch==2.13.0
EVENTS ?= 20000

.PHONY: install demo test lint schemas bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[train,embedded,dev]'
	touch $(STAMP)

install: $(STAMP)

# Export the ONNX encoder (skipped when up to date), then replay MovieLens-100k.
demo: $(STAMP)
	$(BIN)/genre export encoder > /dev/null
	$(BIN)/genre demo --events $(EVENTS)

# Lint, then the whole suite: unit, integration (real broker), end-to-end.
test: $(STAMP)
	$(BIN)/genre export encoder > /dev/null
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

schemas: $(STAMP)
	$(BIN)/python -c "from genre.schemas.jsonschema import write_all; write_all()"

bench: $(STAMP)
	$(BIN)/python bench/bench_encoder.py

clean:
	rm -rf $(VENV) .cache/demo-run

# One virtual environment (.venv) holds the backend, the server, the test tools and the bpy module.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast test-e2e lint format addon-zip bench-cpu clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0" "numpy>=1.26,<2"
	$(BIN)/pip install -q -e ".[dev,blender]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/python blender_addon/demo.py --out outputs/demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pyright

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: setup
	$(BIN)/python -m pytest -q

# The two halves of `make test`, by marker (pyproject.toml): unit-level tests, then the end-to-end ones
# (slow: > ~20 s on 2 cores; blender: needs bpy; e2e: a whole script or process).
E2E_MARKERS := slow or blender or e2e

test-fast: setup
	$(BIN)/python -m pytest -q -m "not ($(E2E_MARKERS))"

test-e2e: setup
	$(BIN)/python -m pytest -q -m "$(E2E_MARKERS)"

addon-zip: setup
	$(BIN)/python -m blender_addon.build --out dist

clean:
	rm -rf $(VENV) outputs dist .pytest_cache

bench-cpu: setup
	$(BIN)/python -m benchmarks.server_overhead --n 50 --threads 1

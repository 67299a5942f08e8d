# tollhouse — `make demo` runs the gateway with example servers; `make test` runs the fast suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow lint bench venv clean lock conformance-tools

# Dependencies come from the hash-locked requirements.lock; the project itself is editable.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/tollhouse demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow" -q

test-slow: $(STAMP) conformance-tools
	$(BIN)/python -m pytest -m slow -q

# The official MCP conformance suite and the Node 22 it needs, pinned in tools/conformance/.
conformance-tools:
	bash tools/conformance/install.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/mcp_overhead.py

clean:
	rm -rf $(VENV) .tollhouse .mypy_cache .ruff_cache

# Regenerate requirements.lock after changing a pin in pyproject.toml.
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 --no-header \
		-o requirements.lock

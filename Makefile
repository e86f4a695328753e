# The README's quick start: `make run` serves martd with its demo page (memory
# backend), installing martd and what it needs to run, nothing more; `make test`
# adds the development tools and runs the test suite in parallel. Each sets up
# .venv on its own.
VENV ?= .venv
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 8000
# pytest-xdist workers: one per core (at most 4; the tests start real servers and browsers)
TEST_WORKERS ?= auto
RUNTIME := $(VENV)/.runtime-stamp
STAMP := $(VENV)/.installed-stamp
NODE_TOOLS := js/node_modules/.installed-stamp

.PHONY: run test bench lint docs clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet -e .
	touch $(RUNTIME)

$(STAMP): pyproject.toml $(RUNTIME)
	$(VENV)/bin/pip install --quiet -e '.[dev,redis]'
	touch $(STAMP)

# TypeScript for the check of js/client.d.mts (tests/test_package.py); skipped without npm.
$(NODE_TOOLS): js/package.json js/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix js --no-audit --no-fund --loglevel=error && touch $(NODE_TOOLS); \
	else \
	  echo "make: npm not found; the TypeScript check of js/ will be skipped"; \
	fi

run: $(RUNTIME)
	@echo "martd: open http://$(HOST):$(PORT)/martd/demo"
	MARTD_BACKEND=memory MARTD_DEMO=1 $(VENV)/bin/martd serve --host $(HOST) --port $(PORT)

test: $(STAMP) $(NODE_TOOLS)
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --maxprocesses 4 --dist loadgroup

bench: $(STAMP)
	$(VENV)/bin/python bench/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy

docs: $(STAMP)
	$(VENV)/bin/python -m martd_asgi.configref --write docs/configuration.md

clean:
	rm -rf $(VENV) .pytest_cache js/node_modules

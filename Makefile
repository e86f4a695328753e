# The README's quick start: `make run` serves martd with its demo page (memory
# backend); `make test` runs the test suite. Each sets up .venv on its own.
VENV ?= .venv
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 8000
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench lint docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev,redis]'
	touch $(STAMP)

run: $(STAMP)
	@echo "martd: open http://$(HOST):$(PORT)/martd/demo"
	MARTD_BACKEND=memory MARTD_DEMO=1 $(VENV)/bin/martd serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(VENV)/bin/python bench/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy

docs: $(STAMP)
	$(VENV)/bin/python -m martd_asgi.configref --write docs/configuration.md

clean:
	rm -rf $(VENV) .pytest_cache

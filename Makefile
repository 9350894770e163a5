# Every common action is one command.  `make demo` and `make test` set up .venv from scratch.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast lint typecheck bench-trainer bench-switch bench-serve clean

setup:
	@bash scripts/setup.sh

demo: setup  ## pre-train (or reuse) the universal blocks, tailor demo tasks, serve and query them
	@$(PY) scripts/demo.py $(DEMO_ARGS)

test: setup  ## lint, then the whole suite (needs Redis on 127.0.0.1:6379)
	@$(VENV)/bin/ruff check .
	@$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	@$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: setup
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check . || true

typecheck: setup
	@$(VENV)/bin/mypy

clean:
	rm -rf .nettailor .pytest_cache

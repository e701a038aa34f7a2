# Two commands for a newcomer: `make run` and `make test`. Both install what is
# missing (system packages, the virtualenv in .venv/) before they do anything.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help system setup run test lint typecheck unit integration lock stack-up stack-down stack-status clean

help:
	@echo "make run     start broker, Redis, topics and the dispatcher; Ctrl-C stops them"
	@echo "make test    lint, type-check and run the whole test suite (real broker + Redis)"
	@echo "make lint | typecheck | unit | integration | stack-up | stack-down | stack-status | lock"

system:
	@PYTHON="$(PYTHON)" bash ops/bootstrap-system.sh

$(STAMP): pyproject.toml ops/constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo "Python >= 3.11 is needed, found: $$($(PYTHON) --version)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c ops/constraints.txt -e '.[dev]'
	@touch $@

setup: system $(STAMP)

run: setup
	$(BIN)/dispatcher run

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

test: lint typecheck
	@PYTHON="$(PYTHON)" ALL_SERVERS=1 bash ops/bootstrap-system.sh
	$(BIN)/dispatcher stack fetch
	$(BIN)/pytest

unit: setup
	$(BIN)/pytest -m 'not integration'

integration: setup
	@PYTHON="$(PYTHON)" ALL_SERVERS=1 bash ops/bootstrap-system.sh
	$(BIN)/dispatcher stack fetch
	$(BIN)/pytest -m integration

# Re-pin every Python package after changing pyproject.toml's dependencies.
lock: setup
	$(BIN)/pip freeze --exclude-editable > ops/constraints.txt

stack-up: setup
	$(BIN)/dispatcher stack up

stack-down: setup
	$(BIN)/dispatcher stack down

stack-status: setup
	$(BIN)/dispatcher stack status

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

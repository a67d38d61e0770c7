# Zapline developer and CI commands. `make` alone lists them.
.DEFAULT_GOAL := help
.NOTPARALLEL:

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SRC    := api pipeline events projections migrations
# tests/ and bench/ only if present (git keeps no empty bench/ in a clone)
CHECK  := $(SRC) $(wildcard tests bench)
PYTEST_ARGS ?=

.PHONY: help .venv services browser db run test lint fmt bench clean

help:
	@echo "make run      prepare everything (venv, services, database) and run web + worker"
	@echo "make test     the same preparation, then ruff, mypy and pytest (PYTEST_ARGS=...)"
	@echo "make lint     ruff check and mypy"
	@echo "make fmt      ruff format"
	@echo "make bench    run bench/*.py"
	@echo "make services make sure PostgreSQL, Redis and RabbitMQ answer (.ci/services)"
	@echo "make db       create the database if missing and apply migrations"
	@echo "make .venv    create ./.venv and install the project with its dev tools"
	@echo "make browser  install headless Chromium for the browser test (as root; make test does it)"
	@echo "make clean    remove .venv and var/ (local media and the make run tokens too)"

# The stamp is redone when pyproject.toml changes.
.venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@$(PY) -c '' 2>/dev/null || { PYTHON=$(PYTHON) bash .ci/services python && $(PYTHON) -m venv --clear $(VENV); }
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

services:
	@bash .ci/services

browser:
	@bash .ci/browser

db: .venv services
	$(PY) -m pipeline migrate

run: .venv services db
	exec $(PY) -m pipeline dev

test: .venv services browser db lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: .venv
	$(VENV)/bin/ruff check $(CHECK)
	$(VENV)/bin/mypy $(SRC)

fmt: .venv
	$(VENV)/bin/ruff format $(CHECK)

bench: .venv services db
	@for f in bench/*.py; do [ -e "$$f" ] || continue; echo "== $$f"; $(PY) "$$f" || exit 1; done

clean:
	rm -rf $(VENV) var

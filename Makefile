# channelgate — the two commands in the README, and the targets CI and people share.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: demo test lint typecheck unit bench system-deps clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || { \
	  echo "python3 -m venv failed: installing python3-venv"; scripts/system-deps.sh python-venv && $(PY) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,demo]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

## make demo: the gateway on http://127.0.0.1:8000 with a development OpenID provider and three consoles.
demo: $(STAMP)
	$(BIN)/python -m deploy.demo.run

## make test: lint, type-check and every test, with the real servers the tests start themselves.
## The modules are shared out among TEST_WORKERS pytest-xdist workers (each starts its own Redis and PostgreSQL on
## free ports); most tests wait on servers more than they compute, so two workers fit the two-core machines.
TEST_WORKERS ?= 2
test: $(STAMP) system-deps lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

system-deps:
	scripts/system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check gateway connectors scim policies

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

## make bench: benchmarks; results are written to docs/benchmarks.md.
bench: $(STAMP) system-deps
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache tests/components/oidc_provider/node_modules

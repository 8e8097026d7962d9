# Minato task runner. `make` lists the targets; CI runs `make test`, then `make test-load` (see .ci/run).
.DEFAULT_GOAL := help
SHELL := /bin/bash

# uv is taken from PATH, or installed once into .tools/ from PyPI with the machine's Python.
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
PYTEST_ARGS ?=
# ollama-js, which the end-to-end tests drive under Node (tests/e2e/node).
NODE_CLIENTS := tests/e2e/node
# The pinned npm packages whose files the docs pages serve (assets/package.json, copied by assets/vendor.py).
ASSET_PACKS := assets/.packages/.fetched

.PHONY: help install assets docs lint fmt type test test-load check run bench up down logs clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv

install: $(if $(findstring .tools/,$(UV)),.tools/bin/uv) $(NODE_CLIENTS)/node_modules/.package-lock.json $(ASSET_PACKS) ## Install Minato and every dependency group into .venv (from uv.lock), ollama-js, and the docs assets' pinned packages
	$(UV) sync --locked --all-groups

# Runs only when node_modules is missing or older than the lock file. Without npm the ollama-js test
# fails and says why; everything else still installs.
$(NODE_CLIENTS)/node_modules/.package-lock.json: $(NODE_CLIENTS)/package-lock.json
	@if command -v npm >/dev/null; then \
		npm ci --prefix $(NODE_CLIENTS) --no-audit --no-fund && touch $@; \
	else \
		echo "npm not found: the ollama-js end-to-end test needs Node 20 (npm ci --prefix $(NODE_CLIENTS))"; \
	fi

# Fetches the pinned tarballs (npm pack: no dependencies, no install scripts) so the test can compare
# them with the committed copies. Without npm that test fails and says why.
$(ASSET_PACKS): assets/package.json
	@if command -v npm >/dev/null; then \
		python3 -m assets.vendor fetch && touch $@; \
	else \
		echo "npm not found: the docs assets test needs it to fetch assets/package.json's packages"; \
	fi

assets: ## Copy the docs pages' files from the packages pinned in assets/package.json into src/minato/web/pages/static/docs
	python3 -m assets.vendor copy

docs: install ## Rewrite the docs generated from the code: docs/settings.md and .env.example (from Settings)
	$(UV) run python -m tools.docs

lint: install ## ruff lint and format check, and the import contract (the layers)
	$(UV) run lint-imports
	$(UV) run ruff check src tests bench assets tools
	$(UV) run ruff format --check src tests bench assets tools

fmt: install ## Format and auto-fix
	$(UV) run ruff format src tests bench assets tools
	$(UV) run ruff check --fix src tests bench assets tools

type: install ## mypy --strict over src, tests, bench, assets and tools
	$(UV) run mypy

# The load and soak tests (marker `load`) run on their own: `make test` stays a functional suite
# whose verdict does not depend on how busy the machine is, and CI runs both, one after the other.
test: install ## Install everything and run the test suite (unit, end-to-end, browser) but the load tests
	$(UV) run pytest -m "not load" $(PYTEST_ARGS)

test-load: install ## The load and soak tests: hundreds of concurrent streams, abandoned ones, uploads
	$(UV) run pytest -m load $(PYTEST_ARGS)

check: lint type test test-load ## Everything CI checks

run: install ## Serve on 127.0.0.1:8000 against an Ollama already on this machine
	$(UV) run minato serve

bench: install ## Overhead benchmark against the Ollama stand-in (writes nothing; prints a table)
	$(UV) run python -m bench

up: ## docker compose up -d (Minato + Ollama)
	docker compose up -d

down: ## docker compose down
	docker compose down

logs: ## Follow the containers' logs
	docker compose logs -f

clean: ## Remove caches and the local environments
	rm -rf .venv .tools .mypy_cache .ruff_cache .pytest_cache $(NODE_CLIENTS)/node_modules assets/.packages

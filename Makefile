# Two commands for people: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit integration chaos bench clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: local Kafka + Redis + Celery worker + bridge + sample traffic, with live progress
demo: $(STAMP)
	$(BIN)/ckb demo

## test: lint, type check, unit, integration and chaos (SHORT) tests (starts its own Kafka and Redis)
test: lint browser $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: browser $(STAMP)
	$(BIN)/pytest tests/integration

## browser: Debian's chromium, for the test that opens Flower's task list in a headless browser;
## installed with apt-get when missing and running as root (else that test says how)
APT_CHROMIUM := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
browser:
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium with apt-get (the Flower browser test needs it)"; \
	  $(APT_CHROMIUM) >/dev/null || { apt-get update -q >/dev/null && $(APT_CHROMIUM) >/dev/null; }; \
	fi

## chaos: only the fault-injection scenarios (SHORT; part of `make test` too);
## CKB_CHAOS_PROFILE=full make chaos for the long run
chaos: $(STAMP)
	$(BIN)/pytest -m chaos tests/chaos

## bench: side-by-side benchmark (own Kafka + Redis + workers); see docs/benchmarks.md
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

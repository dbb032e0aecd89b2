# prescreen developer commands. `make demo` and `make test` work on a fresh machine:
# both create the virtual environment first (Python 3.11+ needed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-ui screenshots test lint typecheck rules-test unit sample serve image bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Screen the sample hospital shipped in samples/hospital (no server needed).
demo: $(STAMP)
	$(BIN)/prescreen demo

## The sample hospital in the web worklist: a local FHIR server (sekmet-fhir) holding it, screened
## for every trial, served at http://127.0.0.1:8000/ui/ (user demo, password demo-password).
demo-ui: $(STAMP)
	$(BIN)/python -m tests.ui.harness

## Regenerate the web worklist screenshots in docs/ (needs Debian's chromium).
screenshots: $(STAMP)
	$(BIN)/python -m tests.ui.screenshots

## Everything CI runs: lint, types, rule tests on both CEL engines, the pytest suite.
test: lint typecheck rules-test unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

rules-test: $(STAMP)
	$(BIN)/prescreen rules check
	$(BIN)/prescreen rules test

## The pytest suite, with a throwaway PostgreSQL for the state tests' PostgreSQL variants
## (.ci/with-postgres: started and stopped here; skipped, and said so, when it cannot start).
unit: $(STAMP)
	bash .ci/with-postgres $(BIN)/pytest

## Run the HTTP service (configuration: docs/configuration.md).
serve: $(STAMP)
	$(BIN)/prescreen serve

## The container image, built without Docker (debootstrapped Debian base + buildah; needs root),
## then checked: prescreen serve from the image answers /healthz and screens the shipped sample.
image:
	.ci/build-image
	.ci/check-image

## Benchmarks (minutes; about 8 GB of generated data under benchmarks/data).
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

## Regenerate the shipped sample (deterministic: same files every time).
sample: $(STAMP)
	rm -f samples/hospital/*.ndjson
	$(BIN)/prescreen synth --patients 300 --seed 7 --as-of 2026-06-15 \
		--spinal-fraction 0.2 --median-background 12 --clinic-days 5 --out samples/hospital

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache

# One task runner for humans, the README and CI (.ci/run calls `make test`).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help venv test lint chaos bench audit unit localstack localstack-venv demo docs clean

help:
	@echo "make demo        run the embedded end-to-end demo (LocalStack host mode, worker, traffic, summary)"
	@echo "make test        lint, type-check and run the whole test suite against an embedded LocalStack"
	@echo "make lint        ruff + mypy only"
	@echo "make chaos       the fault-injection suite with 20 kill -9 trials (figures in docs/chaos-results.json)"
	@echo "make localstack  start the embedded LocalStack in the foreground"
	@echo "make audit       pip-audit of the locked dependencies"
	@echo "make docs        regenerate the settings reference and the code map in docs/ from the code"

$(STAMP): pyproject.toml constraints/dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=python3.11)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints/dev.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check worker tests bench tools localstack/init
	$(BIN)/ruff format --check worker tests bench tools localstack/init
	$(BIN)/mypy
	$(BIN)/lint-imports

localstack-venv: $(STAMP)
	@$(BIN)/python -c 'from worker.devkit.localstack_venv import ensure_venv; ensure_venv()'

test: lint localstack-venv
	@scripts/ensure-promtool
	$(BIN)/python -m pytest

chaos: $(STAMP) localstack-venv
	CHAOS_TRIALS=20 CHAOS_OUTAGE_SECONDS=20 CHAOS_REPORT=docs/chaos-results.json $(BIN)/python -m pytest -q \
		tests/test_chaos.py tests/test_resilience.py tests/test_shutdown.py tests/test_fuzz.py

bench: $(STAMP) localstack-venv
	$(BIN)/python -m bench $(BENCH_ARGS)

audit: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pip-audit
	grep -v '^-e' constraints/dev.txt > $(VENV)/audit-requirements.txt
	$(BIN)/pip-audit --no-deps --disable-pip -r $(VENV)/audit-requirements.txt

unit: $(STAMP)
	@scripts/ensure-promtool
	$(BIN)/python -m pytest -m "not localstack"

localstack: $(STAMP)
	$(BIN)/worker localstack

demo: $(STAMP)
	$(BIN)/worker demo

docs: $(STAMP)
	$(BIN)/python tools/settings_doc.py
	$(BIN)/python tools/code_map.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

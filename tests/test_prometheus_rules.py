"""The alert rules: valid, unit-tested by promtool, sensitive, and written in the worker's metrics."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from tests.test_deploy_support import (
    COMPOSE,
    DEPLOY,
    ROOT,
    RULE_TESTS,
    RULES,
    load_yaml,
    promql_problems,
    require,
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require("bin:promtool")
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, check=False)


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_rules() -> None:
    """`promtool check rules` finds every rule of the file valid."""
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(group["rules"]) for group in load_yaml(RULES)["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    """`promtool test rules` passes every case of deploy/prometheus/tests."""
    result = _promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_silent() -> None:
    """Each alert of the rules file has a unit-test case where it fires and one where it must not."""
    cases = [case for test in load_yaml(RULE_TESTS)["tests"] for case in test.get("alert_rule_test", [])]
    for alert in _alerts():
        name = alert["alert"]
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name}: no case where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{name}: no case where it stays silent"
    tested = {case["alertname"] for case in cases}
    assert tested <= {alert["alert"] for alert in _alerts()}, "tests name alerts the rules do not have"


def test_unit_tests_catch_an_alert_that_never_or_always_fires(tmp_path: Path) -> None:
    """With every alert made to never (or always) fire, promtool's unit tests name each alert."""
    yaml = require("yaml")
    for replacement, what in (("vector(0) > 1", "never"), ("vector(1)", "always")):
        rules = load_yaml(RULES)
        for group in rules["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rule["expr"] = replacement
        (tmp_path / "rules").mkdir(exist_ok=True)
        (tmp_path / "tests").mkdir(exist_ok=True)
        (tmp_path / "rules" / RULES.name).write_text(yaml.safe_dump(rules))
        (tmp_path / "tests" / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
        result = _promtool("test", "rules", str(tmp_path / "tests" / RULE_TESTS.name))
        assert result.returncode != 0, f"alerts that {what} fire passed the unit tests"
        for alert in _alerts():
            output = result.stdout + result.stderr
            assert f"alertname: {alert['alert']}," in output, f"{alert['alert']} {what} firing went unnoticed"


def test_rules_use_only_metrics_the_worker_exports() -> None:
    """Every expression names exported metrics (or recorded ones) and only labels those metrics carry."""
    for group in load_yaml(RULES)["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            assert promql_problems(rule["expr"]) == [], name


def test_alerts_have_severity_summary_and_description() -> None:
    """Every alert carries a severity routing label and both annotations, and names are unique."""
    names = [alert["alert"] for alert in _alerts()]
    assert len(names) == len(set(names))
    for alert in _alerts():
        assert alert["labels"]["severity"] in {"critical", "warning"}, alert["alert"]
        assert alert["annotations"].get("summary"), alert["alert"]
        assert alert["annotations"].get("description"), alert["alert"]


def test_issue_alerts_are_all_there() -> None:
    """DLQ, error ratio, age of work, backlog, p99 near timeout, no poll, worker down: each has an alert."""
    exprs = {alert["alert"]: alert["expr"] for alert in _alerts()}
    wanted = {
        "SqsWorkerDeadLettering": "worker_dead_lettered_total",
        "SqsWorkerHighErrorRatio": "worker_messages_processed",
        "SqsWorkerMessageAgeHigh": "worker_message_age_seconds_bucket",
        "SqsWorkerBacklogGrowing": "worker_queue_messages",
        "SqsWorkerHandlerLatencyNearTimeout": "worker:handler_timeout_seconds",
        "SqsWorkerNotPolling": "worker_last_poll_success_timestamp_seconds",
        "SqsWorkerDown": "up{",
    }
    for alert, needle in wanted.items():
        assert needle in exprs.get(alert, ""), alert


def test_prometheus_config_scrapes_the_compose_worker_with_the_rules_job() -> None:
    """promtool accepts prometheus.yml; it loads the rules and scrapes the worker service on its port."""
    from worker.settings import Settings

    config_path = DEPLOY / "prometheus" / "prometheus.yml"
    result = _promtool("check", "config", str(config_path))
    assert result.returncode == 0, result.stdout + result.stderr
    config = load_yaml(config_path)
    loaded = {p for pattern in config["rule_files"] for p in config_path.parent.glob(pattern)}
    assert loaded == {RULES}, "prometheus.yml does not load exactly the tested rules file"
    (job,) = config["scrape_configs"]
    assert 'up{job="' + job["job_name"] + '"}' in RULES.read_text(), "WorkerDown watches another job"
    (target,) = [t for static in job["static_configs"] for t in static["targets"]]
    host, port = target.split(":")
    assert int(port) == Settings.model_fields["http_port"].default
    assert host in load_yaml(COMPOSE)["services"], f"{host} is not a compose service"
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_documented_alert_table_lists_exactly_the_alerts() -> None:
    """The Deploy docs' alert table names every alert of the rules file and no other."""
    doc = (ROOT / "docs" / "observability.md").read_text()
    documented = set(re.findall(r"^\| `(SqsWorker\w+)` \|", doc, re.MULTILINE))
    assert documented == {alert["alert"] for alert in _alerts()}

"""The Grafana dashboard and its provisioning: real metric names and labels, the panels asked for, wiring."""

from __future__ import annotations

import re
from typing import Any

from tests.test_deploy_support import (
    COMPOSE,
    DASHBOARD,
    DEPLOY,
    ROOT,
    load_json,
    load_yaml,
    promql_problems,
    substitute,
)

PROVISIONING = DEPLOY / "grafana" / "provisioning"


def _panels() -> list[dict[str, Any]]:
    return [p for p in load_json(DASHBOARD)["panels"] if p["type"] != "row"]


def _queries() -> list[tuple[str, str]]:
    out = [(panel["title"], target["expr"]) for panel in _panels() for target in panel["targets"]]
    for variable in load_json(DASHBOARD)["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
            assert match, f"variable {variable['name']}: expected label_values(series, label)"
            out.append((f"${variable['name']}", f"count by ({match.group(2)}) ({match.group(1)})"))
    return out


def test_every_query_uses_exported_metrics_and_labels() -> None:
    """Each panel and variable query names metrics the worker exports and labels they really carry."""
    for title, expr in _queries():
        assert promql_problems(substitute(expr)) == [], f"{title}: {expr}"


def test_the_checker_would_catch_a_typo_in_a_panel() -> None:
    """A dashboard query with a misspelt metric is reported (the check above can fail)."""
    title, expr = _queries()[0]
    broken = expr.replace("worker_messages_processed_total", "worker_messages_processed")
    assert broken != expr, title
    assert promql_problems(substitute(broken)) != []


def test_dashboard_has_the_panels_and_variables_asked_for() -> None:
    """Outcomes, error ratio, retries, DLQ writes, in-flight vs limit, p50/p95/p99, destinations, redrive."""
    by_title = {panel["title"]: " ".join(t["expr"] for t in panel["targets"]) for panel in _panels()}
    wanted = {
        "Handler runs by outcome": ["by (outcome)", "worker_messages_processed_total"],
        "Error ratio": ['outcome!="succeeded"'],
        "Retries by kind": ["by (kind)", "worker_retries_total"],
        "DLQ writes by condition": ["worker_dead_lettered_total"],
        "In flight vs concurrency": ["worker_messages_in_flight", "worker_concurrency_limit"],
        "Handler latency": [
            "histogram_quantile(0.5,",
            "histogram_quantile(0.95,",
            "histogram_quantile(0.99,",
        ],
        "Destination failures": ['result!="ok"', "worker_destination_deliveries_total"],
        "Redrive progress": ["worker_redrive_messages_total"],
    }
    for title, needles in wanted.items():
        assert title in by_title, f"missing panel {title!r}"
        for needle in needles:
            assert needle in by_title[title], f"{title}: {needle!r} not in its queries"
    variables = {v["name"]: v for v in load_json(DASHBOARD)["templating"]["list"]}
    assert {"queue", "version"} <= set(variables)
    assert "handler_version" in variables["version"]["definition"]


def test_dashboard_layout_and_variables_are_consistent() -> None:
    """Unique ids, panels inside 24 columns without overlaps, every $variable defined, one data source."""
    dash = load_json(DASHBOARD)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {
            (x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
    defined = {v["name"] for v in dash["templating"]["list"]} | {
        "__rate_interval",
        "__interval",
        "__range",
        "__all",
    }
    used = set(re.findall(r"\$\{?(\w+)", DASHBOARD.read_text()))
    assert used <= defined, f"undefined variables: {used - defined}"
    for panel in _panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    assert dash["uid"]
    assert dash["title"]


def test_provisioning_wires_prometheus_and_the_dashboard_into_compose() -> None:
    """The data source points at compose's Prometheus; the provider path is where compose mounts the JSON."""
    (source,) = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    services = load_yaml(COMPOSE)["services"]
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True
    host, port = source["url"].removeprefix("http://").split(":")
    assert host in services
    assert f"127.0.0.1:{port}:{port}" in services["prometheus"]["ports"]
    datasource_var = next(v for v in load_json(DASHBOARD)["templating"]["list"] if v["name"] == "datasource")
    assert datasource_var["current"]["value"] == source["uid"]

    (provider,) = load_yaml(PROVISIONING / "dashboards" / "sqs-worker.yml")["providers"]
    mounts = dict(
        volume.rsplit(":", 2)[:2] for volume in services["grafana"]["volumes"] if volume.startswith("./")
    )
    assert mounts.get("./deploy/grafana/dashboards") == provider["options"]["path"]
    assert mounts.get("./deploy/grafana/provisioning") == "/etc/grafana/provisioning"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    assert (ROOT / "deploy/grafana/dashboards" / DASHBOARD.name).is_file()

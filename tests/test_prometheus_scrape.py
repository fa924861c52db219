"""A real Prometheus scrapes a real `worker run` on LocalStack, with the repo's config and rules."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from tests.helpers import WorkerProcess, free_port, send, wait_for
from tests.test_deploy_support import (
    DASHBOARD,
    DEPLOY,
    ROOT,
    RULES,
    exported_families,
    exported_metrics,
    load_json,
    load_yaml,
    require,
    substitute,
)

pytestmark = [pytest.mark.localstack, pytest.mark.timeout(120)]

#: Labels Prometheus (job, instance) and prometheus.yml (environment) add to every worker series.
ADDED = {"__name__", "job", "instance", "environment"}


def documented_metrics() -> dict[str, set[str]]:
    """The metrics table of docs/observability.md: family name -> documented label names."""
    table: dict[str, set[str]] = {}
    for line in (ROOT / "docs" / "observability.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`worker_"):
            continue
        labels = re.sub(r"\([^)]*\)", "", cells[1])
        names = {part.strip() for part in labels.split(",") if re.fullmatch(r"[a-z_]+", part.strip())}
        for metric in re.findall(r"`(worker_\w+)`", cells[0]):
            table[metric] = names
    return table


def openmetrics_families() -> dict[str, str]:
    """Family name in the worker's OpenMetrics exposition (what Prometheus keeps metadata under) -> type."""
    from prometheus_client.openmetrics.exposition import generate_latest

    from worker.telemetry.metrics import Metrics

    text = generate_latest(Metrics().registry).decode()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def _get(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback Prometheus
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


async def api(port: int, path: str, **params: str) -> Any:
    """GET a Prometheus API path from a worker thread; the data of a successful answer."""
    return await anyio.to_thread.run_sync(lambda: _get(port, path, **params))


async def query(port: int, expr: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    data = await api(port, "/api/v1/query", query=expr)
    return list(data["result"])


@contextlib.contextmanager
def prometheus(tmp_path: Path, worker_port: int) -> Iterator[int]:
    """deploy/prometheus/prometheus.yml with the worker's loopback address, 1 s intervals, its own storage."""
    binary = require("bin:prometheus")
    yaml = require("yaml")
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    (job,) = config["scrape_configs"]
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{worker_port}"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        _wait_ready(proc, port, tmp_path / "prometheus.log")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def _equals(got: Any, expected: dict[str, float]) -> bool:
    return bool(await got == expected)


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Until /-/ready answers 200; fail with the log if Prometheus exits or takes more than 30 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)  # a process starting up: no event to wait on
    raise AssertionError(f"prometheus not ready within 30 s: {log.read_text()[-2000:]}")


async def test_prometheus_scrapes_documented_metrics_and_evaluates_rules_and_dashboard(
    queues: Any, sqs: Any, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """Scraped series have the documented names and labels; every rule evaluates; every panel query runs."""
    queue = await queues()
    name = queue["url"].rsplit("/", 1)[-1]
    worker = WorkerProcess(
        aws_env, tmp_path, queue_url=queue["url"], dlq_url=queue["dlq_url"], handler_version="scrape-1"
    ).start()
    try:
        await worker.wait_ready()
        with prometheus(tmp_path, worker.port) as port:
            # Traffic starts once Prometheus scrapes, so the rates it computes see it happen.
            await wait_for(lambda: query(port, "up == 1"), timeout=20, interval=0.2, what="first scrape")

            async def outcomes() -> dict[str, float]:
                expr = f'sum by (outcome) (worker_messages_processed_total{{queue="{name}"}})'
                values = {s["metric"]["outcome"]: float(s["value"][1]) for s in await query(port, expr)}
                return {outcome: value for outcome, value in values.items() if value}

            # Two phases, so Prometheus sees the success counter rise between scrapes (rate > 0).
            await send(sqs, queue["url"], {"key": "a"})
            await wait_for(
                lambda: _equals(outcomes(), {"succeeded": 1}), timeout=30, interval=0.3, what="first outcome"
            )
            for body in (
                {"key": "b"},
                {"key": "c", "do": "permanent"},
                {"key": "d", "do": "fail_times", "n": 1},
            ):
                await send(sqs, queue["url"], body)
            expected = {"succeeded": 3, "dead_lettered": 1, "retried": 1}
            await wait_for(
                lambda: _equals(outcomes(), expected), timeout=30, interval=0.3, what="all outcomes"
            )
            rising = 'rate(worker_messages_processed_total{outcome="succeeded"}[1m]) > 0'
            await wait_for(lambda: query(port, rising), timeout=10, interval=0.3, what="a positive rate")
            assert await outcomes() == {"succeeded": 3, "dead_lettered": 1, "retried": 1}

            (target,) = (await api(port, "/api/v1/targets"))["activeTargets"]
            assert target["health"] == "up"
            assert target["labels"]["job"] == "sqs-worker"

            # Names: every documented family is known to Prometheus with the type the worker exports.
            # Prometheus asks for OpenMetrics and gets it: a counter's family drops `_total` there, an info's
            # `_info`.
            metadata = await api(port, "/api/v1/metadata")
            documented = documented_metrics()
            assert len(documented) >= 15
            families = openmetrics_families()
            for family in documented:
                names = (family, family.removesuffix("_total"), family.removesuffix("_info"))
                scraped = next(n for n in names if n in families)
                assert scraped in metadata, f"{family} never reached Prometheus (as {scraped})"
                assert metadata[scraped][0]["type"] == families[scraped], family

            # Labels: series that exist carry exactly the documented labels (le on buckets); the rest are
            # checked on the worker's own registry.
            for family, labels in documented.items():
                sample = f"{family}_bucket" if exported_families()[family] == "histogram" else family
                series = await api(port, "/api/v1/series", **{"match[]": sample})
                extra = {"le"} if sample.endswith("_bucket") else set()
                for item in series:
                    assert set(item) - ADDED == labels | extra, f"{family}: {sorted(item)}"
                assert exported_metrics()[sample] == frozenset(labels | extra), family
            (build,) = await query(port, "worker_build_info")
            from worker import __version__

            assert build["metric"]["version"] == __version__
            (ok,) = await query(
                port, f'worker_messages_processed_total{{outcome="succeeded", queue="{name}"}}'
            )
            assert ok["metric"]["handler"] == "tests.handlers:scripted"
            assert ok["metric"]["handler_version"] == "scrape-1"

            # Rules: every group of the rules file loaded, every rule evaluated without error.
            async def evaluated() -> list[dict[str, Any]]:
                groups = (await api(port, "/api/v1/rules"))["groups"]
                rules = [rule for group in groups for rule in group["rules"]]
                done = all(not rule["lastEvaluation"].startswith("0001") for rule in rules)
                return groups if rules and done else []

            groups = await wait_for(evaluated, timeout=20, interval=0.5, what="rule evaluation")
            assert sorted(g["name"] for g in groups) == sorted(g["name"] for g in load_yaml(RULES)["groups"])
            for group in groups:
                for rule in group["rules"]:
                    assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
            (timeout_rule,) = await query(port, "worker:handler_timeout_seconds")
            assert float(timeout_rule["value"][1]) == 30

            # Dashboard: every panel query runs; the key panels show this worker's data.
            for panel in load_json(DASHBOARD)["panels"]:
                for target in panel.get("targets", []):
                    await query(port, substitute(target["expr"]))
            titles = {p["title"]: p for p in load_json(DASHBOARD)["panels"] if p["type"] != "row"}
            for title in (
                "Handler runs by outcome",
                "In flight vs concurrency",
                "Queue depth",
                "Workers by version",
            ):
                for target in titles[title]["targets"]:
                    assert await query(port, substitute(target["expr"])), f"{title}: no data"
    finally:
        worker.kill()

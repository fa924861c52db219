"""The benchmark: its smoke mode end to end on LocalStack, and its ratio and target arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.common import BENCH_DIR
from bench.measure import body, percentile
from tests.test_deploy_support import npm_installed, require

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.localstack
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_bench_drains_every_queue_and_reports_each_figure(
    aws_env: dict[str, str], localstack_endpoint: str, tmp_path: Path
) -> None:
    """`python -m bench --quick` drains every preloaded queue with each consumer, sqs-consumer included."""
    # The Node consumer is part of the smoke run, never dropped: node and npm must be there (the bench
    # looks for both) and `make node-deps` must have installed bench/package-lock.json's packages, so the
    # bench installs nothing itself. Locally a missing piece skips; under CI it fails.
    require("bin:node")
    require("bin:npm")
    npm_installed(BENCH_DIR, stamp=".bench-installed")  # the stamp bench/emulators.py:npm_install checks
    consumers = ["raw", "worker", "sqs-consumer"]
    output = tmp_path / "results.json"
    n, io_n, latency_n = 600, 200, 20
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--endpoint",
            localstack_endpoint,
            "--consumers",
            ",".join(consumers),
            "--messages",
            str(n),
            "--io-messages",
            str(io_n),
            "--warmup",
            "0",
            "--latency-messages",
            str(latency_n),
            "--wait",
            "1",
            "--output",
            str(output),
        ],
        cwd=ROOT,
        env=aws_env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[bench] npm " not in done.stderr, "the bench installed npm packages during the test"
    assert "node/npm not found" not in done.stderr, done.stderr[-3000:]
    results = json.loads(output.read_text())
    assert results["consumers"] == consumers
    assert results["node"].startswith("v"), results["node"]
    assert results["quick"] is True
    assert results["repeat"] == 1
    rows = {(r["consumer"], r["handler"]): r for r in results["throughput"]}
    assert set(rows) == {(c, h) for c in consumers for h in ("noop", "sleep50")}
    for (consumer, handler), row in rows.items():
        expected = n if handler == "noop" else io_n
        assert row["messages"] == expected
        assert row["received"] >= expected, (consumer, handler, row)
        assert 0 < row["measured_messages"] <= expected
        assert row["msgs_per_s"] > 0, row
        assert row["cpu_s_per_1k"] > 0, row
        assert row["peak_rss_mb"] > 10, row
        if consumer == "worker":
            assert row["succeeded"] >= expected, row
    assert [row["consumer"] for row in results["latency"]] == consumers
    for row in results["latency"]:
        assert row["messages"] == latency_n
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert {"worker_vs_raw_throughput_noop", "worker_vs_raw_cpu_noop"} <= set(results["ratios"])
    assert results["ratios"]["worker_vs_raw_throughput_noop"] == pytest.approx(
        rows["worker", "noop"]["msgs_per_s"] / rows["raw", "noop"]["msgs_per_s"], abs=0.001
    )
    assert "| worker | noop |" in done.stdout
    assert "results:" in done.stdout


def _row(consumer: str, handler: str, rates: list[float], cpus: list[float]) -> dict[str, Any]:
    runs = [
        {"consumer": consumer, "handler": handler, "msgs_per_s": r, "cpu_s_per_1k": c, "peak_rss_mb": 50.0}
        for r, c in zip(rates, cpus, strict=True)
    ]
    return report.median_runs(runs)


def test_ratios_pair_each_repetition_with_the_raw_run_beside_it() -> None:
    """A ratio is the median of per-repetition ratios, so one noisy repetition of raw does not skew it."""
    results = {
        "throughput": [
            _row("raw", "noop", [1000, 500, 1000], [0.2, 0.4, 0.2]),
            _row("worker", "noop", [950, 480, 900], [0.24, 0.5, 0.22]),
        ]
    }
    ratios = report.ratios(results)
    assert ratios["worker_vs_raw_throughput_noop"] == 0.95  # median of 0.95, 0.96, 0.90
    assert ratios["worker_vs_raw_cpu_noop"] == 1.2  # median of 1.2, 1.25, 1.1
    assert "worker_vs_sqs_consumer_noop" not in ratios  # sqs-consumer did not run


def test_targets_say_met_missed_or_not_measured() -> None:
    """Throughput targets are floors, the CPU target a ceiling, and a ratio never measured is None."""
    results = {
        "emulator": "localstack 4.13.1",
        "consumers": ["raw", "worker"],
        "ratios": {"worker_vs_raw_throughput_noop": 0.94, "worker_vs_raw_cpu_noop": 1.2},
    }
    met = {t["target"]: t["met"] for t in report.targets(results)}
    assert met == {
        "worker: no-op throughput >= 0.95 x raw": False,
        "worker: CPU per 1k messages <= 1.2 x raw": True,
        "worker: 50 ms handler: >= 5 x sqs-consumer": None,
    }
    results["emulator"] = "fauxqs 2.4.1"
    assert "worker: no-op: >= 1.5 x sqs-consumer" in {t["target"] for t in report.targets(results)}


def test_median_run_keeps_every_repetition() -> None:
    """The reported row is the median-throughput repetition, with the median CPU and all repetitions kept."""
    row = _row("raw", "noop", [300, 100, 200], [0.1, 0.3, 0.2])
    assert row["msgs_per_s"] == 200
    assert row["cpu_s_per_1k"] == 0.2
    assert [r["msgs_per_s"] for r in row["repetitions"]] == [300, 100, 200]


def test_bodies_are_200_bytes_and_percentiles_are_nearest_rank() -> None:
    """Preloaded bodies have the issue's size, and p50/p99 use the nearest-rank rule."""
    assert {len(body(i).encode()) for i in (0, 7, 12345, 10**7)} == {200}
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([5.0], 99) == 5.0

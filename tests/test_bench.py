"""The benchmark: its smoke mode end to end on LocalStack, and its ratio, rate, request-count and target
arithmetic."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from bench import common as bench_common
from bench import consumers as bench_consumers
from bench import lifecycle, report, stats
from bench.common import BENCH_DIR, write_results
from bench.consumers import Launch
from bench.countproxy import CountingProxy, sqs_action
from bench.emulators import run_on_emulator
from bench.measure import Sample, body, percentile, steady_rate
from bench.run import parse_args, round_orders
from tests.test_deploy_support import npm_installed, require

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.localstack
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_bench_drains_every_queue_and_reports_each_figure(
    aws_env: dict[str, str], localstack_endpoint: str, tmp_path: Path
) -> None:
    """`python -m bench --quick` drains every preloaded queue with each consumer, sqs-consumer included, and
    measures each one's start, stops and SQS requests (counted through the proxy)."""
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
    assert isinstance(results["seed"], int)
    assert [sorted(order) for order in results["order"]["noop"]] == [sorted(consumers)]
    assert results["emulator_kind"] == "localstack", results["emulator"]
    assert results["emulator_version"], results["emulator"]
    assert set(results["peer_versions"]) == {"sqs-consumer", "@aws-sdk/client-sqs"}
    rows = {(r["consumer"], r["handler"]): r for r in results["throughput"]}
    assert set(rows) == {(c, h) for c in consumers for h in ("noop", "sleep50")}
    for (consumer, handler), row in rows.items():
        expected = n if handler == "noop" else io_n
        assert row["messages"] == expected
        assert row["received"] >= expected, (consumer, handler, row)
        assert 0 < row["measured_messages"] <= expected
        assert row["msgs_per_s"] > 0, row
        assert row["from_start_msgs_per_s"] > 0, row
        assert row["steady_msgs_per_s"] is not None, row
        assert row["steady_msgs_per_s"] > 0, row
        assert row["cpu_s_per_1k"] > 0, row
        assert row["peak_rss_mb"] > 10, row
        if consumer == "worker":
            assert row["succeeded"] >= expected, row
    assert len(results["git"]["sha"]) == 40, results["git"]
    assert isinstance(results["git"]["dirty"], bool)
    assert [row["consumer"] for row in results["lifecycle"]] == consumers
    for row in results["lifecycle"]:
        assert 0 < row["launch_to_first_handled_s"] < 60, row
        assert 0 < row["idle_stop_s"] < 60, row
        assert 0 <= row["idle_in_flight_at_exit"] <= 10, row
    assert [row["consumer"] for row in results["busy_stop"]] == consumers
    assert all(0 < row["busy_stop_s"] < 60 for row in results["busy_stop"]), results["busy_stop"]
    assert [row["consumer"] for row in results["requests"]] == consumers
    for row in results["requests"]:
        # The proxy saw every consumer's traffic: at least one receive and one batch delete per 10 messages.
        assert row["by_action_per_1k"].get("ReceiveMessage", 0) >= 100, row
        assert row["by_action_per_1k"].get("DeleteMessageBatch", 0) >= 100, row
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
    """Throughput targets are floors, the CPU targets ceilings, and a ratio never measured is None."""
    results = {
        "emulator": "LocalStack 4.13.1 (host mode)",
        "emulator_kind": "localstack",
        "consumers": ["raw", "worker"],
        "io_concurrency": 20,
        "baselines": {
            "raw_variants": ["raw"],
            "sqs_consumer_best_noop": None,
            "sqs_consumer_lowest_cpu_noop": None,
            "sqs_consumer_best_sleep50": None,
            "sqs_consumer_default_sleep50": None,
        },
        "ratios": {
            "worker_vs_best_raw_steady_noop": 0.94,
            "worker_vs_best_raw_steady_noop_ci95": [0.9, 0.97],
            "worker_vs_raw_cpu_noop": 1.0,
            "worker_vs_raw_cpu_noop_ci95": None,
        },
    }
    met = {t["target"].split(" (", 1)[0]: t["met"] for t in report.targets(results)}
    assert met == {
        "worker: T1: no-op at steady state >= 0.95 x the best raw variant of each round": False,
        "worker: T1: no-op from process start >= 0.95 x the best raw variant of each round": None,
        "worker: T2: CPU per 1k messages <= 1.0 x raw's": True,
        "worker: T2: CPU per 1k messages <= 1.0 x the best raw variant's of each round": None,
        "worker: T2: CPU per 1k messages <= 0.8 x sqs-consumer's lowest-CPU configuration": None,
        "worker: T3: no-op at steady state >= 1.15 x sqs-consumer's best instance count": None,
        "worker: T3: 50 ms handler at steady state, same total concurrency": None,
        "worker: T3: 50 ms handler at steady state >= 4 x sqs-consumer-default's": None,
    }
    first = report.targets(results)[0]
    assert (first["value"], first["ci95"], first["threshold"]) == (0.94, [0.9, 0.97], 0.95)
    results["emulator_kind"] = "fauxqs"
    assert any(
        t["target"].startswith("worker: T3: no-op at steady state >= 1.5 x")
        and t["target"].endswith("fauxqs")
        for t in report.targets(results)
    )


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


def test_steady_rate_leaves_out_the_start_and_the_tail() -> None:
    """The steady rate is taken between 10 % and 90 % consumed, interpolated between samples."""
    # 1,000 messages: a slow first second (100 consumed), then 400/s, then a slow tail.
    points = [(0.0, 1000), (1.0, 900), (2.0, 500), (3.0, 100), (5.0, 0)]
    samples = [Sample(at, remaining, 0.0, None, None) for at, remaining in points]
    assert steady_rate(samples, 1000) == pytest.approx(400.0)
    assert steady_rate(samples[:2], 1000) is None  # 90 % never reached


def test_sqs_action_reads_the_json_and_the_query_protocol() -> None:
    """The counting proxy names a request by X-Amz-Target, else by the Action of its form body or query."""
    json_head = b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: AmazonSQS.DeleteMessageBatch"
    assert sqs_action(json_head, b"{}") == "DeleteMessageBatch"
    query_head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
    assert sqs_action(query_head, b"Action=ReceiveMessage&Version=2012-11-05") == "ReceiveMessage"
    assert sqs_action(b"GET /?Action=GetQueueUrl&QueueName=q HTTP/1.1\r\nHost: x", b"") == "GetQueueUrl"
    assert sqs_action(b"GET /health HTTP/1.1\r\nHost: x", b"") == "other"


class _Depths:
    """A stand-in for ``Bench`` whose queue reads the given depths in turn."""

    def __init__(self, *depths: int) -> None:
        self.depths = list(depths)
        self.reads = 0

    async def depth(self, url: str) -> int:
        self.reads += 1
        return self.depths.pop(0)


@pytest.mark.parametrize(
    ("depths", "empty", "reads"),
    [((3,), False, 1), ((0, 10), False, 2), ((0, 0), True, 2)],
)
async def test_a_queue_counts_as_drained_only_when_it_reads_empty_twice(
    monkeypatch: pytest.MonkeyPatch, depths: tuple[int, ...], empty: bool, reads: int
) -> None:
    """A first 0 is read again before the queue counts as drained: LocalStack reads 0 while a receive has
    taken the last messages off the queue and not yet counted them in flight."""
    monkeypatch.setattr(lifecycle, "EMPTY_CONFIRM_SECONDS", 0.0)
    bench = _Depths(*depths)
    assert await lifecycle.queue_drained(bench, "url") is empty  # type: ignore[arg-type]
    assert bench.reads == reads


async def test_counting_proxy_counts_each_request_of_a_kept_alive_connection() -> None:
    """Two requests on one connection reach the server whole and are counted by action; answers come back."""
    seen: list[bytes] = []

    async def server(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            while data.count(b"}") < 2:
                data += await stream.receive()
            seen.append(data)
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" * 2)

    request = (
        b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: AmazonSQS.ReceiveMessage\r\nContent-Length: 2\r\n\r\n{}"
    )
    with anyio.fail_after(10):
        async with (
            await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(listener.serve, server)
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            proxy = CountingProxy(f"http://127.0.0.1:{port}")
            proxy_port = await tg.start(proxy.serve)
            async with await anyio.connect_tcp("127.0.0.1", proxy_port) as client:
                await client.send(request + request)
                answer = b""
                while answer.count(b"ok") < 2:
                    answer += await client.receive()
            tg.cancel_scope.cancel()
    assert seen == [request + request]
    assert proxy.snapshot() == {"ReceiveMessage": 2}


def test_results_go_under_a_dated_name_with_the_prefix_unless_an_output_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write_results names the file <prefix><UTC date>.json in RESULTS_DIR, or writes exactly --output."""
    monkeypatch.setattr(bench_common, "RESULTS_DIR", tmp_path / "results")
    results = {"emulator": "x", "n": 3}
    for prefix in ("", "openloop-", "scaling-"):
        path = write_results(results, None, prefix)
        assert path.parent == tmp_path / "results"
        assert re.fullmatch(re.escape(prefix) + r"\d{4}-\d\d-\d\dT\d{6}\.json", path.name), path.name
        assert json.loads(path.read_text()) == results
    given = tmp_path / "deep" / "er" / "run.json"
    assert write_results(results, str(given), "openloop-") == given
    assert json.loads(given.read_text()) == results


def test_run_on_emulator_runs_the_entry_in_a_workdir_it_removes_unless_kept() -> None:
    """With --endpoint no emulator starts: the entry gets it, no pid and a fresh worker-<prefix> workdir,
    removed afterwards (also when the entry fails) unless --keep-workdir."""
    seen: list[tuple[str, str, int | None, Path, bool]] = []

    async def entry(
        args: argparse.Namespace, endpoint: str, description: str, pid: int | None, workdir: Path
    ) -> dict[str, Any]:
        seen.append((endpoint, description, pid, workdir, workdir.is_dir()))  # noqa: ASYNC240 - a test
        if args.fail:
            raise RuntimeError("entry failed")
        return {"endpoint": endpoint}

    def args(keep: bool, fail: bool = False) -> argparse.Namespace:
        endpoint = "http://127.0.0.1:9"
        return argparse.Namespace(emulator="localstack", endpoint=endpoint, keep_workdir=keep, fail=fail)

    assert run_on_emulator(args(keep=False), entry, "", "detail") == {"endpoint": "http://127.0.0.1:9"}
    endpoint, description, pid, workdir, existed = seen[-1]
    assert (endpoint, description, pid, existed) == (
        "http://127.0.0.1:9",
        "existing endpoint http://127.0.0.1:9",
        None,
        True,
    )
    assert workdir.name.startswith("worker-bench-")
    assert not workdir.exists()
    with pytest.raises(RuntimeError, match="entry failed"):
        run_on_emulator(args(keep=False, fail=True), entry, "openloop-")
    assert seen[-1][3].name.startswith("worker-openloop-")
    assert not seen[-1][3].exists()
    run_on_emulator(args(keep=True), entry, "scaling-")
    kept = seen[-1][3]
    try:
        assert kept.name.startswith("worker-scaling-")
        assert kept.is_dir()
    finally:
        shutil.rmtree(kept, ignore_errors=True)
    assert [s[4] for s in seen] == [True, True, True]


def _drain(consumer: str, handler: str, rates: list[float], cpus: list[float]) -> dict[str, Any]:
    runs = [
        {
            "consumer": consumer,
            "handler": handler,
            "config": "",
            "msgs_per_s": r,
            "from_start_msgs_per_s": r,
            "steady_msgs_per_s": r * 1.2,
            "cpu_s_per_1k": c,
            "peak_rss_mb": 50.0,
        }
        for r, c in zip(rates, cpus, strict=True)
    ]
    return report.median_runs(runs)


def _life(consumer: str, firsts: list[float], stops: list[float], left: int) -> dict[str, Any]:
    return report.median_lifecycle(
        [
            {
                "consumer": consumer,
                "launch_to_first_handled_s": f,
                "idle_stop_s": s,
                "idle_in_flight_at_exit": left,
                "idle_visible_again_s": None if left else 0.0,
            }
            for f, s in zip(firsts, stops, strict=True)
        ]
    )


def test_issue20_targets_compare_the_defaults_with_the_raw_loop_and_the_best_peer() -> None:
    """The worker's defaults are held against the raw loop and sqs-workers' best configuration, per round."""
    results = {
        "consumers": ["raw", "worker-defaults", "sqs-workers-p1", "sqs-workers-p2"],
        "pollers": 4,
        "throughput": [
            _drain("raw", "noop", [1000, 1000, 1000], [0.4, 0.4, 0.4]),
            _drain("worker-defaults", "noop", [960, 940, 1500], [0.5, 0.5, 0.5]),
            _drain("sqs-workers-p1", "noop", [500, 500, 500], [0.3, 0.3, 0.3]),
            _drain("sqs-workers-p2", "noop", [600, 700, 900], [0.6, 0.6, 0.6]),
        ],
        "lifecycle": [
            _life("raw", [0.5, 0.5, 0.5], [0.1, 0.1, 0.1], 10),
            _life("worker-defaults", [0.7, 0.8, 0.9], [0.3, 2.5, 0.3], 10),
        ],
    }
    assert report.best_configs(results)["sqs-workers"] == "sqs-workers-p2"  # by median from start
    rows = {t["target"].split(": ", 1)[1]: (t["value"], t["met"]) for t in report.issue20_targets(results)}
    assert rows["no-op from process start >= 0.95 x raw (4 pollers)"] == (
        0.96,
        True,
    )  # median of 0.96, 0.94, 1.5
    assert rows["no-op from process start >= 1.5 x sqs-workers' best (sqs-workers-p2)"] == (1.6, True)
    assert rows["CPU per message <= sqs-workers' best (sqs-workers-p2)"] == (0.833, True)
    assert rows["launch -> first handled <= 1.5 x raw's"] == (1.6, False)
    assert rows["idle SIGTERM -> exit <= 2 s (slowest repetition)"] == (2.5, False)
    # Ten messages left in flight and still not visible when the bench stopped watching: stranded.
    assert rows["idle SIGTERM strands no message (any left in flight visible again soon)"] == (10.0, False)
    assert rows["no-op at steady state >= 2 x the best Python peer (sqs-workers-p2)"] == (1.6, False)


def test_bootstrap_interval_contains_the_median_and_is_reproducible() -> None:
    """The percentile-bootstrap interval brackets the median, is the same for the same seed, and is null for
    one value (one repetition says nothing about the spread)."""
    samples = [
        [1.0, 2.0],
        [0.93, 0.97, 1.01, 0.88, 1.2],
        [5.0, 1.0, 3.0, 100.0, 2.0, 4.0],
        [0.5, 0.5, 0.6, 0.9, 0.4, 0.55, 0.52],
    ]
    for values in samples:
        interval = stats.bootstrap_ci(values)
        assert interval is not None
        low, high = interval
        assert min(values) <= low <= stats.median(values) <= high <= max(values), (values, interval)
        assert low < high, values
        assert stats.bootstrap_ci(values) == interval  # the default seed: reproducible
        assert stats.bootstrap_ci(values, seed=7) == stats.bootstrap_ci(values, seed=7)
    values = samples[2]
    seeds = {stats.bootstrap_ci(values, seed=seed, resamples=50) for seed in range(20)}
    assert len(seeds) > 1  # the seed is what makes it reproducible: another seed resamples differently
    assert stats.bootstrap_ci([0.97] * 5) == (0.97, 0.97)  # a constant list: zero width
    assert stats.bootstrap_ci([0.97]) is None
    assert stats.summary([0.97123]) == (0.971, None)
    assert stats.summary([3.0, 1.0, 2.0]) == (2.0, [1.0, 3.0])
    with pytest.raises(ValueError, match="no values"):
        stats.median([])


def test_median_runs_put_an_interval_beside_each_figure() -> None:
    """Each repeated figure is the median of its rounds, ``<figure>_ci95`` beside it; null for one round."""
    row = _drain("raw", "noop", [1000, 900, 1100, 950, 1050], [0.3, 0.2, 0.4, 0.25, 0.35])
    assert row["steady_msgs_per_s"] == 1200.0
    low, high = row["steady_msgs_per_s_ci95"]
    assert low <= 1200.0 <= high
    assert low < high
    assert row["cpu_s_per_1k"] == 0.3
    assert row["cpu_s_per_1k_ci95"][0] <= 0.3 <= row["cpu_s_per_1k_ci95"][1]
    assert row["peak_rss_mb_ci95"] == [50.0, 50.0]
    single = _drain("raw", "noop", [1000], [0.3])
    assert single["steady_msgs_per_s"] == 1200.0
    assert single["steady_msgs_per_s_ci95"] is None


def test_round_orders_run_every_consumer_once_per_round_in_a_seeded_order() -> None:
    """Each round is a permutation of the consumers; the seed reproduces the orders, and they vary."""
    import random

    names = ["raw", "raw-ua", "raw-pipelined", "worker", "sqs-consumer-1", "sqs-consumer-default"]
    orders = round_orders(names, 5, random.Random(42))
    assert len(orders) == 5
    assert all(sorted(order) == sorted(names) for order in orders)
    assert orders == round_orders(names, 5, random.Random(42))
    assert len({tuple(order) for order in orders}) > 1
    assert parse_args(["--seed", "9"]).seed == 9
    assert parse_args([]).repeat == 5
    assert isinstance(parse_args([]).seed, int)


def _t_results(emulator_kind: str) -> dict[str, Any]:
    """Three rounds of the T1-T3 consumers; the worker's figures are 0.96 x raw-pipelined's."""
    rows = [
        _drain("raw", "noop", [900, 1000, 1000], [0.40, 0.40, 0.30]),
        _drain("raw-ua", "noop", [1000, 900, 1000], [0.30, 0.40, 0.40]),
        _drain("raw-pipelined", "noop", [800, 1100, 1050], [0.40, 0.30, 0.40]),
        _drain("worker", "noop", [960, 1056, 1008], [0.36, 0.33, 0.27]),
        _drain("sqs-consumer-1", "noop", [500, 500, 500], [0.50, 0.50, 0.50]),
        _drain("sqs-consumer-2", "noop", [800, 840, 700], [0.45, 0.45, 0.45]),
        _drain("sqs-consumer-default", "noop", [100, 100, 100], [0.40, 0.40, 0.40]),
        _drain("raw", "sleep50", [300, 300, 300], [0.5, 0.5, 0.5]),
        _drain("worker", "sleep50", [330, 300, 360], [0.5, 0.5, 0.5]),
        _drain("sqs-consumer", "sleep50", [200, 200, 200], [0.5, 0.5, 0.5]),
        _drain("sqs-consumer-default", "sleep50", [15, 15, 15], [1.0, 1.0, 1.0]),
    ]
    results: dict[str, Any] = {
        "emulator": f"{emulator_kind} x",
        "emulator_kind": emulator_kind,
        "consumers": sorted({r["consumer"] for r in rows}),
        "io_concurrency": 20,
        "throughput": rows,
    }
    results["baselines"] = report.baselines(results)
    results["ratios"] = report.ratios(results)
    return results


def test_t1_to_t3_take_the_best_raw_variant_per_round_and_sqs_consumers_best_configurations() -> None:
    """T1 divides by the fastest raw variant of each round, T2 by the cheapest raw variant of each round and
    by sqs-consumer's lowest-CPU configuration, T3 by sqs-consumer's best instance count (1.15 on LocalStack,
    1.5 on fauxqs), its best at the same concurrency and its defaults; the verdict is on the median."""
    results = _t_results("localstack")
    assert results["baselines"] == {
        "raw_variants": ["raw", "raw-ua", "raw-pipelined"],
        "sqs_consumer_best_noop": "sqs-consumer-2",
        # sqs-consumer-default's CPU per message is the lowest here: every configuration competes.
        "sqs_consumer_lowest_cpu_noop": "sqs-consumer-default",
        "sqs_consumer_best_sleep50": "sqs-consumer",
        "sqs_consumer_default_sleep50": "sqs-consumer-default",
    }
    r = results["ratios"]
    # Best raw per round: 1000, 1100, 1050 -> 0.96, 0.96, 0.96 (the steady rate is 1.2 x in every row).
    assert r["worker_vs_best_raw_steady_noop"] == 0.96
    assert r["worker_vs_best_raw_steady_noop_ci95"] == [0.96, 0.96]
    assert r["worker_vs_best_raw_from_start_noop"] == 0.96
    # Cheapest raw per round: 0.30, 0.30, 0.30 -> 1.2, 1.1, 0.9.
    assert r["worker_vs_best_raw_cpu_noop"] == 1.1
    assert r["worker_vs_raw_cpu_noop"] == 0.9  # 0.9, 0.825, 0.9
    assert r["raw_pipelined_vs_raw_steady_noop"] == 1.05  # 0.889, 1.1, 1.05
    assert r["worker_vs_sqs_consumer_lowest_cpu_noop"] == 0.825  # 0.9, 0.825, 0.675
    assert r["worker_vs_sqs_consumer_best_steady_noop"] == 1.257  # 1.2, 1.257, 1.44
    assert r["worker_vs_sqs_consumer_best_steady_sleep50"] == 1.65  # 1.65, 1.5, 1.8
    assert r["worker_vs_sqs_consumer_default_steady_sleep50"] == 22.0
    low, high = r["worker_vs_sqs_consumer_best_steady_noop_ci95"]
    assert 1.2 <= low <= 1.257 <= high <= 1.44
    verdicts = {t["target"].split(": ", 1)[1].split(" (")[0]: t for t in report.targets(results)}
    assert [t["met"] for t in verdicts.values()] == [True, True, True, False, False, True, True, True]
    t3 = verdicts["T3: no-op at steady state >= 1.15 x sqs-consumer's best instance count"]
    assert (t3["value"], t3["ci95"], t3["threshold"]) == (1.257, [low, high], 1.15)
    fauxqs = {t["target"].split(" (")[0]: t["met"] for t in report.targets(_t_results("fauxqs"))}
    assert fauxqs["worker: T3: no-op at steady state >= 1.5 x sqs-consumer's best instance count"] is False
    table = report.table(results)
    assert "| worker | noop | 1,008 | 1.06 [1.01-1.07] |" in table  # the ratio columns carry intervals


def test_consumer_variants_launch_as_their_names_say() -> None:
    """raw-ua and raw-pipelined keep P pollers; sqs-consumer-N runs N instances whatever P is; the defaults
    variant one; all of them are in what make bench runs."""
    launch = Launch("http://q", "http://dlq", "noop", 4, 5, None, "-m worker run", None, "node")
    raw_ua = bench_consumers.spec("raw-ua").command(launch)
    assert raw_ua.env == {"BENCH_POLLERS": "4", "BENCH_RAW_USER_AGENT_CACHE": "1"}
    pipelined = bench_consumers.spec("raw-pipelined").command(launch)
    assert pipelined.env["BENCH_RAW_PIPELINED"] == "1"
    assert pipelined.env["BENCH_POLLERS"] == "4"
    assert "BENCH_RAW_PIPELINED" not in bench_consumers.spec("raw").command(launch).env
    for n in (1, 2, 4, 8):
        assert bench_consumers.spec(f"sqs-consumer-{n}").command(launch).env == {"BENCH_POLLERS": str(n)}
    assert bench_consumers.spec("sqs-consumer").command(launch).env == {"BENCH_POLLERS": "4"}
    default = bench_consumers.spec("sqs-consumer-default").command(launch)
    assert default.env == {"BENCH_SQS_CONSUMER_DEFAULTS": "1"}
    new = {"raw-ua", "raw-pipelined", *(f"sqs-consumer-{n}" for n in (1, 2, 4, 8)), "sqs-consumer-default"}
    assert new <= set(bench_consumers.DEFAULT_CONSUMERS)


def test_cost_prices_requests_per_million_messages_and_per_idle_month() -> None:
    """SQS request counts become dollars: 207.5 requests per 1k messages cost $0.083 per million messages, and
    840 idle requests an hour (730 h a month) $0.245 a month, at $0.40 per million requests."""
    results: dict[str, Any] = {
        "requests": [{"consumer": "worker-defaults", "requests_per_1k": 207.5, "idle_requests_per_hour": 840}]
    }
    [row] = report.cost(results)
    assert row == {
        "consumer": "worker-defaults",
        "requests_per_million_messages": 207_500,
        "usd_per_million_messages": 0.083,
        "idle_requests_per_month": 613_200,
        "usd_per_idle_month": 0.2453,
    }
    results["cost"] = [row]
    assert "| worker-defaults | 207,500 | 0.083 | 613,200 | 0.245 |" in report.cost_table(results)


def test_drains_are_sized_for_the_steady_window_within_bounds() -> None:
    """A drain at 1,800 msg/s needs 22,500 messages for 10 s between 10 and 90 % consumed; never fewer than
    the from-start reference, never more than the cap; unknown rate or sizing off: the reference."""
    from bench.run import drain_size

    assert drain_size(1800.0, 10.0, 5000, 40_000) == 22_500
    assert drain_size(200.0, 10.0, 5000, 40_000) == 5000
    assert drain_size(9000.0, 10.0, 5000, 40_000) == 40_000
    assert drain_size(None, 10.0, 5000, 40_000) == 5000
    assert drain_size(1800.0, 0.0, 5000, 40_000) == 5000


def test_the_from_start_reference_is_found_between_samples() -> None:
    """The moment the 500th of 1,000 messages was consumed is interpolated between the samples around it."""
    from bench.measure import crossing

    samples = [
        Sample(0.0, 1000, 0.0, None, None),
        Sample(1.0, 800, 0.0, None, None),
        Sample(2.0, 400, 0.0, None, None),
    ]
    assert crossing(samples, 1000, 500) == 1.75
    assert crossing(samples, 1000, 700) is None


def test_engine_cpu_round_drains_the_stub_queue_and_measures_cpu_per_message() -> None:
    """bench.engine_cpu runs `worker run` on the in-process SQS stub in a fresh interpreter: every message is
    handled and deleted, and the CPU per message it reports is positive and plausible (not 0, not seconds)."""
    from bench.engine_cpu import run_tree

    result = run_tree(BENCH_DIR.parent, 3000)
    assert result["deleted"] == 3000
    assert 0.005 < result["cpu_ms_per_msg"] < 5.0
    assert result["msgs_per_s"] > 0

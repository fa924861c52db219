"""The soak: a steady mixed workload through one worker process for SOAK_SECONDS; no leak, nothing lost.

Collected only when SOAK_SECONDS is set (tests/conftest.py): ``make soak`` runs it for 1800 s, ``make test``
neither runs nor skips it. The leak arithmetic is tests/soak_math.py (unit-tested in ``make test``).

A producer sends SOAK_RATE messages a second (default 50): successes, transient failures that succeed on
their second delivery, poison (PermanentError, to the DLQ) and 6 s handlers on a 4 s visibility timeout
(heartbeats keep them). /metrics is scraped every second. Every SOAK_SAMPLE_SECONDS (default 10) the
worker's RSS, open fds and threads are read with psutil, and a probe message reports its event loop's task
count (tests/soak_probe.py: the worker exposes none). RSS over the second half is fitted by least squares
and judged per message; fds, threads and tasks must not climb past their first-half peaks.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import psutil
import pytest

from tests import chaos_report
from tests.conftest import QueueFactory, unique
from tests.helpers import WorkerProcess, depth, http_get, read_journal, send_bodies, wait_for
from tests.soak_math import growth, leak_verdict
from tests.soak_probe import read_probes
from worker.aws.client import client_config, create_client

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "0"))
SAMPLE_SECONDS = float(os.environ.get("SOAK_SAMPLE_SECONDS", "10"))
RATE = int(os.environ.get("SOAK_RATE", "50"))
VISIBILITY = 4
LONG_HANDLER_SECONDS = 6
#: Kinds of each 50 messages: 84 % ok, 8 % transient, 4 % poison, 4 % long (the pattern repeats).
MIX = ("ok",) * 42 + ("transient",) * 4 + ("poison",) * 2 + ("long",) * 2
BODIES: dict[str, dict[str, Any]] = {
    "ok": {},
    "transient": {"do": "fail_until", "n": 2},  # fails its first delivery (and the immediate retry)
    "poison": {"do": "permanent"},
    "long": {"sleep": LONG_HANDLER_SECONDS},
}
#: How far the second half's peak may exceed the first half's: fds and threads come from pools that may
#: still open a few more under a burst; tasks move with the messages in flight (at most the concurrency).
TOLERANCE = {"fds": 10, "threads": 2, "tasks": 50}

pytestmark = [pytest.mark.localstack, pytest.mark.slow, pytest.mark.timeout(SOAK_SECONDS + 600)]


@dataclass
class Run:
    """What the soak sent, sampled and scraped."""

    kinds: dict[str, str] = field(default_factory=dict)  # key -> kind
    samples: list[dict[str, float]] = field(default_factory=list)  # t, rss, fds, threads, probe
    dlq_keys: list[str] = field(default_factory=list)
    scrapes: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})
    behind: int = 0  # producer ticks that started late (the producer could not keep the rate)


async def _produce(sqs: Any, url: str, run: Run, until: float) -> None:
    mix = itertools.cycle(MIX)
    started = time.monotonic()
    for tick in itertools.count(1):
        if time.monotonic() >= until:
            return
        batch = []
        for _ in range(RATE):
            kind = next(mix)
            key = unique(kind)
            batch.append({"key": key, **BODIES[kind]})
            run.kinds[key] = kind
        await send_bodies(sqs, url, batch)
        late = time.monotonic() - (started + tick)
        run.behind += late > 0
        await anyio.sleep(max(0.0, -late))


async def _scrape(port: int, run: Run) -> None:
    while True:
        status = (await anyio.to_thread.run_sync(http_get, port, "/metrics"))[0]
        run.scrapes["ok" if status == 200 else "failed"] += 1
        await anyio.sleep(1)


async def _sample(sqs: Any, url: str, pid: int, run: Run, began: float) -> None:
    process = psutil.Process(pid)
    for probe in itertools.count():
        started = time.monotonic()
        run.samples.append(
            {
                "t": round(started - began, 2),
                "rss": process.memory_info().rss,
                "fds": process.num_fds(),
                "threads": process.num_threads(),
                "probe": probe,
            }
        )
        await send_bodies(sqs, url, [{"probe": probe}])
        await anyio.sleep(max(0.0, SAMPLE_SECONDS - (time.monotonic() - started)))


async def _drain_dlq(client: Any, url: str, run: Run) -> None:
    while True:
        response = await client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for entry in response.get("Messages", []):
            run.dlq_keys.append(json.loads(entry["Body"])["key"])
            await client.delete_message(QueueUrl=url, ReceiptHandle=entry["ReceiptHandle"])


def _metric(text: str, name: str, label: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name) and label in line
    )


async def test_soak_no_leak_nothing_lost(
    sqs: Any, queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """Mixed load for SOAK_SECONDS: RSS slope within a budget the run can resolve; counts flat; 0 lost."""
    assert SOAK_SECONDS >= 60, f"SOAK_SECONDS={SOAK_SECONDS:g}: a soak needs at least 60 s of samples"
    q = await queues(visibility=VISIBILITY, max_receive_count=1000)
    journal, probes = tmp_path / "journal", tmp_path / "probes"
    # TEST_RECORD_CALLS=0: the scripted handler's in-memory call log would grow ~150 B per message.
    env = {**aws_env, "TEST_JOURNAL": str(journal), "TEST_SOAK_PROBE": str(probes), "TEST_RECORD_CALLS": "0"}
    worker = WorkerProcess(
        env,
        tmp_path,
        queue_url=q["url"],
        dlq_url=q["dlq_url"],
        handler="tests.soak_probe:probed",
        visibility_timeout_seconds=VISIBILITY,
        timeout_seconds=4 * LONG_HANDLER_SECONDS,
    )
    run = Run()
    fixed = {"seconds_planned": SOAK_SECONDS, "rate_per_s": RATE, "sample_s": SAMPLE_SECONDS}
    with chaos_report.scenario("soak", **fixed, **chaos_report.git_state()) as figures:
        try:
            worker.start()
            await worker.wait_ready()
            async with (
                create_client("sqs", client_config(), endpoint_url=aws_env["AWS_ENDPOINT_URL"]) as own,
                anyio.create_task_group() as tg,
            ):
                began = time.monotonic()
                tg.start_soon(_scrape, worker.port, run)
                tg.start_soon(_sample, own, q["url"], worker.proc.pid, run, began)
                tg.start_soon(_drain_dlq, own, q["dlq_url"], run)
                await _produce(sqs, q["url"], run, began + SOAK_SECONDS)
                produced = time.monotonic() - began
                poison = {k for k, kind in run.kinds.items() if kind == "poison"}
                good = set(run.kinds) - poison

                def settled() -> bool:
                    done = set(read_journal(journal)["done"])
                    return good <= done and poison <= set(run.dlq_keys)

                await wait_for(settled, timeout=120, interval=1, what="every message done or dead-lettered")

                async def source_empty() -> bool:
                    return await depth(sqs, q["url"]) == 0

                await wait_for(source_empty, timeout=60, interval=1, what="source empty")
                tg.cancel_scope.cancel()
            metrics = http_get(worker.port, "/metrics")[1]
            counts = read_journal(journal)
            tasks = read_probes(probes)
            samples = [s for s in run.samples if s["t"] <= produced]
            for sample in samples:
                sample["tasks"] = tasks.get(int(sample["probe"]), -1)
            long_keys = [k for k, kind in run.kinds.items() if kind == "long"]
            figures.update(
                seconds_produced=round(produced, 1),
                messages=len(run.kinds),
                by_kind={kind: sum(1 for k in run.kinds.values() if k == kind) for kind in BODIES},
                messages_per_s=round(len(run.kinds) / produced, 2),
                producer_ticks_late=run.behind,
                scrapes=run.scrapes,
                dlq_copies=len(run.dlq_keys),
                lost=len(good - set(counts["done"])) + len(poison - set(run.dlq_keys)),
                good_done_twice=sum(1 for k in good if counts["done"][k] > 1),
                long_started_twice=sum(1 for k in long_keys if counts["start"][k] > 1),
                heartbeats_ok=_metric(metrics, "worker_visibility_extensions_total", 'result="ok"'),
                probes_answered=sum(1 for s in samples if s["tasks"] >= 0),
                samples=[[s["t"], s["rss"], s["fds"], s["threads"], s["tasks"]] for s in samples],
                sample_columns=["t_s", "rss_bytes", "fds", "threads", "tasks"],
            )
            times = [s["t"] for s in samples]
            verdict = leak_verdict(times, [s["rss"] for s in samples], len(run.kinds) / produced)
            figures["rss"] = {
                "first_mib": round(samples[0]["rss"] / 2**20, 1),
                "last_mib": round(samples[-1]["rss"] / 2**20, 1),
                "slope_bytes_per_s": round(verdict.fit.slope, 1),
                "slope_stderr_bytes_per_s": round(verdict.fit.slope_stderr, 1),
                "residual_std_kib": round(verdict.fit.residual_std / 1024, 1),
                "points": verdict.fit.points,
                "bytes_per_message": round(verdict.bytes_per_message, 2),
                "detectable_bytes_per_message": round(verdict.detectable_bytes_per_message, 2),
                "budget_bytes_per_message": verdict.budget_bytes_per_message,
            }
            answered = [s for s in samples if s["tasks"] >= 0]
            figures["growth"] = grown = {
                "fds": growth(times, [s["fds"] for s in samples]),
                "threads": growth(times, [s["threads"] for s in samples]),
                "tasks": growth([s["t"] for s in answered], [s["tasks"] for s in answered]),
            }
            assert figures["lost"] == 0, f"{figures['lost']} messages lost"
            assert figures["heartbeats_ok"] > 0, "no heartbeat extended a long handler's lease"
            assert run.scrapes["failed"] == 0, f"/metrics failed {run.scrapes['failed']} scrapes"
            assert len(answered) >= len(samples) * 0.9, (
                f"only {len(answered)} of {len(samples)} probes answered"
            )
            assert not verdict.leaking, (
                f"RSS grows {verdict.bytes_per_message:.1f} B per message: {figures['rss']}"
            )
            assert verdict.conclusive, (
                f"inconclusive: this run sees leaks of {verdict.detectable_bytes_per_message:.0f} B/message "
                f"and more, not {verdict.budget_bytes_per_message:g} (RSS noise "
                f"{verdict.fit.residual_std / 1024:.0f} KiB over {verdict.fit.points} points): run longer"
            )
            over = {name: value for name, value in grown.items() if value > TOLERANCE[name]}
            assert not over, f"growing past the first half's peak: {over} (tolerance {TOLERANCE})"
            assert worker.proc.poll() is None
        finally:
            worker.kill()

"""kill -9 under load, again and again: nothing lost, duplicates bounded, the DLQ holds exactly the poison.

`make test` runs 3 trials; `make chaos` runs 20 (CHAOS_TRIALS) and writes the figures (CHAOS_REPORT).
"""

from __future__ import annotations

import collections
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import QueueFactory, unique
from tests.helpers import WorkerProcess, depth, drain, read_journal, send_bodies, wait_for
from worker.deadletter.record import read_failure
from worker.engine.message import parse_sqs_attributes

pytestmark = [pytest.mark.localstack, pytest.mark.slow, pytest.mark.timeout(1800)]

TRIALS = int(os.environ.get("CHAOS_TRIALS", "3"))
MESSAGES = int(os.environ.get("CHAOS_MESSAGES", "2000"))
CONCURRENCY = 50


async def _load(sqs: Any, url: str, count: int) -> tuple[set[str], set[str]]:
    """Send 85 % ok, 10 % transient (fail the first delivery), 5 % poison; return (good, poison) keys."""
    rng = random.Random()
    good: set[str] = set()
    poison: set[str] = set()
    docs: list[dict[str, Any]] = []
    for _ in range(count):
        key = unique("c")
        roll = rng.random()
        if roll < 0.05:
            doc: dict[str, Any] = {"key": key, "do": "permanent"}
            poison.add(key)
        elif roll < 0.15:
            doc = {"key": key, "do": "fail_until", "n": 2}
            good.add(key)
        else:
            doc = {"key": key, "sleep": 0.02}
            good.add(key)
        docs.append(doc)
    await send_bodies(sqs, url, docs)
    return good, poison


async def test_kill_9_trials_lose_nothing(
    sqs: Any, queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """Each trial: load, SIGKILL at random, restart: 0 lost, duplicates <= in flight, DLQ == the poison."""
    figures = [await _trial(trial, sqs, queues, aws_env, tmp_path) for trial in range(TRIALS)]
    report = os.environ.get("CHAOS_REPORT")
    if report:
        await anyio.Path(report).parent.mkdir(parents=True, exist_ok=True)
        await anyio.Path(report).write_text(json.dumps(figures, indent=2))


async def _trial(
    trial: int, sqs: Any, queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path
) -> dict[str, Any]:
    q = await queues(visibility=3)
    # One journal per process: the killed one may leave a torn last line (see read_journal).
    journals = (tmp_path / f"journal-{trial}-killed", tmp_path / f"journal-{trial}-restarted")
    env = {**aws_env, "TEST_JOURNAL": str(journals[0])}
    settings = {
        "queue_url": q["url"],
        "dlq_url": q["dlq_url"],
        "concurrency": CONCURRENCY,
        "visibility_timeout_seconds": 3,
        "max_attempts": 6,
    }
    good, poison = await _load(sqs, q["url"], MESSAGES)
    first = WorkerProcess(env, tmp_path, **settings).start()
    target = random.randint(MESSAGES // 10, MESSAGES // 2)
    try:
        await first.wait_ready()
        await wait_for(
            lambda: sum(read_journal(*journals)["start"].values()) >= target, timeout=120, what="load"
        )
    finally:
        killed_at = time.monotonic()
        first.kill()
    done_at_kill = sum(read_journal(*journals)["done"].values())
    second = WorkerProcess({**env, "TEST_JOURNAL": str(journals[1])}, tmp_path, **settings).start()
    try:
        await second.wait_ready()
        await wait_for(
            lambda: sum(read_journal(*journals)["done"].values()) > done_at_kill, timeout=60, what="resumed"
        )
        recovery = time.monotonic() - killed_at
        await wait_for(
            lambda: set(read_journal(*journals)["done"]) >= good, timeout=180, what="all good keys done"
        )
        await wait_for(lambda: _drained(sqs, q["url"]), timeout=60, what="source drained")
    finally:
        second.kill()
    done = read_journal(*journals)["done"]
    # Read the whole DLQ: a copy sent twice (killed between the DLQ send and the delete) is a duplicate,
    # and must not stand in for a missing poison message.
    entries = await drain(sqs, q["dlq_url"], expect=len(poison), timeout=30)
    while await depth(sqs, q["dlq_url"]):
        entries += await drain(sqs, q["dlq_url"], expect=1, timeout=10)
    dead: collections.Counter[str] = collections.Counter()
    for entry in entries:
        record = read_failure(parse_sqs_attributes(entry.get("MessageAttributes")))
        assert record is not None
        dead[json.loads(entry["Body"])["key"]] += 1
    lost = len(good - set(done)) + len(poison - set(dead))
    duplicates = sum(n - 1 for n in done.values()) + sum(n - 1 for n in dead.values())
    assert lost == 0
    assert set(done) == good, "a poison message succeeded, or an unknown key appeared"
    assert set(dead) == poison
    assert duplicates <= CONCURRENCY
    return {
        "trial": trial,
        "messages": MESSAGES,
        "killed_after_starts": target,
        "lost": lost,
        "duplicates": duplicates,
        "recovery_s": round(recovery, 2),
    }


async def _drained(sqs: Any, url: str) -> bool:
    return await depth(sqs, url) == 0

"""The secondary consumer: ``worker run`` on a DLQ with a fallback handler, parking its own failures."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import QueueFactory, unique
from tests.helpers import WorkerProcess, depth, drain, running_worker, send, wait_for
from tests.test_redrive_support import queue_counts, record_of

pytestmark = pytest.mark.localstack


async def test_secondary_consumer_parks_its_failures(
    sqs: Any, queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """Primary failures reach the DLQ; a fallback ``worker run`` on the DLQ handles some and sends the
    rest to a parking queue (history kept, original id kept), never back into the DLQ it reads."""
    q, parking = await queues(), await queues()
    keys = {unique("ok"): "ok", unique("ok"): "ok", unique("no"): "fail", unique("no"): "fail"}
    ids = {}
    async with running_worker(q):
        for key, fallback in keys.items():
            ids[key] = await send(sqs, q["url"], {"key": key, "do": "permanent", "fallback": fallback})
        await wait_for(lambda: _visible(sqs, q["dlq_url"], 4), timeout=20, what="4 dead-letters")
    journal = tmp_path / "journal.jsonl"
    secondary = WorkerProcess(
        {**aws_env, "REDRIVE_JOURNAL": str(journal)},
        tmp_path,
        queue_url=q["dlq_url"],
        dlq_url=parking["url"],
        handler="tests.test_redrive_support:fallback",
    ).start()
    try:
        await secondary.wait_ready()
        await wait_for(lambda: _visible(sqs, parking["url"], 2), timeout=20, what="2 parked")
        await wait_for(lambda: _empty(sqs, q["dlq_url"]), timeout=20, what="DLQ drained")
        secondary.signal(signal.SIGTERM)
        assert await secondary.wait(timeout=30) == 0
    finally:
        secondary.kill()
    seen = [json.loads(line) for line in journal.read_text().splitlines()]
    assert sorted(s["key"] for s in seen) == sorted(keys)  # each ran once in the fallback
    assert all(s["original"] == ids[s["key"]] for s in seen)  # it saw the original id
    assert await depth(sqs, q["dlq_url"]) == 0  # nothing came back into the DLQ it reads
    parked = await drain(sqs, parking["url"], expect=2, timeout=10)
    assert sorted(json.loads(e["Body"])["key"] for e in parked) == sorted(
        k for k, v in keys.items() if v == "fail"
    )
    for entry in parked:
        record = record_of(entry)
        key = json.loads(entry["Body"])["key"]
        assert record.original_message_id == ids[key]
        assert record.source_queue_url == q["dlq_url"]
        assert record.handler == "tests.test_redrive_support:fallback"
        assert record.error_type == "PermanentError"
        [primary] = record.history
        assert primary["source_queue_url"] == q["url"]
        assert primary["handler"] == "tests.handlers:scripted"


async def _visible(sqs: Any, url: str, n: int) -> bool:
    return int((await queue_counts(sqs, url))["ApproximateNumberOfMessages"]) == n


async def _empty(sqs: Any, url: str) -> bool:
    return await depth(sqs, url) == 0

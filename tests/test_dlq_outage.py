"""The DLQ blackholed while the source is healthy: no poison message leaves the source without its DLQ copy.

The worker's SQS traffic goes through the fault proxy, which blackholes only the sends to the DLQ
(``sends_to_queue``): the source's receives, deletes and visibility changes flow. A watcher on its own client,
straight to LocalStack, samples both queues every 0.5 s without receiving from them and checks, at every
sample, that the source still holds every poison message the DLQ does not (a count argument, below).
CHAOS_DLQ_OUTAGE_SECONDS sets the outage (10 s in ``make test``, 120 s in ``make chaos``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests import chaos_report
from tests.conftest import QueueFactory, unique
from tests.faultproxy import FaultProxy, ProxiedRequest, sends_to_queue
from tests.helpers import WorkerProcess, depth, drain, read_journal, send_bodies, wait_for
from worker.aws.client import client_config, create_client
from worker.deadletter.record import read_failure
from worker.engine.message import parse_sqs_attributes

OUTAGE_SECONDS = float(os.environ.get("CHAOS_DLQ_OUTAGE_SECONDS", "10"))
#: How often the watcher samples the two queues.
SAMPLE_INTERVAL = 0.5
#: Poison messages, sent in two waves (at the start of the outage and half-way through it). Each holds a
#: concurrency slot while its DLQ send hangs (the writer's 10 s deadline): well below the 50 slots.
POISON = 10
#: ok messages sent every PRODUCE_INTERVAL during the outage, and how soon each must be done.
OK_PER_TICK = 10
PRODUCE_INTERVAL = 0.5
OK_LATENCY_BOUND = 5.0


@dataclass
class Ledger:
    """What the test sent (acknowledged sends only) and what the watcher saw."""

    ok: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time of the ack, key)
    poison: list[str] = field(default_factory=list)
    samples: int = 0
    #: Samples where the source held fewer messages than the lower bound (each one a lost poison message).
    violations: list[dict[str, Any]] = field(default_factory=list)
    min_margin: int | None = None
    dlq_max_in_outage: int = 0
    in_outage: bool = True


def poison_bound(*, poison_sent: int, dlq_depth: int, ok_sent: int, ok_done: int) -> int:
    """The fewest messages the source can hold if no poison message left it without its DLQ copy.

    Read the source first, then the DLQ and the journal: a poison message is deleted from the source only
    after its DLQ copy was acknowledged, so the source still holds at least ``poison_sent - dlq_depth`` poison
    messages (duplicate copies only lower the bound); an ok message is deleted after its handler journaled
    "done", so at least ``ok_sent - ok_done`` ok messages are still there. Counts sent before the source read,
    done and DLQ after it: each error makes the bound smaller, never larger.
    """
    return max(0, poison_sent - dlq_depth) + max(0, ok_sent - ok_done)


async def _watch(client: Any, q: dict[str, str], journal: Path, ledger: Ledger) -> None:
    """Sample both queues every SAMPLE_INTERVAL (no receive), keeping the violations of ``poison_bound``."""
    ok_keys: set[str] = set()
    while True:
        started = time.monotonic()
        poison_sent, ok_sent = len(ledger.poison), len(ledger.ok)
        ok_keys.update(key for _, key in ledger.ok[len(ok_keys) :])
        source = await depth(client, q["url"])
        dlq = await depth(client, q["dlq_url"])
        ok_done = sum(1 for key in read_journal(journal)["done"] if key in ok_keys)
        bound = poison_bound(poison_sent=poison_sent, dlq_depth=dlq, ok_sent=ok_sent, ok_done=ok_done)
        ledger.samples += 1
        margin = source - bound
        ledger.min_margin = margin if ledger.min_margin is None else min(ledger.min_margin, margin)
        if ledger.in_outage:
            ledger.dlq_max_in_outage = max(ledger.dlq_max_in_outage, dlq)
        if margin < 0:
            ledger.violations.append(
                {
                    "source": source,
                    "dlq": dlq,
                    "poison_sent": poison_sent,
                    "ok_sent": ok_sent,
                    "ok_done": ok_done,
                }
            )
        await anyio.sleep(max(0.0, SAMPLE_INTERVAL - (time.monotonic() - started)))


@pytest.mark.localstack
@pytest.mark.slow
@pytest.mark.timeout(OUTAGE_SECONDS + 180)
async def test_dlq_blackholed_loses_no_poison_and_the_source_keeps_flowing(
    sqs: Any, queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path, fault_proxy: FaultProxy
) -> None:
    """DLQ sends blackholed (counted): poison stays on the source until its copy lands; ok messages flow."""
    # maxReceiveCount 1000: LocalStack's own redrive (which bypasses the proxy) never moves a poison message.
    q = await queues(max_receive_count=1000)
    journal = tmp_path / "journal"
    env = {**aws_env, "AWS_ENDPOINT_URL": fault_proxy.endpoint, "TEST_JOURNAL": str(journal)}
    worker = WorkerProcess(env, tmp_path, queue_url=q["url"], dlq_url=q["dlq_url"])
    ledger = Ledger()
    poison = [unique("poison") for _ in range(POISON)]
    waves = {0: poison[: POISON // 2], 1: poison[POISON // 2 :]}
    with chaos_report.scenario("dlq_outage", outage_s=OUTAGE_SECONDS, poison=POISON) as figures:
        try:
            worker.start()
            await worker.wait_ready()
            fault_proxy.faults.blackhole_request = sends_to_queue(q["dlq_url"])
            async with (
                create_client("sqs", client_config(), endpoint_url=aws_env["AWS_ENDPOINT_URL"]) as watcher,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(_watch, watcher, q, journal, ledger)
                began = time.monotonic()
                tick = 0
                while (now := time.monotonic()) < began + OUTAGE_SECONDS:
                    wave = waves.pop(0 if now < began + OUTAGE_SECONDS / 2 else 1, None) if waves else None
                    if wave:
                        await send_bodies(sqs, q["url"], [{"key": k, "do": "permanent"} for k in wave])
                        ledger.poison.extend(wave)
                    keys = [unique("ok") for _ in range(OK_PER_TICK)]
                    await send_bodies(sqs, q["url"], [{"key": k} for k in keys])
                    acked = time.monotonic()
                    ledger.ok.extend((acked, k) for k in keys)
                    tick += 1
                    await anyio.sleep(max(0.0, began + tick * PRODUCE_INTERVAL - time.monotonic()))
                ended = time.monotonic()
                ledger.in_outage = False
                done = set(read_journal(journal)["done"])
                due = [key for at, key in ledger.ok if at <= ended - OK_LATENCY_BOUND]
                figures["ok_sent_in_outage"] = len(ledger.ok)
                figures["ok_due_in_outage"] = len(due)
                figures["ok_done_in_outage"] = len(done & {key for _, key in ledger.ok})
                figures["blackholed"] = blackholed = dict(fault_proxy.blackholed)
                fault_proxy.faults.blackhole_request = None
                figures["held_sends_released"] = fault_proxy.release_blackholed()
                assert not waves, "the outage ended before every poison wave was sent"
                assert blackholed.get("SendMessage", 0) > 0, f"no DLQ send was blackholed: {blackholed}"
                assert set(blackholed) <= {"SendMessage", "SendMessageBatch"}, blackholed
                assert ledger.dlq_max_in_outage == 0, "a DLQ copy landed through the blackhole"
                late = [key for key in due if key not in done]
                assert due, "no ok message was due during the outage"
                assert not late, (
                    f"{len(late)} of {len(due)} ok messages not done {OK_LATENCY_BOUND} s after their send "
                    "while only the DLQ was out"
                )

                async def settled() -> bool:
                    assert not ledger.violations, (
                        f"poison left the source without its DLQ copy: {ledger.violations[:5]}"
                    )
                    return await depth(sqs, q["url"]) == 0 and await depth(sqs, q["dlq_url"]) >= POISON

                await wait_for(settled, timeout=90, what="source empty and every poison copy in the DLQ")
                figures["settled_after_outage_s"] = round(time.monotonic() - ended, 2)
                await anyio.sleep(2 * SAMPLE_INTERVAL)  # the watcher samples the settled queues too
                tg.cancel_scope.cancel()
            figures.update(
                samples=ledger.samples, min_margin=ledger.min_margin, violations=ledger.violations[:5]
            )
            assert ledger.samples >= OUTAGE_SECONDS / SAMPLE_INTERVAL / 2, f"only {ledger.samples} samples"
            assert not ledger.violations, (
                f"poison left the source without its DLQ copy: {ledger.violations[:5]}"
            )
            copies = await drain(sqs, q["dlq_url"], expect=await depth(sqs, q["dlq_url"]), timeout=30)
            keys = [json.loads(entry["Body"])["key"] for entry in copies]
            figures["dlq_copies"] = len(copies)
            figures["dlq_duplicates"] = len(keys) - len(set(keys))
            figures["lost_poison"] = lost = sorted(set(poison) - set(keys))
            assert not lost, f"poison missing from the DLQ: {lost}"
            assert set(keys) == set(poison), f"not poison in the DLQ: {set(keys) - set(poison)}"
            for entry in copies:
                record = read_failure(parse_sqs_attributes(entry.get("MessageAttributes")))
                assert record is not None
                assert record.condition == "PermanentError"
            starts = read_journal(journal)["start"]
            figures["poison_handler_runs"] = sum(starts[key] for key in poison)
            ok_keys = {key for _, key in ledger.ok}
            figures["lost_ok"] = len(ok_keys - set(read_journal(journal)["done"]))
            assert figures["lost_ok"] == 0
            assert worker.proc.poll() is None
        finally:
            worker.kill()


def test_sends_to_queue_matches_only_the_sends_to_that_queue() -> None:
    """The proxy's predicate: SendMessage(Batch) to the DLQ, by path; the source and other calls never."""
    dlq = "http://sqs.us-east-1.localhost.localstack.cloud:4566/000000000000/q-1-dlq"
    matches = sends_to_queue(dlq)

    def request(operation: str, url: str) -> ProxiedRequest:
        return ProxiedRequest(operation, b"POST / HTTP/1.1\r\n\r\n", json.dumps({"QueueUrl": url}).encode())

    assert matches(request("SendMessage", dlq))
    assert matches(request("SendMessageBatch", "http://localhost:4566/000000000000/q-1-dlq"))
    assert not matches(request("SendMessage", dlq.removesuffix("-dlq")))
    assert not matches(request("SendMessage", dlq + "-other"))
    assert not matches(request("GetQueueAttributes", dlq))
    assert not matches(request("ReceiveMessage", dlq))
    assert not matches(ProxiedRequest("SendMessage", b"", b"not json"))
    form = ProxiedRequest(
        "SendMessage", b"", b"Action=SendMessage&QueueUrl=" + dlq.encode().replace(b":", b"%3A")
    )
    assert form.queue_url() == dlq
    assert matches(form)

"""On-success / on-failure destinations against LocalStack: SQS, SNS, S3, EventBridge and Python hooks."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import FrozenInstanceError, dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.abc
import pytest

from tests import handlers
from tests.conftest import QueueFactory, unique
from tests.helpers import depth, drain, running_worker, send, wait_for
from worker.destinations.record import DestinationRecord
from worker.destinations.sink import DestinationSink, build_sink
from worker.destinations.targets import DETAIL_TYPE_FAILURE, DETAIL_TYPE_SUCCESS, DeliveryError, Destination
from worker.destinations.uri import parse_destination
from worker.engine.message import Message
from worker.engine.outcome import Outcome
from worker.engine.policy import Condition
from worker.errors import ConfigError
from worker.limits import SNS_MAX_BYTES
from worker.settings import Settings
from worker.telemetry.metrics import Metrics

HANDLER = "tests.test_destinations:mixed"
FAKE_QUEUE = "http://127.0.0.1:1/000000000000/source"

# -- a handler and hooks that live here (loaded by path, like a user's) --


async def mixed(message: Message) -> Any:
    """tests.handlers:scripted, plus ``do: schema`` which validates against a model and fails."""
    doc = message.json()
    if isinstance(doc, dict) and doc.get("do") == "schema":
        message.model(handlers.Order)
    return await handlers.scripted(message)


#: Records received by the hooks below, with the thread each ran on.
HOOKED: list[tuple[str, DestinationRecord, str]] = []


async def collect(record: DestinationRecord) -> None:
    """An async hook: keeps the record."""
    HOOKED.append(("async", record, threading.current_thread().name))


def collect_sync(record: DestinationRecord) -> None:
    """A plain def hook (runs in a worker thread): keeps the record."""
    HOOKED.append(("sync", record, threading.current_thread().name))


def explode(record: DestinationRecord) -> None:
    """A buggy sync hook."""
    raise RuntimeError(f"hook bug {record.message_id}")


async def explode_async(record: DestinationRecord) -> None:
    """A buggy async hook."""
    raise KeyError(record.message_id)


def hooked(run: str, kind: str | None = None) -> list[DestinationRecord]:
    """Records of this test run (matched by the run id in the payload) received by the hooks."""
    return [r for k, r, _ in HOOKED if run in r.to_json() and (kind is None or k == kind)]


# -- harness --


def sample(metrics: Metrics, destination: str, result: str) -> float:
    """worker_destination_deliveries_total{destination, result}."""
    value = metrics.registry.get_sample_value(
        "worker_destination_deliveries_total", {"destination": destination, "result": result}
    )
    return value or 0.0


def real_worker(queue: dict[str, str], *, metrics: Metrics, **overrides: Any) -> Any:
    """A worker whose sink is built by run_worker itself (sink=None: the production path)."""
    values: dict[str, Any] = {"handler": HANDLER, "handler_version": "v7", **overrides}
    return running_worker(queue, sink=None, metrics=metrics, **values)


def sink_settings(**overrides: Any) -> Settings:
    """Settings for build_sink alone (the source queue is never contacted)."""
    return Settings(queue_url=FAKE_QUEUE, handler=HANDLER, **overrides)


@dataclass
class Target:
    """A destination URI and how to read what it received (JSON records, oldest first)."""

    uri: str
    read: Callable[[int], Awaitable[list[dict[str, Any]]]]
    extra: dict[str, Any] = field(default_factory=dict)


class Infra:
    """Creates destination resources on LocalStack and removes them afterwards."""

    def __init__(self, sqs: Any, aws: Callable[[str], Awaitable[Any]]) -> None:
        self.sqs = sqs
        self.aws = aws
        self.cleanup: list[Callable[[], Awaitable[Any]]] = []
        self.bus: str | None = None

    async def queue(self, *, fifo: bool = False) -> tuple[str, str]:
        """A new queue: (url, arn)."""
        name = unique("dest") + (".fifo" if fifo else "")
        attrs = {"FifoQueue": "true"} if fifo else {}
        url = (await self.sqs.create_queue(QueueName=name, Attributes=attrs))["QueueUrl"]
        self.cleanup.append(lambda: self.sqs.delete_queue(QueueUrl=url))
        arn = (await self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"][
            "QueueArn"
        ]
        return url, arn

    def _reader(self, url: str, unwrap: Callable[[dict[str, Any]], dict[str, Any]] = lambda d: d) -> Any:
        async def read(expect: int) -> list[dict[str, Any]]:
            entries = await drain(self.sqs, url, expect=expect, timeout=30)
            return [unwrap(json.loads(e["Body"])) for e in entries]

        return read

    async def sqs_target(self, form: str) -> Target:
        """An SQS queue given as sqs://name, a URL, or the ARN of a FIFO queue."""
        url, arn = await self.queue(fifo=form == "arn-fifo")
        uri = {"name": f"sqs://{url.rsplit('/', 1)[-1]}", "url": url, "arn-fifo": arn}[form]
        return Target(uri, self._reader(url), {"url": url})

    async def topic(self) -> tuple[str, str]:
        """A topic with a raw-delivery SQS subscription: (topic arn, queue url)."""
        sns = await self.aws("sns")
        topic = (await sns.create_topic(Name=unique("topic")))["TopicArn"]
        self.cleanup.append(lambda: sns.delete_topic(TopicArn=topic))
        url, arn = await self.queue()
        await sns.subscribe(
            TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"}
        )
        return topic, url

    async def sns_target(self) -> Target:
        """An SNS topic, read through its subscribed queue."""
        topic, url = await self.topic()
        return Target(f"sns:{topic}", self._reader(url), {"url": url})

    async def bucket(self) -> str:
        """A new bucket (emptied and deleted afterwards)."""
        s3 = await self.aws("s3")
        name = unique("bucket")
        await s3.create_bucket(Bucket=name)

        async def remove() -> None:
            listed = await s3.list_objects_v2(Bucket=name)
            for obj in listed.get("Contents", []):
                await s3.delete_object(Bucket=name, Key=obj["Key"])
            await s3.delete_bucket(Bucket=name)

        self.cleanup.append(remove)
        return name

    async def s3_objects(self, bucket: str, prefix: str, expect: int) -> dict[str, dict[str, Any]]:
        """key -> parsed body of the objects under ``prefix/``, once ``expect`` of them exist."""
        s3 = await self.aws("s3")

        async def listed() -> list[str] | None:
            response = await s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")
            keys = [o["Key"] for o in response.get("Contents", [])]
            return keys if len(keys) >= expect else None

        keys = await wait_for(listed, timeout=30, what=f"{expect} objects under {prefix}/")
        out = {}
        for key in keys:
            body = await (await s3.get_object(Bucket=bucket, Key=key))["Body"].read()
            out[key] = json.loads(body)
        return out

    async def s3_target(self, prefix: str) -> Target:
        """A bucket prefix; reading returns the records and remembers their keys."""
        bucket = await self.bucket()
        extra: dict[str, Any] = {"bucket": bucket, "prefix": prefix}

        async def read(expect: int) -> list[dict[str, Any]]:
            objects = await self.s3_objects(bucket, prefix, expect)
            extra["keys"] = objects
            return list(objects.values())

        return Target(f"s3://{bucket}/{prefix}", read, extra)

    async def events_target(self, detail_type: str) -> Target:
        """A custom bus (shared by this test) with a rule for ``detail_type`` targeting a queue."""
        events = await self.aws("events")
        if self.bus is None:
            bus = self.bus = unique("bus")
            await events.create_event_bus(Name=bus)
            self.cleanup.append(lambda: events.delete_event_bus(Name=bus))
        bus = self.bus
        url, arn = await self.queue()
        rule = unique("rule")
        pattern = {"source": ["worker"], "detail-type": [detail_type]}
        await events.put_rule(Name=rule, EventBusName=bus, EventPattern=json.dumps(pattern))
        await events.put_targets(Rule=rule, EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])

        async def remove() -> None:
            await events.remove_targets(Rule=rule, EventBusName=bus, Ids=["q"])
            await events.delete_rule(Name=rule, EventBusName=bus)

        self.cleanup.insert(0, remove)
        envelopes: list[dict[str, Any]] = []

        def unwrap(event: dict[str, Any]) -> dict[str, Any]:
            envelopes.append(event)
            return dict(event["detail"])

        return Target(f"events:{bus}", self._reader(url, unwrap), {"envelopes": envelopes})


@pytest.fixture
async def infra(sqs: Any, aws: Callable[[str], Awaitable[Any]]) -> AsyncIterator[Infra]:
    """Destination resources for one test."""
    made = Infra(sqs, aws)
    yield made
    for step in reversed(made.cleanup):
        with contextlib.suppress(Exception):  # best-effort cleanup of throwaway resources
            await step()


# -- every kind, every condition, through a real worker --


@dataclass(frozen=True)
class Case:
    """A message whose handler run ends in ``condition``."""

    condition: Condition
    body: Any
    attempts: int
    error_type: str | None = None
    error_text: str = ""


def cases(run: str) -> list[Case]:
    """One message per condition (max_attempts=2, immediate_retries=1, timeout_seconds=1)."""
    return [
        Case(Condition.SUCCESS, {"key": f"{run}-ok", "run": run}, 1),
        Case(
            Condition.RETRIES_EXHAUSTED,
            {"key": f"{run}-fail", "do": "fail", "run": run},
            2,
            "RuntimeError",
            f"scripted failure of {run}-fail",
        ),
        Case(
            Condition.TIMEOUT,
            {"key": f"{run}-slow", "sleep": 5, "run": run},
            2,
            "Timeout",
            "handler exceeded its 1s timeout",
        ),
        Case(
            Condition.PERMANENT_ERROR,
            {"key": f"{run}-perm", "do": "permanent", "run": run},
            1,
            "PermanentError",
            "unknown sku",
        ),
        Case(Condition.DECODE_ERROR, f"not json {run} {{", 1, "DecodeError", "body is not valid JSON"),
        Case(
            Condition.SCHEMA_ERROR,
            {"key": f"{run}-schema", "do": "schema", "run": run},
            1,
            "SchemaError",
            "payload does not match Order",
        ),
    ]


def check_record(record: dict[str, Any], case: Case, message_id: str, queue_url: str) -> None:
    """The record matches the Lambda destination shape for this case."""
    assert record["version"] == "1.0"
    stamp = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
    assert record["timestamp"].endswith("Z")
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 120
    assert record["requestContext"] == {
        "requestId": message_id,
        "functionArn": HANDLER,
        "condition": case.condition.value,
        "approximateInvokeCount": case.attempts,
    }
    assert record["requestPayload"] == case.body
    assert record["worker"] == {
        "queueUrl": queue_url,
        "messageId": message_id,
        "groupId": None,
        "snsTopicArn": None,
    }
    if case.condition is Condition.SUCCESS:
        assert record["responseContext"] == {"statusCode": 200, "executedVersion": "v7"}
        assert record["responsePayload"] == {"ok": True, "key": case.body["key"]}
    else:
        assert record["responseContext"] == {
            "statusCode": 500,
            "executedVersion": "v7",
            "functionError": case.error_type,
        }
        assert record["responsePayload"]["errorType"] == case.error_type
        assert case.error_text in record["responsePayload"]["errorMessage"]
    assert "truncated" not in record


async def make_targets(kind: str, infra: Infra) -> tuple[Target, Target]:
    """An on-success and an on-failure target of one kind."""
    if kind == "sqs":
        return await infra.sqs_target("name"), await infra.sqs_target("arn-fifo")
    if kind == "sqs-url":
        return await infra.sqs_target("url"), await infra.sqs_target("url")
    if kind == "sns":
        return await infra.sns_target(), await infra.sns_target()
    if kind == "s3":
        bucket_target = await infra.s3_target("results/ok")
        return bucket_target, await infra.s3_target("results/failed")
    if kind == "events":
        return await infra.events_target(DETAIL_TYPE_SUCCESS), await infra.events_target(DETAIL_TYPE_FAILURE)
    raise AssertionError(kind)


@pytest.mark.localstack
@pytest.mark.parametrize("kind", ["sqs", "sqs-url", "sns", "s3", "events"])
async def test_each_kind_receives_the_right_record_for_every_condition(
    kind: str, sqs: Any, queues: QueueFactory, infra: Infra
) -> None:
    """Success reaches WORKER_ON_SUCCESS, each failure condition WORKER_ON_FAILURE, as the right record."""
    q = await queues()
    ok, failed = await make_targets(kind, infra)
    run = unique("run")
    metrics = Metrics()
    ids: dict[Condition, str] = {}
    async with real_worker(
        q,
        metrics=metrics,
        on_success=[ok.uri],
        on_failure=[failed.uri],
        max_attempts=2,
        immediate_retries=1,
        timeout_seconds=1,
    ):
        for case in cases(run):
            ids[case.condition] = await send(sqs, q["url"], case.body)
        failure_records = await failed.read(5)
        success_records = await ok.read(1)
    by_id = {c.condition: c for c in cases(run)}
    assert [r["requestContext"]["condition"] for r in success_records] == ["Success"]
    check_record(success_records[0], by_id[Condition.SUCCESS], ids[Condition.SUCCESS], q["url"])
    got = {r["requestContext"]["condition"]: r for r in failure_records}
    # MaxAgeExceeded needs a message older than the age cap: tests/test_max_age.py dead-letters one and
    # checks its DLQ record; its destination record comes from the same outcome code as every condition here.
    untested = {Condition.SUCCESS, Condition.MAX_AGE_EXCEEDED}
    assert sorted(got) == sorted(c.value for c in Condition if c not in untested)
    for condition, record in got.items():
        check_record(record, by_id[Condition(condition)], ids[Condition(condition)], q["url"])
    # Nothing else arrived, and each delivery was counted once.
    ok_label, failed_label = parse_destination(ok.uri).label, parse_destination(failed.uri).label
    if kind == "events":  # one bus, routed by detail-type: one label
        assert ok_label == failed_label
        assert sample(metrics, ok_label, "ok") == 6
    else:
        assert sample(metrics, ok_label, "ok") == 1
        assert sample(metrics, failed_label, "ok") == 5
    assert sample(metrics, ok_label, "failed") == sample(metrics, failed_label, "failed") == 0
    if kind == "s3":
        for target in (ok, failed):
            for key, record in target.extra["keys"].items():
                day = record["timestamp"][:10].replace("-", "/")
                condition = record["requestContext"]["condition"]
                message_id = record["worker"]["messageId"]
                assert key == f"{target.extra['prefix']}/{day}/{condition}/{message_id}.json"
        assert len(failed.extra["keys"]) == 5
        assert len(ok.extra["keys"]) == 1
    elif kind == "events":
        envelopes = ok.extra["envelopes"] + failed.extra["envelopes"]
        assert {e["source"] for e in envelopes} == {"worker"}
        assert [e["detail-type"] for e in ok.extra["envelopes"]] == [DETAIL_TYPE_SUCCESS]
        assert {e["detail-type"] for e in failed.extra["envelopes"]} == {DETAIL_TYPE_FAILURE}
    else:
        assert await depth(sqs, ok.extra["url"]) == 0
        assert await depth(sqs, failed.extra["url"]) == 0


@pytest.mark.localstack
async def test_python_hooks_receive_frozen_records_and_their_errors_are_contained(
    sqs: Any, queues: QueueFactory
) -> None:
    """Sync (in a thread) and async hooks get frozen records; raising hooks are counted failed, not fatal."""
    q = await queues()
    run = unique("hook")
    metrics = Metrics()
    success_hooks = [
        f"python:{__name__}:explode",
        f"python:{__name__}:collect",
        f"python:{__name__}:collect_sync",
    ]
    failure_hooks = [f"python:{__name__}:explode_async", f"python:{__name__}:collect"]
    async with real_worker(q, metrics=metrics, on_success=success_hooks, on_failure=failure_hooks):
        ok_id = await send(sqs, q["url"], {"key": f"{run}-ok", "run": run})
        bad_id = await send(sqs, q["url"], {"key": f"{run}-perm", "do": "permanent", "run": run})
        await wait_for(lambda: len(hooked(run)) == 3, what="three hook calls")
        await wait_for(
            lambda: sample(metrics, f"python:{__name__}:explode_async", "failed") == 1,
            what="the failing async hook counted",
        )
        # The worker is unharmed: a later message is still processed and delivered.
        later = await send(sqs, q["url"], {"key": f"{run}-later", "run": run})
        await wait_for(lambda: len(hooked(run)) == 5, what="hooks for the later message")
    assert handlers.CALLS[f"{run}-ok"] == 1
    sync_records = hooked(run, "sync")
    async_records = hooked(run, "async")
    assert {r.message_id for r in sync_records} == {ok_id, later}
    assert {(r.message_id, r.condition) for r in async_records} == {
        (ok_id, "Success"),
        (later, "Success"),
        (bad_id, "PermanentError"),
    }
    threads = {t for k, r, t in HOOKED if run in r.to_json()}
    assert threading.main_thread().name in threads  # async hooks: on the event loop
    assert len(threads) > 1  # sync hooks: elsewhere
    record = sync_records[0]
    assert isinstance(record, DestinationRecord)
    with pytest.raises(FrozenInstanceError):
        record.response_payload = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        record.request_payload["key"] = "changed"
    assert record.response_payload == {"ok": True, "key": record.request_payload["key"]}
    assert sample(metrics, f"python:{__name__}:explode", "failed") == 2
    assert sample(metrics, f"python:{__name__}:collect", "ok") == 3
    assert sample(metrics, f"python:{__name__}:collect_sync", "ok") == 2
    assert sample(metrics, f"python:{__name__}:explode_async", "failed") == 1


# -- size limits --


@pytest.mark.localstack
async def test_record_over_256_kib_is_cut_for_sns_with_a_pointer_to_s3(
    sqs: Any, queues: QueueFactory, infra: Infra
) -> None:
    """A 300 KiB record reaches SNS cut and flagged, pointing at the full copy in S3; SQS gets it whole."""
    q = await queues()
    run = unique("big")
    bucket = await infra.bucket()
    with_copy = await infra.sns_target()
    without_copy = await infra.sns_target()
    whole = await infra.sqs_target("url")
    metrics = Metrics()
    padding = "p" * 300_000
    ok_body = {"key": f"{run}-ok", "run": run, "padding": padding}
    bad_body = {"key": f"{run}-bad", "do": "permanent", "run": run, "padding": padding}
    async with real_worker(
        q,
        metrics=metrics,
        on_success=[with_copy.uri, whole.uri, f"s3://{bucket}/full"],  # S3 last: still written first
        on_failure=[without_copy.uri],
    ):
        ok_id = await send(sqs, q["url"], ok_body)
        bad_id = await send(sqs, q["url"], bad_body)
        [cut] = await with_copy.read(1)
        [cut_alone] = await without_copy.read(1)
        [full_via_sqs] = await whole.read(1)
        objects = await infra.s3_objects(bucket, "full", 1)
    assert cut["truncated"] is True
    assert len(json.dumps(cut, separators=(",", ":"))) <= SNS_MAX_BYTES
    assert isinstance(cut["requestPayload"], str)
    assert padding[:100_000] in cut["requestPayload"]
    assert json.loads(cut["responsePayload"]) == {"ok": True, "key": f"{run}-ok"}
    [(key, full)] = objects.items()
    assert cut["fullRecord"] == f"s3://{bucket}/{key}"
    assert full["requestPayload"] == ok_body
    assert "truncated" not in full
    assert full["requestContext"] == cut["requestContext"] == full_via_sqs["requestContext"]
    assert full["worker"]["messageId"] == ok_id
    assert full_via_sqs["requestPayload"] == ok_body  # 1 MiB limit: not cut
    assert "truncated" not in full_via_sqs
    assert cut_alone["truncated"] is True
    assert "fullRecord" not in cut_alone
    assert cut_alone["worker"]["messageId"] == bad_id
    assert json.loads(cut_alone["responsePayload"])["errorType"] == "PermanentError"


# -- outages --


@pytest.mark.localstack
async def test_missing_sns_topic_is_counted_failed_without_rerun_or_delayed_delete(
    sqs: Any, queues: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Publishing to a nonexistent topic fails the delivery (counted, logged) but the message is done once."""
    q = await queues()
    run = unique("gone")
    missing = f"arn:aws:sns:us-east-1:000000000000:{unique('missing')}"
    label = f"sns:{missing.rsplit(':', 1)[-1]}"
    metrics = Metrics()
    caplog.set_level(logging.WARNING, logger="worker.destinations")
    async with real_worker(q, metrics=metrics, on_success=[f"sns:{missing}"]):
        sent = time.monotonic()
        message_id = await send(sqs, q["url"], {"key": run, "secret": f"body-{run}"})
        await wait_for(lambda: sample(metrics, label, "failed") == 1, what="the failed delivery counted")
        assert await depth(sqs, q["url"]) == 0
        assert time.monotonic() - sent < 10
    assert handlers.CALLS[run] == 1
    assert sample(metrics, label, "ok") == 0
    [line] = [r for r in caplog.records if getattr(r, "event", "") == "destination_failed"]
    assert line.destination == label  # type: ignore[attr-defined]
    assert line.message_id == message_id  # type: ignore[attr-defined]
    assert line.error == "NotFound"  # type: ignore[attr-defined]
    assert line.attempts == 1  # type: ignore[attr-defined]  # not retryable: no pointless retries
    assert all(f"body-{run}" not in json.dumps(vars(r), default=str) for r in caplog.records)


@asynccontextmanager
async def blackhole() -> AsyncIterator[str]:
    """An HTTP endpoint that accepts connections and never answers."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def hold(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hold)
        yield f"http://127.0.0.1:{port}"
        tg.cancel_scope.cancel()


@pytest.mark.localstack
async def test_blackholed_destination_times_out_without_delaying_the_delete(
    sqs: Any, queues: QueueFactory
) -> None:
    """A never-answering destination is cut off per attempt and retried; the message is long deleted."""
    q = await queues()
    run = unique("hole")
    metrics = Metrics()
    topic = "arn:aws:sns:us-east-1:000000000000:nowhere"
    settings = sink_settings(
        on_success=[f"sns:{topic}"], destination_timeout_seconds=1.5, destination_attempts=2
    )
    async with blackhole() as endpoint, anyio.create_task_group() as tg:
        sink = await tg.start(
            lambda task_status: build_sink(
                settings, metrics, task_status=task_status, endpoints={"sns": endpoint}
            )
        )
        async with running_worker(q, sink=sink, metrics=metrics):
            sent = time.monotonic()
            await send(sqs, q["url"], {"key": run})
            await wait_for(lambda: handlers.CALLS[run] == 1, what="handler ran")
            await wait_for(lambda: _empty(sqs, q["url"]), timeout=10, what="message deleted")
            deleted = time.monotonic() - sent
            # The delivery is still hanging while the message is already deleted.
            assert sample(metrics, "sns:nowhere", "failed") == 0
            await wait_for(lambda: sample(metrics, "sns:nowhere", "failed") == 1, timeout=20, what="failed")
            gave_up = time.monotonic() - sent
        tg.cancel_scope.cancel()
    assert deleted < 3.0
    assert gave_up >= 2 * 1.5  # two attempts, each waited out its timeout
    assert gave_up < 2 * 1.5 + 5
    assert handlers.CALLS[run] == 1
    assert sample(metrics, "sns:nowhere", "ok") == 0


async def _empty(sqs: Any, url: str) -> bool:
    return await depth(sqs, url) == 0


# -- start-up --


async def test_no_destinations_gives_no_sink() -> None:
    """Without WORKER_ON_SUCCESS / WORKER_ON_FAILURE build_sink reports no sink and opens nothing."""
    async with anyio.create_task_group() as tg:
        sink = await tg.start(build_sink, sink_settings(), Metrics())
        assert sink is None
        tg.cancel_scope.cancel()


@pytest.mark.localstack
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"on_success": ["sqs://no-such-queue-xyz"]},
            "WORKER_ON_SUCCESS: queue 'no-such-queue-xyz' does not exist",
        ),
        ({"on_failure": ["python:tests.no_such_module:fn"]}, "WORKER_ON_FAILURE: cannot import module"),
        ({"on_failure": [f"python:{__name__}:HOOKED"]}, "is not callable"),
    ],
)
async def test_unusable_destination_fails_start_up_naming_the_variable(
    localstack_endpoint: str, overrides: dict[str, Any], message: str
) -> None:
    """A queue that does not exist or a hook that cannot be imported is a ConfigError at start."""
    with pytest.raises(ConfigError, match=message):
        await build_sink(sink_settings(**overrides), Metrics())


# -- the in-memory queue (fake destinations, no AWS) --


class Gate(Destination):
    """A fake destination: each delivery waits for ``opened`` (or forever), then records the record."""

    def __init__(self, name: str = "gate") -> None:
        super().__init__(parse_destination(f"sqs://{name}"))
        self.opened = anyio.Event()
        self.started = 0
        self.delivered: list[str] = []

    async def deliver(self, record: DestinationRecord, full_record: str | None) -> str | None:
        """Wait for the gate, then keep the message id."""
        self.started += 1
        await self.opened.wait()
        self.delivered.append(record.message_id)
        return None


def fake_outcome(n: int) -> Outcome:
    """A Success outcome of message ``m-<n>``."""
    message = Message(id=f"m-{n}", receipt_handle="rh", raw_body="{}", body="{}", queue_url=FAKE_QUEUE)
    return Outcome(message, Condition.SUCCESS, 1, HANDLER, "v7", time.time(), response={"n": n})


async def test_full_queue_drops_and_counts_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """submit never blocks: beyond capacity outcomes are dropped, counted 'dropped', warned about once."""
    caplog.set_level(logging.WARNING, logger="worker.destinations")
    gate = Gate()
    metrics = Metrics()
    sink = DestinationSink([gate], [], metrics, capacity=2, tasks=1)
    async with anyio.create_task_group() as tg:
        await tg.start(sink.run)
        sink.submit(fake_outcome(0))
        await wait_for(lambda: gate.started == 1, what="first delivery in flight")
        for n in range(1, 6):  # 2 fit in the queue, 3 are dropped
            sink.submit(fake_outcome(n))
        assert sample(metrics, "sqs:gate", "dropped") == 3
        gate.opened.set()
        await wait_for(lambda: len(gate.delivered) == 3, what="queued ones delivered")
        sink.submit(fake_outcome(6))  # room again: accepted
        await wait_for(lambda: len(gate.delivered) == 4, what="the later one delivered")
        tg.cancel_scope.cancel()
    assert gate.delivered == ["m-0", "m-1", "m-2", "m-6"]
    assert sample(metrics, "sqs:gate", "ok") == 4
    assert sample(metrics, "sqs:gate", "dropped") == 3
    warnings = [r for r in caplog.records if getattr(r, "event", "") == "destination_dropped"]
    assert len(warnings) == 1


async def test_shutdown_flushes_what_is_queued_within_the_grace() -> None:
    """Cancelling the sink's task lets queued outcomes finish delivering (shielded), then returns."""
    gate = Gate()
    metrics = Metrics()
    sink = DestinationSink([gate], [], metrics, tasks=1, shutdown_grace=5)
    async with anyio.create_task_group() as tg:
        await tg.start(sink.run)
        for n in range(4):
            sink.submit(fake_outcome(n))
        await wait_for(lambda: gate.started == 1, what="delivery in flight")
        tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.2)  # cancellation is under way; the gate opens during the grace
            gate.opened.set()
    assert gate.delivered == ["m-0", "m-1", "m-2", "m-3"]
    assert sample(metrics, "sqs:gate", "ok") == 4
    sink.submit(fake_outcome(9))  # after shutdown: dropped and counted, never raises
    assert sample(metrics, "sqs:gate", "dropped") == 1


async def test_shutdown_drops_what_the_grace_cannot_deliver(caplog: pytest.LogCaptureFixture) -> None:
    """A stuck destination holds shutdown only for the grace; in-flight and queued ones count dropped."""
    caplog.set_level(logging.WARNING, logger="worker.destinations")
    gate = Gate()
    metrics = Metrics()
    sink = DestinationSink([gate], [], metrics, tasks=1, shutdown_grace=0.5)
    async with anyio.create_task_group() as tg:
        await tg.start(sink.run)
        for n in range(3):
            sink.submit(fake_outcome(n))
        await wait_for(lambda: gate.started == 1, what="delivery in flight")
        started = anyio.current_time()
        tg.cancel_scope.cancel()
    took = anyio.current_time() - started
    assert 0.4 <= took < 2.0
    assert gate.delivered == []
    assert sample(metrics, "sqs:gate", "dropped") == 3
    assert any(getattr(r, "dropped", 0) == 2 for r in caplog.records)  # the queued ones, in one line


class Flaky(Destination):
    """A fake destination failing ``failures`` times (retryable), then succeeding."""

    def __init__(self, failures: int) -> None:
        super().__init__(parse_destination("sqs://flaky"))
        self.failures = failures
        self.calls: list[float] = []

    async def deliver(self, record: DestinationRecord, full_record: str | None) -> str | None:
        """Fail with a throttling error until the budget is spent."""
        self.calls.append(anyio.current_time())
        if len(self.calls) <= self.failures:
            raise DeliveryError("Throttling")
        return None


async def test_attempts_are_retried_with_backoff_and_each_is_time_boxed() -> None:
    """A flaky destination succeeds on a later attempt after backoff; a hung one is cut off per attempt."""
    flaky = Flaky(failures=2)
    hung = Gate("hung")
    metrics = Metrics()
    # A draw of 0.99 takes (nearly) the whole full-jitter ceiling: 0.2 s, then 0.4 s.
    sink = DestinationSink([flaky, hung], [], metrics, attempts=3, timeout=0.3, jitter=lambda: 0.99)
    async with anyio.create_task_group() as tg:
        await tg.start(sink.run)
        started = anyio.current_time()
        sink.submit(fake_outcome(1))
        await wait_for(lambda: sample(metrics, "sqs:hung", "failed") == 1, timeout=10, what="hung gave up")
        took = anyio.current_time() - started
        tg.cancel_scope.cancel()
    assert sample(metrics, "sqs:flaky", "ok") == 1
    assert sample(metrics, "sqs:flaky", "failed") == 0
    gaps = [b - a for a, b in zip(flaky.calls, flaky.calls[1:], strict=False)]
    assert len(flaky.calls) == 3
    assert 0.18 <= gaps[0] < 0.5  # ~0.2 s
    assert 0.38 <= gaps[1] < 0.8  # ~0.4 s
    assert hung.started == 3
    assert 3 * 0.3 + 0.2 + 0.4 - 0.05 <= took < 3.0  # three time-boxed attempts and two backoffs

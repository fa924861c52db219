"""@idempotent handlers: keys, the memory store, crashes, races, the DynamoDB store on moto, a worker run."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from pydantic import BaseModel

from tests import idempotent_handlers
from tests.conftest import QueueFactory, unique
from tests.helpers import depth, drain, running_worker, send, wait_for
from worker import Message, MessageAttribute, PermanentError, RetryLater, SchemaError, idempotent
from worker.deadletter.record import FAILURE_ATTRIBUTE, failure_record, original_message_id
from worker.engine.handler import load_handler
from worker.errors import DecodeError
from worker.idempotency import Claimed, ClaimResult, Completed, DynamoDBStore, InProgress, MemoryStore
from worker.idempotency.decorator import encode_result, key_function
from worker.idempotency.dynamodb import MAX_ITEM_BYTES, partition_key

QUEUE = "http://127.0.0.1:1/000000000000/orders"


def message(body: Any, *, id: str | None = None, **attributes: MessageAttribute) -> Message:
    """A received message (dicts are JSON-encoded); ``attributes`` are SQS message attributes."""
    text = body if isinstance(body, str) else json.dumps(body)
    return Message(
        id=id or unique("m"),
        receipt_handle="rh",
        raw_body=text,
        body=text,
        queue_url=QUEUE,
        attributes=attributes,
        sqs_attributes=attributes,
    )


def redriven(first: Message, *, id: str) -> Message:
    """The copy ``worker redrive`` sends of dead-lettered ``first``: a new id, and the failure record."""
    record = failure_record(
        first,
        error_type="RuntimeError",
        error_message="boom",
        condition="RetriesExhausted",
        attempts=3,
        source_queue_arn="arn:aws:sqs:us-east-1:000000000000:orders",
        handler="h:h",
        handler_version="1",
        now=datetime.now(UTC),
    )
    return message(first.body, id=id, **{FAILURE_ATTRIBUTE: MessageAttribute("String", record.to_json())})


class Clock:
    """An injected clock (epoch seconds) the tests move by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Counting:
    """A MemoryStore that counts every call, and can be made to fail them."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.inner = MemoryStore()
        self.calls: dict[str, int] = {"claim": 0, "complete": 0, "release": 0}
        self.fail = fail or set()

    def _count(self, what: str) -> None:
        self.calls[what] += 1
        if what in self.fail:
            raise ConnectionError(f"store down ({what})")

    async def claim(self, key: str, now: float, in_progress_until: float) -> ClaimResult:
        self._count("claim")
        return await self.inner.claim(key, now, in_progress_until)

    async def complete(self, key: str, result: str | None, expires_at: float, *, token: str) -> None:
        self._count("complete")
        await self.inner.complete(key, result, expires_at, token=token)

    async def release(self, key: str, *, token: str) -> None:
        self._count("release")
        await self.inner.release(key, token=token)


# -- the original id and keys (pure) --


def test_original_message_id_survives_a_redrive_and_falls_back_to_the_id() -> None:
    """A redriven copy's original id is its record's; without a (readable) record it is the message's own."""
    first = message({"a": 1}, id="first-id")
    assert original_message_id(first) == "first-id"
    assert original_message_id(redriven(first, id="second-id")) == "first-id"
    garbled = message({"a": 1}, id="third-id", **{FAILURE_ATTRIBUTE: MessageAttribute("String", "{not json")})
    assert original_message_id(garbled) == "third-id"


def test_keys_from_payload_attribute_and_function() -> None:
    """Each key spec reads its value: nested fields, list items, canonical JSON, attributes, functions."""
    m = message(
        {"order": {"id": "o-1", "lines": [{"sku": "a"}, {"sku": "b"}], "n": 7, "tags": {"b": 1, "a": 2}}},
        id="mid",
        ref=MessageAttribute("String", "r-9"),
        blob=MessageAttribute("Binary", b"\x00\x01"),
    )
    assert key_function(None)(m) == "mid"
    assert key_function("payload:order.id")(m) == "o-1"
    assert key_function("payload:order.lines.1.sku")(m) == "b"
    assert key_function("payload:order.n")(m) == "7"
    assert key_function("payload:order.tags")(m) == '{"a":2,"b":1}'
    assert key_function("attribute:ref")(m) == "r-9"
    assert key_function("attribute:blob")(m) == "AAE="
    assert key_function(lambda msg: f"k-{msg.id}")(m) == "k-mid"


@pytest.mark.parametrize(
    ("spec", "body", "says"),
    [
        ("payload:order.id", {"order": {}}, "payload:order.id: the payload has no order.id"),
        ("payload:order.id", {"other": 1}, "the payload has no order"),
        ("payload:lines.5", {"lines": [1]}, "the payload has no lines.5"),
        ("payload:id", {"id": None}, "the field is null"),
        ("payload:id", {"id": ""}, "the field is empty"),
        ("payload:id", [1, 2], "the payload has no id"),
        ("attribute:ref", {}, "attribute:ref: the message has no attribute 'ref'"),
    ],
)
def test_a_key_that_cannot_be_computed_is_a_permanent_error_naming_what_is_missing(
    spec: str, body: Any, says: str
) -> None:
    """A missing field or attribute raises PermanentError (the message goes to the DLQ with the reason)."""
    with pytest.raises(PermanentError, match=says):
        key_function(spec)(message(body))


def test_bad_key_specs_and_bodies() -> None:
    """A malformed spec fails at decoration; a non-JSON body is a DecodeError; a bad function result too."""
    for spec in ("payload:", "payload:a..b", "attribute:", "id", "body:x"):
        with pytest.raises(ValueError, match="@idempotent key must be"):
            key_function(spec)

    async def handler(m: Message) -> None: ...

    with pytest.raises(TypeError, match="without"):
        idempotent(handler)  # type: ignore[arg-type]  # @idempotent without ()
    with pytest.raises(TypeError, match="not to batch handlers"):
        idempotent()(batch_handler)
    with pytest.raises(DecodeError):
        key_function("payload:id")(message("not json"))
    with pytest.raises(PermanentError, match="returned NoneType"):
        key_function(lambda m: None)(message({}))  # type: ignore[arg-type,return-value]
    for name, value in (("ttl_seconds", 0), ("in_progress_seconds", float("nan"))):
        with pytest.raises(ValueError, match=name):
            idempotent(**{name: value})


async def batch_handler(messages: list[Message]) -> None:
    """A batch handler: @idempotent refuses it (it keys one message)."""


def test_results_are_stored_as_json_or_none() -> None:
    """JSON values and pydantic models are stored as JSON text; anything else as None."""

    class Receipt(BaseModel):
        total: int

    assert encode_result({"a": [1, "é"]}) == '{"a":[1,"\\u00e9"]}'
    assert encode_result(Receipt(total=3)) == '{"total":3}'
    assert encode_result(None) == "null"
    assert encode_result(object()) is None
    assert encode_result(float("nan")) is None


# -- the decorator on the memory store --


async def test_duplicates_run_the_handler_once_and_get_the_stored_result() -> None:
    """The same body sent twice, a redelivery after a lost delete and a redriven copy all run it once."""
    runs: list[str] = []

    @idempotent(key="payload:order")
    async def by_order(m: Message) -> Any:
        runs.append(m.id)
        return {"order": m.json()["order"], "by": m.id}

    first = await by_order(message({"order": "o-1"}, id="a"))
    again = await by_order(message({"order": "o-1"}, id="b"))  # the same payload sent again
    assert runs == ["a"]
    assert first == again == {"order": "o-1", "by": "a"}

    @idempotent()  # the default key: the original message id
    async def by_id(m: Message) -> Any:
        runs.append(m.id)
        return m.id

    done = message({"x": 1}, id="c")
    assert await by_id(done) == "c"
    assert await by_id(done) == "c"  # redelivered: the handler succeeded but the delete was lost
    assert await by_id(redriven(done, id="d")) == "c"  # a redriven copy: a new SQS id, the same original
    assert runs == ["a", "c"]
    assert await by_id(message({"x": 1}, id="e")) == "e"  # another message: runs
    assert runs == ["a", "c", "e"]


async def test_a_concurrent_duplicate_backs_off_instead_of_running_twice() -> None:
    """While one delivery runs the key, another gets RetryLater until the claim lapses; then the result."""
    clock = Clock()
    started, finish = anyio.Event(), anyio.Event()
    runs = 0

    @idempotent(key="payload:id", in_progress_seconds=120, clock=clock)
    async def slow(m: Message) -> Any:
        nonlocal runs
        runs += 1
        started.set()
        await finish.wait()
        return {"done": True}

    results: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def first() -> None:
            results.append(await slow(message({"id": "k"})))

        tg.start_soon(first)
        with anyio.fail_after(5):
            await started.wait()
        clock.now += 20
        with pytest.raises(RetryLater) as caught:
            await slow(message({"id": "k"}))
        assert caught.value.delay == 120 - 20 + 1  # until the claim lapses, and a second more
        finish.set()
    assert results == [{"done": True}]
    assert await slow(message({"id": "k"})) == {"done": True}
    assert runs == 1


async def test_a_crash_or_a_timeout_releases_the_key_so_the_retry_runs() -> None:
    """An exception and a cancellation (the worker's timeout) each release the key: the retry runs it."""
    store = Counting()
    runs = 0

    @idempotent(key="payload:id", store=store)
    async def flaky(m: Message) -> Any:
        nonlocal runs
        runs += 1
        if m.json()["do"] == "fail":
            raise RuntimeError("down")
        if m.json()["do"] == "hang":
            await anyio.sleep_forever()
        return "ok"

    with pytest.raises(RuntimeError, match="down"):
        await flaky(message({"id": "k", "do": "fail"}))
    with anyio.move_on_after(0.05) as scope:
        await flaky(message({"id": "k", "do": "hang"}))
    assert scope.cancelled_caught
    assert store.calls == {"claim": 2, "complete": 0, "release": 2}
    assert await flaky(message({"id": "k", "do": "ok"})) == "ok"
    assert runs == 3
    assert store.calls == {"claim": 3, "complete": 1, "release": 2}


async def test_completed_keys_expire_after_the_ttl_and_stale_claims_can_be_taken_over() -> None:
    """A result is kept ttl_seconds from completion; a claim left by a crashed process lapses."""
    clock = Clock()
    store = MemoryStore()
    runs = 0

    @idempotent(
        key="payload:id", ttl_seconds=100, in_progress_seconds=30, store=store, clock=clock, namespace="n"
    )
    async def handle(m: Message) -> Any:
        nonlocal runs
        runs += 1
        return runs

    assert await handle(message({"id": "k"})) == 1
    clock.now += 100
    assert await handle(message({"id": "k"})) == 1  # at the TTL's edge: still the stored result
    clock.now += 1
    assert await handle(message({"id": "k"})) == 2  # past it: runs again

    # A process claimed "crashed" and died before completing or releasing.
    stale = await store.claim("n|crashed", clock.now, clock.now + 30)
    assert isinstance(stale, Claimed)
    with pytest.raises(RetryLater):
        await handle(message({"id": "crashed"}))
    clock.now += 31
    assert await handle(message({"id": "crashed"})) == 3
    # The first owner coming back late cannot clobber or release the new owner's entry.
    await store.release("n|crashed", token=stale.token)
    await store.complete("n|crashed", '"late"', clock.now + 999, token=stale.token)
    assert await handle(message({"id": "crashed"})) == 3


async def test_store_failures_never_run_a_key_twice() -> None:
    """A claim that fails fails the delivery (retried); a failed complete is logged and keeps the key held."""
    down = Counting(fail={"claim"})
    runs = 0

    @idempotent(key="payload:id", store=down)
    async def handle(m: Message) -> Any:
        nonlocal runs
        runs += 1
        return "ok"

    with pytest.raises(ConnectionError):
        await handle(message({"id": "k"}))
    assert runs == 0

    lossy = Counting(fail={"complete"})

    @idempotent(key="payload:id", store=lossy)
    async def handle2(m: Message) -> Any:
        nonlocal runs
        runs += 1
        return "ok"

    assert await handle2(message({"id": "k"})) == "ok"
    with pytest.raises(RetryLater):  # the claim still holds the key: no second run until it lapses
        await handle2(message({"id": "k"}))
    assert runs == 1
    assert lossy.calls == {"claim": 2, "complete": 1, "release": 0}


async def test_a_result_that_is_not_json_is_stored_as_none(caplog: pytest.LogCaptureFixture) -> None:
    """The first delivery returns the object, later ones None; the warning names the type, not the value."""
    caplog.set_level(logging.WARNING, logger="worker.idempotency")

    class Secret:
        def __repr__(self) -> str:
            return "SECRET-VALUE"

    @idempotent(key="payload:id")
    async def handle(m: Message) -> Any:
        return Secret()

    assert isinstance(await handle(message({"id": "k"})), Secret)
    assert await handle(message({"id": "k"})) is None
    [line] = [r for r in caplog.records if getattr(r, "event", "") == "idempotent_result_not_stored"]
    assert line.result_type == "Secret"  # type: ignore[attr-defined]
    assert "SECRET-VALUE" not in json.dumps(vars(line), default=str)


async def test_through_the_workers_loader_model_and_thread_handlers_run_once() -> None:
    """Loaded by path: a model-typed handler gets its model, a plain def runs in a thread; each runs once."""
    limiter = anyio.CapacityLimiter(2)
    run = unique("run")
    typed = load_handler("tests.idempotent_handlers:typed", thread_limiter=limiter)
    body = {"run": run, "id": unique("pay"), "amount": 5}
    assert await typed.invoke(message(body)) == {"paid": 5}
    assert await typed.invoke(message(body)) == {"paid": 5}
    with pytest.raises(SchemaError):  # validated before any key is claimed
        await typed.invoke(message({"run": run, "id": "x"}))

    blocking = load_handler("tests.idempotent_handlers:blocking", thread_limiter=limiter)
    body = {"run": run, "id": unique("job")}
    assert await blocking.invoke(message(body)) == {"thread": True, "id": body["id"]}
    assert await blocking.invoke(message(body)) == {"thread": True, "id": body["id"]}
    assert idempotent_handlers.RUNS[run] == 2  # one run of each handler


async def test_the_memory_store_is_bounded_and_prunes_expired_entries() -> None:
    """At max_entries the oldest written entry goes; expired entries go as claims come."""
    store = MemoryStore(max_entries=3)
    for n in range(5):
        assert isinstance(await store.claim(f"k{n}", 0.0, 10.0 + n), Claimed)
    assert len(store) == 3
    assert isinstance(await store.claim("k0", 1.0, 20.0), Claimed)  # dropped: runs again
    assert isinstance(await store.claim("k4", 1.0, 20.0), InProgress)
    assert isinstance(await store.claim("other", 15.0, 16.0), Claimed)
    assert len(store) == 2  # k0 (until 20) and other; k3 and k4 expired at 13 and 14
    for n in range(1000):  # many writes over few keys: the expiry heap stays bounded too
        claimed = await store.claim(f"x{n % 3}", 100.0 + n, 100.5 + n)
        assert isinstance(claimed, Claimed)
    assert len(store._expiries) <= 2 * 3 + 16


# -- the DynamoDB store, on moto's server (LocalStack's DynamoDB cannot run offline) --


@pytest.fixture
async def dynamo(moto_endpoint: str) -> AsyncIterator[Callable[[], DynamoDBStore]]:
    """Stores on one fresh table on moto (each store is its own client, like separate processes)."""
    table = unique("idem")
    stores: list[DynamoDBStore] = []

    def make() -> DynamoDBStore:
        stores.append(DynamoDBStore(table, endpoint_url=moto_endpoint))
        return stores[-1]

    await make().create_table()
    yield make
    with anyio.CancelScope(shield=True):
        client = await stores[0]._client()
        await client.delete_table(TableName=table)
        for store in stores:
            await store.aclose()


async def test_dynamodb_claims_race_exactly_one_wins(dynamo: Callable[[], DynamoDBStore]) -> None:
    """Two clients claiming the same keys at once: for every key exactly one claim is taken."""
    a, b = dynamo(), dynamo()
    now = time.time()
    keys = [unique("race") for _ in range(20)]
    answers: dict[str, list[ClaimResult]] = {key: [] for key in keys}
    go = anyio.Event()

    async def claim(store: DynamoDBStore, key: str) -> None:
        await go.wait()
        answers[key].append(await store.claim(key, now, now + 60))

    async with anyio.create_task_group() as tg:
        for key in keys:
            tg.start_soon(claim, a, key)
            tg.start_soon(claim, b, key)
        await anyio.lowlevel.checkpoint()  # every claim is waiting on ``go``
        go.set()
    for key in keys:
        kinds = sorted(type(answer).__name__ for answer in answers[key])
        assert kinds == ["Claimed", "InProgress"], key
        [busy] = [answer for answer in answers[key] if isinstance(answer, InProgress)]
        assert busy.until == pytest.approx(now + 60, abs=1)


async def test_dynamodb_two_processes_on_one_key_run_the_handler_once(
    dynamo: Callable[[], DynamoDBStore],
) -> None:
    """Two handler copies, each with its own client: the second backs off, then gets the first's result."""
    started, finish = anyio.Event(), anyio.Event()
    runs = 0

    def replica(store: DynamoDBStore) -> Callable[[Message], Any]:
        @idempotent(key="payload:id", store=store, namespace="charge", in_progress_seconds=60)
        async def handle(m: Message) -> Any:
            nonlocal runs
            runs += 1
            started.set()
            await finish.wait()
            return {"charged": m.json()["id"], "by": m.id}

        return handle

    one, two = replica(dynamo()), replica(dynamo())
    body = {"id": unique("order")}
    async with anyio.create_task_group() as tg:
        tg.start_soon(one, message(body, id="first"))
        with anyio.fail_after(10):
            await started.wait()
        with pytest.raises(RetryLater) as caught:
            await two(message(body, id="second"))
        assert caught.value.delay is not None
        assert 55 <= caught.value.delay <= 62
        finish.set()
    assert await two(message(body, id="third")) == {"charged": body["id"], "by": "first"}
    assert runs == 1


async def test_dynamodb_takeover_release_and_limits(
    dynamo: Callable[[], DynamoDBStore], caplog: pytest.LogCaptureFixture
) -> None:
    """A lapsed claim is taken over and safe from its first owner; too-big results and too-long keys fit."""
    a, b = dynamo(), dynamo()
    now = time.time()
    first = await a.claim("k", now, now + 10)
    assert isinstance(first, Claimed)
    assert await b.claim("k", now + 5, now + 20) == InProgress(math.ceil(now + 10))
    second = await b.claim("k", now + 11, now + 40)
    assert isinstance(second, Claimed)
    await a.release("k", token=first.token)  # no longer a's: nothing happens
    await a.complete("k", '"late"', now + 999, token=first.token)
    assert isinstance(await a.claim("k", now + 12, now + 50), InProgress)
    await b.complete("k", '{"n":1}', now + 100, token=second.token)
    assert await a.claim("k", now + 13, now + 50) == Completed('{"n":1}')
    assert isinstance(await a.claim("k", now + 101, now + 150), Claimed)  # the TTL passed

    # Released: the next claim takes it.
    third = await a.claim("r", now, now + 10)
    assert isinstance(third, Claimed)
    await a.release("r", token=third.token)
    assert isinstance(await b.claim("r", now, now + 10), Claimed)

    caplog.set_level(logging.WARNING, logger="worker.idempotency")
    big = await a.claim("big", now, now + 10)
    assert isinstance(big, Claimed)
    await a.complete("big", json.dumps("x" * MAX_ITEM_BYTES), now + 100, token=big.token)
    assert await b.claim("big", now, now + 10) == Completed(None)
    assert any(getattr(r, "event", "") == "idempotency_result_too_large" for r in caplog.records)

    long_key = "p" * 5000
    assert partition_key(long_key).startswith("sha256:")
    held = await a.claim(long_key, now, now + 10)
    assert isinstance(held, Claimed)
    await a.complete(long_key, "1", now + 100, token=held.token)
    assert await b.claim(long_key, now, now + 10) == Completed("1")

    client = await a._client()
    ttl = await client.describe_time_to_live(TableName=a.table)
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "expires_at"
    await a.create_table()  # again: the table exists, nothing fails


# -- one end-to-end run on LocalStack --


@pytest.mark.localstack
async def test_worker_runs_a_duplicate_payload_once_and_sends_the_stored_result_twice(
    sqs: Any, queues: QueueFactory
) -> None:
    """The same payload sent twice: one handler run, both messages deleted, two on-success records."""
    q = await queues()
    dest = (await sqs.create_queue(QueueName=unique("idem-dest")))["QueueUrl"]
    run = unique("run")
    body = {"run": run, "order": {"id": unique("order")}}
    try:
        async with running_worker(
            q,
            sink=None,
            handler="tests.idempotent_handlers:charge",
            on_success=[f"sqs://{dest.rsplit('/', 1)[-1]}"],
        ):
            first = await send(sqs, q["url"], body)
            [one] = await drain(sqs, dest, expect=1)
            second = await send(sqs, q["url"], body)
            [two] = await drain(sqs, dest, expect=1)
            await wait_for(lambda: _empty(sqs, q["url"]), timeout=10, what="both messages deleted")
        assert idempotent_handlers.RUNS[run] == 1
        records = [json.loads(one["Body"]), json.loads(two["Body"])]
        assert [r["worker"]["messageId"] for r in records] == [first, second]
        for record in records:
            assert record["requestContext"]["condition"] == "Success"
            assert record["responsePayload"] == {"charged": body["order"]["id"], "by": first}
        assert await depth(sqs, q["dlq_url"]) == 0
    finally:
        await sqs.delete_queue(QueueUrl=dest)


async def _empty(sqs: Any, url: str) -> bool:
    return await depth(sqs, url) == 0

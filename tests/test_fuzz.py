"""Bad-input fuzz against LocalStack: whatever arrives, the worker never crashes and nothing is lost."""

from __future__ import annotations

import json
import os
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import chaos_report
from tests.conftest import unique
from tests.helpers import Collecting, drain, running_worker, wait_for
from worker.aws.client import client_config, create_client
from worker.deadletter.record import read_failure, restore_attributes
from worker.engine.message import looks_like_sns_envelope, parse_sqs_attributes

#: Hypothesis examples (batches of 5-25 messages): 3 in `make test`, 200 in `make chaos` (FUZZ_EXAMPLES).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "3"))
#: What the run saw, written to the chaos report after each example (a failing one included).
FIGURES: dict[str, Any] = {"examples": 0, "messages": 0, "dead_lettered": 0}

pytestmark = [pytest.mark.localstack, pytest.mark.slow, pytest.mark.timeout(max(300, 20 * EXAMPLES))]

# SQS accepts only these characters in bodies and string attributes (XML 1.0).
SQS_CHARS = st.characters(
    codec="utf-8",
    exclude_categories=("Cs",),
).filter(
    lambda c: c in "\t\n\r" or (0x20 <= ord(c) <= 0xD7FF) or (0xE000 <= ord(c) <= 0xFFFD) or ord(c) > 0xFFFF
)
SQS_TEXT = st.text(SQS_CHARS, min_size=1, max_size=300)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | SQS_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(SQS_TEXT, inner, max_size=4),
    max_leaves=10,
)
malformed_envelopes = st.fixed_dictionaries(
    {"Type": st.just("Notification"), "TopicArn": st.just("arn:aws:sns:us-east-1:000000000000:t")},
    optional={
        "MessageId": st.integers() | SQS_TEXT,
        "Message": json_values,
        "MessageAttributes": json_values,
    },
).map(json.dumps)
bodies = st.one_of(
    SQS_TEXT,  # mostly not JSON
    json_values.map(json.dumps),  # valid JSON of every shape
    malformed_envelopes,
    st.just("x" * (256 * 1024)),  # large
    st.just("{"),
)
attribute = st.one_of(
    st.builds(lambda v: {"DataType": "String", "StringValue": v}, SQS_TEXT),
    st.builds(lambda v: {"DataType": "Number", "StringValue": str(v)}, st.integers(-(10**30), 10**30)),
    st.builds(lambda v: {"DataType": "Binary", "BinaryValue": v}, st.binary(min_size=1, max_size=64)),
)
attribute_sets = st.dictionaries(
    st.from_regex(r"[A-Za-z][A-Za-z0-9_\-]{0,20}", fullmatch=True), attribute, max_size=10
)
messages = st.lists(st.tuples(bodies, attribute_sets), min_size=5, max_size=25)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=messages)
def test_random_input_ends_succeeded_or_dead_lettered(localstack_endpoint: str, batch: list[Any]) -> None:
    """Random bodies, attributes (10, binary), malformed envelopes: each ends once; no loss, no crash."""
    assert os.environ["AWS_ENDPOINT_URL"] == localstack_endpoint
    FIGURES["examples"] += 1
    FIGURES["messages"] += len(batch)
    try:
        anyio.run(_run_batch, batch)
    except BaseException as exc:
        chaos_report.record(
            "fuzz", {**FIGURES, "passed": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        )
        raise
    chaos_report.record("fuzz", {**FIGURES, "passed": True})


async def _run_batch(batch: list[tuple[str, dict[str, Any]]]) -> None:
    async with create_client("sqs", client_config()) as sqs:
        dlq = (await sqs.create_queue(QueueName=unique("fz-dlq")))["QueueUrl"]
        src = (await sqs.create_queue(QueueName=unique("fz")))["QueueUrl"]
        try:
            sent: dict[str, tuple[str, dict[str, Any]]] = {}
            for body, attrs in batch:
                response = await sqs.send_message(QueueUrl=src, MessageBody=body, MessageAttributes=attrs)
                sent[response["MessageId"]] = (body, attrs)
            sink = Collecting()
            queue = {"url": src, "dlq_url": dlq}
            async with running_worker(queue, sink=sink, handler="tests.handlers:echo", max_attempts=2):
                await wait_for(lambda: len(sink.outcomes) >= len(sent), timeout=60, what="an outcome each")
            assert sorted(o.message.id for o in sink.outcomes) == sorted(sent)
            failed = {o.message.id: o for o in sink.outcomes if not o.succeeded}
            for outcome in sink.outcomes:
                body, _ = sent[outcome.message.id]
                if outcome.succeeded:
                    continue
                assert outcome.error_type, "dead-lettered without a reason"
                if not looks_like_sns_envelope(body):
                    with pytest.raises(ValueError):  # only undecodable payloads may fail here
                        json.loads(body)
            entries = await drain(sqs, dlq, expect=len(failed), timeout=30)
            assert len(entries) == len(failed)
            FIGURES["dead_lettered"] += len(entries)
            for entry in entries:
                attrs = parse_sqs_attributes(entry.get("MessageAttributes"))
                record = read_failure(attrs)
                assert record is not None
                body, original = sent[record.original_message_id]
                assert entry["Body"] == body  # byte for byte
                assert restore_attributes(attrs) == parse_sqs_attributes(original)
        finally:
            await sqs.delete_queue(QueueUrl=src)
            await sqs.delete_queue(QueueUrl=dlq)

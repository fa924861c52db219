"""Start-up checks of `worker run` on LocalStack: the DLQ found through the RedrivePolicy, in as few calls as
it takes, a clear one-line error when that DLQ is gone, and every start-up read retried through throttling."""

from __future__ import annotations

import collections
import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import QueueFactory
from worker.backoff import Backoff
from worker.errors import ConfigError
from worker.service import startup
from worker.service.startup import inspect_queue
from worker.settings import Settings

pytestmark = pytest.mark.localstack


class CountingClient:
    """The real SQS client, with each call counted by operation."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        async def call(**kwargs: Any) -> Any:
            self.calls[name] += 1
            self.before(name, kwargs)
            return await method(**kwargs)

        return call

    def before(self, name: str, kwargs: dict[str, Any]) -> None:
        """Called before each call reaches the client (nothing here)."""


class ThrottlingClient(CountingClient):
    """The real SQS client, whose first ``faults`` calls of each operation on each queue fail as SQS fails
    them after botocore's own retries: throttled (400 Throttling) and unavailable (503), alternately."""

    def __init__(self, client: Any, faults: int) -> None:
        super().__init__(client)
        self.faults = faults
        self.failed: collections.Counter[str] = collections.Counter()

    def before(self, name: str, kwargs: dict[str, Any]) -> None:
        """Fail this call while its operation on its queue has failed fewer than ``faults`` times."""
        key = f"{name} {kwargs.get('QueueUrl') or kwargs.get('QueueName')}"
        if self.failed[key] < self.faults:
            self.failed[key] += 1
            status, code = (400, "Throttling") if self.failed[key] % 2 else (503, "ServiceUnavailable")
            error = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
            raise ClientError(error, name)  # type: ignore[arg-type]


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start-up retries a few milliseconds apart, given up after 2 s."""
    monkeypatch.setattr(startup, "STARTUP_BACKOFF", Backoff(base=0.01, cap=0.05))
    monkeypatch.setattr(startup, "STARTUP_RETRY_SECONDS", 2.0)


async def test_the_redrive_policys_dlq_is_found_with_one_lookup_and_not_read_again(
    sqs: Any, queues: QueueFactory
) -> None:
    """No WORKER_DLQ_URL: the source's attributes and one GetQueueUrl give the DLQ (GetQueueUrl proved it
    exists: no second read); a configured WORKER_DLQ_URL is read once to check it."""
    q = await queues()
    client = CountingClient(sqs)
    info = await inspect_queue(client, Settings(queue_url=q["url"], handler="tests.handlers:echo"))  # type: ignore[arg-type]
    assert (info.arn, info.dlq_url) == (q["arn"], q["dlq_url"])
    assert client.calls == {"get_queue_attributes": 1, "get_queue_url": 1}
    client = CountingClient(sqs)
    settings = Settings(queue_url=q["url"], dlq_url=q["dlq_url"], handler="tests.handlers:echo")
    info = await inspect_queue(client, settings)  # type: ignore[arg-type]
    assert info.dlq_url == q["dlq_url"]
    assert client.calls == {"get_queue_attributes": 2}


async def test_a_redrive_policy_naming_a_missing_dlq_stops_start_up_with_one_line(
    sqs: Any, queues: QueueFactory
) -> None:
    """The RedrivePolicy's DLQ was deleted: one line naming WORKER_DLQ_URL and the DLQ, not a traceback."""
    q = await queues()
    await sqs.delete_queue(QueueUrl=q["dlq_url"])
    dlq_name = q["dlq_url"].rsplit("/", 1)[-1]
    with pytest.raises(ConfigError) as caught:
        await inspect_queue(sqs, Settings(queue_url=q["url"], handler="tests.handlers:echo"))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        f"WORKER_DLQ_URL is not set and the RedrivePolicy's dead-letter queue {dlq_name} cannot be read ("
    ), message


@pytest.mark.usefixtures("fast_retries")
async def test_every_start_up_read_is_retried_through_throttling_and_5xx(
    sqs: Any, queues: QueueFactory
) -> None:
    """Each start-up read (the source's attributes, the RedrivePolicy's DLQ lookup, the configured DLQ's
    check) fails twice, throttled then 503, and start-up succeeds: a busy SQS is no configuration error."""
    q = await queues()
    client = ThrottlingClient(sqs, faults=2)
    info = await inspect_queue(client, Settings(queue_url=q["url"], handler="tests.handlers:echo"))  # type: ignore[arg-type]
    assert (info.arn, info.dlq_url) == (q["arn"], q["dlq_url"])
    dlq_name = q["dlq_url"].rsplit("/", 1)[-1]
    assert client.failed == {f"get_queue_attributes {q['url']}": 2, f"get_queue_url {dlq_name}": 2}
    assert client.calls == {"get_queue_attributes": 3, "get_queue_url": 3}
    client = ThrottlingClient(sqs, faults=2)
    settings = Settings(queue_url=q["url"], dlq_url=q["dlq_url"], handler="tests.handlers:echo")
    assert (await inspect_queue(client, settings)).dlq_url == q["dlq_url"]  # type: ignore[arg-type]
    assert client.failed == {f"get_queue_attributes {q['url']}": 2, f"get_queue_attributes {q['dlq_url']}": 2}
    assert client.calls == {"get_queue_attributes": 6}


@pytest.mark.usefixtures("fast_retries")
async def test_a_dlq_throttled_past_the_deadline_stops_start_up_with_one_line_naming_it(
    sqs: Any, queues: QueueFactory
) -> None:
    """A configured DLQ that stays throttled past the start-up deadline: one line naming WORKER_DLQ_URL."""
    q = await queues()

    class DlqThrottled(ThrottlingClient):
        def before(self, name: str, kwargs: dict[str, Any]) -> None:
            if kwargs.get("QueueUrl") == q["dlq_url"]:
                super().before(name, kwargs)

    client = DlqThrottled(sqs, faults=10**6)
    settings = Settings(queue_url=q["url"], dlq_url=q["dlq_url"], handler="tests.handlers:echo")
    with pytest.raises(ConfigError) as caught:
        await inspect_queue(client, settings)  # type: ignore[arg-type]
    assert str(caught.value) == (
        "WORKER_DLQ_URL: cannot read the dead-letter queue (SQS endpoint unreachable for 2s)"
    )
    assert client.failed[f"get_queue_attributes {q['dlq_url']}"] >= 3  # retried, not refused at once


async def test_a_redrive_target_that_is_no_queue_arn_stops_start_up_with_one_line(
    sqs: Any, queues: QueueFactory
) -> None:
    """A RedrivePolicy whose target is no SQS queue ARN: one line, not a ValueError traceback."""
    q = await queues()
    target = q["arn"].replace(":sqs:", ":sns:")

    class SnsTarget(CountingClient):
        async def get_queue_attributes(self, **kwargs: Any) -> Any:
            response = await self.client.get_queue_attributes(**kwargs)
            policy = {"deadLetterTargetArn": target, "maxReceiveCount": 10}
            return {**response, "Attributes": {**response["Attributes"], "RedrivePolicy": json.dumps(policy)}}

    with pytest.raises(ConfigError) as caught:
        await inspect_queue(SnsTarget(sqs), Settings(queue_url=q["url"], handler="tests.handlers:echo"))  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("WORKER_DLQ_URL is not set and the RedrivePolicy's dead-letter queue "), message
    assert "not an SQS queue ARN" in message, message

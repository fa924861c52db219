"""Start-up checks of `worker run` on LocalStack: the DLQ found through the RedrivePolicy, in as few calls as
it takes, and a clear one-line error when that DLQ is gone."""

from __future__ import annotations

import collections
from typing import Any

import pytest

from tests.conftest import QueueFactory
from worker.errors import ConfigError
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
            return await method(**kwargs)

        return call


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

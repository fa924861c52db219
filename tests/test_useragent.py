"""The cached User-Agent: byte for byte what botocore sends, built once per feature set, on LocalStack."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiobotocore.session import get_session
from botocore.useragent import UserAgentString

from worker.aws.client import client_config, create_client
from worker.aws.useragent import cache_user_agent


@asynccontextmanager
async def _stock_client() -> AsyncIterator[Any]:
    async with get_session().create_client("sqs", config=client_config()) as client:
        yield client


def _record_user_agents(client: Any) -> list[tuple[str, str]]:
    sent: list[tuple[str, str]] = []

    def before_send(request: Any, **_: Any) -> None:
        sent.append((request.url, request.headers["User-Agent"].decode()))

    client.meta.events.register("before-send.sqs", before_send)
    return sent


async def _calls(client: Any, url: str) -> None:
    await client.send_message(QueueUrl=url, MessageBody="a")
    received = await client.receive_message(
        QueueUrl=url, WaitTimeSeconds=1, MessageSystemAttributeNames=["All"]
    )
    entries = [{"Id": "0", "ReceiptHandle": m["ReceiptHandle"]} for m in received.get("Messages", [])]
    await client.delete_message_batch(QueueUrl=url, Entries=entries)
    async for _ in client.get_paginator("list_queues").paginate(MaxResults=5):  # adds a "paginator" feature
        pass


@pytest.mark.localstack
async def test_cached_user_agent_equals_botocores_for_every_call(
    queues: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each request carries the header stock botocore sends, and the string is built once per feature set."""
    q = await queues()
    builds = {"count": 0}
    original = UserAgentString.to_string

    def counting(self: UserAgentString) -> str:
        builds["count"] += 1
        return original(self)

    monkeypatch.setattr(UserAgentString, "to_string", counting)
    async with _stock_client() as stock:
        stock_sent = _record_user_agents(stock)
        await _calls(stock, q["url"])
    stock_builds, builds["count"] = builds["count"], 0
    async with create_client("sqs", client_config()) as cached:
        cached_sent = _record_user_agents(cached)
        await _calls(cached, q["url"])
        await _calls(cached, q["url"])
    assert len(stock_sent) >= 4
    assert cached_sent[: len(stock_sent)] == stock_sent
    assert cached_sent[len(stock_sent) :] == stock_sent
    assert stock_builds >= 2 * len(stock_sent)  # botocore: twice per request
    assert builds["count"] <= len({ua for _, ua in cached_sent}) + 1  # cached: once per distinct string


def test_an_unrecognised_client_is_left_alone() -> None:
    """Without botocore's internals in place the client is not touched and the caller is told so."""

    class Bare:
        pass

    client = Bare()
    assert cache_user_agent(client) is False
    assert vars(client) == {}

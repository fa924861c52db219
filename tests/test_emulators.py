"""The two-emulator harness: moto on loopback, fixtures that follow ``emulator``, no endpoint leaks."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.conftest import QueueFactory, assert_loopback, on_emulators, start_or_skip
from tests.helpers import depth, endpoint_env, running_worker, send, wait_for
from tests.motoserver import MotoServer


@pytest.mark.localstack
@on_emulators()
async def test_fixtures_follow_the_emulator(
    emulator: str, sqs_endpoint: str, sqs: Any, queues: QueueFactory, aws_env: dict[str, str]
) -> None:
    """sqs, queues, aws_env and an in-process worker all use the test's emulator; the endpoint never leaks."""
    before = os.environ.get("AWS_ENDPOINT_URL")
    q = await queues()
    assert q["endpoint"] == sqs_endpoint == aws_env["AWS_ENDPOINT_URL"]
    assert_loopback(q["url"])
    assert (await sqs.get_queue_url(QueueName=q["url"].rsplit("/", 1)[-1]))["QueueUrl"] == q["url"]
    async with running_worker(q, handler="tests.handlers:echo"):
        assert os.environ["AWS_ENDPOINT_URL"] == sqs_endpoint
        await send(sqs, q["url"], {"from": emulator})
        await wait_for(lambda: _empty(sqs, q["url"]), what="consumed on " + emulator)
    assert os.environ.get("AWS_ENDPOINT_URL") == before
    if emulator == "moto":
        assert before != sqs_endpoint, "the moto endpoint leaked into this process's environment"


async def _empty(sqs: Any, url: str) -> bool:
    return await depth(sqs, url) == 0


def test_endpoint_env_puts_back_what_was_there() -> None:
    """endpoint_env sets AWS_ENDPOINT_URL for its block only, restoring a previous value or its absence."""
    saved = os.environ.pop("AWS_ENDPOINT_URL", None)
    try:
        with endpoint_env("http://127.0.0.1:1"):
            assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1"
        assert "AWS_ENDPOINT_URL" not in os.environ
        os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:2"
        with endpoint_env("http://127.0.0.1:3"):
            assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:3"
        assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:2"
        with endpoint_env(None):
            assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:2"
    finally:
        os.environ.pop("AWS_ENDPOINT_URL", None)
        if saved is not None:
            os.environ["AWS_ENDPOINT_URL"] = saved


@pytest.mark.localstack  # an emulator server process, like LocalStack: not a unit test
def test_moto_server_is_on_loopback_and_gone_after_stop() -> None:
    """A moto server listens on 127.0.0.1 only and its process is gone once stopped."""
    server = MotoServer()
    instance = start_or_skip(server, "moto server")
    try:
        assert instance.endpoint.startswith("http://127.0.0.1:")
        assert_loopback(instance.endpoint)
        assert _alive(instance.pid)
    finally:
        server.stop()
    assert not _alive(instance.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

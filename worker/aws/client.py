"""The aiobotocore client factory, and what counts as a failed AWS call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from worker.aws.useragent import cache_user_agent


def client_config(*, read_timeout: float = 30.0, pool: int = 50, retry_mode: str = "standard") -> AioConfig:
    """Client settings: explicit retry mode, bounded timeouts, a pool sized for the pollers and batchers."""
    return AioConfig(
        retries={"mode": retry_mode, "max_attempts": 3},
        connect_timeout=5,
        read_timeout=read_timeout,
        max_pool_connections=pool,
    )


@asynccontextmanager
async def create_client(
    service: str, config: AioConfig | None = None, *, endpoint_url: str | None = None
) -> AsyncIterator[Any]:
    """An aiobotocore client; endpoint (unless given), region and credentials from the standard AWS chain."""
    session = get_session()
    kwargs: dict[str, Any] = {"config": config or client_config()}
    if endpoint_url is not None:
        kwargs["endpoint_url"] = endpoint_url
    async with session.create_client(service, **kwargs) as client:
        cache_user_agent(client)
        yield client


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore exception, or its class name."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


#: Exceptions an SQS call can raise that mean "this call failed", not "the program is broken".
CALL_ERRORS: tuple[type[BaseException], ...] = (ClientError, BotoCoreError, OSError, TimeoutError)

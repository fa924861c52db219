"""The aiobotocore client factory, and what counts as a failed AWS call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, cast, overload

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, NoRegionError

from worker.aws.useragent import cache_user_agent
from worker.errors import ConfigError

if TYPE_CHECKING:  # the client types come from types-aiobotocore, a development dependency
    from types_aiobotocore_events.client import EventBridgeClient
    from types_aiobotocore_s3.client import S3Client
    from types_aiobotocore_sns.client import SNSClient
    from types_aiobotocore_sqs.client import SQSClient
    from types_aiobotocore_sts.client import STSClient


def client_config(
    *, read_timeout: float = 30.0, pool: int = 50, retry_mode: str = "standard", validate: bool = True
) -> AioConfig:
    """Client settings: explicit retry mode, bounded timeouts, a pool sized for the pollers and batchers.

    ``validate=False`` skips botocore's client-side parameter validation (SQS checks every request anyway):
    for the consumer's client, whose requests this code builds, it is about 3 % of the CPU per message.
    """
    return AioConfig(
        retries={"mode": retry_mode, "max_attempts": 3},
        connect_timeout=5,
        read_timeout=read_timeout,
        max_pool_connections=pool,
        parameter_validation=validate,
    )


@overload
def create_client(
    service: Literal["sqs"], config: AioConfig | None = None, *, endpoint_url: str | None = None
) -> AbstractAsyncContextManager[SQSClient]: ...
@overload
def create_client(
    service: Literal["sns"], config: AioConfig | None = None, *, endpoint_url: str | None = None
) -> AbstractAsyncContextManager[SNSClient]: ...
@overload
def create_client(
    service: Literal["s3"], config: AioConfig | None = None, *, endpoint_url: str | None = None
) -> AbstractAsyncContextManager[S3Client]: ...
@overload
def create_client(
    service: Literal["events"], config: AioConfig | None = None, *, endpoint_url: str | None = None
) -> AbstractAsyncContextManager[EventBridgeClient]: ...
@overload
def create_client(
    service: Literal["sts"], config: AioConfig | None = None, *, endpoint_url: str | None = None
) -> AbstractAsyncContextManager[STSClient]: ...
@overload
def create_client(
    service: str, config: AioConfig | None = None, *, endpoint_url: str | None = None
) -> AbstractAsyncContextManager[Any]: ...
@asynccontextmanager
async def create_client(
    service: str, config: AioConfig | None = None, *, endpoint_url: str | None = None
) -> AsyncIterator[Any]:
    """An aiobotocore client; endpoint (unless given), region and credentials from the standard AWS chain."""
    session = get_session()
    kwargs: dict[str, Any] = {"config": config or client_config()}
    if endpoint_url is not None:
        kwargs["endpoint_url"] = endpoint_url
    async with AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(session.create_client(cast(Any, service), **kwargs))
        except NoRegionError:
            raise ConfigError(
                "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, or region in the AWS config profile)"
            ) from None
        cache_user_agent(client)
        yield client


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore exception, or its class name."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


#: Exceptions an SQS call can raise that mean "this call failed", not "the program is broken".
CALL_ERRORS: tuple[type[BaseException], ...] = (ClientError, BotoCoreError, OSError, TimeoutError)

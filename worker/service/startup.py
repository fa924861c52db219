"""Start-up checks of `worker run`: read the source queue, find and check the DLQ, warn about a weak net.

Before any call, the exception types of ``WORKER_PERMANENT_ERRORS`` are imported: a bad entry stops start-up.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio
from botocore.exceptions import ClientError

from worker.aws.client import CALL_ERRORS, error_code
from worker.aws.names import RedrivePolicy, queue_name
from worker.aws.queues import lookup_queue_url
from worker.backoff import Backoff
from worker.engine.failure import load_permanent_errors
from worker.errors import ConfigError
from worker.settings import Settings, env_name

if TYPE_CHECKING:
    from types_aiobotocore_sqs.client import SQSClient


log = logging.getLogger("worker.app")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """What start-up learns about the source queue."""

    arn: str
    dlq_url: str


#: Start-up keeps trying an unreachable endpoint this long before giving up (a wrong queue fails at once).
STARTUP_RETRY_SECONDS = 60.0
#: Between start-up attempts: full jitter below 0.5 s doubling, capped at 10 s.
STARTUP_BACKOFF = Backoff(base=0.5, cap=10.0)


async def _answered(call: Callable[[], Awaitable[T]], refused: Callable[[str], str]) -> T:
    """One start-up read: throttling, a 5xx or an unreachable endpoint is retried with backoff for
    STARTUP_RETRY_SECONDS; any other error (wrong queue, denied access, a malformed ARN) is a ConfigError
    saying ``refused(reason)``.
    """
    with anyio.move_on_after(STARTUP_RETRY_SECONDS):
        for retry in itertools.count(1):
            try:
                return await call()
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400)
                code = error_code(exc)
                if status < 500 and "Throttl" not in code:  # wrong queue or access: say so now
                    raise ConfigError(refused(code)) from None
                log.warning(
                    "SQS error at start-up; retrying",
                    extra={"event": "startup_unreachable", "error": code},
                )
            except CALL_ERRORS as exc:
                log.warning(
                    "SQS unreachable at start-up; retrying",
                    extra={"event": "startup_unreachable", "error": error_code(exc)},
                )
            except ValueError as exc:  # a reference that names no queue (lookup_queue_url)
                raise ConfigError(refused(str(exc))) from None
            await anyio.sleep(STARTUP_BACKOFF.delay(retry))
    raise ConfigError(refused(f"SQS endpoint unreachable for {STARTUP_RETRY_SECONDS:.0f}s"))


async def _queue_attributes(client: SQSClient, url: str, names: list[str]) -> dict[str, str]:
    """GetQueueAttributes: the attributes asked for, as strings."""
    response = await client.get_queue_attributes(QueueUrl=url, AttributeNames=cast(Any, names))
    return {str(name): value for name, value in response["Attributes"].items()}


def _warn_retention(settings: Settings, retention: str | None) -> None:
    """Warn when SQS would delete messages before WORKER_MAX_MESSAGE_AGE_SECONDS could dead-letter them."""
    cap = settings.max_message_age_seconds
    if cap is None or retention is None or not retention.isdigit() or int(retention) > cap:
        return
    log.warning(
        f"the queue's MessageRetentionPeriod ({retention} s) is not above "
        f"{env_name('max_message_age_seconds')} ({cap:g} s): SQS may delete failing messages before the age "
        "cap dead-letters them",
        extra={"event": "retention_below_max_age"},
    )


async def inspect_queue(client: SQSClient, settings: Settings) -> QueueInfo:
    """Check WORKER_PERMANENT_ERRORS; read the source queue's ARN and RedrivePolicy; resolve the DLQ; warn."""
    load_permanent_errors(settings.permanent_errors, env_name("permanent_errors"))
    attrs = await _answered(
        lambda: _queue_attributes(client, settings.queue_url, ["All"]),
        lambda code: f"{env_name('queue_url')}: cannot read the queue ({code})",
    )
    _warn_retention(settings, attrs.get("MessageRetentionPeriod"))
    policy = RedrivePolicy.parse(attrs.get("RedrivePolicy"))
    max_receive = policy.max_receive_count if policy else None
    dlq_url = settings.dlq_url
    found = False  # True once GetQueueUrl answered for the DLQ: it exists, no second read needed
    if dlq_url is None and policy is not None and policy.dead_letter_target_arn:
        target = policy.dead_letter_target_arn
        dlq_url = await _answered(
            lambda: lookup_queue_url(client, target),
            lambda code: (
                f"{env_name('dlq_url')} is not set and the RedrivePolicy's dead-letter queue "
                f"{queue_name(target)} cannot be read ({code})"
            ),
        )
        found = True
        log.info(
            "using the RedrivePolicy's dead-letter queue",
            extra={"event": "dlq_from_redrive", "dlq": queue_name(dlq_url)},
        )
    if dlq_url is None:
        raise ConfigError(
            f"{env_name('dlq_url')} is not set and the queue has no RedrivePolicy: "
            "failed messages would have nowhere to go"
        )
    if max_receive is None:
        log.warning(
            "source queue has no RedrivePolicy: nothing catches messages if the worker dies mid-failure",
            extra={"event": "no_redrive_policy"},
        )
    elif max_receive <= settings.max_attempts:
        log.warning(
            f"RedrivePolicy maxReceiveCount ({max_receive}) is not above {env_name('max_attempts')} "
            f"({settings.max_attempts}): the broker may dead-letter messages before the worker does",
            extra={"event": "redrive_policy_too_low"},
        )
    if not found:
        checked = dlq_url
        await _answered(
            lambda: _queue_attributes(client, checked, ["QueueArn"]),
            lambda code: f"{env_name('dlq_url')}: cannot read the dead-letter queue ({code})",
        )
    return QueueInfo(arn=str(attrs["QueueArn"]), dlq_url=dlq_url)

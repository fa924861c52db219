"""Settings and queue look-ups shared by ``worker redrive`` and ``worker dlq``.

These commands need the queues, not a handler: ``ToolSettings`` reads only the ``WORKER_*`` names they use
(``WORKER_QUEUE_URL``, ``WORKER_DLQ_URL``, the HTTP and log settings), with the *same* field definitions and
validators as ``Settings`` (copied from it, so the rules cannot drift), and leaves ``Settings`` as strict as
``worker run`` needs it.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from pydantic import ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from worker import settings as worker_settings
from worker.aws.client import CALL_ERRORS, error_code
from worker.aws.names import queue_name
from worker.aws.queues import lookup_queue_url
from worker.errors import ConfigError, WorkerError
from worker.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_sqs.client import SQSClient


class ToolError(WorkerError):
    """A refusal or failure of ``worker dlq`` / ``worker redrive`` reported in one line (exit 2)."""


def _same(name: str) -> Any:
    """The field definition ``Settings`` uses for ``name`` (default, bounds, description)."""
    info: FieldInfo = Settings.model_fields[name]
    return copy.copy(info)


class ToolSettings(BaseSettings):
    """The ``WORKER_*`` settings of ``worker redrive`` and ``worker dlq`` (names, rules as ``worker run``)."""

    model_config = Settings.model_config

    queue_url: str | None = None
    dlq_url: str | None = _same("dlq_url")
    http_host: str = _same("http_host")
    http_port: int = _same("http_port")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _same("log_level")
    log_format: Literal["json", "text"] = _same("log_format")

    @field_validator("queue_url", "dlq_url")
    @classmethod
    def _queue_url(cls, value: str | None) -> str | None:
        return Settings._queue_url(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return Settings._upper(value)


def load_tool_settings() -> ToolSettings:
    """Read ToolSettings from the environment; ConfigError with one line naming the variable."""
    try:
        return ToolSettings()
    except ValidationError as exc:
        raise ConfigError(worker_settings._describe(exc)) from None


def is_loopback(endpoint: str | None) -> bool:
    """True for an endpoint on this machine (LocalStack); False for AWS or anything remote."""
    host = urlparse(endpoint or "").hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class QueueRef:
    """A queue that answered GetQueueAttributes."""

    url: str
    arn: str
    attributes: dict[str, str]

    @property
    def name(self) -> str:
        """The queue name."""
        return queue_name(self.url)

    @property
    def fifo(self) -> bool:
        """True for a FIFO queue."""
        return self.url.endswith(".fifo")

    @property
    def redrive_policy(self) -> dict[str, Any] | None:
        """The queue's own RedrivePolicy, parsed."""
        raw = self.attributes.get("RedrivePolicy")
        try:
            policy = json.loads(raw) if raw else None
        except ValueError:
            return None
        return policy if isinstance(policy, dict) else None

    def count(self, name: str) -> int:
        """An ``ApproximateNumberOf...`` attribute as an int."""
        try:
            return int(self.attributes.get(name, "0"))
        except ValueError:
            return 0


async def open_queue(client: SQSClient, url: str, what: str) -> QueueRef:
    """GetQueueAttributes(All) of ``url``; a missing queue or an unreachable endpoint is a ConfigError."""
    try:
        response = await client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
    except CALL_ERRORS as exc:
        endpoint = getattr(getattr(client, "meta", None), "endpoint_url", "?")
        raise ConfigError(f"{what}: cannot read the queue {url} at {endpoint} ({error_code(exc)})") from None
    attributes = {str(k): str(v) for k, v in response.get("Attributes", {}).items()}
    return QueueRef(url=url, arn=attributes.get("QueueArn", ""), attributes=attributes)


class QueueDirectory:
    """ARN -> URL look-ups (GetQueueUrl), cached; failures are remembered as the error code."""

    def __init__(self, client: SQSClient) -> None:
        self._client = client
        self._urls: dict[str, str | None] = {}
        self._errors: dict[str, str] = {}

    async def url_of(self, arn: str) -> tuple[str | None, str]:
        """(URL, "") for a queue ARN, or (None, error code)."""
        if arn not in self._urls:
            try:
                self._urls[arn] = await lookup_queue_url(self._client, arn)
            except ValueError:
                self._urls[arn], self._errors[arn] = None, "not an SQS queue ARN"
            except CALL_ERRORS as exc:
                self._urls[arn], self._errors[arn] = None, error_code(exc)
        return self._urls[arn], self._errors.get(arn, "")


async def resolve_dlq(client: SQSClient, settings: ToolSettings, flag: str | None) -> QueueRef:
    """The DLQ: ``--dlq``, else ``WORKER_DLQ_URL``, else the RedrivePolicy target of ``WORKER_QUEUE_URL``."""
    if flag:
        return await open_queue(client, flag, "--dlq")
    if settings.dlq_url:
        return await open_queue(client, settings.dlq_url, worker_settings.env_name("dlq_url"))
    if settings.queue_url:
        source = await open_queue(client, settings.queue_url, worker_settings.env_name("queue_url"))
        policy = source.redrive_policy
        if policy and isinstance(policy.get("deadLetterTargetArn"), str):
            url, error = await QueueDirectory(client).url_of(policy["deadLetterTargetArn"])
            if url is None:
                raise ConfigError(f"the RedrivePolicy target of {source.name} cannot be read ({error})")
            return await open_queue(client, url, "RedrivePolicy target")
    raise ConfigError(
        f"no dead-letter queue: pass --dlq or set {worker_settings.env_name('dlq_url')} "
        f"(or {worker_settings.env_name('queue_url')} with a RedrivePolicy)"
    )

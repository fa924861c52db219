"""One settings tree, read from ``WORKER_*`` variables once by the CLI and passed down.

AWS endpoint, region and credentials are deliberately absent: botocore reads the standard
``AWS_*`` variables and files itself, so there is exactly one way to point the worker at an account.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from worker.destinations.uri import parse_destination
from worker.errors import ConfigError
from worker.limits import (
    HANDLER_PATTERN,
    MAX_CONCURRENCY,
    SQS_MAX_RETENTION_SECONDS,
    SQS_VISIBILITY_CAP_SECONDS,
)
from worker.settings_groups import (
    BreakerSettings,
    CanarySettings,
    ExtendedPayloadSettings,
    s3_location,
    split_list,
)

ENV_PREFIX = "WORKER_"
#: SQS caps a message's visibility at 12 hours from its receive.
#: SQS long polls wait at most 20 seconds.
MAX_WAIT_SECONDS = 20
#: The long-poll wait when WAIT_TIME_SECONDS is unset and the drain budget allows it.
DEFAULT_WAIT_SECONDS = 10

#: A CloudWatch namespace: up to 255 of these characters (and not blank, not ``AWS/...``).
EMF_NAMESPACE = re.compile(r"^[0-9A-Za-z._/#: -]{1,255}$")

DestinationList = Annotated[list[str], NoDecode]
TypePathList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Every knob of ``worker run``; names are the public contract (``WORKER_`` + upper-case field)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
        case_sensitive=False,
    )

    queue_url: str = Field(description="URL of the SQS queue to consume (one queue per process).")
    handler: str = Field(description="The handler to call, as `pkg.module:callable`.")
    dlq_url: str | None = Field(
        default=None,
        description="Where failed messages go; unset: the queue's RedrivePolicy target, else start-up fails.",
    )
    handler_version: str = Field(
        default="unknown", description="The `handler_version` metric label and records' `executedVersion`."
    )
    concurrency: int = Field(
        default=50,
        ge=1,
        le=MAX_CONCURRENCY,
        description="Messages in flight at most (independent of the receive batch size of 10).",
    )
    max_abandoned_threads: int | None = Field(
        default=None,
        ge=0,
        le=MAX_CONCURRENCY,
        description=(
            "Threads of timed-out plain `def` handlers still running (Python cannot kill them) at which "
            "the worker stops receiving (/readyz 503) until some return. Unset: WORKER_CONCURRENCY. 0: "
            "each such thread keeps a concurrency slot until it returns."
        ),
    )
    pollers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description=(
            "Concurrent receives: exactly this many long-poll loops. Unset: automatic, between 1 and "
            "ceil(WORKER_CONCURRENCY / 10) (at most 8), starting at that bound, one fewer when a receive "
            "comes back empty, one more while receives come back full with slots free."
        ),
    )
    wait_time_seconds: int = Field(
        default=DEFAULT_WAIT_SECONDS,
        ge=0,
        le=MAX_WAIT_SECONDS,
        description=(
            "Long-poll wait of each ReceiveMessage; must be below the shutdown timeout. Unset: "
            "min(10, floor(WORKER_SHUTDOWN_TIMEOUT_SECONDS / 2)), so a poll in flight at shutdown takes at "
            "most half the drain budget (0, short polling, only for a budget below 2 s)."
        ),
    )
    timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Deadline of one handler invocation (a timeout is a transient failure).",
    )
    max_attempts: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Upper bound of handler invocations per message, immediate retries included.",
    )
    immediate_retries: int = Field(
        default=1, ge=0, le=100, description="In-process retries on a message's first delivery."
    )
    middleware: TypePathList = Field(
        default_factory=list,
        description=(
            "Comma-separated middleware factories (`pkg.module:factory`), outermost first: each is called "
            "once at start-up and returns a callable taking an Invocation and returning an async context "
            "manager entered around every handler call (checked at start-up)."
        ),
    )
    max_message_age_seconds: float | None = Field(
        default=None,
        gt=0,
        le=SQS_MAX_RETENTION_SECONDS,
        description=(
            "Age cap counted from the message's first send (kept through redrives): a failed attempt "
            "past it dead-letters with `MaxAgeExceeded` instead of a retry. Unset: no cap."
        ),
    )
    permanent_errors: TypePathList = Field(
        default_factory=list,
        description=(
            "Comma-separated exception types (`pkg.module:Error`, subclasses included) dead-lettered at "
            "once as `PermanentError`; each must import and be an Exception (checked at start-up)."
        ),
    )
    backoff_base_seconds: float = Field(
        default=2.0, gt=0, description="Base of the exponential backoff of delayed retries."
    )
    backoff_max_seconds: float = Field(
        default=300.0,
        gt=0,
        le=SQS_VISIBILITY_CAP_SECONDS,
        description="Cap of one backoff delay (messages waiting for a retry count as in flight).",
    )
    visibility_timeout_seconds: int = Field(
        default=60,
        ge=1,
        le=SQS_VISIBILITY_CAP_SECONDS,
        description="Lease taken at receive, extended by the heartbeat whenever half of it is left.",
    )
    shutdown_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Drain budget after SIGTERM/SIGINT."
    )
    http_host: str = Field(
        default="0.0.0.0",  # noqa: S104
        description="Bind address of /metrics, /healthz and /readyz (expose inside the cluster only).",
    )
    http_port: int = Field(
        default=9102, ge=0, le=65535, description="Port of /metrics, /healthz and /readyz (0: a free port)."
    )
    on_success: DestinationList = Field(
        default_factory=list,
        description="Comma-separated destination URIs that get a record of each succeeded message.",
    )
    on_failure: DestinationList = Field(
        default_factory=list,
        description="Comma-separated destination URIs that get a record of each dead-lettered message.",
    )
    destination_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Timeout of one destination delivery attempt."
    )
    destination_attempts: int = Field(
        default=3, ge=1, le=20, description="Delivery attempts per destination and record."
    )
    extended_payloads: ExtendedPayloadSettings = Field(
        default_factory=ExtendedPayloadSettings,
        description="Payloads in S3 behind extended-client pointers (WORKER_EXTENDED_PAYLOADS__*).",
    )
    queue_metrics_interval_seconds: float = Field(
        default=15.0,
        gt=0,
        description="Period of the GetQueueAttributes calls behind the queue-depth gauges.",
    )
    metrics_emf: str = Field(
        default="off",
        description=(
            "CloudWatch Embedded Metric Format lines: `off`, `stdout` (logs stay on stderr) or an absolute "
            "file path to append to (docs/observability.md, CloudWatch (EMF))."
        ),
    )
    metrics_emf_namespace: str = Field(
        default="SqsWorker", description="CloudWatch namespace of the EMF metrics (not `AWS/...`)."
    )
    metrics_emf_interval_seconds: float = Field(
        default=60.0, gt=0, description="Period of the EMF flushes; one more runs at shutdown."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Minimum level of the log lines (case-insensitive)."
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="`json`: one JSON object per line on stderr; `text`: for humans."
    )
    log_bodies: bool = Field(
        default=False, description="Include error texts in logs (they may quote message content)."
    )
    tracing: Literal["auto", "on", "off"] = Field(
        default="auto",
        description=(
            "OpenTelemetry spans per handler call (case-insensitive): `auto` when an SDK TracerProvider is "
            "configured, `on` always (no SDK: the producer's trace ids still reach logs, dead letters and "
            "destinations), `off` never (docs/tracing.md)."
        ),
    )
    breaker: BreakerSettings = Field(
        default_factory=BreakerSettings, description="Circuit breakers (WORKER_BREAKER__*)."
    )
    canary: CanarySettings = Field(
        default_factory=CanarySettings, description="Canary rollout of a handler version (WORKER_CANARY__*)."
    )
    color: Literal["blue", "green"] | None = Field(
        default=None,
        description=(
            "Blue/green fleets: this worker's colour (case-insensitive). Only the active colour, named by "
            "WORKER_COLOR_STATE, polls; the other stays up and ready in standby. Unset: always active."
        ),
    )
    color_state: str | None = Field(
        default=None,
        description=(
            "The shared flag naming the active colour, `s3://bucket/key` (absent object: `blue`). "
            "Required with WORKER_COLOR."
        ),
    )

    @field_validator("handler")
    @classmethod
    def _handler_path(cls, value: str) -> str:
        if not HANDLER_PATTERN.fullmatch(value):
            raise ValueError(f"must look like pkg.module:callable, got {value!r}")
        return value

    @field_validator("queue_url", "dlq_url")
    @classmethod
    def _queue_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/]+/.+", value):
            raise ValueError(f"must be an SQS queue URL (https://host/account/name), got {value!r}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("tracing", mode="before")
    @classmethod
    def _tracing_lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("color", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("color_state")
    @classmethod
    def _color_flag(cls, value: str | None) -> str | None:
        if value is not None:
            s3_location(value, key_required=True)
        return value

    @field_validator("on_success", "on_failure", mode="before")
    @classmethod
    def _uris(cls, value: object) -> object:
        return split_list(value)

    @field_validator("permanent_errors", "middleware", mode="before")
    @classmethod
    def _type_paths(cls, value: object) -> object:
        return split_list(value)

    @field_validator("permanent_errors", "middleware")
    @classmethod
    def _valid_type_paths(cls, value: list[str], info: ValidationInfo) -> list[str]:
        what = "ExceptionType" if info.field_name == "permanent_errors" else "factory"
        for path in value:  # the imports themselves are checked at start-up (worker run)
            if not HANDLER_PATTERN.fullmatch(path):
                raise ValueError(f"entry {path!r} must look like pkg.module:{what}")
        return value

    @field_validator("metrics_emf")
    @classmethod
    def _emf_target(cls, value: str) -> str:
        target = value.strip()
        if target.lower() in ("off", "stdout"):
            return target.lower()
        if not target.startswith("/"):
            raise ValueError(f"must be off, stdout or an absolute file path, got {value!r}")
        return target

    @field_validator("metrics_emf_namespace")
    @classmethod
    def _emf_namespace(cls, value: str) -> str:
        # CloudWatch's rule, as worker.telemetry.emf.check_namespace has it (settings import no telemetry).
        if not EMF_NAMESPACE.fullmatch(value) or not value.strip() or value.startswith("AWS/"):
            raise ValueError(
                f"must be 1-255 letters, digits, spaces or . - _ / # : and not start with AWS/, got {value!r}"
            )
        return value

    @field_validator("on_success", "on_failure")
    @classmethod
    def _valid_destinations(cls, value: list[str]) -> list[str]:
        for uri in value:
            parse_destination(uri)
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if "wait_time_seconds" not in self.model_fields_set:
            # Derived, not refused: only a wait the user set explicitly can conflict with the drain budget.
            # Written once, while validating, before anyone holds the (frozen) object.
            object.__setattr__(self, "wait_time_seconds", derived_wait_seconds(self.shutdown_timeout_seconds))
        if self.backoff_base_seconds > self.backoff_max_seconds:
            raise ConfigError(
                f"{ENV_PREFIX}BACKOFF_BASE_SECONDS ({self.backoff_base_seconds}) is above "
                f"{ENV_PREFIX}BACKOFF_MAX_SECONDS ({self.backoff_max_seconds})"
            )
        if self.wait_time_seconds >= self.shutdown_timeout_seconds:
            raise ConfigError(
                f"{ENV_PREFIX}WAIT_TIME_SECONDS ({self.wait_time_seconds}) must be below "
                f"{ENV_PREFIX}SHUTDOWN_TIMEOUT_SECONDS ({self.shutdown_timeout_seconds}): "
                "a long poll in flight at shutdown must return within the drain budget"
            )
        if self.dlq_url is not None and self.dlq_url == self.queue_url:
            raise ConfigError(f"{ENV_PREFIX}DLQ_URL must differ from {ENV_PREFIX}QUEUE_URL")
        if self.queue_url.endswith(".fifo") != (self.dlq_url or ".fifo").endswith(".fifo") and self.dlq_url:
            raise ConfigError(
                f"{ENV_PREFIX}DLQ_URL must be a FIFO queue exactly when {ENV_PREFIX}QUEUE_URL is one"
            )
        self._coherent_rollouts()
        return self

    def _coherent_rollouts(self) -> None:
        """WORKER_CANARY__* complete and apart from the baseline; WORKER_COLOR with its flag."""
        problem = self.canary.problem()
        if problem is not None:
            raise ConfigError(problem)
        if self.canary.enabled and self.canary.version == self.handler_version:
            raise ConfigError(
                f"{ENV_PREFIX}CANARY__VERSION ({self.canary.version}) must differ from "
                f"{ENV_PREFIX}HANDLER_VERSION (the baseline's version)"
            )
        for uri in self.canary.on_rollback:
            try:
                parse_destination(uri)
            except ValueError as exc:
                raise ConfigError(f"{ENV_PREFIX}CANARY__ON_ROLLBACK: {exc}") from None
        if self.color is not None and self.color_state is None:
            raise ConfigError(
                f"{ENV_PREFIX}COLOR_STATE (s3://bucket/key) is required when {ENV_PREFIX}COLOR is set"
            )

    @property
    def is_fifo(self) -> bool:
        """True when the source queue is a FIFO queue."""
        return self.queue_url.endswith(".fifo")

    @property
    def abandoned_threads_limit(self) -> int:
        """WORKER_MAX_ABANDONED_THREADS, or the concurrency when unset."""
        return self.concurrency if self.max_abandoned_threads is None else self.max_abandoned_threads


def derived_wait_seconds(shutdown_timeout_seconds: float) -> int:
    """WAIT_TIME_SECONDS when unset: min(10, floor(budget / 2)); 0 (short polls) only below a 2 s budget."""
    if shutdown_timeout_seconds >= 2 * DEFAULT_WAIT_SECONDS:  # also an infinite budget (floor would raise)
        return DEFAULT_WAIT_SECONDS
    return math.floor(shutdown_timeout_seconds / 2)


def env_name(field: str) -> str:
    """The environment variable that sets a settings field."""
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment; raise ConfigError with one line naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except SettingsError as exc:  # a nested model's variable (WORKER_BREAKER) that is not a JSON object
        field = re.search(r'field "(\w+)"', str(exc))
        name = env_name(field.group(1)) if field else f"a {ENV_PREFIX}* variable"
        raise ConfigError(
            f"{name}: not a JSON object (or set its fields one by one: {name}__FIELD)"
        ) from None


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = [str(part) for part in error.get("loc", ()) if str(part)]
    message = str(error.get("msg", "invalid value"))
    ctx = error.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, ConfigError | ValueError) and str(inner):
        message = str(inner)
    message = message.removeprefix("Value error, ")
    if not loc:
        return message
    name = env_name("__".join(loc))  # a nested model's field: WORKER_BREAKER__MIN_CALLS
    if error.get("type") == "missing":
        return f"{name} is required but not set"
    if error.get("type") == "extra_forbidden":  # only nested models forbid extras: WORKER_BREAKER__TYPO
        message = "not a setting"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{name}: {message}{more}"

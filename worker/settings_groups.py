"""The nested groups of the settings tree: ``WORKER_BREAKER__*`` and ``WORKER_EXTENDED_PAYLOADS__*``."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_settings import NoDecode

from worker.engine.breaker import BreakerConfig
from worker.engine.payload_pointer import bucket_problem
from worker.limits import HANDLER_PATTERN, MAX_CONCURRENCY, SQS_MAX_RETENTION_SECONDS

#: The longest open period of a circuit breaker (12 h, SQS's visibility cap).
MAX_OPEN_SECONDS = 43_200

BucketList = Annotated[list[str], NoDecode]


def split_list(value: object) -> object:
    """A comma-separated variable as a list of its non-blank, stripped parts (lists pass through)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class BreakerSettings(BaseModel):
    """The circuit breakers of ``worker run`` (``WORKER_BREAKER__*``), one per dependency of the queue."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        default=True,
        description=(
            "Circuit breakers per dependency: while one is open the worker stops running (and receiving) "
            "what it covers instead of burning attempts (docs/breaker.md)."
        ),
    )
    failure_ratio: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Share of failed calls in the window at which a dependency's breaker opens.",
    )
    min_calls: int = Field(
        default=20,
        ge=1,
        description="Calls the window must hold before its failure ratio can open the breaker.",
    )
    window_seconds: float = Field(
        default=30.0,
        gt=0,
        le=SQS_MAX_RETENTION_SECONDS,
        description="Length of the sliding window of calls (kept in 60 buckets of a 60th of it).",
    )
    open_seconds: float = Field(
        default=30.0,
        gt=0,
        le=MAX_OPEN_SECONDS,
        description="How long an open breaker denies calls before it lets probes through (half-open).",
    )
    half_open_calls: int = Field(
        default=3,
        ge=1,
        le=MAX_CONCURRENCY,
        description=(
            "Probes a half-open breaker lets through at once; it closes when they all succeed and re-opens "
            "when one fails."
        ),
    )
    route: str | None = Field(
        default=None,
        description=(
            "`pkg.module:callable` taking a Message and returning the names of the dependencies it uses: "
            "an open breaker then holds back only the messages that use it. Unset: any open breaker holds "
            "back the whole queue."
        ),
    )

    @field_validator("route")
    @classmethod
    def _route_path(cls, value: str | None) -> str | None:
        if value is not None and not HANDLER_PATTERN.fullmatch(value):
            raise ValueError(f"must look like pkg.module:callable, got {value!r}")
        return value

    def config(self) -> BreakerConfig:
        """The pure core's configuration (worker.engine.breaker)."""
        return BreakerConfig(
            failure_ratio=self.failure_ratio,
            min_calls=self.min_calls,
            window_seconds=self.window_seconds,
            open_seconds=self.open_seconds,
            half_open_calls=self.half_open_calls,
        )


#: WORKER_EXTENDED_PAYLOADS__MAX_BYTES: the default cap, and the largest payload the libraries write (2 GiB).
DEFAULT_PAYLOAD_MAX_BYTES = 64 * 1024 * 1024
MAX_PAYLOAD_BYTES = 2**31 - 1


class ExtendedPayloadSettings(BaseModel):
    """Payloads in S3 behind extended-client pointers: ``WORKER_EXTENDED_PAYLOADS__*``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resolve: bool = Field(
        default=True,
        description=(
            "Resolve extended-client pointers (`PayloadS3Pointer` bodies): the handler's `message.body` is "
            "the S3 object's content; the DLQ copy keeps the pointer. `false`: the handler gets the pointer."
        ),
    )
    delete_after_success: bool = Field(
        default=False,
        description=(
            "Delete a pointer's S3 object once its message succeeded and was deleted from the queue "
            "(never for a dead-lettered one). Needs RESOLVE. A duplicate delivery after it dead-letters "
            "as `PayloadMissing`: prefer a bucket lifecycle rule where duplicates happen."
        ),
    )
    bucket: str | None = Field(
        default=None,
        description=(
            "Bucket for the worker's own oversized messages: a destination record above the SQS/SNS limit "
            "and a DLQ copy with no room for its failure metadata go to S3 and the message carries a "
            "`PayloadS3Pointer`. Unset: records are cut and such DLQ copies left to the RedrivePolicy."
        ),
    )
    prefix: str | None = Field(
        default=None,
        max_length=512,
        description="Object name prefix in WORKER_EXTENDED_PAYLOADS__BUCKET (`a/b`: objects under `a/b/`).",
    )
    allowed_buckets: BucketList = Field(
        default_factory=list,
        description=(
            "Comma-separated buckets a received pointer may name; another bucket dead-letters as "
            "`PayloadNotAllowed`. Empty: any bucket the worker's role can read."
        ),
    )
    max_bytes: int = Field(
        default=DEFAULT_PAYLOAD_MAX_BYTES,
        ge=1,
        le=MAX_PAYLOAD_BYTES,
        description="Largest payload read from S3; a larger one dead-letters as `PayloadTooLarge`.",
    )

    @field_validator("allowed_buckets", mode="before")
    @classmethod
    def _buckets(cls, value: object) -> object:
        return split_list(value)

    @field_validator("allowed_buckets")
    @classmethod
    def _valid_buckets(cls, value: list[str]) -> list[str]:
        for name in value:
            problem = bucket_problem(name)
            if problem is not None:
                raise ValueError(f"entry {problem}")
        return value

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        problem = None if value is None else bucket_problem(value, writable=True)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("delete_after_success")
    @classmethod
    def _deletes_what_it_resolved(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("resolve") is False:
            raise ValueError(
                "needs WORKER_EXTENDED_PAYLOADS__RESOLVE=true (only resolved payloads are deleted)"
            )
        return value

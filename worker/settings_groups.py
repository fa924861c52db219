"""The nested groups of the settings tree (``WORKER_<GROUP>__*``): breakers, extended payloads, canary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_settings import NoDecode

from worker.engine.breaker import BreakerConfig
from worker.engine.payload_pointer import bucket_problem, key_problem
from worker.engine.rollout_plan import Step, codedeploy_steps, parse_steps, plan
from worker.limits import HANDLER_PATTERN, MAX_CONCURRENCY, SQS_MAX_RETENTION_SECONDS

if TYPE_CHECKING:
    from worker.engine.rollout_gates import Gates

#: The longest open period of a circuit breaker (12 h, SQS's visibility cap).
MAX_OPEN_SECONDS = 43_200

BucketList = Annotated[list[str], NoDecode]
UriList = Annotated[list[str], NoDecode]


def split_list(value: object) -> object:
    """A comma-separated variable as a list of its non-blank, stripped parts (lists pass through)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def s3_location(uri: str, *, key_required: bool = False) -> tuple[str, str]:
    """``s3://bucket/prefix`` (or ``s3://bucket/key``) as the bucket and the path without outer slashes.

    Raise ValueError naming what is wrong: not ``s3://``, a bucket the worker could not write to, an empty
    path segment, a key S3 refuses, or no key when ``key_required``.
    """
    form = "s3://bucket/key" if key_required else "s3://bucket/prefix"
    if not uri.startswith("s3://"):
        raise ValueError(f"must be {form}, got {uri!r}")
    bucket, _, rest = uri.removeprefix("s3://").partition("/")
    problem = bucket_problem(bucket, writable=True)
    if problem is not None:
        raise ValueError(f"the bucket {problem}")
    path = rest.strip("/")
    if "//" in path:
        raise ValueError(f"the path has an empty segment, got {uri!r}")
    if key_required and not path:
        raise ValueError(f"must be {form} (an object key after the bucket), got {uri!r}")
    problem = key_problem(path) if path else None
    if problem is not None:
        raise ValueError(problem)
    return bucket, path


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


#: WORKER_CANARY__EVALUATION_INTERVAL_SECONDS at most (the gates are judged at least hourly).
MAX_EVALUATION_INTERVAL_SECONDS = 3600
#: WORKER_CANARY__MIN_SAMPLES at most.
MAX_MIN_SAMPLES = 1_000_000


class CanarySettings(BaseModel):
    """A canary rollout of a second handler version, fleet-wide (``WORKER_CANARY__*``).

    Enabled exactly when ``handler`` is set; then ``version``, ``state`` and exactly one of ``config`` and
    ``steps`` are required (``problem``, checked by the settings tree with WORKER_HANDLER_VERSION).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    handler: str | None = Field(
        default=None,
        description=(
            "The candidate handler, `pkg.module:callable`: set, it gets a share of the messages (chosen by "
            "a hash of the original message id) that the rollout widens step by step. Unset: no canary."
        ),
    )
    version: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description=(
            "The candidate's `handler_version` label and records' `executedVersion`; must differ from "
            "WORKER_HANDLER_VERSION (the baseline's). Required with WORKER_CANARY__HANDLER."
        ),
    )
    config: str | None = Field(
        default=None,
        description=(
            "A CodeDeploy traffic-shifting configuration: `Canary10Percent5Minutes`, `...10Minutes`, "
            "`...15Minutes`, `...30Minutes`, `Linear10PercentEvery1Minute`, `...Every2Minutes`, "
            "`...Every3Minutes`, `...Every10Minutes` or `AllAtOnce`. Exactly one of CONFIG and STEPS."
        ),
    )
    steps: str | None = Field(
        default=None,
        description=(
            "Custom steps, `percent:bake-seconds` pairs (`10:300,50:300`): percents 1-99 increasing, at most "
            "20 steps, 100 % implied after the last. Exactly one of CONFIG and STEPS."
        ),
    )
    max_error_ratio: float | None = Field(
        default=0.1,
        ge=0,
        le=1,
        description=(
            "Rollback when the candidate's failure ratio (any non-success outcome) since the rollout "
            "started is above this. `off`: gate off."
        ),
    )
    max_error_ratio_vs_baseline: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Rollback when the candidate's failure ratio is above this multiple of the baseline's (counted "
            "as at least 1 / MIN_SAMPLES, so a baseline without failures is no hair trigger). Unset or "
            "`off`: gate off."
        ),
    )
    max_p99_ratio: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Rollback when the candidate's p99 handler duration is above this multiple of the baseline's "
            "(judged once both have MIN_SAMPLES calls). Unset or `off`: gate off."
        ),
    )
    min_samples: int = Field(
        default=20,
        ge=1,
        le=MAX_MIN_SAMPLES,
        description="Candidate calls, fleet-wide, before any gate is judged or any step widened.",
    )
    evaluation_interval_seconds: float = Field(
        default=10.0,
        gt=0,
        le=MAX_EVALUATION_INTERVAL_SECONDS,
        description="Period of the fleet-wide evaluation of the gates and the bake (and of the state reads).",
    )
    state: str | None = Field(
        default=None,
        description=(
            "Where the fleet shares the rollout, `s3://bucket/prefix`: an append-only log of events and "
            "each replica's counts. Required with WORKER_CANARY__HANDLER."
        ),
    )
    on_rollback: UriList = Field(
        default_factory=list,
        description=(
            "Comma-separated destination URIs (WORKER_ON_FAILURE's syntax) that get the rollback record. "
            "Empty: the WORKER_ON_FAILURE destinations."
        ),
    )

    @field_validator("handler")
    @classmethod
    def _handler_path(cls, value: str | None) -> str | None:
        if value is not None and not HANDLER_PATTERN.fullmatch(value):
            raise ValueError(f"must look like pkg.module:callable, got {value!r}")
        return value

    @field_validator("max_error_ratio", "max_error_ratio_vs_baseline", "max_p99_ratio", mode="before")
    @classmethod
    def _gate_off(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("off", "none", ""):
            return None
        return value

    @field_validator("config")
    @classmethod
    def _known_config(cls, value: str | None) -> str | None:
        if value is not None:
            codedeploy_steps(value)
        return value

    @field_validator("steps")
    @classmethod
    def _valid_steps(cls, value: str | None) -> str | None:
        if value is not None:
            parse_steps(value)
        return value

    @field_validator("state")
    @classmethod
    def _state_location(cls, value: str | None) -> str | None:
        if value is not None:
            s3_location(value)
        return value

    @field_validator("on_rollback", mode="before")
    @classmethod
    def _uris(cls, value: object) -> object:
        return split_list(value)

    @property
    def enabled(self) -> bool:
        """True when WORKER_CANARY__HANDLER is set."""
        return self.handler is not None

    def problem(self) -> str | None:
        """Why this group cannot run as set (one line naming the variable), or None."""
        if self.config is not None and self.steps is not None:
            return "set only one of WORKER_CANARY__CONFIG and WORKER_CANARY__STEPS"
        if not self.enabled:
            return None
        if self.version is None:
            return "WORKER_CANARY__VERSION is required when WORKER_CANARY__HANDLER is set"
        if self.state is None:
            return "WORKER_CANARY__STATE (s3://bucket/prefix) is required when WORKER_CANARY__HANDLER is set"
        if self.config is None and self.steps is None:
            return (
                "WORKER_CANARY__CONFIG or WORKER_CANARY__STEPS is required when WORKER_CANARY__HANDLER is set"
            )
        return None

    def plan(self) -> tuple[Step, ...]:
        """The rollout's steps (ValueError when neither or both of CONFIG and STEPS are set)."""
        return plan(self.config, self.steps)

    def gates(self) -> Gates:
        """The pure core's gates (worker.engine.rollout_gates, imported only by a canary rollout)."""
        from worker.engine.rollout_gates import Gates

        return Gates(
            max_error_ratio=self.max_error_ratio,
            max_error_ratio_vs_baseline=self.max_error_ratio_vs_baseline,
            max_p99_ratio=self.max_p99_ratio,
            min_samples=self.min_samples,
        )

    def state_location(self) -> tuple[str, str] | None:
        """WORKER_CANARY__STATE as (bucket, prefix), None when unset."""
        return None if self.state is None else s3_location(self.state)

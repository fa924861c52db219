"""The canary rollout's shared store in S3 (``WORKER_CANARY__STATE``): the append-only event log, the counts.

Layout under ``s3://bucket/prefix/<rollout id>/``:

- ``events/<Event.key(nonce)>.json``: one object per event, written once with ``IfNoneMatch="*"`` under a
  key no other write uses (time, replica, kind, step and a random nonce), so no write can replace another
  and none is lost; ``read_events`` lists the folder (ListObjectsV2, paginated) and reads each object once
  (GetObject; objects never change, so what was read is cached).
- ``counts/<replica>.json``: each replica's cumulative counts per version since it started, overwritten
  only by that replica; ``read_counts`` merges every replica's (they are all kept: a replica that stopped
  still counted real calls, and a restarted one publishes under a new name).

Every call is bounded by a timeout; whatever goes wrong on the way (network, credentials, a missing bucket,
throttling) is one ``StoreError``, which the caller catches to keep what it last knew.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from worker.aws.client import CALL_ERRORS, client_config, create_client, error_code
from worker.engine.rollout_log import Event, Rollout, fold
from worker.engine.rollout_plan import Step, rollout_id
from worker.engine.rollout_stats import VersionStats
from worker.errors import WorkerError
from worker.settings_groups import s3_location

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

    from worker.settings import Settings

log = logging.getLogger("worker.rollout")

#: Seconds one store call (with botocore's own retries) may take before it counts as unavailable.
CALL_TIMEOUT_SECONDS = 10.0
#: Concurrent GetObject calls while reading new events.
READ_CONCURRENCY = 8
#: Keys per ListObjectsV2 page (S3's maximum).
PAGE_SIZE = 1000
#: Error codes of a GetObject meaning "no such object".
MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
#: Error codes of a conditional write that did not hold (the key exists / changed, or a concurrent one won).
CONFLICT_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
#: Error codes of a GetObject S3 gives a caller that may not list the key: "denied", or "absent" (403).
DENIED_CODES = frozenset({"AccessDenied", "403"})
#: What a replica name may hold (the pure core's rule for event keys).
_UNSAFE = re.compile(r"[^A-Za-z0-9._:@+=-]")


class StoreError(WorkerError):
    """The shared store could not be read or written: the caller keeps what it last knew, and says so."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        #: The AWS error code (or exception name) behind it, "" when there is none.
        self.code = code


class ConditionFailedError(WorkerError):
    """A conditional write did not hold: the object exists (``IfNoneMatch``) or changed (``IfMatch``)."""


def replica_name(host: str | None = None) -> str:
    """This process's name in the store: the host name and a random suffix (a restart is a new replica)."""
    base = _UNSAFE.sub("-", host if host is not None else socket.gethostname())[:100] or "replica"
    return f"{base}-{uuid.uuid4().hex[:8]}"


def safe_name(text: str) -> str:
    """``text`` with the characters an event's replica field refuses replaced (1-128 characters)."""
    return _UNSAFE.sub("-", text)[:128] or "unknown"


def join_key(*parts: str) -> str:
    """An object key from path parts, without empty segments or outer slashes."""
    return "/".join(part.strip("/") for part in parts if part.strip("/"))


@dataclass(frozen=True, slots=True)
class Stored:
    """A JSON object read back, with its ETag (for a later conditional write)."""

    data: Any
    etag: str


class S3Json:
    """JSON objects of one bucket through one client: every call bounded, every failure StoreError."""

    def __init__(self, client: S3Client, bucket: str, *, timeout: float = CALL_TIMEOUT_SECONDS) -> None:
        self.client = client
        self.bucket = bucket
        self.timeout = timeout

    def uri(self, key: str) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{key}"

    def _unavailable(self, what: str, key: str, exc: BaseException) -> StoreError:
        code = error_code(exc)
        return StoreError(f"cannot {what} {self.uri(key)} ({code})", code)

    async def put(
        self,
        key: str,
        data: Mapping[str, object],
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        """PutObject of ``data`` as JSON; returns the new ETag (ConditionFailedError: a condition failed)."""
        body = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
        conditions: dict[str, Any] = {}
        if if_none_match:
            conditions["IfNoneMatch"] = "*"
        if if_match is not None:
            conditions["IfMatch"] = if_match
        try:
            with anyio.fail_after(self.timeout):
                response = await self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType="application/json", **conditions
                )
        except CALL_ERRORS as exc:
            if conditions and error_code(exc) in CONFLICT_CODES:
                raise ConditionFailedError(f"{self.uri(key)} exists or changed ({error_code(exc)})") from None
            if if_match is not None and error_code(exc) in MISSING_CODES:
                raise ConditionFailedError(f"{self.uri(key)} no longer exists") from None
            raise self._unavailable("write", key, exc) from None
        return str(response.get("ETag", ""))

    async def get(self, key: str) -> Stored | None:
        """GetObject, the body parsed as JSON (text that is not JSON as a str); None when there is none."""
        try:
            with anyio.fail_after(self.timeout):
                response = await self.client.get_object(Bucket=self.bucket, Key=key)
                async with response["Body"] as stream:  # closed on every path: the connection goes back
                    raw = await stream.read()
        except CALL_ERRORS as exc:
            if error_code(exc) in MISSING_CODES:
                return None
            raise self._unavailable("read", key, exc) from None
        text = raw.decode("utf-8", errors="replace")
        try:
            data: Any = json.loads(text)
        except ValueError:
            data = text
        return Stored(data, str(response.get("ETag", "")))

    async def get_many(
        self, keys: list[str], concurrency: int = READ_CONCURRENCY
    ) -> dict[str, Stored | None]:
        """GetObject of ``keys``, ``concurrency`` at a time; the first failure raised once all are done."""
        found: dict[str, Stored | None] = {}
        failures: list[StoreError] = []
        limiter = anyio.CapacityLimiter(concurrency)

        async def get(key: str) -> None:
            async with limiter:
                try:
                    found[key] = await self.get(key)
                except StoreError as exc:
                    failures.append(exc)

        async with anyio.create_task_group() as tg:
            for key in keys:
                tg.start_soon(get, key)
        if failures:
            raise failures[0]
        return found

    async def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (ListObjectsV2, all pages), in S3's order (by key)."""
        found: list[str] = []
        token: str | None = None
        try:
            with anyio.fail_after(self.timeout):
                while True:
                    extra: dict[str, Any] = {"ContinuationToken": token} if token else {}
                    page = await self.client.list_objects_v2(
                        Bucket=self.bucket, Prefix=prefix, MaxKeys=PAGE_SIZE, **extra
                    )
                    found.extend(str(item["Key"]) for item in page.get("Contents", []) if "Key" in item)
                    token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
                    if not token:
                        return found
        except CALL_ERRORS as exc:
            raise self._unavailable("list", prefix, exc) from None


@asynccontextmanager
async def open_s3_json(
    bucket: str, *, endpoint_url: str | None = None, call_timeout: float = CALL_TIMEOUT_SECONDS
) -> AsyncIterator[S3Json]:
    """An S3 client (standard AWS chain) for one bucket, closed on exit; ConfigError without a region."""
    config = client_config(read_timeout=call_timeout, pool=READ_CONCURRENCY + 2)
    async with create_client("s3", config, endpoint_url=endpoint_url) as client:
        yield S3Json(client, bucket, timeout=call_timeout)


@dataclass(frozen=True, slots=True)
class RolloutLocation:
    """Where one rollout lives: ``s3://bucket/prefix/<rollout id>/`` and the objects under it."""

    bucket: str
    prefix: str
    rollout: str

    @classmethod
    def parse(cls, uri: str, rollout: str) -> RolloutLocation:
        """From ``s3://bucket/prefix`` (ValueError naming what is wrong)."""
        bucket, prefix = s3_location(uri)
        return cls(bucket, prefix, rollout)

    @classmethod
    def for_settings(cls, settings: Settings) -> RolloutLocation:
        """The rollout ``worker run`` joins with these settings: every replica and ``worker canary`` agree.

        The id covers the candidate handler and version, the baseline's version, the steps and the queue.
        ValueError when no canary is configured.
        """
        canary = settings.canary
        location = canary.state_location()
        if canary.handler is None or canary.version is None or location is None:
            raise ValueError("no canary rollout configured (WORKER_CANARY__HANDLER, __VERSION, __STATE)")
        steps = canary.plan()
        rollout = rollout_id(
            canary.handler, canary.version, settings.handler_version, steps, scope=settings.queue_url
        )
        return cls(location[0], location[1], rollout)

    @property
    def root(self) -> str:
        """The rollout's folder, ending with a slash."""
        return join_key(self.prefix, self.rollout) + "/"

    @property
    def events(self) -> str:
        """The event log's folder, ending with a slash."""
        return f"{self.root}events/"

    @property
    def counts(self) -> str:
        """The replicas' counts folder, ending with a slash."""
        return f"{self.root}counts/"

    @property
    def uri(self) -> str:
        """``s3://bucket/prefix/<rollout id>/``."""
        return f"s3://{self.bucket}/{self.root}"

    def event_key(self, event: Event, nonce: str) -> str:
        """The object of one event."""
        return f"{self.events}{event.key(nonce)}.json"

    def counts_key(self, replica: str) -> str:
        """The object of one replica's counts."""
        return f"{self.counts}{replica}.json"


@dataclass(frozen=True, slots=True)
class ReplicaCounts:
    """One replica's published counts: per version, cumulative since the replica started."""

    replica: str
    at: float
    versions: Mapping[str, VersionStats]

    def to_dict(self) -> dict[str, object]:
        """The object's content."""
        return {
            "replica": self.replica,
            "at": self.at,
            "versions": {version: stats.to_dict() for version, stats in self.versions.items()},
        }

    @classmethod
    def from_dict(cls, data: object) -> ReplicaCounts:
        """Parse ``to_dict``'s output; ValueError on anything else."""
        fields = data if isinstance(data, dict) else {}
        replica, at, versions = fields.get("replica"), fields.get("at"), fields.get("versions")
        if (
            not (isinstance(replica, str) and replica)
            or isinstance(at, bool)
            or not isinstance(at, int | float)
        ):
            raise ValueError("not a replica's counts: replica or at missing")
        parsed: dict[str, VersionStats] = {}
        for version, stats in (versions if isinstance(versions, dict) else {"": None}).items():
            if not version or not isinstance(stats, dict):
                raise ValueError(f"the counts of version {version!r} are not an object")
            parsed[str(version)] = VersionStats.from_dict(stats)
        return cls(replica, float(at), parsed)


def merge_counts(replicas: Mapping[str, ReplicaCounts]) -> dict[str, VersionStats]:
    """Fleet-wide counts per version: the sum of every replica's."""
    merged: dict[str, VersionStats] = {}
    for counts in replicas.values():
        for version, stats in counts.versions.items():
            merged[version] = merged[version].merged(stats) if version in merged else stats
    return merged


class RolloutStore:
    """One rollout's event log and counts in S3, as one replica (or ``worker canary``) sees them."""

    def __init__(self, objects: S3Json, location: RolloutLocation) -> None:
        self.objects = objects
        self.location = location
        #: Event objects read so far (None: not an event of this log, skipped once and remembered).
        self._events: dict[str, Event | None] = {}

    async def append(self, event: Event) -> str:
        """Write ``event`` as a new object (never replacing one); returns its key. StoreError on failure."""
        if event.rollout != self.location.rollout:
            raise ValueError(f"event of rollout {event.rollout}, store of {self.location.rollout}")
        key = self.location.event_key(event, uuid.uuid4().hex)
        # ConditionFailedError: the key is this write's own (its nonce is random), so botocore retried a
        # PutObject whose first attempt had landed: the event is there.
        with contextlib.suppress(ConditionFailedError):
            await self.objects.put(key, json.loads(event.to_json()), if_none_match=True)
        self._events[key] = event
        return key

    async def read_events(self) -> tuple[Event, ...]:
        """Every event of the log: new objects are read (concurrently), known ones come from the cache."""
        keys = await self.objects.keys(self.location.events)
        read = await self.objects.get_many([key for key in keys if key not in self._events])
        for key, stored in read.items():
            if stored is not None:  # a key listed then gone (deleted by hand): looked at again next time
                self._events[key] = self._parse(key, stored.data)
        return tuple(event for key in keys if (event := self._events.get(key)) is not None)

    def _parse(self, key: str, data: object) -> Event | None:
        try:
            event = Event.from_json(json.dumps(data))
        except ValueError as exc:
            log.warning("skipping %s: not an event (%s)", self.objects.uri(key), exc)
            return None
        if event.rollout != self.location.rollout:
            log.warning("skipping %s: an event of rollout %s", self.objects.uri(key), event.rollout)
            return None
        return event

    async def rollout(self, steps: tuple[Step, ...]) -> Rollout:
        """The rollout's state: ``fold`` of every event of the log."""
        return fold(await self.read_events(), self.location.rollout, steps)

    async def publish(self, replica: str, counts: Mapping[str, VersionStats], *, now: float) -> None:
        """Overwrite ``replica``'s own counts object (cumulative counts per version since it started)."""
        if safe_name(replica) != replica:
            raise ValueError(
                f"a replica name must be 1-128 letters, digits or . _ : @ + = -, got {replica!r}"
            )
        record = ReplicaCounts(replica, now, dict(counts))
        await self.objects.put(self.location.counts_key(replica), record.to_dict())

    async def read_replica_counts(self) -> dict[str, ReplicaCounts]:
        """Every replica's published counts (objects that do not parse are skipped and logged)."""
        replicas: dict[str, ReplicaCounts] = {}
        read = await self.objects.get_many(await self.objects.keys(self.location.counts))
        for key, stored in sorted(read.items()):
            if stored is None:
                continue
            try:
                counts = ReplicaCounts.from_dict(stored.data)
            except ValueError as exc:
                log.warning("skipping %s: not a replica's counts (%s)", self.objects.uri(key), exc)
                continue
            replicas[counts.replica] = counts
        return replicas

    async def read_counts(self) -> dict[str, VersionStats]:
        """Fleet-wide counts per version, merged from every replica's."""
        return merge_counts(await self.read_replica_counts())


@asynccontextmanager
async def open_rollout_store(
    location: RolloutLocation, *, endpoint_url: str | None = None, call_timeout: float = CALL_TIMEOUT_SECONDS
) -> AsyncIterator[RolloutStore]:
    """A RolloutStore with its own S3 client (standard AWS chain), closed on exit."""
    async with open_s3_json(location.bucket, endpoint_url=endpoint_url, call_timeout=call_timeout) as objects:
        yield RolloutStore(objects, location)

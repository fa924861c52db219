"""The IAM actions a configuration needs, on the resources it names (pure: settings in, requirements out).

From the settings and what start-up learned about the source queue, ``required_permissions`` lists every
(action, resource) the worker will use, with the setting that needs it; ``permissions.py`` asks IAM's
policy simulator about them at start-up. ``simulation_principal`` says whom to simulate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from worker.aws.names import Arn, queue_arn_from_url
from worker.destinations.uri import parse_destination
from worker.settings import Settings, env_name

#: The object key simulated for ``s3:PutObject`` under a destination prefix (never written).
SIMULATED_OBJECT = "worker-permission-check.json"


@dataclass(frozen=True, slots=True)
class Requirement:
    """One IAM action on one resource, and the setting that makes the worker use it."""

    action: str
    resource: str
    setting: str
    purpose: str

    def describe(self) -> str:
        """One line: ``sqs:SendMessage on arn:... (WORKER_DLQ_URL: dead-letter failed messages)``."""
        return f"{self.action} on {self.resource} ({self.setting}: {self.purpose})"


def required_permissions(settings: Settings, *, queue_arn: str, dlq_url: str) -> list[Requirement]:
    """Every action the worker performs with this configuration, on the resources it names (no I/O).

    ``queue_arn`` is the source queue's ARN (start-up reads it), ``dlq_url`` the DLQ in use (the
    setting, or the RedrivePolicy's target).
    """
    source = queue_arn
    base = Arn.parse(source)
    dlq = queue_arn_from_url(dlq_url, source)
    queue_var, dlq_var = env_name("queue_url"), env_name("dlq_url")
    found = [
        Requirement(
            "sqs:GetQueueAttributes", source, queue_var, "read the queue's RedrivePolicy; depth metrics"
        ),
        Requirement("sqs:ReceiveMessage", source, queue_var, "receive messages"),
        Requirement("sqs:DeleteMessage", source, queue_var, "delete handled messages (DeleteMessageBatch)"),
        Requirement(
            "sqs:ChangeMessageVisibility",
            source,
            queue_var,
            "extend leases, schedule retries (ChangeMessageVisibilityBatch)",
        ),
        Requirement("sqs:SendMessage", dlq, dlq_var, "dead-letter failed messages"),
        Requirement("sqs:GetQueueAttributes", dlq, dlq_var, "check the DLQ at start-up; depth metrics"),
    ]
    if settings.dlq_url is None:
        found.append(Requirement("sqs:GetQueueUrl", dlq, queue_var, "resolve the RedrivePolicy's DLQ"))
    for field in ("on_success", "on_failure"):
        for uri in getattr(settings, field):
            found.extend(_destination(parse_destination(uri), base, source, env_name(field)))
    found.extend(_payloads(settings, base))
    found.extend(_rollouts(settings, base))
    return _unique(found)


def _rollouts(settings: Settings, base: Arn) -> list[Requirement]:
    """S3 actions of WORKER_CANARY__STATE (event log, counts) and WORKER_COLOR_STATE (flag, heartbeats)."""
    out: list[Requirement] = []
    canary = settings.canary.state_location() if settings.canary.enabled else None
    places = []
    if canary is not None:
        places.append(("WORKER_CANARY__STATE", canary[0], canary[1].strip("/"), "the canary rollout's state"))
    if settings.color is not None and settings.color_state is not None:
        bucket, _, key = settings.color_state.removeprefix("s3://").partition("/")
        places.append(("WORKER_COLOR_STATE", bucket, key.strip("/"), "the blue/green flag and heartbeats"))
    for variable, bucket, prefix, what in places:
        objects = (
            f"arn:{base.partition}:s3:::{bucket}/{prefix}*"
            if prefix
            else f"arn:{base.partition}:s3:::{bucket}/*"
        )
        out.append(Requirement("s3:GetObject", objects, variable, f"read {what}"))
        out.append(Requirement("s3:PutObject", objects, variable, f"write {what}"))
        out.append(
            Requirement("s3:ListBucket", f"arn:{base.partition}:s3:::{bucket}", variable, f"list {what}")
        )
    return out


def _payloads(settings: Settings, base: Arn) -> list[Requirement]:
    """The S3 actions of WORKER_EXTENDED_PAYLOADS__*: on the allowed buckets (only those are known)."""
    extended = settings.extended_payloads
    out: list[Requirement] = []
    if extended.resolve:
        allowed = "WORKER_EXTENDED_PAYLOADS__ALLOWED_BUCKETS"
        for bucket in extended.allowed_buckets:
            arn = f"arn:{base.partition}:s3:::{bucket}/*"
            out.append(Requirement("s3:GetObject", arn, allowed, "read extended-client payloads"))
            if extended.delete_after_success:
                out.append(Requirement("s3:DeleteObject", arn, allowed, "delete payloads after success"))
    if extended.bucket:
        key = f"{extended.prefix.strip('/')}/*" if extended.prefix else "*"
        arn = f"arn:{base.partition}:s3:::{extended.bucket}/{key}"
        out.append(
            Requirement(
                "s3:PutObject",
                arn,
                "WORKER_EXTENDED_PAYLOADS__BUCKET",
                "store oversized records and dead letters",
            )
        )
    return out


def _destination(uri: Any, base: Arn, source: str, variable: str) -> list[Requirement]:
    if uri.kind == "sqs":
        if uri.target.startswith("arn:"):
            arn = uri.target
        elif uri.target.lower().startswith(("https://", "http://")):
            arn = queue_arn_from_url(uri.target, source)
        else:
            arn = f"arn:{base.partition}:sqs:{base.region}:{base.account}:{uri.name}"
        out = [Requirement("sqs:SendMessage", arn, variable, f"deliver records to {uri.label}")]
        if not uri.target.lower().startswith(("https://", "http://")):
            out.append(Requirement("sqs:GetQueueUrl", arn, variable, f"resolve {uri.label}"))
        return out
    if uri.kind == "sns":
        return [Requirement("sns:Publish", uri.target, variable, f"deliver records to {uri.label}")]
    if uri.kind == "s3":
        key = f"{uri.prefix}/*" if uri.prefix else "*"
        arn = f"arn:{base.partition}:s3:::{uri.target}/{key}"
        return [Requirement("s3:PutObject", arn, variable, f"write records to {uri.label}")]
    if uri.kind == "events":
        arn = (
            uri.target
            if uri.target.startswith("arn:")
            else f"arn:{base.partition}:events:{base.region}:{base.account}:event-bus/{uri.target}"
        )
        return [Requirement("events:PutEvents", arn, variable, f"put records on {uri.label}")]
    return []  # python: hooks run in-process


def _unique(requirements: Iterable[Requirement]) -> list[Requirement]:
    seen: set[tuple[str, str]] = set()
    out = []
    for requirement in requirements:
        key = (requirement.action, requirement.resource)
        if key not in seen:
            seen.add(key)
            out.append(requirement)
    return out


def simulation_principal(caller_arn: str) -> tuple[str, str] | None:
    """How to simulate the caller: ("role", role name) or ("user", user ARN); None for root/federated.

    STS reports an assumed role as ``arn:aws:sts::123:assumed-role/NAME/session``; the simulator needs the
    role's own ARN, whose path only ``iam:GetRole`` knows.
    """
    arn = Arn.parse(caller_arn)
    resource = arn.resource
    if caller_arn.startswith(f"arn:{arn.partition}:sts::") and resource.startswith("assumed-role/"):
        return "role", resource.split("/")[1]
    if caller_arn.startswith(f"arn:{arn.partition}:iam::") and resource.startswith("user/"):
        return "user", caller_arn
    if caller_arn.startswith(f"arn:{arn.partition}:iam::") and resource.startswith("role/"):
        return "role", resource.rsplit("/", 1)[-1]
    return None


def simulated_resource(resource: str) -> str:
    return resource[:-1] + SIMULATED_OBJECT if resource.endswith("/*") else resource

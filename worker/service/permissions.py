"""Start-up permission check: the IAM actions a configuration needs, and the ones the role lacks.

``required_permissions`` is pure: from the settings and what start-up learned about the source queue it
lists every (action, resource) the worker will use, with the setting that needs it. ``check_permissions``
asks IAM's policy simulator (``iam:SimulatePrincipalPolicy`` on the caller's own role) about each of them;
``log_missing_permissions`` runs the check and writes one line per missing action.

Why a simulation and not a trial call: most of these actions cannot be tried without side effects
(``SendMessage`` to the DLQ, ``ReceiveMessage``), and a missing ``sqs:SendMessage`` on the DLQ would
otherwise surface only when the first poison message arrives. The simulator is advisory: it evaluates the
role's identity-based policies and permissions boundary, not queue or key policies, SCPs or session
policies, and it needs the IAM endpoint. When it cannot answer (no permission to simulate, a root or
federated caller, no route to IAM, LocalStack) the check says why in one line and start-up goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from aiobotocore.config import AioConfig

from worker.aws.client import CALL_ERRORS, create_client, error_code
from worker.aws.names import Arn, queue_arn_from_url
from worker.destinations.uri import parse_destination
from worker.settings import Settings, env_name

log = logging.getLogger("worker.permissions")

#: The whole check (identity, role lookup, simulations) gives up after this many seconds.
CHECK_TIMEOUT_SECONDS = 10.0
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


@dataclass(frozen=True, slots=True)
class PermissionReport:
    """What the check found: the requirements denied, or why it could not tell."""

    principal: str | None
    checked: int
    missing: tuple[Requirement, ...] = ()
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        """True when the simulator answered and allowed everything."""
        return self.skipped is None and not self.missing


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
    return _unique(found)


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


def _simulated_resource(resource: str) -> str:
    return resource[:-1] + SIMULATED_OBJECT if resource.endswith("/*") else resource


async def check_permissions(
    requirements: Sequence[Requirement], *, sts: Any, iam: Any, budget: float = CHECK_TIMEOUT_SECONDS
) -> PermissionReport:
    """Simulate each requirement for the caller's role; ``sts`` and ``iam`` are aiobotocore clients."""
    principal: str | None = None
    with anyio.move_on_after(budget):
        try:
            caller = str((await sts.get_caller_identity())["Arn"])
            how = simulation_principal(caller)
            if how is None:
                return PermissionReport(caller, 0, skipped=f"cannot simulate {caller} (root or federated)")
            kind, name = how
            principal = str((await iam.get_role(RoleName=name))["Role"]["Arn"]) if kind == "role" else name
            missing = await _simulate(iam, principal, requirements)
        except CALL_ERRORS as exc:
            return PermissionReport(
                principal, 0, skipped=f"IAM policy simulation unavailable ({error_code(exc)})"
            )
        return PermissionReport(principal, len(requirements), missing=tuple(missing))
    return PermissionReport(principal, 0, skipped=f"IAM did not answer within {budget:g} s")


async def _simulate(iam: Any, principal: str, requirements: Sequence[Requirement]) -> list[Requirement]:
    by_resource: dict[str, list[Requirement]] = {}
    for requirement in requirements:
        by_resource.setdefault(requirement.resource, []).append(requirement)
    missing: list[Requirement] = []
    for resource, group in by_resource.items():
        actions = {r.action: r for r in group}
        kwargs: dict[str, Any] = {
            "PolicySourceArn": principal,
            "ActionNames": list(actions),
            "ResourceArns": [_simulated_resource(resource)],
        }
        while True:
            response = await iam.simulate_principal_policy(**kwargs)
            for result in response.get("EvaluationResults", []):
                if result.get("EvalDecision") != "allowed" and result.get("EvalActionName") in actions:
                    missing.append(actions[result["EvalActionName"]])
            if not response.get("IsTruncated"):
                break
            kwargs["Marker"] = response["Marker"]
    return missing


async def log_missing_permissions(
    settings: Settings, queue_arn: str, dlq_url: str, *, budget: float = CHECK_TIMEOUT_SECONDS
) -> PermissionReport:
    """Run the check with fresh STS and IAM clients and log its report; never raises.

    Meant to run beside start-up (``services.start_soon(...)``): it delays nothing, and a check that
    cannot answer is one warning line, never a reason to stop the worker.
    """
    try:
        requirements = required_permissions(settings, queue_arn=queue_arn, dlq_url=dlq_url)
        config = AioConfig(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=3, read_timeout=5)
        async with create_client("sts", config) as sts, create_client("iam", config) as iam:
            report = await check_permissions(requirements, sts=sts, iam=iam, budget=budget)
    except Exception as exc:  # advisory: no credentials, an odd ARN... the SQS calls will speak up
        report = PermissionReport(None, 0, skipped=f"check failed ({error_code(exc)})")
    log_report(report)
    return report


def log_report(report: PermissionReport) -> None:
    """One ERROR line per missing action; one line saying the check passed or why it was skipped."""
    for requirement in report.missing:
        log.error(
            f"missing permission: {requirement.describe()}",
            extra={
                "event": "permission_missing",
                "action": requirement.action,
                "resource": requirement.resource,
                "setting": requirement.setting,
            },
        )
    if report.skipped is not None:
        log.warning(
            f"permission check skipped: {report.skipped}", extra={"event": "permission_check_skipped"}
        )
    elif not report.missing:
        log.info(
            f"permission check passed: {report.checked} actions allowed for {report.principal}",
            extra={"event": "permission_check_passed"},
        )

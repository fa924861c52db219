"""Start-up permission check: which IAM actions the configuration needs (iam.py) the role lacks.

``iam.required_permissions`` lists every (action, resource) the worker will use. ``check_permissions``
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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from aiobotocore.config import AioConfig

from worker.aws.client import CALL_ERRORS, create_client, error_code
from worker.service.iam import Requirement, required_permissions, simulated_resource, simulation_principal
from worker.settings import Settings

log = logging.getLogger("worker.permissions")

#: The whole check (identity, role lookup, simulations) gives up after this many seconds.
CHECK_TIMEOUT_SECONDS = 10.0


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
            "ResourceArns": [simulated_resource(resource)],
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

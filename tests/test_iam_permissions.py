"""The start-up permission check: what a configuration needs, how IAM is asked, what gets logged."""

from __future__ import annotations

import fnmatch
import logging
import time
from typing import Any

import anyio
import pytest
from botocore.exceptions import ClientError

from tests.test_deploy_support import DEPLOY, load_json
from worker.service.iam import Requirement, required_permissions, simulation_principal
from worker.service.permissions import (
    PermissionReport,
    check_permissions,
    log_missing_permissions,
    log_report,
)
from worker.settings import Settings

ACCOUNT = "123456789012"
QUEUE_ARN = f"arn:aws:sqs:eu-west-1:{ACCOUNT}:orders"
QUEUE_URL = f"https://sqs.eu-west-1.amazonaws.com/{ACCOUNT}/orders"
DLQ_URL = f"https://sqs.eu-west-1.amazonaws.com/{ACCOUNT}/orders-dlq"
DLQ_ARN = f"arn:aws:sqs:eu-west-1:{ACCOUNT}:orders-dlq"
ROLE_WITH_PATH = f"arn:aws:iam::{ACCOUNT}:role/workers/sqs-worker"


def _settings(**values: Any) -> Settings:
    return Settings(queue_url=QUEUE_URL, handler="pkg.mod:fn", **values)


def test_minimal_configuration_needs_the_source_and_the_redrive_policy_dlq() -> None:
    """No destinations, DLQ from the RedrivePolicy: the source actions, DLQ send and GetQueueUrl."""
    pairs = [
        (r.action, r.resource)
        for r in required_permissions(_settings(), queue_arn=QUEUE_ARN, dlq_url=DLQ_URL)
    ]
    assert pairs == [
        ("sqs:GetQueueAttributes", QUEUE_ARN),
        ("sqs:ReceiveMessage", QUEUE_ARN),
        ("sqs:DeleteMessage", QUEUE_ARN),
        ("sqs:ChangeMessageVisibility", QUEUE_ARN),
        ("sqs:SendMessage", DLQ_ARN),
        ("sqs:GetQueueAttributes", DLQ_ARN),
        ("sqs:GetQueueUrl", DLQ_ARN),
    ]
    with_dlq = required_permissions(_settings(dlq_url=DLQ_URL), queue_arn=QUEUE_ARN, dlq_url=DLQ_URL)
    assert "sqs:GetQueueUrl" not in {r.action for r in with_dlq}


def test_each_destination_kind_needs_its_action_on_its_resource() -> None:
    """sqs:// names also need GetQueueUrl, URLs only SendMessage; SNS, S3 prefix, EventBridge; Python none."""
    settings = _settings(
        dlq_url=DLQ_URL,
        on_success=[
            "sqs://done",
            f"https://sqs.eu-west-1.amazonaws.com/{ACCOUNT}/done-url",
            "python:tests.handlers:echo",
        ],
        on_failure=[
            f"sns:arn:aws:sns:eu-west-1:{ACCOUNT}:alerts",
            "s3://records/failed",
            "s3://whole-bucket",
            "events:orders",
            f"events:arn:aws:events:eu-west-1:{ACCOUNT}:event-bus/other",
        ],
    )
    found = {
        (r.action, r.resource, r.setting)
        for r in required_permissions(settings, queue_arn=QUEUE_ARN, dlq_url=DLQ_URL)
    }
    expected = {
        ("sqs:SendMessage", f"arn:aws:sqs:eu-west-1:{ACCOUNT}:done", "WORKER_ON_SUCCESS"),
        ("sqs:GetQueueUrl", f"arn:aws:sqs:eu-west-1:{ACCOUNT}:done", "WORKER_ON_SUCCESS"),
        ("sqs:SendMessage", f"arn:aws:sqs:eu-west-1:{ACCOUNT}:done-url", "WORKER_ON_SUCCESS"),
        ("sns:Publish", f"arn:aws:sns:eu-west-1:{ACCOUNT}:alerts", "WORKER_ON_FAILURE"),
        ("s3:PutObject", "arn:aws:s3:::records/failed/*", "WORKER_ON_FAILURE"),
        ("s3:PutObject", "arn:aws:s3:::whole-bucket/*", "WORKER_ON_FAILURE"),
        ("events:PutEvents", f"arn:aws:events:eu-west-1:{ACCOUNT}:event-bus/orders", "WORKER_ON_FAILURE"),
        ("events:PutEvents", f"arn:aws:events:eu-west-1:{ACCOUNT}:event-bus/other", "WORKER_ON_FAILURE"),
    }
    assert expected <= found
    assert not any(r[0] == "sqs:GetQueueUrl" and r[1].endswith(":done-url") for r in found)
    assert len(found) == len(expected) + 6  # the six source and DLQ requirements


def test_simulation_principal_from_the_caller_arn() -> None:
    """Assumed roles go by role name (GetRole finds the path), users by ARN; root and federated cannot."""
    assert simulation_principal(f"arn:aws:sts::{ACCOUNT}:assumed-role/sqs-worker/botocore-1") == (
        "role",
        "sqs-worker",
    )
    assert simulation_principal(f"arn:aws:iam::{ACCOUNT}:user/ci/deployer") == (
        "user",
        f"arn:aws:iam::{ACCOUNT}:user/ci/deployer",
    )
    assert simulation_principal(f"arn:aws:iam::{ACCOUNT}:root") is None
    assert simulation_principal(f"arn:aws:sts::{ACCOUNT}:federated-user/bob") is None


class FakeSts:
    """STS as an IRSA or ECS task role sees it."""

    async def get_caller_identity(self) -> dict[str, str]:
        """The assumed-role ARN (no role path in it, as in AWS)."""
        return {"Arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/sqs-worker/botocore-session-1"}


class FakeIam:
    """IAM's GetRole and policy simulator over real policy documents (Allow statements, IAM wildcards).

    Conditions are not evaluated: a statement with a Condition never matches, as in a simulation
    without context entries. Answers come two results per page, so pagination is exercised.
    """

    def __init__(self, role_arn: str, policies: list[dict[str, Any]], *, error: str | None = None) -> None:
        self.role_arn = role_arn
        self.statements = [st for policy in policies for st in policy["Statement"]]
        self.error = error
        self.calls: list[dict[str, Any]] = []

    async def get_role(self, RoleName: str) -> dict[str, Any]:  # noqa: N803 - botocore's parameter names
        """The role, or NoSuchEntity."""
        if self.role_arn.rsplit("/", 1)[-1] != RoleName:
            raise ClientError({"Error": {"Code": "NoSuchEntity"}}, "GetRole")
        return {"Role": {"Arn": self.role_arn, "RoleName": RoleName}}

    def _allowed(self, action: str, resource: str) -> bool:
        for st in self.statements:
            actions = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
            resources = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
            if (
                st["Effect"] == "Allow"
                and "Condition" not in st
                and any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions)
                and any(fnmatch.fnmatchcase(resource, r) for r in resources)
            ):
                return True
        return False

    async def simulate_principal_policy(self, **kwargs: Any) -> dict[str, Any]:
        """EvaluationResults for each action on each resource, paginated by two."""
        self.calls.append(kwargs)
        if self.error:
            raise ClientError({"Error": {"Code": self.error}}, "SimulatePrincipalPolicy")
        if kwargs["PolicySourceArn"] != self.role_arn:
            raise ClientError({"Error": {"Code": "NoSuchEntity"}}, "SimulatePrincipalPolicy")
        results = [
            {
                "EvalActionName": action,
                "EvalResourceName": resource,
                "EvalDecision": "allowed" if self._allowed(action, resource) else "implicitDeny",
            }
            for action in kwargs["ActionNames"]
            for resource in kwargs["ResourceArns"]
        ]
        start = int(kwargs.get("Marker", 0))
        page = results[start : start + 2]
        more = start + 2 < len(results)
        return {
            "EvaluationResults": page,
            "IsTruncated": more,
            **({"Marker": str(start + 2)} if more else {}),
        }


def _deployed() -> tuple[Settings, list[Requirement]]:
    from tests.test_deploy_support import load_yaml, settings_from_env

    settings = settings_from_env(load_yaml(DEPLOY / "k8s" / "configmap.yaml")["data"])
    return settings, required_permissions(settings, queue_arn=QUEUE_ARN, dlq_url=str(settings.dlq_url))


async def test_shipped_policy_passes_the_check_for_the_shipped_configuration() -> None:
    """With deploy/iam/worker-policy.json on the role, every requirement of the manifests is allowed."""
    _, requirements = _deployed()
    iam = FakeIam(ROLE_WITH_PATH, [load_json(DEPLOY / "iam" / "worker-policy.json")])
    report = await check_permissions(requirements, sts=FakeSts(), iam=iam)
    assert report.ok, report
    assert report.principal == ROLE_WITH_PATH
    assert report.checked == len(requirements)
    simulated = {r for call in iam.calls for r in call["ResourceArns"]}
    assert "arn:aws:s3:::orders-failures/failed/worker-permission-check.json" in simulated


async def test_a_missing_dlq_send_is_reported_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """Without sqs:SendMessage on the DLQ, the report names exactly that, and one ERROR line says so."""
    _, requirements = _deployed()
    policy = load_json(DEPLOY / "iam" / "worker-policy.json")
    for statement in policy["Statement"]:
        if statement["Sid"] == "WriteDeadLetterQueue":
            statement["Action"] = ["sqs:GetQueueAttributes"]
    report = await check_permissions(requirements, sts=FakeSts(), iam=FakeIam(ROLE_WITH_PATH, [policy]))
    assert [(r.action, r.resource) for r in report.missing] == [("sqs:SendMessage", DLQ_ARN)]
    with caplog.at_level(logging.INFO, logger="worker.permissions"):
        log_report(report)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage() == (
        f"missing permission: sqs:SendMessage on {DLQ_ARN} (WORKER_DLQ_URL: dead-letter failed messages)"
    )
    assert "permission check passed" not in caplog.text


async def test_simulator_refusal_or_silence_skips_the_check() -> None:
    """AccessDenied on the simulation, or no answer within the budget, gives a reason and no verdict."""
    _, requirements = _deployed()
    denied = await check_permissions(
        requirements, sts=FakeSts(), iam=FakeIam(ROLE_WITH_PATH, [], error="AccessDenied")
    )
    assert denied.skipped == "IAM policy simulation unavailable (AccessDenied)"
    assert not denied.missing

    class SlowSts:
        async def get_caller_identity(self) -> dict[str, str]:
            await anyio.sleep(30)
            return {}

    started = time.monotonic()
    silent = await check_permissions(requirements, sts=SlowSts(), iam=None, budget=0.2)
    assert silent.skipped == "IAM did not answer within 0.2 s"
    assert time.monotonic() - started < 5


def test_report_logging_says_passed_or_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """A clean report logs one INFO line, a skipped one one WARNING line with the reason."""
    with caplog.at_level(logging.INFO, logger="worker.permissions"):
        log_report(PermissionReport("arn:aws:iam::1:role/r", 9))
        log_report(PermissionReport(None, 0, skipped="IAM did not answer within 10 s"))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "permission check passed: 9 actions allowed for arn:aws:iam::1:role/r"),
        ("WARNING", "permission check skipped: IAM did not answer within 10 s"),
    ]


@pytest.mark.localstack
async def test_check_on_localstack_is_skipped_quickly_and_never_raises(queues: Any) -> None:
    """Against LocalStack (root caller, no IAM service) the check returns a skip reason within its budget."""
    queue = await queues()
    settings = Settings(queue_url=queue["url"], dlq_url=queue["dlq_url"], handler="tests.handlers:scripted")
    started = time.monotonic()
    report = await log_missing_permissions(settings, queue["arn"], queue["dlq_url"], budget=5.0)
    assert report.skipped is not None, report
    assert "root" in report.skipped, report
    assert time.monotonic() - started < 5.0

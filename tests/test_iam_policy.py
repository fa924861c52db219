"""Least-privilege IAM policies: exactly the AWS operations the code calls, on the resources named.

The operations are derived from the source: every ``<client>.<operation>(...)`` call and every operation
name used for dynamic dispatch (``getattr(client, "delete_message_batch")``) in the modules a process
imports, matched against botocore's service models.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.test_deploy_support import DEPLOY, ROOT, load_json, load_yaml, settings_from_env

IAM = DEPLOY / "iam"
PACKAGE = ROOT / "worker"
#: The services the worker may talk to (the issue's list, plus STS and IAM for the permission check).
SERVICES = ("sqs", "sns", "s3", "events", "ssm", "kms", "sts", "iam")
#: Operations authorized by another action, or by none (Service Authorization Reference).
AUTHORIZED_AS = {
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sns:PublishBatch": "sns:Publish",
    "s3:ListObjectsV2": "s3:ListBucket",
    "sts:GetCallerIdentity": None,  # needs no permission and cannot be denied
}
#: Actions the service performs with the caller's permissions when the operation runs.
IMPLIED = {
    "sqs:StartMessageMoveTask": {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"},
}
WORKER_ROOTS = ("worker.service.app", "worker.service.permissions")
REDRIVE_ROOTS = ("worker.ops.redrive.command", "worker.ops.dlq")


@cache
def _operations() -> dict[str, frozenset[tuple[str, str]]]:
    import botocore.session
    from botocore import xform_name

    session = botocore.session.get_session()
    table: dict[str, set[tuple[str, str]]] = {}
    for service in SERVICES:
        for operation in session.get_service_model(service).operation_names:
            table.setdefault(xform_name(operation), set()).add((service, operation))
    return {name: frozenset(ops) for name, ops in table.items()}


def aws_operations(source: str, where: str = "<source>") -> set[str]:
    """``service:Operation`` of every AWS call in ``source`` (method calls and dispatch by name)."""
    table = _operations()
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in table:
            candidates = table[node.func.attr]
            receiver = ast.unparse(node.func.value).lower()
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in table:
            candidates, receiver = table[node.value], ""
        else:
            continue
        if len(candidates) > 1:
            candidates = frozenset(c for c in candidates if c[0] in receiver)
        assert len(candidates) == 1, f"{where}: cannot tell which service {ast.unparse(node)} calls"
        ((service, operation),) = candidates
        found.add(f"{service}:{operation}")
    return found


def _module_path(module: str) -> Path | None:
    relative = module.removeprefix("worker").lstrip(".").replace(".", "/")
    for path in (PACKAGE / f"{relative}.py", PACKAGE / relative / "__init__.py"):
        if relative and path.is_file():
            return path
    return None


def imported_modules(roots: Iterable[str]) -> set[str]:
    """The worker modules ``roots`` import, transitively (function-level imports included)."""
    seen: set[str] = set()
    todo = [root for root in roots if _module_path(root)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_path(module)
        assert path is not None
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [f"worker.{node.module}"] if node.module else [f"worker.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("worker"):
                names = [str(node.module)] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("worker")]
            todo.extend(name for name in names if _module_path(name) and name not in seen)
    return seen


def actions_called(roots: Iterable[str]) -> set[str]:
    """IAM actions needed by every AWS operation the modules reachable from ``roots`` call."""
    actions: set[str] = set()
    for module in imported_modules(roots):
        path = _module_path(module)
        assert path is not None
        for operation in aws_operations(path.read_text(), str(path)):
            action = AUTHORIZED_AS.get(operation, operation)
            if action is not None:
                actions.add(action)
                actions |= IMPLIED.get(operation, set())
    return actions


def _statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return list(policy["Statement"])


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def policy_actions(policy: dict[str, Any]) -> set[str]:
    """Every action the policy allows."""
    return {action for st in _statements(policy) for action in _as_list(st["Action"])}


def policy_pairs(policy: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (action, resource) the policy allows."""
    return {
        (action, resource)
        for st in _statements(policy)
        for action in _as_list(st["Action"])
        for resource in _as_list(st["Resource"])
    }


@pytest.mark.parametrize("path", sorted(IAM.glob("*.json")), ids=lambda p: p.name)
def test_policy_is_least_privilege_shaped(path: Path) -> None:
    """Allow-only statements with Sids, real actions without wildcards, and no `*` resource."""
    import botocore.session

    session = botocore.session.get_session()
    policy = load_json(path)
    assert policy["Version"] == "2012-10-17"
    sids = [st["Sid"] for st in _statements(policy)]
    assert len(sids) == len(set(sids))
    assert all(sids)
    for st in _statements(policy):
        assert st["Effect"] == "Allow"
        assert set(st) <= {"Sid", "Effect", "Action", "Resource", "Condition"}
        for action in _as_list(st["Action"]):
            prefix, _, name = action.partition(":")
            assert "*" not in action, action
            assert prefix in SERVICES, action
            assert name in session.get_service_model(prefix).operation_names, f"{action} is not an API action"
        for resource in _as_list(st["Resource"]):
            assert resource.startswith("arn:aws:"), resource
            head, _, tail = (
                resource.partition(":::") if resource.startswith("arn:aws:s3:::") else (resource, "", "")
            )
            assert "*" not in head, f"{resource}: wildcard outside an S3 object key"
            assert not tail or re.fullmatch(r"[a-z0-9.-]+/[\w./-]*\*?", tail), resource


def test_scanner_finds_direct_calls_dispatch_by_name_and_refuses_ambiguity() -> None:
    """The derivation sees `client.op(...)` and `getattr(client, "op")`, ignores the rest, and can fail."""
    source = (
        "async def f(sqs, sink, kms):\n"
        "    await sqs.receive_message(QueueUrl=u)\n"
        "    await getattr(sqs, 'delete_message_batch')(Entries=[])\n"
        "    sink.submit(x)\n"
        "    await kms.tag_resource(KeyId=k, Tags=[])\n"
    )
    assert aws_operations(source) == {"sqs:ReceiveMessage", "sqs:DeleteMessageBatch", "kms:TagResource"}
    with pytest.raises(AssertionError, match="which service"):
        aws_operations("async def f(client):\n    await client.tag_resource(ResourceArn=a, Tags=[])\n")


def test_worker_policy_allows_exactly_what_the_worker_calls() -> None:
    """worker-policy.json's actions equal those of every AWS call reachable from `worker run`."""
    called = actions_called(WORKER_ROOTS)
    assert {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:SendMessage",
    } <= called
    assert policy_actions(load_json(IAM / "worker-policy.json")) == called


def test_worker_policy_names_exactly_the_resources_of_the_deployed_configuration() -> None:
    """(action, resource) pairs equal required_permissions() for the manifests, plus the self-check."""
    from worker.aws.names import queue_arn_from_url
    from worker.service.iam import required_permissions

    configmap = load_yaml(DEPLOY / "k8s" / "configmap.yaml")["data"]
    settings = settings_from_env(configmap)
    host = re.fullmatch(r"https://sqs\.([a-z0-9-]+)\.amazonaws\.com/.*", settings.queue_url)
    assert host, settings.queue_url
    _, account, name = settings.queue_url.rsplit("/", 2)
    queue_arn = f"arn:aws:sqs:{host.group(1)}:{account}:{name}"
    assert queue_arn_from_url(settings.queue_url, queue_arn) == queue_arn
    needed = {
        (r.action, r.resource)
        for r in required_permissions(settings, queue_arn=queue_arn, dlq_url=str(settings.dlq_url))
    }
    role = load_json(DEPLOY / "ecs" / "task-definition.json")["taskRoleArn"]
    self_check = {(action, role) for action in ("iam:GetRole", "iam:SimulatePrincipalPolicy")}
    assert policy_pairs(load_json(IAM / "worker-policy.json")) == needed | self_check


def test_kms_addendum_only_decrypts_and_encrypts_through_the_worker_services() -> None:
    """The optional KMS policy grants Decrypt/GenerateDataKey on one key, only via SQS, SNS and S3."""
    policy = load_json(IAM / "worker-kms-policy.json")
    (statement,) = _statements(policy)
    assert set(_as_list(statement["Action"])) == {"kms:Decrypt", "kms:GenerateDataKey"}
    (key,) = _as_list(statement["Resource"])
    assert re.fullmatch(r"arn:aws:kms:[a-z0-9-]+:\d{12}:key/[0-9a-f-]{36}", key)
    region = key.split(":")[3]
    via = set(statement["Condition"]["StringEquals"]["kms:ViaService"])
    assert via == {f"{service}.{region}.amazonaws.com" for service in ("sqs", "sns", "s3")}


def test_keda_policy_only_reads_the_scaled_queue() -> None:
    """KEDA's role may call GetQueueAttributes on the ScaledObject's queue, nothing else."""
    scaled = next(doc for doc in load_yaml_all_k8s() if doc["kind"] == "ScaledObject")
    url = scaled["spec"]["triggers"][0]["metadata"]["queueURL"]
    region = scaled["spec"]["triggers"][0]["metadata"]["awsRegion"]
    _, account, name = url.rsplit("/", 2)
    expected = {("sqs:GetQueueAttributes", f"arn:aws:sqs:{region}:{account}:{name}")}
    assert policy_pairs(load_json(IAM / "keda-scaler-policy.json")) == expected


def load_yaml_all_k8s() -> list[dict[str, Any]]:
    """Every document of deploy/k8s/*.yaml."""
    from tests.test_deploy_support import load_yaml_all

    return [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in load_yaml_all(path)]


def test_redrive_policy_allows_exactly_what_the_redrive_tools_call() -> None:
    """redrive-policy.json's actions equal those called from `worker redrive` and `worker dlq`."""
    assert _module_path("worker.ops.redrive.command") is not None
    assert policy_actions(load_json(IAM / "redrive-policy.json")) == actions_called(REDRIVE_ROOTS)

"""Least-privilege IAM policies: exactly the AWS operations the code calls, on the resources named.

The operations are derived from the source: every ``<client>.<operation>(...)`` call and every operation
name used for dynamic dispatch (``getattr(client, "delete_message_batch")``) in the modules a process
imports, matched against botocore's service models. What the shipped policies (deploy/iam) allow is asked
of a real IAM policy engine, @cloud-copilot/iam-simulate (scripts/iam-simulator, installed by `make
node-deps`): AWS's evaluation logic with wildcards, conditions, key policies and cross-account rules, over
every action of each service, so a Condition, a wildcard or a missing grant changes the decisions asserted.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from tests.test_deploy_support import (
    DEPLOY,
    ROOT,
    load_json,
    load_yaml,
    npm_installed,
    require,
    settings_from_env,
)

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
            known = action in AUTHORIZED_AS.values()  # an IAM action named unlike its call (s3:ListBucket)
            assert known or name in session.get_service_model(prefix).operation_names, (
                f"{action} is not an API action"
            )
        for resource in _as_list(st["Resource"]):
            assert resource.startswith("arn:aws:"), resource
            head, _, tail = (
                resource.partition(":::") if resource.startswith("arn:aws:s3:::") else (resource, "", "")
            )
            assert "*" not in head, f"{resource}: wildcard outside an S3 object key"
            # An object key pattern, or a bucket itself (for s3:ListBucket).
            assert not tail or re.fullmatch(r"[a-z0-9.-]+(/[\w./-]*\*?)?", tail), resource


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


# -- the policy engine --

SIMULATOR = ROOT / "scripts" / "iam-simulator"


def default_key_policy(account: str) -> dict[str, Any]:
    """AWS's default key policy: the account's IAM policies decide who may use the key."""
    root = f"arn:aws:iam::{account}:root"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Enable IAM User Permissions",
                "Effect": "Allow",
                "Principal": {"AWS": root},
                "Action": "kms:*",
                "Resource": "*",
            }
        ],
    }


@dataclass(frozen=True)
class Ask:
    """One request to the engine: an action on a resource, with the request's context keys."""

    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()


def _engine(payload: dict[str, Any]) -> dict[str, Any]:
    node = require("bin:node")
    npm_installed(SIMULATOR)
    done = subprocess.run(
        [node, str(SIMULATOR / "simulate.mjs")],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


@cache
def service_actions(service: str) -> tuple[str, ...]:
    """Every IAM action of ``service`` (the Service Authorization Reference data the engine ships)."""
    actions = tuple(_engine({"actions": [service]})["actions"][service])
    assert len(actions) > 5, (service, actions)
    return actions


def decide(
    principal: str,
    identity: Mapping[str, Any],
    asks: Iterable[Ask],
    resource_policy: dict[str, Any] | None = None,
) -> dict[Ask, str]:
    """The engine's decision for each request by ``principal`` holding the ``identity`` policies.

    ``Allowed``, ``ImplicitlyDenied``, ``ExplicitlyDenied``, or ``error: ...`` for a request the engine
    refuses (an unknown action, or one that does not apply to that kind of resource).
    """
    asks = list(dict.fromkeys(asks))
    account = principal.split(":")[4]
    policies = {**identity, "resource-policy": resource_policy}
    requests = [
        {
            "principal": principal,
            "action": ask.action,
            "resource": ask.resource,
            "account": ask.resource.split(":")[4] or account,  # S3 ARNs name no account
            "identity": list(identity),
            "context": dict(ask.context),
            "resourcePolicy": "resource-policy" if resource_policy else None,
        }
        for ask in asks
    ]
    decisions = _engine({"policies": policies, "requests": requests})["decisions"]
    return dict(zip(asks, decisions, strict=True))


def allowed(decisions: Mapping[Ask, str]) -> set[tuple[str, str]]:
    """The (action, resource) pairs the engine allowed."""
    return {(ask.action, ask.resource) for ask, decision in decisions.items() if decision == "Allowed"}


def sweep(resources: Iterable[str], *contexts: tuple[tuple[str, str], ...]) -> list[Ask]:
    """Every IAM action of each resource's service on that resource (in each context, default none)."""
    return [
        Ask(action, resource, context)
        for resource in resources
        for action in service_actions(resource.split(":")[2])
        for context in contexts or ((),)
    ]


def _neighbours(resource: str) -> list[str]:
    """Resources a sloppy policy would also grant: a longer name, another region or account; for an S3
    ``prefix/*``, a sibling prefix, the bucket root, a longer bucket name and the bucket itself."""
    if resource.startswith("arn:aws:s3:::"):
        assert resource.endswith("/*"), resource
        prefix = resource[: -len("/*")]
        bucket = resource.removeprefix("arn:aws:s3:::").split("/")[0]
        others = [f"{prefix}-old/x.json", f"arn:aws:s3:::{bucket}-old/x.json"]
        if prefix != f"arn:aws:s3:::{bucket}":  # under a prefix, the bucket root is a neighbour
            others.append(f"arn:aws:s3:::{bucket}/x.json")
        return [*others, f"arn:aws:s3:::{bucket}"]  # the bucket itself, for bucket-level actions
    parts = resource.split(":")  # arn, partition, service, region, account, resource
    out = [f"{resource}-other"]
    if parts[3]:
        out.append(
            ":".join([*parts[:3], "us-west-2" if parts[3] != "us-west-2" else "eu-west-1", *parts[4:]])
        )
    out.append(":".join([*parts[:4], "210987654321", *parts[5:]]))
    return out


def test_engine_sees_conditions_wildcards_and_explicit_denies() -> None:
    """The engine: unmet or absent Condition keys and Denies refuse, case is ignored, p/* stays in p."""
    role = "arn:aws:iam::123456789012:role/probe"
    queue = "arn:aws:sqs:eu-west-1:123456789012:q"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "sqs:receivemessage", "Resource": queue},
            {
                "Effect": "Allow",
                "Action": "sqs:SendMessage",
                "Resource": queue,
                "Condition": {"StringEquals": {"aws:SourceVpce": "vpce-1"}},
            },
            {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::b/p/*"},
            {"Effect": "Deny", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::b/p/secret/*"},
        ],
    }
    asks = {
        Ask("sqs:ReceiveMessage", queue): "Allowed",
        Ask("sqs:SendMessage", queue, (("aws:SourceVpce", "vpce-1"),)): "Allowed",
        Ask("sqs:SendMessage", queue, (("aws:SourceVpce", "vpce-2"),)): "ImplicitlyDenied",
        Ask("sqs:SendMessage", queue): "ImplicitlyDenied",
        Ask("s3:PutObject", "arn:aws:s3:::b/p/2026/x.json"): "Allowed",
        Ask("s3:PutObject", "arn:aws:s3:::b/p-old/x.json"): "ImplicitlyDenied",
        Ask("s3:PutObject", "arn:aws:s3:::b/p/secret/x.json"): "ExplicitlyDenied",
    }
    assert decide(role, {"probe": policy}, asks) == asks
    (refused,) = decide(role, {"probe": policy}, [Ask("sqs:DeleteMessageBatch", queue)]).values()
    assert refused.startswith("error:"), refused  # an API operation that is not an IAM action


# -- the shipped policies, through the engine --


def _deployed_settings() -> Any:
    return settings_from_env(load_yaml(DEPLOY / "k8s" / "configmap.yaml")["data"])


def _queue_arn(url: str) -> str:
    host = re.fullmatch(r"https://sqs\.([a-z0-9-]+)\.amazonaws\.com/(\d+)/([\w.-]+)", url)
    assert host, url
    region, account, name = host.groups()
    return f"arn:aws:sqs:{region}:{account}:{name}"


def worker_needs() -> set[tuple[str, str]]:
    """(action, resource) of required_permissions() for the manifests' configuration, plus the self-check."""
    from worker.aws.names import queue_arn_from_url
    from worker.service.iam import required_permissions

    settings = _deployed_settings()
    queue_arn = _queue_arn(settings.queue_url)
    assert queue_arn_from_url(settings.queue_url, queue_arn) == queue_arn
    needed = {
        (r.action, r.resource)
        for r in required_permissions(settings, queue_arn=queue_arn, dlq_url=str(settings.dlq_url))
    }
    role = load_json(DEPLOY / "ecs" / "task-definition.json")["taskRoleArn"]
    return needed | {(action, role) for action in ("iam:GetRole", "iam:SimulatePrincipalPolicy")}


def _objects_under(pattern: str) -> list[str]:
    """Objects the worker writes under an S3 ``prefix/*`` resource: its permission probe and a record."""
    from worker.destinations.record import s3_key
    from worker.service.iam import simulated_resource

    record = SimpleNamespace(
        timestamp="2026-11-30T12:00:00.000Z", condition="RetriesExhausted", message_id="6f1c5b3e-1"
    )
    return [simulated_resource(pattern), pattern[: -len("*")] + s3_key(record)]  # type: ignore[arg-type]


@cache
def _worker_decisions() -> tuple[dict[Ask, str], dict[str, str]]:
    """Every action of each service on each resource the worker needs, on its objects and neighbours."""
    probes: dict[str, str] = {}  # probed resource -> the needed resource it stands for ("" for none)
    for _, resource in sorted(worker_needs()):
        for probe in _objects_under(resource) if resource.endswith("/*") else [resource]:
            probes[probe] = resource
        for neighbour in _neighbours(resource):
            probes.setdefault(neighbour, "")
    role = load_json(DEPLOY / "ecs" / "task-definition.json")["taskRoleArn"]
    identity = {"worker-policy": load_json(IAM / "worker-policy.json")}
    return decide(role, identity, sweep(probes)), probes


def test_worker_policy_allows_exactly_what_the_deployed_worker_needs() -> None:
    """The engine allows each needed (action, resource) and nothing else: no other action, neighbour, key."""
    decisions, probes = _worker_decisions()
    expected = {
        (action, probe) for probe, need in probes.items() for action, r in worker_needs() if r == need
    }
    got = allowed(decisions)
    by_pair = {(ask.action, ask.resource): decision for ask, decision in decisions.items()}
    missing = {pair: by_pair.get(pair, "never asked") for pair in expected - got}
    assert not missing, f"needed but not allowed: {missing}"
    assert got == expected, f"allowed but not needed: {sorted(got - expected)}"


def test_worker_policy_allows_exactly_what_the_worker_calls() -> None:
    """The actions the engine allows the worker's role are those of the AWS calls `worker run` can reach."""
    called = actions_called(WORKER_ROOTS)
    assert {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:SendMessage",
    } <= called
    decisions, _ = _worker_decisions()
    rollouts = {
        action
        for st in _statements(load_json(IAM / "worker-rollouts-policy.json"))
        for action in _as_list(st["Action"])
    }
    # The rollouts addendum (canary state, blue/green flag) completes the base policy for those features.
    assert {action for action, _ in allowed(decisions)} | rollouts == called


def test_rollouts_addendum_covers_what_the_rollout_examples_need() -> None:
    """With the Argo canary and the blue/green colour settings, every S3 need is in the rollouts addendum."""
    from worker.aws.names import queue_arn_from_url
    from worker.service.iam import required_permissions

    env = dict(load_yaml(DEPLOY / "k8s" / "configmap.yaml")["data"])
    for manifest in ("argo/rollout.yaml", "k8s/blue-green/deployment-blue.yaml"):
        for doc in yaml.safe_load_all((DEPLOY / manifest).read_text()):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                env.update({e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e})
    settings = settings_from_env(env)
    assert settings.canary.enabled
    assert settings.color == "blue"
    queue_arn = _queue_arn(settings.queue_url)
    needed = {
        (r.action, r.resource)
        for r in required_permissions(settings, queue_arn=queue_arn, dlq_url=str(settings.dlq_url))
        if r.setting in ("WORKER_CANARY__STATE", "WORKER_COLOR_STATE")
    }
    assert queue_arn_from_url(settings.queue_url, queue_arn) == queue_arn
    policy = load_json(IAM / "worker-rollouts-policy.json")
    granted = {
        (action, resource)
        for st in _statements(policy)
        for action in _as_list(st["Action"])
        for resource in _as_list(st["Resource"])
    }
    assert needed == granted


def test_kms_addendum_only_decrypts_and_encrypts_through_the_worker_services() -> None:
    """With the key policy delegating to IAM, Decrypt/GenerateDataKey on the key only via SQS, SNS and S3."""
    kms_policy = load_json(IAM / "worker-kms-policy.json")
    (statement,) = _statements(kms_policy)
    (key,) = _as_list(statement["Resource"])
    assert re.fullmatch(r"arn:aws:kms:[a-z0-9-]+:\d{12}:key/[0-9a-f-]{36}", key)
    region = key.split(":")[3]
    other_key = re.sub(r"key/.*", "key/00000000-0000-0000-0000-000000000000", key)

    def via(service: str, where: str = region) -> tuple[tuple[str, str], ...]:
        return (("kms:ViaService", f"{service}.{where}.amazonaws.com"),)

    contexts = [(), via("sqs"), via("sns"), via("s3"), via("lambda"), via("sqs", "us-west-2")]
    role = load_json(DEPLOY / "ecs" / "task-definition.json")["taskRoleArn"]
    identity = {"worker-policy": load_json(IAM / "worker-policy.json"), "worker-kms-policy": kms_policy}
    asks = sweep([key, other_key], *contexts)
    decisions = decide(role, identity, asks, resource_policy=default_key_policy(key.split(":")[4]))
    granted = {ask for ask, decision in decisions.items() if decision == "Allowed"}
    assert granted == {
        Ask(action, key, via(service))
        for action in ("kms:Decrypt", "kms:GenerateDataKey")
        for service in ("sqs", "sns", "s3")
    }
    # The addendum adds to a key policy that lets IAM decide (AWS's default); one that does not refuses.
    own_key_policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": role.rsplit("/", 1)[0] + "/key-admin"},
                "Action": "kms:*",
                "Resource": "*",
            }
        ],
    }
    refused = decide(role, identity, [Ask("kms:Decrypt", key, via("sqs"))], resource_policy=own_key_policy)
    assert set(refused.values()) == {"ImplicitlyDenied"}


def load_yaml_all_k8s() -> list[dict[str, Any]]:
    """Every document of deploy/k8s/*.yaml."""
    from tests.test_deploy_support import load_yaml_all

    return [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in load_yaml_all(path)]


def test_keda_policy_only_reads_the_scaled_queue() -> None:
    """KEDA's role may call GetQueueAttributes on the ScaledObject's queue, and no SQS action on any other."""
    docs = load_yaml_all_k8s()
    scaled = next(doc for doc in docs if doc["kind"] == "ScaledObject")
    auth = next(doc for doc in docs if doc["kind"] == "TriggerAuthentication")
    role = auth["spec"]["podIdentity"]["roleArn"]
    metadata = scaled["spec"]["triggers"][0]["metadata"]
    queue = _queue_arn(metadata["queueURL"])
    assert queue.split(":")[3] == metadata["awsRegion"]
    decisions = decide(
        role, {"keda": load_json(IAM / "keda-scaler-policy.json")}, sweep([queue, *_neighbours(queue)])
    )
    assert allowed(decisions) == {("sqs:GetQueueAttributes", queue)}


def test_redrive_policy_allows_exactly_what_the_redrive_tools_call() -> None:
    """Redrive's role: exactly the tools' actions, on the DLQ and source only, never consuming the source."""
    assert _module_path("worker.ops.redrive.command") is not None
    settings = _deployed_settings()
    source, dlq = _queue_arn(settings.queue_url), _queue_arn(str(settings.dlq_url))
    role = f"arn:aws:iam::{source.split(':')[4]}:role/sqs-redrive"
    queues = [source, dlq, *_neighbours(source), *_neighbours(dlq)]
    decisions = decide(role, {"redrive": load_json(IAM / "redrive-policy.json")}, sweep(queues))
    got = allowed(decisions)
    assert {action for action, _ in got} == actions_called(REDRIVE_ROOTS)
    assert {resource for _, resource in got} == {source, dlq}
    consume = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:PurgeQueue"}
    assert not {action for action, resource in got if resource == source} & consume
    # A native move task receives, deletes and reads attributes on its source, the DLQ, as the caller.
    assert {(action, dlq) for action in IMPLIED["sqs:StartMessageMoveTask"]} <= got

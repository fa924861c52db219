"""``worker topology``: create or check one consumer's SNS -> SQS topology (the AWS calls; the plan is pure).

Reads everything first (STS for the account, GetQueueUrl / GetQueueAttributes, GetTopicAttributes,
ListSubscriptionsByTopic / GetSubscriptionAttributes), asks ``topology_plan.plan`` what is missing or wrong,
and, unless ``--check``, applies the fixes in the plan's order and reads everything again to verify. It
never deletes anything, and changes nothing while a check needs a person (a queue of the wrong type, a
deny statement, a subscription pending confirmation). Writes to a non-loopback endpoint need ``--yes`` or
a confirmation on the terminal, as ``worker redrive`` does. The arguments are ``topology_cli``'s, the
output ``topology_report``'s.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.to_thread
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from worker import settings as worker_settings
from worker.aws.client import CALL_ERRORS, client_config, create_client, error_code
from worker.aws.names import Arn
from worker.errors import ConfigError, WorkerError
from worker.ops.settings import ToolError, is_loopback
from worker.ops.topology_cli import spec_from_args
from worker.ops.topology_error import TopologyError
from worker.ops.topology_plan import fixes, manual, plan
from worker.ops.topology_records import (
    Action,
    Arns,
    CreateQueue,
    CreateTopic,
    Observed,
    QueueState,
    SetQueueAttributes,
    SetSubscriptionAttribute,
    Subscribe,
    SubscriptionState,
    TopicState,
)
from worker.ops.topology_report import SETTLE_SECONDS, Outcome, render_json, render_text
from worker.ops.topology_spec import Spec
from worker.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_sns.client import SNSClient
    from types_aiobotocore_sqs.client import SQSClient
    from types_aiobotocore_sts.client import STSClient

#: Passes at most: the first creates everything, the next finds nothing left (a safety net beyond).
MAX_PASSES = 3
#: Error codes that mean "no such queue / topic".
NOT_FOUND = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NotFound", "NotFoundException"}
)


def _same(name: str) -> Any:
    """The field definition ``Settings`` uses for ``name`` (default, bounds, description)."""
    return copy.copy(Settings.model_fields[name])


class TopologySettings(BaseSettings):
    """The one ``WORKER_*`` setting read: ``WORKER_MAX_ATTEMPTS``, for the default maxReceiveCount."""

    model_config = Settings.model_config

    max_attempts: int = _same("max_attempts")


def load_topology_settings() -> TopologySettings:
    """Read TopologySettings; ConfigError with one line naming the variable."""
    try:
        return TopologySettings()
    except ValidationError as exc:
        raise ConfigError(worker_settings._describe(exc)) from None


class AwsCallError(WorkerError):
    """An AWS call failed: the operation, the code and AWS's message, in one line."""

    @classmethod
    def of(cls, exc: BaseException) -> AwsCallError:
        """Describe a botocore / network exception."""
        if isinstance(exc, ClientError):
            message = str(exc.response.get("Error", {}).get("Message", "")).splitlines()
            text = f"{exc.operation_name} failed: {error_code(exc)}"
            return cls(text + (f": {message[0][:200]}" if message else ""))
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        return cls(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


@dataclass(frozen=True, slots=True)
class Clients:
    """The three clients: SQS and STS in the queues' region, SNS in the topic's."""

    sqs: SQSClient
    sns: SNSClient
    sts: STSClient

    @property
    def endpoints(self) -> tuple[str, str]:
        """The SQS and SNS endpoints."""
        return str(self.sqs.meta.endpoint_url), str(self.sns.meta.endpoint_url)


@asynccontextmanager
async def open_clients(region: str | None, topic_region: str | None) -> AsyncIterator[Clients]:
    """The clients (no call made yet); region from ``--region``, else the standard AWS chain."""

    def config(where: str | None) -> AioConfig:
        base = client_config()
        return base.merge(AioConfig(region_name=where)) if where else base

    async with AsyncExitStack() as stack:
        sqs = await stack.enter_async_context(create_client("sqs", config(region)))
        sns = await stack.enter_async_context(create_client("sns", config(topic_region or region)))
        sts = await stack.enter_async_context(create_client("sts", config(region)))
        yield Clients(sqs, sns, sts)


def _not_found(exc: ClientError) -> bool:
    return error_code(exc) in NOT_FOUND


async def queue_state(sqs: SQSClient, name: str) -> QueueState:
    """The queue by name, with every attribute; ``url`` None when it does not exist."""
    try:
        url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
        response = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
    except ClientError as exc:
        if _not_found(exc):
            return QueueState(name)
        raise
    return QueueState(name, url, {str(k): str(v) for k, v in response.get("Attributes", {}).items()})


async def topic_state(sns: SNSClient, arn: str) -> TopicState:
    """The topic's attributes; ``exists`` False when not found."""
    try:
        response = await sns.get_topic_attributes(TopicArn=arn)
    except ClientError as exc:
        if _not_found(exc):
            return TopicState(arn)
        raise
    return TopicState(arn, True, {str(k): str(v) for k, v in response.get("Attributes", {}).items()})


async def subscription_state(sns: SNSClient, topic_arn: str, queue_arn: str) -> SubscriptionState:
    """The topic's ``sqs`` subscription of the queue, with its attributes (there is at most one)."""
    paginator = sns.get_paginator("list_subscriptions_by_topic")
    async for page in paginator.paginate(TopicArn=topic_arn):
        for entry in page.get("Subscriptions", []):
            if entry.get("Protocol") != "sqs" or entry.get("Endpoint") != queue_arn:
                continue
            arn = str(entry.get("SubscriptionArn", ""))
            if arn == "PendingConfirmation":  # not an ARN yet: no attributes to read
                return SubscriptionState(arn, {"PendingConfirmation": "true"})
            response = await sns.get_subscription_attributes(SubscriptionArn=arn)
            return SubscriptionState(arn, {str(k): str(v) for k, v in response.get("Attributes", {}).items()})
    return SubscriptionState()


async def observe(clients: Clients, spec: Spec, arns: Arns) -> Observed:
    """Everything the plan looks at, read fresh."""
    topic = await topic_state(clients.sns, arns.topic)
    subscription = SubscriptionState()
    if topic.exists:
        subscription = await subscription_state(clients.sns, arns.topic, arns.queue)
    return Observed(
        topic=topic,
        queue=await queue_state(clients.sqs, spec.queue),
        dlq=await queue_state(clients.sqs, spec.dlq),
        subscription_dlq=await queue_state(clients.sqs, spec.subscription_dlq),
        subscription=subscription,
    )


async def apply(clients: Clients, action: Action) -> None:
    """Perform one fix."""
    match action:
        case CreateTopic(name=name, attributes=attributes):
            await clients.sns.create_topic(Name=name, Attributes=dict(attributes))
        case CreateQueue(name=name, attributes=attributes):
            await clients.sqs.create_queue(QueueName=name, Attributes=cast(Any, dict(attributes)))
        case SetQueueAttributes(url=url, attributes=attributes):
            await clients.sqs.set_queue_attributes(QueueUrl=url, Attributes=cast(Any, dict(attributes)))
        case Subscribe(topic_arn=topic_arn, queue_arn=queue_arn, attributes=attributes):
            await clients.sns.subscribe(
                TopicArn=topic_arn,
                Protocol="sqs",
                Endpoint=queue_arn,
                Attributes=dict(attributes),
                ReturnSubscriptionArn=True,
            )
        case SetSubscriptionAttribute(subscription_arn=arn, name=name, value=value):
            await clients.sns.set_subscription_attributes(
                SubscriptionArn=arn, AttributeName=name, AttributeValue=value
            )


#: Asked before the first write to a non-loopback endpoint: (actions, endpoint) -> go ahead?
Confirm = Callable[[list[Action], str], Awaitable[bool]]


async def converge(
    spec: Spec,
    *,
    check_only: bool,
    region: str | None = None,
    confirm: Confirm | None = None,
    is_local: Callable[[str], bool] = is_loopback,
    settle_seconds: float = SETTLE_SECONDS,
) -> Outcome:
    """Read, plan and (unless ``check_only``) fix until every check passes or nothing more can be done.

    ``confirm`` is asked once, before the first write, when an endpoint is not on this machine; None
    writes without asking. An action is applied once: when the read that follows still shows its check
    failing, the read is repeated (backing off, up to ``settle_seconds``) for AWS to propagate it. AWS
    failures raise AwsCallError.
    """
    topic_region = Arn.parse(spec.topic_arn).region if spec.topic_arn else None
    try:
        async with open_clients(region, topic_region) as clients:
            identity = await clients.sts.get_caller_identity()
            arns = Arns.of(
                spec,
                partition=Arn.parse(identity["Arn"]).partition,
                account=identity["Account"],
                sqs_region=str(clients.sqs.meta.region_name),
                sns_region=str(clients.sns.meta.region_name),
            )
            seen = await observe(clients, spec, arns)
            checks = plan(spec, seen, arns)
            done: list[str] = []
            applied: set[str] = set()
            passes, waited, delay = 0, 0.0, min(1.0, settle_seconds / 8)
            while not check_only:
                todo = fixes(checks)
                if not todo or manual(checks):
                    break
                fresh = [action for action in todo if repr(action) not in applied]
                if fresh:
                    if passes == MAX_PASSES:
                        break
                    passes += 1
                    remote = [e for e in clients.endpoints if not is_local(e)]
                    if not done and remote and confirm is not None and not await confirm(fresh, remote[0]):
                        raise ToolError("not confirmed: nothing was changed")
                    for action in fresh:
                        await apply(clients, action)
                        applied.add(repr(action))
                        done.append(action.text)
                elif waited >= settle_seconds:
                    break
                else:  # every fix left was applied: AWS has not shown it yet
                    await anyio.sleep(delay)
                    waited, delay = waited + delay, min(delay * 2, 10.0)
                seen = await observe(clients, spec, arns)
                checks = plan(spec, seen, arns)
    except CALL_ERRORS as exc:
        raise AwsCallError.of(exc) from None
    unsettled = [a.text for a in fixes(checks) if repr(a) in applied] if not check_only else []
    return Outcome(spec, arns, seen, checks, done, check_only, unsettled)


async def ensure_topology(spec: Spec, *, region: str | None = None) -> Outcome:
    """Create or fix the topology without asking (the demo's, on its loopback LocalStack)."""
    return await converge(spec, check_only=False, region=region)


# --- The command ----------------------------------------------------------------------------------------


def _notes(spec: Spec, max_attempts: int) -> list[str]:
    if spec.max_receive_count > max_attempts:
        return []
    return [
        f"maxReceiveCount {spec.max_receive_count} is not above {worker_settings.env_name('max_attempts')} "
        f"({max_attempts}): SQS may dead-letter messages before the worker has made its attempts"
    ]


def _ask_terminal(prompt: str) -> str:
    sys.stderr.write(prompt)
    sys.stderr.flush()
    return sys.stdin.readline()


def terminal_confirm(ask: Callable[[str], str] = _ask_terminal) -> Confirm:
    """Ask on the terminal, listing the changes, before the first write to a remote endpoint."""

    async def confirm(todo: list[Action], endpoint: str) -> bool:
        listing = "".join(f"  {action.text}\n" for action in todo)
        prompt = f"{len(todo)} changes at {endpoint}:\n{listing}Apply them? [y/N] "
        answer = await anyio.to_thread.run_sync(ask, prompt)
        return answer.strip().lower() in ("y", "yes")

    return confirm


def main(args: argparse.Namespace, *, stdin_tty: bool | None = None) -> int:
    """``worker topology``: 0 when every check passes; 1 when not, or an AWS call failed; 2 on bad usage."""
    parser: argparse.ArgumentParser = args.subparser
    settings = load_topology_settings()
    try:
        spec = spec_from_args(args, settings.max_attempts)
    except TopologyError as exc:
        parser.error(str(exc))
    tty = sys.stdin.isatty() if stdin_tty is None else stdin_tty
    confirm: Confirm | None = None
    if not (args.yes or args.check):
        confirm = terminal_confirm() if tty else _refuse_remote
    try:
        outcome = anyio.run(
            partial(converge, spec, check_only=args.check, region=args.region, confirm=confirm)
        )
    except ToolError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    except AwsCallError as exc:
        print(f"worker: topology: {exc}", file=sys.stderr)
        return 1
    notes = _notes(spec, settings.max_attempts)
    if args.json:
        print(json.dumps(render_json(outcome, notes), indent=2))
    else:
        print(render_text(outcome, notes))
    return 0 if outcome.ok else 1


async def _refuse_remote(todo: list[Action], endpoint: str) -> bool:
    """No terminal to confirm on: refuse to write to a remote endpoint without --yes."""
    raise ToolError(
        f"refusing {len(todo)} changes at {endpoint} without --yes: stdin is not a terminal to confirm on "
        "(--check only reads)"
    )

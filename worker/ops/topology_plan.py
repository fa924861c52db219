"""``worker topology``'s plan (pure): what AWS holds against the specification, one check and fix per piece.

``plan`` compares what AWS holds (``Observed``) with the specification (``topology_spec.Spec``) and returns
one ``Check`` per piece, each with the ``Action`` that fixes it; applying them in order creates everything in
one pass, since every ARN is known in advance from the account and region.
"""

from __future__ import annotations

import json
from typing import Any

from worker.aws.names import RedrivePolicy
from worker.ops.filter_policy import same_filter_policy
from worker.ops.queue_policy import sns_send_verdict, with_sns_statement
from worker.ops.topology_records import (
    Action,
    Arns,
    Check,
    CreateQueue,
    CreateTopic,
    Observed,
    QueueState,
    SetQueueAttributes,
    SetSubscriptionAttribute,
    Status,
    Subscribe,
)
from worker.ops.topology_spec import Spec

#: SQS's default MessageRetentionPeriod (4 days) and its maximum (14 days, what DLQs are created with).
SQS_DEFAULT_RETENTION_SECONDS = 345_600
DLQ_RETENTION_SECONDS = 1_209_600


def redrive_policy_text(target_arn: str, max_receive_count: int | None = None) -> str:
    """A RedrivePolicy attribute (a subscription's has no maxReceiveCount)."""
    policy: dict[str, Any] = {"deadLetterTargetArn": target_arn}
    if max_receive_count is not None:
        policy["maxReceiveCount"] = max_receive_count
    return json.dumps(policy)


def _queue_type(fifo: bool) -> str:
    return "a FIFO queue" if fifo else "a standard queue"


def _queue_check(key: str, role: str, state: QueueState, fifo: bool, create: dict[str, str]) -> Check:
    """The check of a queue's existence and type (a missing one gets its CreateQueue)."""
    what = f"{role} {state.name}"
    expected = _queue_type(fifo)
    if not state.exists:
        attributes = {**({"FifoQueue": "true"} if fifo else {}), **create}
        fix = CreateQueue(role, state.name, attributes)
        return Check(key, what, Status.MISSING, "no such queue", expected, fix)
    if state.fifo != fifo:
        manual = "a queue's type cannot change: use another name, or delete it and rerun"
        return Check(key, what, Status.WRONG, _queue_type(state.fifo), expected, manual=manual)
    return Check(key, what, Status.OK, state.url or "", expected)


def _usable(check: Check) -> bool:
    """The piece exists as it should, or this pass creates it."""
    return check.status == Status.OK or isinstance(check.fix, (CreateQueue, CreateTopic))


def _why_absent(check: Check, role: str) -> str:
    return f"the {role} is missing" if check.status == Status.MISSING else f"the {role} is {check.found}"


def _policy_check(key: str, role: str, state: QueueState, queue: Check, arn: str, topic_arn: str) -> Check:
    """May the topic send to this queue? (A queue this pass creates gets the policy with it.)"""
    what = f"{role} {state.name} policy"
    expected = f"lets SNS topic {topic_arn.rsplit(':', 1)[-1]} send (aws:SourceArn)"
    if queue.status != Status.OK:
        return _absent(key, what, expected, _why_absent(queue, role))
    text = state.attributes.get("Policy")
    verdict = sns_send_verdict(text, arn, topic_arn)
    fix = SetQueueAttributes(
        role, state.name, state.url or "", {"Policy": with_sns_statement(text, arn, topic_arn)}
    )
    if verdict.denied_by:
        manual = f"statement {verdict.denied_by} denies it: remove or narrow that statement"
        return Check(
            key, what, Status.WRONG, f"denied by statement {verdict.denied_by}", expected, manual=manual
        )
    if verdict.allowed:
        return Check(key, what, Status.OK, f"allowed by statement {verdict.allowed_by}", expected)
    if text is None:
        return Check(key, what, Status.MISSING, "no policy", expected, fix)
    found = "an unreadable policy" if not verdict.readable else "no statement lets this topic send"
    return Check(key, what, Status.WRONG, found, expected, fix)


def _absent(key: str, what: str, expected: str, because: str) -> Check:
    return Check(key, what, Status.MISSING, f"({because})", expected)


def plan(spec: Spec, seen: Observed, arns: Arns) -> list[Check]:
    """Every check, in the order their fixes must run (each one's dependencies come before it).

    Fixes use the ARNs known in advance, so one pass in this order creates a whole topology: the DLQ
    before the queue whose RedrivePolicy names it, the topic and queues before the subscription.
    """
    topic = _topic_check(spec, seen)
    checks = [topic]
    retention = {"MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS)}
    dlq = _queue_check("dlq", "dlq", seen.dlq, spec.fifo, retention)
    checks += [dlq, _retention_check(spec, seen, dlq)]

    redrive = redrive_policy_text(arns.dlq, spec.max_receive_count)
    policy = with_sns_statement(None, arns.queue, arns.topic)
    create = {"RedrivePolicy": redrive, "Policy": policy}
    queue = _queue_check("queue", "queue", seen.queue, spec.fifo, create)
    checks.append(queue)
    what = f"queue {spec.queue} RedrivePolicy"
    if queue.status != Status.OK:
        checks.append(_absent("queue.redrive_policy", what, redrive, _why_absent(queue, "queue")))
    else:
        found_text = seen.queue.attributes.get("RedrivePolicy")
        found = RedrivePolicy.parse(found_text)
        fix = SetQueueAttributes("queue", spec.queue, seen.queue.url or "", {"RedrivePolicy": redrive})
        if found is None:
            checks.append(Check("queue.redrive_policy", what, Status.MISSING, "none", redrive, fix))
        elif (found.dead_letter_target_arn, found.max_receive_count) != (arns.dlq, spec.max_receive_count):
            checks.append(Check("queue.redrive_policy", what, Status.WRONG, str(found_text), redrive, fix))
        else:
            checks.append(Check("queue.redrive_policy", what, Status.OK, str(found_text), redrive))
    checks.append(_policy_check("queue.policy", "queue", seen.queue, queue, arns.queue, arns.topic))

    sub_policy = with_sns_statement(None, arns.subscription_dlq, arns.topic)
    sub_dlq = _queue_check(
        "subscription_dlq",
        "subscription-dlq",
        seen.subscription_dlq,
        spec.fifo,
        {**retention, "Policy": sub_policy},
    )
    checks.append(sub_dlq)
    checks.append(
        _policy_check(
            "subscription_dlq.policy",
            "subscription-dlq",
            seen.subscription_dlq,
            sub_dlq,
            arns.subscription_dlq,
            arns.topic,
        )
    )
    ready = all(_usable(c) for c in (topic, queue, sub_dlq))
    checks += _subscription_checks(spec, seen, arns, ready=ready)
    return checks


def _topic_check(spec: Spec, seen: Observed) -> Check:
    what = f"topic {spec.topic}"
    kind = "a FIFO topic" if spec.fifo else "a standard topic"
    if not seen.topic.exists:
        if spec.topic_arn:
            manual = "--topic names it by ARN: create it in its own account, or pass its name"
            return Check("topic", what, Status.MISSING, "not found", kind, manual=manual)
        fix = CreateTopic(spec.topic, {"FifoTopic": "true"} if spec.fifo else {})
        return Check("topic", what, Status.MISSING, "not found", kind, fix)
    if seen.topic.fifo != spec.fifo:
        found = "a FIFO topic" if seen.topic.fifo else "a standard topic"
        return Check(
            "topic", what, Status.WRONG, found, kind, manual="a topic's type cannot change: use another name"
        )
    return Check("topic", what, Status.OK, seen.topic.arn, kind)


def _retention_check(spec: Spec, seen: Observed, dlq: Check) -> Check:
    source = int(seen.queue.attributes.get("MessageRetentionPeriod", SQS_DEFAULT_RETENTION_SECONDS))
    what = f"dlq {spec.dlq} retention"
    expected = f">= the queue's {source} s (SQS expires a moved message by its first send time)"
    if dlq.status != Status.OK:
        return _absent("dlq.retention", what, expected, _why_absent(dlq, "DLQ"))
    held = int(seen.dlq.attributes.get("MessageRetentionPeriod", SQS_DEFAULT_RETENTION_SECONDS))
    if held >= source:
        return Check("dlq.retention", what, Status.OK, f"{held} s", expected)
    fix = SetQueueAttributes(
        "dlq", spec.dlq, seen.dlq.url or "", {"MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS)}
    )
    return Check("dlq.retention", what, Status.WRONG, f"{held} s", expected, fix)


def subscription_attributes(spec: Spec, arns: Arns) -> dict[str, str]:
    """The subscription's attributes as Subscribe takes them."""
    attributes = {
        "RawMessageDelivery": "true" if spec.raw else "false",
        "RedrivePolicy": redrive_policy_text(arns.subscription_dlq),
    }
    if spec.filter_policy is not None:
        attributes["FilterPolicyScope"] = spec.filter_policy_scope
        attributes["FilterPolicy"] = spec.filter_policy
    return attributes


def _subscription_checks(spec: Spec, seen: Observed, arns: Arns, *, ready: bool) -> list[Check]:
    what = f"subscription {spec.topic} -> {spec.queue}"
    sub = seen.subscription
    wanted = subscription_attributes(spec, arns)
    keys = {
        "RawMessageDelivery": "subscription.raw",
        "FilterPolicyScope": "subscription.filter_policy_scope",
        "FilterPolicy": "subscription.filter_policy",
        "RedrivePolicy": "subscription.redrive_policy",
    }
    # Scope and policy must agree at every step: widen the scope before a nested policy, narrow it after.
    order = ["RawMessageDelivery", "FilterPolicyScope", "FilterPolicy", "RedrivePolicy"]
    if spec.filter_policy_scope == "MessageAttributes":
        order[1:3] = ["FilterPolicy", "FilterPolicyScope"]
    if spec.filter_policy is None:
        order.remove("FilterPolicyScope")
    wanted.setdefault("FilterPolicy", "")
    shown = {name: (value or "(none)") for name, value in wanted.items()}
    if sub.arn is None:
        if ready:
            subscribe = Subscribe(arns.topic, arns.queue, subscription_attributes(spec, arns))
            head = Check(
                "subscription",
                what,
                Status.MISSING,
                "no sqs subscription of the queue",
                "protocol sqs",
                subscribe,
            )
        else:
            because = "the topic, the queue or the subscription DLQ cannot be made"
            head = _absent("subscription", what, "protocol sqs", because)
        return [head] + [_absent(keys[n], f"subscription {n}", shown[n], "no subscription") for n in order]
    checks = []
    if sub.attributes.get("PendingConfirmation", "false").lower() == "true":
        manual = "confirm it from the queue's account (cross-account subscriptions need a confirmation)"
        checks.append(
            Check("subscription", what, Status.WRONG, "pending confirmation", "confirmed", manual=manual)
        )
    else:
        checks.append(Check("subscription", what, Status.OK, sub.arn, "protocol sqs, confirmed"))
    for name in order:
        found = sub.attributes.get(name, "")
        expected = wanted[name]
        if name == "RawMessageDelivery":
            same = (found or "false").lower() == expected
        elif name == "FilterPolicy":
            same = same_filter_policy(found, expected or None)
            expected = expected or "{}"  # setting {} is how SNS removes a filter policy
        elif name == "FilterPolicyScope":
            same = (found or "MessageAttributes") == expected
        else:
            policy = RedrivePolicy.parse(found)
            same = policy is not None and policy.dead_letter_target_arn == arns.subscription_dlq
        status = Status.OK if same else (Status.MISSING if not found else Status.WRONG)
        fix = None if same else SetSubscriptionAttribute(sub.arn, name, expected)
        checks.append(Check(keys[name], f"subscription {name}", status, found or "(none)", shown[name], fix))
    return checks


def fixes(checks: list[Check]) -> list[Action]:
    """The actions that fix the failing checks, in order."""
    return [c.fix for c in checks if c.status != Status.OK and c.fix is not None]


def manual(checks: list[Check]) -> list[Check]:
    """Failing checks only a person can fix (``worker topology`` then changes nothing)."""
    return [c for c in checks if c.status != Status.OK and c.manual]


def all_ok(checks: list[Check]) -> bool:
    """Every check passed."""
    return all(c.status == Status.OK for c in checks)

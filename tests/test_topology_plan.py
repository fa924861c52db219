"""`worker topology`'s pure parts: AWS's rules on names, FIFO, maxReceiveCount and filter policies (stricter
than LocalStack), queue-policy evaluation, the plan against emulated states, subscription-DLQ envelopes."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from worker.cli import build_parser, main
from worker.engine.message import parse_message
from worker.ops import dlq_envelopes
from worker.ops.filter_policy import parse_filter_policy
from worker.ops.queue_policy import (
    sns_send_verdict,
    sns_statement,
    topics_allowed_to_send,
    with_sns_statement,
)
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
    Status,
    Subscribe,
    SubscriptionState,
    TopicState,
)
from worker.ops.topology_spec import Spec, build_spec, default_max_receive_count

ROOT = Path(__file__).resolve().parents[1]
TOPIC = "arn:aws:sns:eu-west-1:123456789012:orders"
QUEUE = "arn:aws:sqs:eu-west-1:123456789012:orders"


def arns_of(spec: Spec) -> Arns:
    """The ARNs of ``spec`` in a fixed account and region."""
    return Arns.of(
        spec, partition="aws", account="123456789012", sqs_region="eu-west-1", sns_region="eu-west-1"
    )


# --- arguments ----------------------------------------------------------------------------------------


def test_defaults_derive_names_and_max_receive_count() -> None:
    """DLQ names come from the queue (before .fifo); maxReceiveCount is 2 x attempts + 3 within 1..1000."""
    spec = build_spec(topic="orders", queue="orders")
    assert (spec.dlq, spec.subscription_dlq, spec.max_receive_count) == ("orders-dlq", "orders-sns-dlq", 13)
    assert not spec.fifo
    assert not spec.raw
    assert spec.filter_policy is None
    fifo = build_spec(topic="orders.fifo", queue="jobs.fifo", max_attempts=3)
    assert (fifo.dlq, fifo.subscription_dlq, fifo.max_receive_count) == (
        "jobs-dlq.fifo",
        "jobs-sns-dlq.fifo",
        9,
    )
    assert fifo.fifo
    assert [default_max_receive_count(n) for n in (1, 5, 498, 1000)] == [5, 13, 999, 1000]
    by_arn = build_spec(topic=TOPIC, queue="orders", max_receive_count=1)
    assert (by_arn.topic, by_arn.topic_arn, by_arn.max_receive_count) == ("orders", TOPIC, 1)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"queue": "team/orders"}, "--queue 'team/orders': only letters"),  # LocalStack takes the slash
        ({"queue": "q" * 76 + ".fifo", "topic": "t.fifo"}, "81 characters, at most 80"),
        ({"queue": "q" * 77}, "--dlq 'qqq"),  # the derived DLQ name is too long: say which one
        ({"queue": ""}, "--queue '': only letters"),
        ({"topic": "a b"}, "--topic 'a b'"),
        ({"topic": "t" * 257}, "at most 256"),
        ({"topic": "arn:aws:sqs:eu-west-1:123456789012:orders"}, "not an SNS topic ARN"),
        ({"topic": "arn:nope"}, "not an ARN"),
        ({"dlq": "orders"}, "three different queues"),
        ({"topic": "orders.fifo"}, "a FIFO topic delivers to a FIFO queue"),
        ({"queue": "orders.fifo"}, "a standard topic delivers to a standard queue"),
        ({"topic": "o.fifo", "queue": "o.fifo", "dlq": "d"}, "SQS: the DLQ of a FIFO queue is a FIFO queue"),
        ({"subscription_dlq": "s.fifo"}, "SNS: a standard topic's subscription DLQ is a standard queue"),
        ({"max_receive_count": 0}, "maxReceiveCount must be 1..1000, got 0"),
        ({"max_receive_count": 1001}, "maxReceiveCount must be 1..1000, got 1001"),
        ({"filter_policy_scope": "MessageBody"}, "--filter-policy-scope needs --filter-policy"),
    ],
)
def test_arguments_aws_refuses_are_refused_before_any_call(arguments: dict[str, Any], message: str) -> None:
    """Each argument AWS would refuse (some LocalStack accepts) is one TopologyError naming it."""
    with pytest.raises(TopologyError, match=re.escape(message)):
        build_spec(**{"topic": "orders", "queue": "orders", **arguments})


@pytest.mark.parametrize(
    ("policy", "scope", "message"),
    [
        ("{not json", "MessageAttributes", "not valid JSON"),
        ('["a"]', "MessageAttributes", "non-empty JSON object"),
        ("{}", "MessageAttributes", "non-empty JSON object"),
        ('{"a": "x"}', "MessageAttributes", '"a" must be an array'),
        ('{"a": []}', "MessageAttributes", "empty array"),
        ('{"a": [["x"]]}', "MessageAttributes", "cannot be an array"),
        ('{"a": [{"prefix": "x", "suffix": "y"}]}', "MessageAttributes", "one operator per match"),
        ('{"a": {"b": ["x"]}}', "MessageAttributes", "only --filter-policy-scope MessageBody"),
        ('{"a": {}}', "MessageBody", "empty object"),
        (json.dumps({k: ["x"] for k in "abcdef"}), "MessageAttributes", "6 keys"),
        # Three top-level keys, six leaf keys: SNS counts the leaves (LocalStack counts the three).
        (json.dumps({p: {"x": ["1"], "y": ["2"]} for p in "abc"}), "MessageBody", "6 keys (a.x, a.y, b.x"),
        (json.dumps({"a": list(range(10)), "b": list(range(16))}), "MessageAttributes", "160 value combin"),
        ('{"$or": [{"a": ["x"]}]}', "MessageAttributes", "at least two objects"),
        (json.dumps({"a": ["x" * 270_000]}), "MessageAttributes", "larger than 256 KiB"),
    ],
)
def test_filter_policies_sns_refuses_are_refused(policy: str, scope: str, message: str) -> None:
    """Filter policies break SNS's rules: JSON object, arrays, 5 leaf keys, 150 combinations, 256 KiB."""
    with pytest.raises(TopologyError, match=re.escape(message)):
        build_spec(topic="orders", queue="orders", filter_policy=policy, filter_policy_scope=scope)


def test_filter_policy_limits_accept_what_sns_accepts() -> None:
    """AWS's nested example (3 x 4 x 2 x 3 = 72 combinations), $or branches summed, 5 keys, 150 exactly."""
    nested = {"key_a": {"key_b": {"key_c": ["v1", "v2", "v3", "v4"]}}, "key_d": {"key_e": ["v1", "v2", "v3"]}}
    assert parse_filter_policy(json.dumps(nested), "MessageBody") == nested
    either = {"source": ["aws.cloudwatch"], "$or": [{"metric": ["cpu", "io"]}, {"ns": ["ec2", "es"]}]}
    assert parse_filter_policy(json.dumps(either)) == either
    five = {k: ["x"] for k in "abcd"} | {"e": list(range(150))}
    assert parse_filter_policy(json.dumps(five)) == five
    spec = build_spec(topic="o", queue="o", filter_policy=' { "kind" : [ "order" ] } ')
    assert (spec.filter_policy, spec.filter_policy_scope) == ('{"kind":["order"]}', "MessageAttributes")


def test_bad_arguments_print_usage_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """argparse-level and AWS-rule-level mistakes both exit 2 with usage, before any AWS call."""
    with pytest.raises(SystemExit) as bad_count:
        build_parser().parse_args(["topology", "--topic", "t", "--queue", "q", "--max-receive-count", "0"])
    assert bad_count.value.code == 2
    assert "maxReceiveCount must be 1..1000, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad_scope:
        build_parser().parse_args(
            ["topology", "--topic", "t", "--queue", "q", "--filter-policy-scope", "Body"]
        )
    assert bad_scope.value.code == 2
    for argv, message in (
        (["--queue", "a/b"], "--queue 'a/b': only letters"),
        (["--queue", "q", "--filter-policy", f"@{tmp_path / 'missing.json'}"], "cannot read it"),
        (["--queue", "q", "--filter-policy", '{"a": 1}'], '"a" must be an array'),
    ):
        with pytest.raises(SystemExit) as exited:
            main(["topology", "--topic", "t", *argv])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert "usage: worker topology" in err
        assert message in err


# --- queue policies -----------------------------------------------------------------------------------


def _policy(*statements: Mapping[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


ALLOW_ANY_TOPIC = {
    "Effect": "Allow",
    "Principal": {"Service": "sns.amazonaws.com"},
    "Action": "sqs:SendMessage",
}


@pytest.mark.parametrize(
    ("statement", "allowed", "denied"),
    [
        (sns_statement(QUEUE, TOPIC), True, False),
        # The shapes AWS's own documentation uses: "*" principal, ArnLike with a wildcard, action lists.
        (
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["SQS:SendMessage", "sqs:ReceiveMessage"],
                "Resource": "arn:aws:sqs:eu-west-1:123456789012:*",
                "Condition": {"ArnLike": {"aws:SourceArn": "arn:aws:sns:eu-west-1:123456789012:ord*"}},
            },
            True,
            False,
        ),
        (
            {
                **ALLOW_ANY_TOPIC,
                "Resource": QUEUE,
                "Action": "sqs:*",
                "Condition": {"StringEquals": {"aws:SourceArn": [TOPIC]}},
            },
            True,
            False,
        ),
        # Not scoped to the topic: not counted (any topic in any account could send).
        ({**ALLOW_ANY_TOPIC, "Resource": QUEUE}, False, False),
        (
            {
                **ALLOW_ANY_TOPIC,
                "Resource": QUEUE,
                "Condition": {"StringEquals": {"aws:SourceAccount": "123456789012"}},
            },
            False,
            False,
        ),
        (
            {
                **ALLOW_ANY_TOPIC,
                "Resource": QUEUE,
                "Condition": {"ArnEquals": {"aws:SourceArn": TOPIC + "2"}},
            },
            False,
            False,
        ),
        (
            {
                **ALLOW_ANY_TOPIC,
                "Resource": QUEUE + "-other",
                "Condition": {"ArnEquals": {"aws:SourceArn": TOPIC}},
            },
            False,
            False,
        ),
        (
            {
                **ALLOW_ANY_TOPIC,
                "Principal": {"Service": "s3.amazonaws.com"},
                "Resource": QUEUE,
                "Condition": {"ArnEquals": {"aws:SourceArn": TOPIC}},
            },
            False,
            False,
        ),
        ({**ALLOW_ANY_TOPIC, "Effect": "Deny", "Resource": "*"}, False, True),
        (
            {
                **ALLOW_ANY_TOPIC,
                "Effect": "Deny",
                "Resource": QUEUE,
                "Condition": {"ArnNotEquals": {"aws:SourceArn": "arn:aws:sns:eu-west-1:123456789012:other"}},
            },
            False,
            True,
        ),
        # A deny on another condition key cannot be evaluated here: never taken as proof of a deny.
        (
            {
                **ALLOW_ANY_TOPIC,
                "Effect": "Deny",
                "Resource": QUEUE,
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
            False,
            False,
        ),
        (
            {
                **ALLOW_ANY_TOPIC,
                "Effect": "Deny",
                "Resource": QUEUE,
                "Condition": {"ArnEquals": {"aws:SourceArn": TOPIC + "2"}},
            },
            False,
            False,
        ),
    ],
)
def test_queue_policy_verdict(statement: dict[str, Any], allowed: bool, denied: bool) -> None:
    """Principal, Action, Resource and aws:SourceArn conditions decide whether the topic may send."""
    verdict = sns_send_verdict(_policy(statement), QUEUE, TOPIC)
    assert verdict.allowed is allowed
    assert (verdict.denied_by is not None) is denied
    both = sns_send_verdict(_policy(sns_statement(QUEUE, TOPIC), statement), QUEUE, TOPIC)
    assert both.allowed is not denied


def test_policy_merge_keeps_other_statements_and_is_idempotent() -> None:
    """Adding the topic's statement keeps foreign ones, replaces its own older copy, and is stable."""
    foreign = {
        "Sid": "Audit",
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::1:root"},
        "Action": "sqs:*",
        "Resource": QUEUE,
    }
    stale = {**sns_statement(QUEUE, TOPIC), "Resource": "arn:aws:sqs:eu-west-1:123456789012:gone"}
    merged = with_sns_statement(_policy(foreign, stale), QUEUE, TOPIC)
    assert json.loads(merged)["Statement"] == [foreign, sns_statement(QUEUE, TOPIC)]
    assert with_sns_statement(merged, QUEUE, TOPIC) == merged
    assert sns_send_verdict(merged, QUEUE, TOPIC).allowed
    fresh = json.loads(with_sns_statement(None, QUEUE, TOPIC))
    assert fresh == {"Version": "2012-10-17", "Statement": [sns_statement(QUEUE, TOPIC)]}
    assert json.loads(with_sns_statement("{not json", QUEUE, TOPIC)) == fresh
    assert not sns_send_verdict("{not json", QUEUE, TOPIC).readable
    assert topics_allowed_to_send(merged, QUEUE) == [TOPIC]
    assert topics_allowed_to_send(_policy(foreign), QUEUE) == []
    assert topics_allowed_to_send(None, QUEUE) == []


# --- the plan against emulated AWS states ---------------------------------------------------------------


class FakeAws:
    """Applies the plan's actions to an in-memory state the way SQS and SNS would."""

    def __init__(self, spec: Spec) -> None:
        self.spec, self.arns = spec, arns_of(spec)
        self.queues: dict[str, dict[str, str]] = {}
        self.topic: dict[str, str] | None = None
        self.subscription: dict[str, str] | None = None

    def observe(self) -> Observed:
        def queue(name: str) -> QueueState:
            attributes = self.queues.get(name)
            return (
                QueueState(name) if attributes is None else QueueState(name, f"https://q/{name}", attributes)
            )

        topic = TopicState(self.arns.topic, self.topic is not None, self.topic or {})
        sub = (
            SubscriptionState()
            if self.subscription is None
            else SubscriptionState("arn:sub", self.subscription)
        )
        return Observed(
            topic, queue(self.spec.queue), queue(self.spec.dlq), queue(self.spec.subscription_dlq), sub
        )

    def apply(self, action: Action) -> None:
        match action:
            case CreateTopic(attributes=attributes):
                self.topic = dict(attributes)
            case CreateQueue(name=name, attributes=attributes):
                assert name not in self.queues
                self.queues[name] = dict(attributes)
            case SetQueueAttributes(name=name, attributes=attributes):
                self.queues[name].update(attributes)
            case Subscribe(topic_arn=topic, queue_arn=queue, attributes=attributes):
                assert self.topic is not None
                assert (topic, queue) == (self.arns.topic, self.arns.queue)
                assert {self.spec.queue, self.spec.subscription_dlq} <= set(self.queues)
                self.subscription = {"PendingConfirmation": "false", **attributes}
            case SetSubscriptionAttribute(name=name, value=value):
                assert self.subscription is not None
                self.subscription[name] = value

    def converge(self) -> list[Action]:
        done = []
        for _ in range(3):
            todo = fixes(plan(self.spec, self.observe(), self.arns))
            for action in todo:
                self.apply(action)
            done += todo
        return done


def test_one_pass_in_plan_order_creates_everything() -> None:
    """From nothing: topic, DLQ, queue (naming the DLQ), subscription DLQ, subscription; then all ok."""
    spec = build_spec(topic="orders", queue="orders")
    fake = FakeAws(spec)
    checks = plan(spec, fake.observe(), fake.arns)
    assert {c.status for c in checks} == {Status.MISSING}
    assert not manual(checks)
    first = fixes(checks)
    assert [type(a).__name__ for a in first] == [
        "CreateTopic",
        "CreateQueue",
        "CreateQueue",
        "CreateQueue",
        "Subscribe",
    ]
    assert [getattr(a, "name", "") for a in first[:4]] == ["orders", "orders-dlq", "orders", "orders-sns-dlq"]
    for action in first:
        fake.apply(action)
    after = plan(spec, fake.observe(), fake.arns)
    assert all(c.status == Status.OK for c in after), [c for c in after if c.status != Status.OK]
    assert fixes(after) == []
    queue = fake.queues["orders"]
    assert json.loads(queue["RedrivePolicy"]) == {"deadLetterTargetArn": fake.arns.dlq, "maxReceiveCount": 13}
    assert sns_send_verdict(queue["Policy"], fake.arns.queue, fake.arns.topic).allowed
    assert fake.subscription is not None
    assert json.loads(fake.subscription["RedrivePolicy"]) == {
        "deadLetterTargetArn": fake.arns.subscription_dlq
    }
    assert fake.queues["orders-dlq"]["MessageRetentionPeriod"] == "1209600"


def test_broken_pieces_are_reported_and_fixed() -> None:
    """Wrong RedrivePolicy, lost policy, short DLQ retention, wrong raw flag: each one check, one fix."""
    spec = build_spec(topic="orders", queue="orders", raw=True)
    fake = FakeAws(spec)
    fake.converge()
    fake.queues["orders"]["RedrivePolicy"] = json.dumps(
        {"deadLetterTargetArn": fake.arns.dlq, "maxReceiveCount": 3}
    )
    del fake.queues["orders-sns-dlq"]["Policy"]
    fake.queues["orders-dlq"]["MessageRetentionPeriod"] = "60"
    assert fake.subscription is not None
    fake.subscription["RawMessageDelivery"] = "false"
    failing = {c.key: c for c in plan(spec, fake.observe(), fake.arns) if c.status != Status.OK}
    assert set(failing) == {
        "queue.redrive_policy",
        "subscription_dlq.policy",
        "dlq.retention",
        "subscription.raw",
    }
    assert failing["subscription_dlq.policy"].status == Status.MISSING
    assert '"maxReceiveCount": 3' in failing["queue.redrive_policy"].found
    assert failing["dlq.retention"].found == "60 s"
    assert len(fake.converge()) == 4
    assert all(c.status == Status.OK for c in plan(spec, fake.observe(), fake.arns))


def test_filter_policy_changes_keep_scope_and_policy_consistent() -> None:
    """Filter policy changes order scope and policy so each step is valid; dropping one sets {}."""
    base = build_spec(topic="orders", queue="orders", filter_policy='{"kind": ["a"]}')
    fake = FakeAws(base)
    fake.converge()
    nested = replace(base, filter_policy='{"order":{"kind":["a"]}}', filter_policy_scope="MessageBody")
    fake.spec = nested
    names = [a.name for a in fake.converge() if isinstance(a, SetSubscriptionAttribute)]
    assert names == ["FilterPolicyScope", "FilterPolicy"]
    fake.spec = base
    names = [a.name for a in fake.converge() if isinstance(a, SetSubscriptionAttribute)]
    assert names == ["FilterPolicy", "FilterPolicyScope"]
    fake.spec = replace(base, filter_policy=None)
    todo = fake.converge()
    assert [(a.name, a.value) for a in todo if isinstance(a, SetSubscriptionAttribute)] == [
        ("FilterPolicy", "{}")
    ]
    assert all(c.status == Status.OK for c in plan(fake.spec, fake.observe(), fake.arns))


def test_what_only_a_person_can_fix_stops_every_change() -> None:
    """Wrong queue type, a deny, a pending confirmation, a missing topic ARN: manual, nothing applied."""
    spec = build_spec(topic="orders", queue="orders")
    fake = FakeAws(spec)
    fake.converge()
    fake.queues["orders-dlq"]["FifoQueue"] = "true"
    deny = {**ALLOW_ANY_TOPIC, "Sid": "NoSns", "Effect": "Deny", "Resource": "*"}
    fake.queues["orders"]["Policy"] = _policy(
        json.loads(fake.queues["orders"]["Policy"])["Statement"][0], deny
    )
    assert fake.subscription is not None
    fake.subscription["PendingConfirmation"] = "true"
    blocked = {c.key: c.manual for c in manual(plan(spec, fake.observe(), fake.arns))}
    assert set(blocked) == {"dlq", "queue.policy", "subscription"}
    assert "type cannot change" in blocked["dlq"]
    assert "NoSns" in blocked["queue.policy"]
    missing_by_arn = build_spec(topic=TOPIC, queue="orders")
    checks = plan(missing_by_arn, FakeAws(missing_by_arn).observe(), arns_of(missing_by_arn))
    topic = checks[0]
    assert (topic.key, topic.status, topic.fix) == ("topic", Status.MISSING, None)
    assert "create it in its own account" in topic.manual
    assert not any(isinstance(a, Subscribe) for a in fixes(checks))


def test_fifo_topology_is_fifo_throughout() -> None:
    """FIFO names: a FIFO topic and three FIFO queues; the subscription's DLQ is the FIFO one."""
    spec = build_spec(topic="orders.fifo", queue="orders.fifo")
    fake = FakeAws(spec)
    fake.converge()
    assert fake.topic == {"FifoTopic": "true"}
    assert {name: q["FifoQueue"] for name, q in fake.queues.items()} == dict.fromkeys(
        ("orders-dlq.fifo", "orders.fifo", "orders-sns-dlq.fifo"), "true"
    )


# --- subscription DLQ envelopes ---------------------------------------------------------------------------


def _entry(body: str, **attributes: dict[str, Any]) -> dict[str, Any]:
    return {"MessageId": "m-1", "ReceiptHandle": "r", "Body": body, "MessageAttributes": attributes}


def test_envelopes_show_topic_id_subject_time_and_attributes_never_the_body() -> None:
    """An SNS envelope yields its metadata and attributes (long values cut); a raw body yields None."""
    envelope = {
        "Type": "Notification",
        "MessageId": "sns-1",
        "TopicArn": TOPIC,
        "Subject": "hello",
        "Message": "SECRET PAYLOAD",
        "Timestamp": "2026-01-02T03:04:05.678Z",
        "MessageAttributes": {
            "kind": {"Type": "String", "Value": "order"},
            "long": {"Type": "String", "Value": "x" * 100},
            "blob": {"Type": "Binary", "Value": "AAEC"},
        },
    }
    message = parse_message(_entry(json.dumps(envelope)), "https://q/orders-sns-dlq")
    details = dlq_envelopes.sns_details(message)
    assert details == {
        "topic_arn": TOPIC,
        "topic": "orders",
        "message_id": "sns-1",
        "subject": "hello",
        "published_at": "2026-01-02T03:04:05.678000Z",
        "attributes": {"blob": "<3 bytes>", "kind": "order", "long": "x" * 61 + "..."},
    }
    lines = "\n".join(dlq_envelopes.record_lines(details))
    assert "topic orders  message id sns-1" in lines
    assert "kind=order" in lines
    assert "SECRET" not in json.dumps(details) + lines
    raw = parse_message(_entry("SECRET", kind={"DataType": "String", "StringValue": "order"}), "https://q/x")
    assert dlq_envelopes.sns_details(raw) is None
    assert dlq_envelopes.by_topic([details, None, details]) == {"orders": 2}
    policy = with_sns_statement(None, QUEUE, TOPIC)
    assert dlq_envelopes.subscription_dlq_info({"Policy": policy}, QUEUE) == {"topics": [TOPIC]}
    assert dlq_envelopes.subscription_dlq_info({}, QUEUE) is None
    assert dlq_envelopes.header_lines({"topics": [TOPIC]}) == [
        "  subscription DLQ of SNS topic(s) orders: what SNS could not deliver to the queue"
    ]


# --- docs ---------------------------------------------------------------------------------------------------


def test_documented_iam_actions_are_exactly_what_the_command_calls() -> None:
    """docs/topology.md lists exactly the IAM actions of the calls in worker/ops/topology.py."""
    from tests.test_iam_policy import AUTHORIZED_AS, aws_operations

    called = aws_operations((ROOT / "worker/ops/topology.py").read_text())
    needed = {action for op in called if (action := AUTHORIZED_AS.get(op, op)) is not None}
    text = (ROOT / "docs/topology.md").read_text()
    section = text[text.index("## IAM") :]
    section = section[: section.find("\n## ", 1)] if "\n## " in section[1:] else section
    read = re.search(r"```json\n(.*?)```", section, re.S)
    assert read is not None
    documented = set(re.findall(r'"((?:sqs|sns):[A-Za-z]+)"', section))
    check_only = set(re.findall(r'"((?:sqs|sns):[A-Za-z]+)"', read.group(1)))
    assert documented == needed
    assert check_only == {a for a in needed if a.split(":")[1].startswith(("Get", "List"))}

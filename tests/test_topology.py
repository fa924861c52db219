"""`worker topology` on LocalStack: create from nothing, check, idempotent reruns, broken pieces found
and fixed, FIFO with a filter policy, a refused remote write, and an SNS delivery failure in the
subscription DLQ that `worker dlq` shows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import unique
from tests.helpers import depth, drain, wait_for
from tests.test_redrive_support import redrive
from worker.cli import build_parser
from worker.cli import main as cli_main
from worker.engine.message import parse_message
from worker.ops import topology
from worker.ops.dlq import inspect, render_text
from worker.ops.queue_policy import sns_send_verdict
from worker.ops.settings import ToolError, ToolSettings
from worker.ops.topology import converge
from worker.ops.topology_cli import spec_from_args
from worker.ops.topology_records import Observed, Status
from worker.ops.topology_report import Outcome
from worker.ops.topology_report import render_text as topology_text
from worker.ops.topology_spec import Spec, build_spec

pytestmark = pytest.mark.localstack


def statuses(outcome: Outcome) -> dict[str, Status]:
    """Check key -> status."""
    return {c.key: c.status for c in outcome.checks}


def failing(outcome: Outcome) -> dict[str, Status]:
    """The checks that did not pass."""
    return {k: s for k, s in statuses(outcome).items() if s != Status.OK}


async def attributes(sqs: Any, url: str) -> dict[str, str]:
    """Every attribute of a queue."""
    return dict((await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))["Attributes"])


async def test_create_from_nothing_then_check_passes_and_a_rerun_changes_nothing(
    localstack_endpoint: str, sqs: Any, aws: Any
) -> None:
    """From nothing: --check finds all missing, one create builds it as AWS needs, a rerun changes nothing."""
    name = unique("topo")
    spec = build_spec(topic=name, queue=name)
    empty = await converge(spec, check_only=True)
    assert set(statuses(empty).values()) == {Status.MISSING}
    assert empty.done == []
    assert (await sqs.list_queues(QueueNamePrefix=name)).get("QueueUrls", []) == []  # --check wrote nothing

    created = await converge(spec, check_only=False)
    assert created.ok, failing(created)
    assert [text.split()[0:2] for text in created.done] == [
        ["create", "topic"],
        ["create", "dlq"],
        ["create", "queue"],
        ["create", "subscription-dlq"],
        ["subscribe", "queue"],
    ]
    arns = created.arns
    queue = await attributes(sqs, str(created.seen.queue.url))
    assert json.loads(queue["RedrivePolicy"]) == {"deadLetterTargetArn": arns.dlq, "maxReceiveCount": 13}
    assert sns_send_verdict(queue["Policy"], arns.queue, arns.topic).allowed
    sub_dlq = await attributes(sqs, str(created.seen.subscription_dlq.url))
    (statement,) = json.loads(sub_dlq["Policy"])["Statement"]
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": arns.topic}}
    assert statement["Resource"] == arns.subscription_dlq
    assert (await attributes(sqs, str(created.seen.dlq.url)))["MessageRetentionPeriod"] == "1209600"
    sns = await aws("sns")
    (sub,) = (await sns.list_subscriptions_by_topic(TopicArn=arns.topic))["Subscriptions"]
    sub_attributes = (await sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"]))[
        "Attributes"
    ]
    assert (sub["Protocol"], sub["Endpoint"]) == ("sqs", arns.queue)
    assert json.loads(sub_attributes["RedrivePolicy"]) == {"deadLetterTargetArn": arns.subscription_dlq}
    assert sub_attributes["RawMessageDelivery"] == "false"
    assert created.env == {
        "WORKER_QUEUE_URL": created.seen.queue.url,
        "WORKER_DLQ_URL": created.seen.dlq.url,
    }

    again = await converge(spec, check_only=False)
    assert again.ok
    assert again.done == []
    assert "nothing to change" in topology_text(again, [])
    assert (await converge(spec, check_only=True)).ok


async def test_broken_pieces_are_reported_by_check_and_fixed_by_create(
    localstack_endpoint: str, sqs: Any, aws: Any
) -> None:
    """Four broken pieces: --check reports each, one create fixes them and keeps a foreign statement."""
    name = unique("topo")
    spec = build_spec(topic=name, queue=name)
    created = await converge(spec, check_only=False)
    arns, seen = created.arns, created.seen
    queue_url, sub_dlq_url = str(seen.queue.url), str(seen.subscription_dlq.url)
    foreign = {"Sid": "Audit", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::000000000000:root"}}
    foreign |= {"Action": "sqs:GetQueueAttributes", "Resource": arns.queue}
    broken_redrive = json.dumps({"deadLetterTargetArn": arns.dlq, "maxReceiveCount": 3})
    await sqs.set_queue_attributes(
        QueueUrl=queue_url,
        Attributes={
            "RedrivePolicy": broken_redrive,
            "Policy": json.dumps({"Version": "2012-10-17", "Statement": [foreign]}),
        },
    )
    await sqs.set_queue_attributes(QueueUrl=sub_dlq_url, Attributes={"Policy": ""})
    sns = await aws("sns")
    await sns.set_subscription_attributes(
        SubscriptionArn=str(seen.subscription.arn), AttributeName="RawMessageDelivery", AttributeValue="true"
    )

    report = await converge(spec, check_only=True)
    assert failing(report) == {
        "queue.redrive_policy": Status.WRONG,
        "queue.policy": Status.WRONG,
        "subscription_dlq.policy": Status.MISSING,
        "subscription.raw": Status.WRONG,
    }
    text = topology_text(report, [])
    assert '"maxReceiveCount": 3}; expected {"deadLetterTargetArn"' in text
    assert "12 checks: 8 ok, 1 missing, 3 wrong" in text

    fixed = await converge(spec, check_only=False)
    assert fixed.ok, failing(fixed)
    assert len(fixed.done) == 4
    queue = await attributes(sqs, queue_url)
    assert json.loads(queue["RedrivePolicy"])["maxReceiveCount"] == 13
    assert json.loads(queue["Policy"])["Statement"][0] == foreign  # kept: nothing is deleted
    assert (await converge(spec, check_only=True)).ok


async def test_fifo_topology_with_raw_delivery_and_a_body_filter_policy(
    localstack_endpoint: str, sqs: Any, aws: Any, tmp_path: Path
) -> None:
    """FIFO names build a FIFO topology; an @file body filter policy is set, and a changed one fixed."""
    name = unique("topo")
    policy = tmp_path / "filter.json"
    policy.write_text(json.dumps({"order": {"kind": ["paid"]}}))
    argv = ["topology", "--topic", f"{name}.fifo", "--queue", f"{name}.fifo", "--raw", "--json"]
    argv += ["--filter-policy", f"@{policy}", "--filter-policy-scope", "MessageBody"]
    spec = spec_from_args(build_parser().parse_args(argv), max_attempts=5)
    created = await converge(spec, check_only=False)
    assert created.ok, failing(created)
    for state in (created.seen.queue, created.seen.dlq, created.seen.subscription_dlq):
        assert state.name.endswith("-dlq.fifo") or state.name == f"{name}.fifo"
        assert (await attributes(sqs, str(state.url)))["FifoQueue"] == "true"
    sns = await aws("sns")
    topic = (await sns.get_topic_attributes(TopicArn=created.arns.topic))["Attributes"]
    assert topic["FifoTopic"] == "true"
    sub = (await sns.get_subscription_attributes(SubscriptionArn=str(created.seen.subscription.arn)))[
        "Attributes"
    ]
    assert (sub["RawMessageDelivery"], sub["FilterPolicyScope"]) == ("true", "MessageBody")
    assert json.loads(sub["FilterPolicy"]) == {"order": {"kind": ["paid"]}}

    changed = build_spec(
        topic=f"{name}.fifo",
        queue=f"{name}.fifo",
        raw=True,
        filter_policy='{"order": {"kind": ["paid", "refunded"]}}',
        filter_policy_scope="MessageBody",
    )
    assert failing(await converge(changed, check_only=True)) == {"subscription.filter_policy": Status.WRONG}
    assert (await converge(changed, check_only=False)).done == ["set FilterPolicy of the subscription"]
    assert (await converge(changed, check_only=True)).ok


async def test_remote_write_needs_a_confirmation(localstack_endpoint: str, sqs: Any) -> None:
    """Taking LocalStack for a remote endpoint: a refused confirmation changes nothing; reads need none."""
    name = unique("topo")
    spec = build_spec(topic=name, queue=name)
    asked: list[tuple[int, str]] = []

    async def refuse(todo: list[Any], endpoint: str) -> bool:
        asked.append((len(todo), endpoint))
        return False

    with pytest.raises(ToolError, match="not confirmed: nothing was changed"):
        await converge(spec, check_only=False, confirm=refuse, is_local=lambda _: False)
    assert asked == [(5, localstack_endpoint)]
    assert (await sqs.list_queues(QueueNamePrefix=name)).get("QueueUrls", []) == []
    checked = await converge(spec, check_only=True, confirm=refuse, is_local=lambda _: False)
    assert not checked.ok
    assert len(asked) == 1


async def test_changes_aws_shows_late_are_awaited_not_applied_twice(
    localstack_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changes AWS shows late are awaited, never applied twice; ones that never show are listed."""
    name = unique("topo")
    spec = build_spec(topic=name, queue=name)
    real_observe = topology.observe
    reads: list[Observed] = []

    async def stale_twice(clients: Any, spec: Spec, arns: Any) -> Observed:
        fresh = await real_observe(clients, spec, arns)
        reads.append(fresh)
        return reads[0] if len(reads) in (2, 3) else fresh  # the two reads after the writes: stale

    monkeypatch.setattr(topology, "observe", stale_twice)
    slow = await converge(spec, check_only=False, settle_seconds=0.4)
    assert slow.ok, failing(slow)
    assert (len(slow.done), len(reads), slow.unsettled) == (5, 4, [])
    first: list[Observed] = []

    async def never_shows(clients: Any, spec: Spec, arns: Any) -> Observed:
        first.append(await real_observe(clients, spec, arns))
        return first[0]  # every read shows the state before the writes

    monkeypatch.setattr(topology, "observe", never_shows)
    other = unique("topo")
    stuck = await converge(build_spec(topic=other, queue=other), check_only=False, settle_seconds=0.2)
    assert not stuck.ok
    assert len(stuck.unsettled) == len(stuck.done) == 5
    assert "5 applied changes did not show within" in topology_text(stuck, [])


def test_cli_check_exit_codes_text_and_json(
    localstack_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`worker topology --check` exits 1 on a missing topology, 0 once created; --json is one document."""
    name = unique("topo")
    base = ["topology", "--topic", name, "--queue", name, "--max-receive-count", "4"]
    assert cli_main([*base, "--check"]) == 1
    out = capsys.readouterr().out
    assert f"  missing  queue {name} " in out
    assert "run `worker topology` without --check" in out
    assert cli_main(base) == 0
    out = capsys.readouterr().out
    assert f"  create queue {name} (Policy, RedrivePolicy)" in out
    assert "note: maxReceiveCount 4 is not above WORKER_MAX_ATTEMPTS (5)" in out
    assert f"WORKER_DLQ_URL={localstack_endpoint}" in out
    assert cli_main([*base, "--check", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["mode"], doc["ok"], doc["max_receive_count"], doc["done"]) == ("check", True, 4, [])
    assert {c["status"] for c in doc["checks"]} == {"ok"}
    assert doc["env"]["WORKER_QUEUE_URL"].endswith(f"/{name}")


async def test_undeliverable_notification_lands_in_the_subscription_dlq_and_worker_dlq_shows_it(
    localstack_endpoint: str, sqs: Any, aws: Any
) -> None:
    """Deleted queue: SNS dead-letters to the subscription DLQ, worker dlq shows it, redrive returns it."""
    name = unique("topo")
    spec = build_spec(topic=name, queue=name)
    created = await converge(spec, check_only=False)
    sub_dlq_url = str(created.seen.subscription_dlq.url)
    await sqs.delete_queue(QueueUrl=str(created.seen.queue.url))
    sns = await aws("sns")
    published = await sns.publish(
        TopicArn=created.arns.topic,
        Message=json.dumps({"card": "4111-SECRET"}),
        Subject="order 7",
        MessageAttributes={"kind": {"DataType": "String", "StringValue": "order_placed"}},
    )
    await wait_for(
        lambda: depth(sqs, sub_dlq_url), timeout=10, what="the notification in the subscription DLQ"
    )

    args = build_parser().parse_args(["dlq", "--dlq", sub_dlq_url, "--json"])
    report = await inspect(args, ToolSettings())
    assert report["subscription_dlq"] == {"topics": [created.arns.topic]}
    assert report["scan"]["by_topic"] == {name: 1}
    assert report["scan"]["by_error_type"] == {"none": 1}
    (row,) = report["scan"]["records"]
    assert row["sns"]["message_id"] == published["MessageId"]
    assert (row["sns"]["topic_arn"], row["sns"]["subject"]) == (created.arns.topic, "order 7")
    assert row["sns"]["attributes"] == {"kind": "order_placed"}
    assert row["sns"]["published_at"]
    assert "SECRET" not in json.dumps(report)
    text = render_text(report)
    assert f"subscription DLQ of SNS topic(s) {name}" in text
    assert "(no worker record: SNS could not deliver it)" in text
    assert f"sns: topic {name}  message id {published['MessageId']}" in text
    assert "subject: order 7" in text

    lost = await converge(spec, check_only=True)
    assert failing(lost) == dict.fromkeys(("queue", "queue.redrive_policy", "queue.policy"), Status.MISSING)
    assert statuses(lost)["subscription"] == Status.OK  # it still points at the queue's ARN
    restored = await converge(spec, check_only=False)
    assert restored.ok, failing(restored)
    assert restored.done == [f"create queue {name} (Policy, RedrivePolicy)"]

    # The way back (dlq-and-redrive.md): app-mode redrive to the queue; the copy is the envelope, unwrapped.
    queue_url = str(restored.seen.queue.url)
    report = await redrive(sub_dlq_url, to=queue_url, mode="app")
    assert (report.tally.moved, report.exit_code) == (1, 0)
    (entry,) = await drain(sqs, queue_url, expect=1)
    message = parse_message(entry, queue_url)
    assert message.sns is not None
    assert (message.sns.message_id, message.body) == (published["MessageId"], '{"card": "4111-SECRET"}')

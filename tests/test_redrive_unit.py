"""Pure parts of the redrive and DLQ tooling: token bucket, filters, redriven copy, mode choice, output."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.deadletter.record import FAILURE_ATTRIBUTE, failure_record, read_failure
from worker.engine.message import MessageAttribute, parse_message, parse_sqs_attributes
from worker.errors import ConfigError
from worker.ops.filters import Facts, parse_duration, parse_filter
from worker.ops.progress import Tally, format_bar
from worker.ops.redrive.command import _confirm
from worker.ops.redrive.options import RedriveMode, RedriveOptions, choose_mode, usage_problem
from worker.ops.redrive.plan import DeadLetteredMessage, Verdict, plan_redrive, redrive_dedup_id
from worker.ops.redrive.ratelimit import TokenBucket, default_burst
from worker.ops.redrive.report import Report
from worker.ops.settings import QueueRef, ToolError, is_loopback, load_tool_settings

SOURCE = {
    "url": "https://sqs.us-east-1.amazonaws.com/123456789012/orders",
    "arn": "arn:aws:sqs:us-east-1:123456789012:orders",
}
DLQ = "https://sqs.us-east-1.amazonaws.com/123456789012/orders-dlq"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

# --- token bucket ---------------------------------------------------------------------------------------


def test_bucket_long_run_rate_is_exact() -> None:
    """Taking batches back to back, the n-th batch is due at (n*size - burst) / rate seconds."""
    bucket = TokenBucket(rate=100, burst=10)
    now = 0.0
    for _ in range(50):
        now += bucket.reserve(10, now)
    assert now == pytest.approx((50 * 10 - 10) / 100)


def test_bucket_refund_and_debt() -> None:
    """A batch larger than the burst goes into debt; unused tokens come back, never above the burst."""
    bucket = TokenBucket(rate=2, burst=1)
    assert bucket.reserve(5, 0.0) == pytest.approx(2.0)
    bucket.refund(3, 0.0)
    assert bucket.reserve(0, 0.0) == pytest.approx(0.5)
    bucket.refund(100, 10.0)
    assert bucket.tokens == 1


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.5, 1000),
    steps=st.lists(st.tuples(st.integers(0, 10), st.floats(0, 2)), min_size=1, max_size=50),
)
def test_bucket_never_exceeds_rate_plus_burst(rate: float, steps: list[tuple[int, float]]) -> None:
    """Whatever the pattern, tokens used by time t are at most burst + rate * t."""
    bucket = TokenBucket(rate, default_burst(rate))
    now, used = 0.0, 0
    for n, gap in steps:
        now += gap
        now += bucket.reserve(n, now)
        used += n
        assert used <= bucket.burst + rate * now + 1e-6


def test_bucket_rejects_nonsense() -> None:
    """A zero, negative or infinite rate is refused."""
    for rate in (0, -1, float("inf")):
        with pytest.raises(ValueError):
            TokenBucket(rate, 1)


# --- filters --------------------------------------------------------------------------------------------

FACTS = Facts(
    error_type="RuntimeError",
    condition="RetriesExhausted",
    sources=("orders",),
    age_seconds=7200,
    attributes={"tenant": "acme"},
)


@pytest.mark.parametrize(
    ("expr", "matches"),
    [
        ("error_type=RuntimeError", True),
        ("error=TimeoutError,RuntimeError", True),
        ("error_type!=RuntimeError", False),
        ("condition=Timeout", False),
        ("source=orders", True),
        (f"source={SOURCE['url']}", True),
        (f"source={SOURCE['arn']}", True),
        ("source=payments", False),
        ("age>1h", True),
        ("age<1h", False),
        ("age>=2h", True),
        ("attr.tenant=acme", True),
        ("attr.tenant!=acme", False),
        ("attr.tenant", True),
        ("attr.region", False),
    ],
)
def test_filter_expressions(expr: str, matches: bool) -> None:
    """Each filter form selects what its documentation says."""
    assert parse_filter(expr).matches(FACTS) is matches


@pytest.mark.parametrize("expr", ["colour=red", "age>soon", "error_type=", "age~1h"])
def test_bad_filters_are_refused(expr: str) -> None:
    """A filter that cannot be read is an error, never a silent match-all."""
    with pytest.raises(ValueError):
        parse_filter(expr)


def test_durations() -> None:
    """Durations take s, m, h, d, or bare seconds."""
    assert [parse_duration(t) for t in ("90", "90s", "5m", "1.5h", "2d")] == [90, 90, 300, 5400, 172800]


# --- the redriven copy ----------------------------------------------------------------------------------


def dlq_entry(
    *,
    record: bool = True,
    redrive_count: int = 0,
    attributes: dict[str, MessageAttribute] | None = None,
    group: str | None = None,
    broker_source: str | None = None,
    failure_value: str | None = None,
) -> dict[str, Any]:
    """A ReceiveMessage entry from the DLQ."""
    originals = attributes if attributes is not None else {"tenant": MessageAttribute("String", "acme")}
    source_entry = {
        "MessageId": "orig-1",
        "ReceiptHandle": "rh",
        "Body": '{"order": 1}',
        "Attributes": {"ApproximateReceiveCount": "4", "SentTimestamp": "1767225600000"},
        "MessageAttributes": {k: v.to_sqs() for k, v in originals.items()},
    }
    message = parse_message(source_entry, SOURCE["url"])
    attrs = {k: v.to_sqs() for k, v in originals.items()}
    if record:
        rec = failure_record(
            message,
            error_type="RuntimeError",
            error_message="boom",
            condition="RetriesExhausted",
            attempts=5,
            source_queue_arn=SOURCE["arn"],
            handler="pkg:fn",
            handler_version="v1",
            now=NOW - timedelta(hours=2),
        )
        from worker.deadletter.record import build_dead_letter

        attrs = build_dead_letter(message, dataclasses.replace(rec, redrive_count=redrive_count), fifo=False)[
            "MessageAttributes"
        ]
    if failure_value is not None:
        attrs[FAILURE_ATTRIBUTE] = {"DataType": "String", "StringValue": failure_value}
    system = {"ApproximateReceiveCount": "1", "SentTimestamp": "1767225600000"}
    if group:
        system["MessageGroupId"] = group
    if broker_source:
        system["DeadLetterQueueSourceArn"] = broker_source
    return {
        "MessageId": "dlq-copy-1",
        "ReceiptHandle": "rh-dlq",
        "Body": '{"order": 1}',
        "Attributes": system,
        "MessageAttributes": {
            k: {**v, "BinaryValue": v["BinaryValue"]} if "BinaryValue" in v else v for k, v in attrs.items()
        },
    }


def plan_for(entry: dict[str, Any], target: str | None = SOURCE["url"], **kw: Any) -> Any:
    """plan_redrive with the usual arguments."""
    return plan_redrive(
        DeadLetteredMessage.from_entry(entry, DLQ),
        target_url=target,
        dlq_url=DLQ,
        max_redrives=3,
        now=NOW,
        **kw,
    )


def copy_record(plan: Any) -> Any:
    """The failure record carried by a planned copy."""
    attrs = parse_sqs_attributes(plan.request["MessageAttributes"])
    return read_failure(attrs)


def test_copy_keeps_body_attributes_and_original_id() -> None:
    """The copy has the body byte for byte, the original attributes, the record with the count raised."""
    plan = plan_for(dlq_entry())
    assert plan.verdict is Verdict.MOVE
    assert plan.request["MessageBody"] == '{"order": 1}'
    assert plan.request["MessageAttributes"]["tenant"] == {"DataType": "String", "StringValue": "acme"}
    record = copy_record(plan)
    assert record.redrive_count == 1
    assert record.redriven_at == "2026-01-02T03:04:05Z"
    assert record.original_message_id == "orig-1"
    assert record.error_type == "RuntimeError"


def test_copy_restores_displaced_attributes() -> None:
    """A message with 10 attributes: the one displaced into the DLQ record is carried the same way again."""
    ten = {f"a{i:02d}": MessageAttribute("String", str(i)) for i in range(10)}
    plan = plan_for(dlq_entry(attributes=ten))
    attrs = parse_sqs_attributes(plan.request["MessageAttributes"])
    from worker.deadletter.record import restore_attributes

    assert len(attrs) == 10
    assert restore_attributes(attrs) == ten


def test_worker_does_not_count_a_redrive_twice() -> None:
    """The worker keeps the count of a copy redrive raised; it counts a copy SQS moved unchanged itself."""
    plan = plan_for(dlq_entry(redrive_count=1))
    copy = parse_message(
        {
            "MessageId": "new",
            "ReceiptHandle": "r",
            "Body": "{}",
            "MessageAttributes": plan.request["MessageAttributes"],
        },
        SOURCE["url"],
    )
    again = failure_record(
        copy,
        error_type="RuntimeError",
        error_message="again",
        condition="RetriesExhausted",
        attempts=5,
        source_queue_arn=SOURCE["arn"],
        handler="pkg:fn",
        handler_version="v1",
        now=NOW,
        previous=read_failure(copy.sqs_attributes),
    )
    assert again.redrive_count == 2
    assert again.redriven_at is None
    assert again.history[-1]["redriven_at"] == "2026-01-02T03:04:05Z"
    assert again.original_message_id == "orig-1"
    native = DeadLetteredMessage.from_entry(dlq_entry(redrive_count=2), DLQ)  # moved unchanged by a move task
    assert native.record is not None
    counted = failure_record(
        native.message,
        error_type="E",
        error_message="",
        condition="RetriesExhausted",
        attempts=1,
        source_queue_arn="",
        handler="h:h",
        handler_version="",
        now=NOW,
        previous=native.record,
    )
    assert counted.redrive_count == 3


def test_loop_guard_holds_at_max_redrives() -> None:
    """A message already redriven --max-redrives times stays, with the reason."""
    plan = plan_for(dlq_entry(redrive_count=3))
    assert plan.verdict is Verdict.HOLD
    assert "redriven 3 times" in plan.reason
    assert plan_for(dlq_entry(redrive_count=2)).verdict is Verdict.MOVE


def test_bad_messages_fail() -> None:
    """Malformed metadata, no target, the DLQ as target, FIFO target without group: each fails, with why."""
    assert plan_for(dlq_entry(record=False, failure_value="{not json")).verdict is Verdict.FAIL
    assert "names no source" in plan_for(dlq_entry(record=False), target=None).reason
    assert "DLQ itself" in plan_for(dlq_entry(), target=DLQ).reason
    fifo = plan_for(dlq_entry(), target=SOURCE["url"] + ".fifo")
    assert fifo.verdict is Verdict.FAIL
    assert "group id" in fifo.reason


def test_fifo_copy_keeps_group_and_derives_dedup_id() -> None:
    """On a FIFO target the group stays and the dedup id is original id + new redrive count."""
    plan = plan_for(dlq_entry(group="g1", redrive_count=1), target=SOURCE["url"] + ".fifo")
    assert plan.request["MessageGroupId"] == "g1"
    assert plan.request["MessageDeduplicationId"] == redrive_dedup_id("orig-1", 2) == "redrive-2-orig-1"


def test_broker_dead_lettered_message_gets_a_record() -> None:
    """A message the broker moved gets a record naming its source, so the loop guard can count it."""
    entry = dlq_entry(record=False, broker_source=SOURCE["arn"])
    dead = DeadLetteredMessage.from_entry(entry, DLQ)
    assert dead.error_type == "none"
    assert dead.source_name == "orders"
    plan = plan_for(entry, source_url=SOURCE["url"])
    record = copy_record(plan)
    assert record.condition == "MaxReceiveCountExceeded"
    assert record.redrive_count == 1
    assert record.original_message_id == "dlq-copy-1"
    assert record.source_queue_arn == SOURCE["arn"]
    assert plan.request["MessageAttributes"]["tenant"]["StringValue"] == "acme"


# --- options, mode, output ------------------------------------------------------------------------------


def test_mode_choice() -> None:
    """App-only options, FIFO and a missing destination select app mode; otherwise the SQS move task."""
    plain = RedriveOptions()
    assert choose_mode(plain, fifo=False, has_destination=True)[0] == "native"
    assert choose_mode(plain, fifo=False, has_destination=False)[0] == "app"
    assert choose_mode(plain, fifo=True, has_destination=True)[0] == "app"
    assert choose_mode(RedriveOptions(dry_run=True), fifo=False, has_destination=True)[0] == "app"
    assert choose_mode(RedriveOptions(mode="app"), fifo=False, has_destination=True)[0] == "app"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (RedriveOptions(mode=RedriveMode.NATIVE, max_messages=5), {"--mode", "--max"}),
        (
            RedriveOptions(mode=RedriveMode.NATIVE, filters=(parse_filter("error=Boom"),), dry_run=True),
            {"--mode", "--filter", "--dry-run"},
        ),
        (RedriveOptions(mode=RedriveMode.NATIVE, watch=True, min_age=60), {"--mode", "--watch", "--min-age"}),
        (RedriveOptions(mode=RedriveMode.NATIVE, rate=501), {"--rate", "--mode"}),
        (RedriveOptions(watch=True, dry_run=True), {"--watch", "--dry-run"}),
    ],
)
def test_contradictory_options_are_refused_naming_exactly_the_offending_ones(
    options: RedriveOptions, named: set[str]
) -> None:
    """Native mode with app-only options or a rate over 500, watch with dry-run: the error names just them."""
    problem = usage_problem(options)
    assert problem is not None
    assert set(re.findall(r"--[a-z][a-z-]*", problem)) == named, problem


def test_compatible_options_are_no_usage_problem() -> None:
    """A native rate of exactly 500, app-only options left to --mode auto or given to app mode: accepted."""
    assert usage_problem(RedriveOptions(mode=RedriveMode.NATIVE, rate=500)) is None
    assert usage_problem(RedriveOptions(max_messages=5, dry_run=True, rate=501)) is None
    assert usage_problem(RedriveOptions(mode=RedriveMode.APP, watch=True, min_age=60, rate=501)) is None


def test_exit_codes() -> None:
    """0 when all moved, 1 when anything failed or was held, 130 for an interrupted one-shot pass."""
    report = Report(mode="app", why="", dlq="d", target="t", tally=Tally(moved=3))
    assert report.exit_code == 0
    report.tally.held = 1
    assert report.exit_code == 1
    report = Report(mode="app", why="", dlq="d", target="t", interrupted=True)
    assert report.exit_code == 130
    report.watch = True
    assert report.exit_code == 0


def test_progress_line() -> None:
    """The bar shows counts, rate and ETA."""
    line = format_bar(Tally(moved=50, skipped=10, failed=1), 200, elapsed=2.0)
    assert line.startswith("[#######")
    assert "61/200" in line
    assert "moved 50" in line
    assert "25.0 msg/s" in line
    assert "ETA 0:00:05" in line


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("http://127.0.0.1:4566", True),
        ("http://localhost:4566", True),
        ("http://[::1]:4566", True),
        ("https://sqs.eu-west-1.amazonaws.com", False),
        ("http://10.0.0.5:4566", False),
        (None, False),
    ],
)
def test_loopback_detection(endpoint: str | None, local: bool) -> None:
    """Only endpoints on this machine count as local."""
    assert is_loopback(endpoint) is local


async def test_confirmation_shows_the_count() -> None:
    """On a terminal the prompt shows the count; anything but yes refuses."""
    dlq = QueueRef(url=DLQ, arn="arn", attributes={})
    prompts: list[str] = []

    def answer(text: str) -> str:
        prompts.append(text)
        return "n\n"

    with pytest.raises(ToolError, match="not confirmed"):
        await _confirm("https://sqs.aws", 42, RedriveOptions(max_messages=10), dlq, "orders", answer)
    assert "~10 messages" in prompts[0]
    assert "orders-dlq" in prompts[0]
    await _confirm("https://sqs.aws", 42, RedriveOptions(), dlq, "orders", lambda _: "yes\n")
    await anyio.lowlevel.checkpoint()


def test_tool_settings_need_no_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    """redrive/dlq read WORKER_DLQ_URL without WORKER_HANDLER, with worker run's URL rule and message."""
    monkeypatch.setenv("WORKER_DLQ_URL", DLQ)
    assert load_tool_settings().dlq_url == DLQ
    monkeypatch.setenv("WORKER_DLQ_URL", "orders-dlq")
    with pytest.raises(ConfigError, match=r"^WORKER_DLQ_URL: must be an SQS queue URL"):
        load_tool_settings()


def test_dry_run_report_lists_would_move() -> None:
    """The text summary of a dry run says nothing moved and lists each message that would."""
    from worker.ops.redrive.app_results import Result

    report = Report(
        mode="app",
        why="--dry-run",
        dlq="orders-dlq",
        target="orders",
        dry_run=True,
        tally=Tally(moved=1),
        results=[
            Result(Verdict.MOVE, "orig-1", "m1", "RuntimeError", "orders", SOURCE["url"], "", 1, dry_run=True)
        ],
    )
    text = report.render()
    assert "nothing was moved" in text
    assert "orig-1  RuntimeError  orders -> orders  redrive #1" in text
    assert json.loads(json.dumps(report.to_json()))["messages"][0]["verdict"] == "moved"


def test_fifo_sends_one_message_per_group_per_call() -> None:
    """SendMessageBatch calls on a FIFO target take one message per group, in order; at most 10 per call."""
    from worker.ops.redrive.app_batches import _chunks

    items = []
    for group, n in [("a", 0), ("a", 1), ("b", 0), ("a", 2), ("b", 1)]:
        entry = dlq_entry(group=group)
        entry["Body"] = f"{group}{n}"
        dead = DeadLetteredMessage.from_entry(entry, DLQ + ".fifo")
        items.append(
            (
                dead,
                plan_redrive(dead, target_url=SOURCE["url"] + ".fifo", dlq_url=DLQ, max_redrives=3, now=NOW),
            )
        )
    calls = [[d.message.raw_body for d, _ in chunk] for chunk in _chunks(items, fifo=True)]
    assert calls == [["a0", "b0"], ["a1", "b1"], ["a2"]]
    standard = [[d.message.raw_body for d, _ in chunk] for chunk in _chunks(items * 3, fifo=False)]
    assert [len(c) for c in standard] == [10, 5]

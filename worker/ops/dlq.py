"""``worker dlq``: inspect a dead-letter queue without consuming it.

Totals come from GetQueueAttributes. The breakdown (error type, source queue, age) and the records come
from a scan: messages are received with a visibility timeout that covers the scan, kept invisible so
none is read twice, and all given back at once at the end. A scan raises every message's receive count,
so it refuses a DLQ whose own RedrivePolicy could move messages because of that, unless forced.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio

from worker.aws.client import CALL_ERRORS, client_config, create_client, error_code
from worker.aws.names import queue_name
from worker.aws.queues import DEPTH_ATTRIBUTES, receive
from worker.limits import SQS_BATCH_MAX
from worker.ops import dlq_envelopes
from worker.ops.filters import NO_RECORD, Filter, all_match
from worker.ops.hold import HeldMessages
from worker.ops.redrive.plan import DeadLetteredMessage
from worker.ops.settings import QueueRef, ToolError, ToolSettings, resolve_dlq
from worker.timestamps import iso_utc

if TYPE_CHECKING:
    from types_aiobotocore_sqs.client import SQSClient


#: Age buckets of the breakdown: (upper bound in seconds, label).
AGE_BUCKETS: tuple[tuple[float, str], ...] = (
    (3600, "< 1 h"),
    (86400, "1 h - 1 d"),
    (7 * 86400, "1 - 7 d"),
    (float("inf"), "> 7 d"),
)
RECEIVE_COUNT_NOTE = "a scan raises each scanned message's receive count (ApproximateReceiveCount)"
BROKER_NO_RECORD = "(no worker record: moved by the broker)"


@dataclass(slots=True)
class Scan:
    """What a scan read."""

    messages: list[DeadLetteredMessage] = field(default_factory=list)
    #: True when a receive came back empty: every visible message was read.
    complete: bool = False
    #: Messages that could not be made visible again at once (they reappear when their lease ends).
    not_released: int = 0


def refuse_if_self_redriving(dlq: QueueRef, *, force: bool, action: str) -> None:
    """Refuse to receive from a DLQ whose own RedrivePolicy reacts to receive counts, unless forced."""
    policy = dlq.redrive_policy
    if policy and not force:
        raise ToolError(
            f"not {action} {dlq.name}: it has its own RedrivePolicy (maxReceiveCount "
            f"{policy.get('maxReceiveCount')}) and reading it raises receive counts, so SQS could move "
            "messages on to its own DLQ; pass --force to do it anyway"
        )


async def scan(client: SQSClient, dlq: QueueRef, *, limit: int, lease: float, wait_seconds: int = 1) -> Scan:
    """Read up to ``limit`` messages, keep them invisible during the scan, give them all back at once."""
    held = HeldMessages(client, dlq.url, lease)
    result = Scan()
    try:
        # Stop reading at half the lease: every receipt is still valid when they are given back.
        with anyio.move_on_after(held.lease / 2):
            while len(result.messages) < limit:
                most = min(SQS_BATCH_MAX, limit - len(result.messages))
                response = await receive(client, dlq.url, most, wait=wait_seconds, visibility=held.lease)
                entries = response.get("Messages", [])
                if not entries:
                    result.complete = True
                    break
                for entry in entries:
                    held.add(str(entry["ReceiptHandle"]))
                    result.messages.append(DeadLetteredMessage.from_entry(entry, dlq.url))
    finally:
        with anyio.CancelScope(shield=True):
            result.not_released = await held.release_all()
    return result


def age_bucket(age: float | None) -> str:
    """The breakdown label of an age in seconds."""
    if age is None:
        return "unknown"
    return next(label for bound, label in AGE_BUCKETS if age < bound)


def record_row(dead: DeadLetteredMessage, now: datetime, *, show_body: bool) -> dict[str, Any]:
    """One listed record."""
    record = dead.record
    row: dict[str, Any] = {
        "id": dead.original_id,
        "message_id": dead.message.id,
        "error_type": dead.error_type,
        "condition": record.condition if record else None,
        "error_message": record.error_message if record else None,
        "attempts": record.attempts if record else None,
        "source_receive_count": record.receive_count if record else None,
        "handed_back": record.handed_back if record else None,
        "first_received_at": record.first_received_at if record else None,
        "dead_lettered_at": iso_utc(dead.dead_lettered_at),
        "age_seconds": dead.age(now),
        "source": dead.source_name,
        "moved_by_broker": dead.broker_source_arn is not None,
        "redrive_count": dead.redrive_count,
        "receive_count": dead.message.receive_count,
        "group_id": dead.message.group_id,
        "attributes": sorted(dead.original_attributes()),
        "sns": dlq_envelopes.sns_details(dead.message),
    }
    if show_body:
        row["body"] = dead.message.raw_body
    return row


def build_report(
    dlq: QueueRef,
    scan_result: Scan | None,
    *,
    filters: Sequence[Filter],
    now: datetime,
    show_body: bool,
    list_limit: int | None,
    sources: list[str],
) -> dict[str, Any]:
    """The report as plain data (what ``--json`` prints)."""
    report: dict[str, Any] = {
        "dlq": {"url": dlq.url, "arn": dlq.arn, "name": dlq.name, "fifo": dlq.fifo},
        "counts": {state: dlq.count(name) for state, name in DEPTH_ATTRIBUTES.items()},
        "redrive_policy": dlq.redrive_policy,
        "source_queues": sources,
        "subscription_dlq": dlq_envelopes.subscription_dlq_info(dlq.attributes, dlq.arn),
        "scan": None,
    }
    if scan_result is None:
        return report
    matched = [d for d in scan_result.messages if all_match(filters, d.facts(now))]
    matched.sort(key=lambda d: (d.dead_lettered_at or now, d.message.id))
    shown = matched if list_limit is None else matched[:list_limit]
    report["scan"] = {
        "scanned": len(scan_result.messages),
        "complete": scan_result.complete,
        "matched": len(matched),
        "filters": [f.text for f in filters],
        "note": RECEIVE_COUNT_NOTE,
        "not_released": scan_result.not_released,
        "by_error_type": dict(Counter(d.error_type for d in matched).most_common()),
        "by_source": dict(Counter(d.source_name or "(unknown)" for d in matched).most_common()),
        "by_age": {label: n for label, n in Counter(age_bucket(d.age(now)) for d in matched).items() if n},
        "by_topic": dlq_envelopes.by_topic(dlq_envelopes.sns_details(d.message) for d in matched),
        "records": [record_row(d, now, show_body=show_body) for d in shown],
    }
    order = [label for _, label in AGE_BUCKETS] + ["unknown"]
    report["scan"]["by_age"] = {
        k: report["scan"]["by_age"][k] for k in order if k in report["scan"]["by_age"]
    }
    return report


def _table(title: str, counts: dict[str, int], no_record: str = BROKER_NO_RECORD) -> list[str]:
    lines = [title]
    width = max((len(k) for k in counts), default=0)
    for key, n in counts.items():
        label = f"{key} {no_record}" if key == NO_RECORD else key
        lines.append(f"  {label:<{width}}  {n:>7}")
    return lines


def render_text(report: dict[str, Any]) -> str:
    """The report for a terminal."""
    counts = report["counts"]
    lines = [
        f"DLQ {report['dlq']['name']}  {report['dlq']['url']}",
        f"  visible {counts['visible']}   in flight {counts['in_flight']}   delayed {counts['delayed']}",
    ]
    if report["source_queues"]:
        lines.append(f"  source queues (RedrivePolicy): {', '.join(report['source_queues'])}")
    if report["redrive_policy"]:
        lines.append(f"  its own RedrivePolicy: {json.dumps(report['redrive_policy'])}")
    lines += dlq_envelopes.header_lines(report.get("subscription_dlq"))
    scan_data = report["scan"]
    if scan_data is None:
        return "\n".join(lines)
    extent = "all visible messages" if scan_data["complete"] else "a partial scan"
    lines += [
        "",
        f"Scanned {scan_data['scanned']} messages ({extent}); {scan_data['matched']} match"
        + (f" {' and '.join(scan_data['filters'])}" if scan_data["filters"] else ""),
        f"  note: {scan_data['note']}; the messages are visible again now",
    ]
    if scan_data["not_released"]:
        lines.append(f"  {scan_data['not_released']} could not be given back at once: they reappear shortly")
    if scan_data["matched"]:
        no_record = dlq_envelopes.NO_RECORD_LABEL if report.get("subscription_dlq") else BROKER_NO_RECORD
        lines += ["", *_table("By error type", scan_data["by_error_type"], no_record)]
        lines += ["", *_table("By source queue", scan_data["by_source"])]
        if scan_data.get("by_topic"):
            lines += ["", *_table("By SNS topic", scan_data["by_topic"])]
        lines += ["", *_table("By age (since dead-lettered)", scan_data["by_age"])]
    records = scan_data["records"]
    if records:
        lines += ["", f"Records ({len(records)} of {scan_data['matched']}, oldest first)"]
        header = (
            f"  {'id':<36}  {'error type':<22} {'att':>3} {'recv':>4} {'first received':<20} "
            f"{'dead-lettered':<20} {'source':<20} {'redr':>4}"
        )
        lines.append(header)
        for row in records:
            lines.append(
                f"  {row['id']:<36}  {row['error_type'][:22]:<22} {_dash(row['attempts']):>3} "
                f"{_dash(row['source_receive_count']):>4} "
                f"{_short_time(row['first_received_at']):<20} {_short_time(row['dead_lettered_at']):<20} "
                f"{(row['source'] or '-')[:20]:<20} {row['redrive_count']:>4}"
            )
            if row.get("error_message"):
                lines.append(f"      {row['error_message'][:100]}")
            lines += dlq_envelopes.record_lines(row.get("sns"))
            if "body" in row:
                lines.append(f"      body: {row['body']}")
    return "\n".join(lines)


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _short_time(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else "-"


async def inspect(args: argparse.Namespace, settings: ToolSettings) -> dict[str, Any]:
    """Read the totals and (unless ``--counts-only``) scan; the report."""
    async with create_client("sqs", client_config(read_timeout=30)) as client:
        dlq = await resolve_dlq(client, settings, args.dlq)
        sources: list[str] = []
        try:
            response = await client.list_dead_letter_source_queues(QueueUrl=dlq.url)
            sources = sorted(queue_name(url) for url in response.get("queueUrls", []))
        except CALL_ERRORS as exc:
            sources = [f"(cannot list: {error_code(exc)})"]
        scan_result = None
        if not args.counts_only:
            refuse_if_self_redriving(dlq, force=args.force, action="scanning")
            scan_result = await scan(client, dlq, limit=args.limit, lease=args.visibility_timeout)
    list_limit = args.list if args.list is not None else (None if args.json else 20)
    return build_report(
        dlq,
        scan_result,
        filters=args.filter or [],
        now=datetime.now(UTC),
        show_body=args.show_body,
        list_limit=list_limit,
        sources=sources,
    )


def main(args: argparse.Namespace, settings: ToolSettings) -> int:
    """``worker dlq``: print the report; 0, or 2 with one line when refused."""
    try:
        report = anyio.run(inspect, args, settings)
    except ToolError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(render_text(report))
    return 0

"""Command-line arguments of ``worker dlq`` and ``worker redrive`` (standard library only: cheap)."""

from __future__ import annotations

import argparse

from worker.limits import SQS_VISIBILITY_CAP_SECONDS
from worker.ops.filters import duration_argument, filter_argument


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _positive_rate(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of messages per second, got {text}")
    return value


def _lease(text: str) -> int:
    value = int(text)
    if not 1 <= value <= SQS_VISIBILITY_CAP_SECONDS:
        raise argparse.ArgumentTypeError(f"must be 1..{SQS_VISIBILITY_CAP_SECONDS} seconds, got {value}")
    return value


_FILTER_HELP = (
    "select messages (repeatable, all must match): error_type=A,B  error_type!=A  condition=Timeout  "
    "source=QUEUE  age>1h  age<30m  attr.NAME=VALUE  attr.NAME (error_type none: moved by the broker)"
)


def add_dlq_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``worker dlq`` sub-command."""
    dlq = sub.add_parser(
        "dlq",
        help="inspect a DLQ without consuming it: counts, breakdown by error type/source/age, records",
        description="Totals from GetQueueAttributes, then a scan that keeps messages invisible while it "
        "reads and gives them all back at once (a scan raises receive counts). DLQ from --dlq, "
        "WORKER_DLQ_URL, or the RedrivePolicy of WORKER_QUEUE_URL.",
    )
    dlq.add_argument("--dlq", default=None, metavar="URL", help="the DLQ (default: WORKER_DLQ_URL)")
    dlq.add_argument("--counts-only", action="store_true", help="totals only, no scan")
    dlq.add_argument(
        "--limit", type=_positive_int, default=1000, help="scan at most N messages (default 1000)"
    )
    dlq.add_argument(
        "--list",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="list N records (default 20; all with --json)",
    )
    dlq.add_argument("--filter", type=filter_argument, action="append", metavar="EXPR", help=_FILTER_HELP)
    dlq.add_argument("--show-body", action="store_true", help="include message bodies (off by default)")
    dlq.add_argument("--json", action="store_true", help="machine-readable output")
    dlq.add_argument("--force", action="store_true", help="scan even a DLQ that has its own RedrivePolicy")
    dlq.add_argument(
        "--visibility-timeout",
        type=_lease,
        default=60,
        metavar="SECONDS",
        help="how long scanned messages stay invisible at most (default 60; the scan stops at half)",
    )


def add_redrive_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``worker redrive`` sub-command (it keeps its parser for usage errors found after parsing)."""
    redrive = sub.add_parser(
        "redrive",
        help="replay DLQ messages (SQS move task, or app mode: filters, --max, --rate, --dry-run, --watch)",
        description="DLQ from --dlq or WORKER_DLQ_URL; target from --to, else each message's source queue "
        "(app mode) or WORKER_QUEUE_URL. --filter, --max, --dry-run, --min-age and --watch select app mode. "
        "Exit 0 when everything selected moved, 1 when anything failed or was held by the loop guard.",
    )
    redrive.set_defaults(subparser=redrive)
    redrive.add_argument("--dlq", default=None, metavar="URL", help="the DLQ (default: WORKER_DLQ_URL)")
    redrive.add_argument("--to", default=None, metavar="URL", help="send everything to this queue instead")
    redrive.add_argument(
        "--mode",
        choices=("auto", "native", "app"),
        default="auto",
        help="native: SQS move task; app: receive-send-delete (default: auto)",
    )
    redrive.add_argument("--filter", type=filter_argument, action="append", metavar="EXPR", help=_FILTER_HELP)
    redrive.add_argument(
        "--max", type=_positive_int, default=None, metavar="N", help="move at most N messages"
    )
    redrive.add_argument(
        "--rate",
        type=_positive_rate,
        default=None,
        metavar="MSGS_PER_S",
        help="move at most this many messages per second (native: at most 500)",
    )
    redrive.add_argument("--dry-run", action="store_true", help="show exactly what would move; move nothing")
    redrive.add_argument(
        "--max-redrives",
        type=_non_negative_int,
        default=3,
        metavar="N",
        help="leave messages already redriven N times in the DLQ (default 3; app mode)",
    )
    redrive.add_argument(
        "--watch",
        action="store_true",
        help="keep running: redrive messages once older than --min-age; /metrics on WORKER_HTTP_PORT",
    )
    redrive.add_argument(
        "--min-age",
        type=duration_argument,
        default=None,
        metavar="DURATION",
        help="only messages dead-lettered at least this long ago (default 5m with --watch)",
    )
    redrive.add_argument(
        "--yes", action="store_true", help="do not ask for confirmation on a non-local endpoint"
    )
    redrive.add_argument("--force", action="store_true", help="read a DLQ that has its own RedrivePolicy")
    redrive.add_argument("--json", action="store_true", help="print the summary as JSON")
    redrive.add_argument(
        "--visibility-timeout",
        type=_lease,
        default=30,
        metavar="SECONDS",
        help="lease on received messages; after a crash they reappear after this (default 30)",
    )

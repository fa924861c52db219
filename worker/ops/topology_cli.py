"""``worker topology``'s command line (pure): the sub-command's parser and the Spec of its arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

from worker.ops.filter_policy import FILTER_POLICY_SCOPES
from worker.ops.topology_error import TopologyError
from worker.ops.topology_spec import MAX_RECEIVE_MARGIN, Spec, build_spec, check_max_receive_count


def _receive_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    try:
        return check_max_receive_count(value)
    except TopologyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_topology_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``worker topology`` sub-command."""
    topology = sub.add_parser(
        "topology",
        help="create or check one consumer's SNS -> SQS topology: topic, queue, DLQs, subscription, policies",
        description="Creates what is missing and fixes what is wrong (attributes, policies), never deletes "
        "anything, and prints the WORKER_QUEUE_URL / WORKER_DLQ_URL to set. --check only reads: one line "
        "per check, exit 0 when all pass, 1 otherwise. Endpoint, region and credentials from the standard "
        "AWS variables (AWS_ENDPOINT_URL for LocalStack). See docs/topology.md.",
    )
    topology.set_defaults(subparser=topology)
    topology.add_argument("--topic", required=True, metavar="NAME|ARN", help="the SNS topic")
    topology.add_argument("--queue", required=True, metavar="NAME", help="the worker's source queue")
    topology.add_argument("--dlq", default=None, metavar="NAME", help="the queue's DLQ (default: QUEUE-dlq)")
    topology.add_argument(
        "--subscription-dlq",
        default=None,
        metavar="NAME",
        help="where SNS puts what it cannot deliver to the queue (default: QUEUE-sns-dlq)",
    )
    topology.add_argument(
        "--max-receive-count",
        type=_receive_count,
        default=None,
        metavar="N",
        help=f"the queue's RedrivePolicy (default 2 x WORKER_MAX_ATTEMPTS + {MAX_RECEIVE_MARGIN}: 13 unset)",
    )
    topology.add_argument(
        "--raw",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="RawMessageDelivery (default --no-raw: SNS envelopes, which carry topic, subject and timestamp)",
    )
    topology.add_argument(
        "--filter-policy", default=None, metavar="JSON|@FILE", help="the subscription's filter policy"
    )
    topology.add_argument(
        "--filter-policy-scope",
        choices=FILTER_POLICY_SCOPES,
        default=None,
        help="what the filter policy matches (default MessageAttributes)",
    )
    topology.add_argument("--region", default=None, help="AWS region (default: the standard AWS chain)")
    topology.add_argument("--check", action="store_true", help="only read and report; change nothing")
    topology.add_argument("--json", action="store_true", help="machine-readable output")
    topology.add_argument(
        "--yes", action="store_true", help="create or fix on a non-local endpoint without asking"
    )


def read_filter_policy(value: str | None) -> str | None:
    """``--filter-policy``: JSON text, or ``@FILE`` to read it from a file."""
    if value is None or not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(f"--filter-policy {value}: cannot read it ({exc.strerror or exc})") from None


def spec_from_args(args: argparse.Namespace, max_attempts: int) -> Spec:
    """The Spec of the command line; TopologyError naming the bad argument."""
    return build_spec(
        topic=args.topic,
        queue=args.queue,
        dlq=args.dlq,
        subscription_dlq=args.subscription_dlq,
        max_receive_count=args.max_receive_count,
        max_attempts=max_attempts,
        raw=args.raw,
        filter_policy=read_filter_policy(args.filter_policy),
        filter_policy_scope=args.filter_policy_scope,
    )

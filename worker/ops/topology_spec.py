"""``worker topology``'s specification (pure): one consumer's names and settings, checked against AWS's rules.

One definition of the topology, used by ``worker topology``, ``worker demo`` and the tests: an SNS topic; a
source queue whose RedrivePolicy points at its DLQ and whose policy lets that topic (``aws:SourceArn``) send
to it; a subscription (protocol ``sqs``) with RawMessageDelivery, an optional filter policy and its own
RedrivePolicy to a *subscription DLQ*, a queue SNS may send to for that topic only. FIFO throughout when the
names end in ``.fifo``.

Arguments are checked here against AWS's rules, including the ones LocalStack does not enforce (queue names
without ``/``, a FIFO queue's DLQ being FIFO, a standard topic's subscription DLQ being standard); the filter
policy's are ``filter_policy``'s.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from worker.aws.names import Arn
from worker.ops.filter_policy import FILTER_POLICY_SCOPES, parse_filter_policy
from worker.ops.topology_error import TopologyError

FIFO_SUFFIX = ".fifo"
#: SQS: queue names of 1 to 80 characters (the ``.fifo`` suffix counts), letters, digits, ``-`` and ``_``.
QUEUE_NAME_MAX = 80
#: SNS: topic names of 1 to 256 characters, same characters.
TOPIC_NAME_MAX = 256
_NAME_CHARS = re.compile(r"[A-Za-z0-9_-]+")
#: SQS RedrivePolicy: maxReceiveCount 1 to 1000.
MAX_RECEIVE_COUNT_RANGE = (1, 1000)
DLQ_SUFFIX = "-dlq"
SUBSCRIPTION_DLQ_SUFFIX = "-sns-dlq"
#: Default maxReceiveCount: twice the worker's attempts plus this, so the worker's own retries (and the
#: receives that ran no handler, hand-backs) come first and SQS's redrive only catches a worker that died.
MAX_RECEIVE_MARGIN = 3


@dataclass(frozen=True, slots=True)
class Spec:
    """What one consumer needs: names, the queue's maxReceiveCount and the subscription's attributes."""

    topic: str
    queue: str
    dlq: str
    subscription_dlq: str
    max_receive_count: int
    raw: bool = False
    #: The filter policy as compact JSON, or None for no filtering.
    filter_policy: str | None = None
    filter_policy_scope: str = "MessageAttributes"
    #: ``--topic`` given as an ARN (maybe another account's topic): never created, only checked.
    topic_arn: str | None = None

    @property
    def fifo(self) -> bool:
        """True for a FIFO topology (every name ends in ``.fifo``)."""
        return self.topic.endswith(FIFO_SUFFIX)


def default_max_receive_count(max_attempts: int) -> int:
    """The queue's maxReceiveCount when none is given: ``2 x max_attempts + 3``, within 1..1000."""
    low, high = MAX_RECEIVE_COUNT_RANGE
    return max(low, min(high, 2 * max_attempts + MAX_RECEIVE_MARGIN))


def derived_name(queue: str, suffix: str) -> str:
    """``orders`` -> ``orders-dlq``; ``orders.fifo`` -> ``orders-dlq.fifo``."""
    if queue.endswith(FIFO_SUFFIX):
        return queue[: -len(FIFO_SUFFIX)] + suffix + FIFO_SUFFIX
    return queue + suffix


def check_name(name: str, what: str, limit: int) -> None:
    """A queue or topic name as AWS accepts it (LocalStack also takes ``/`` in queue names)."""
    base = name.removesuffix(FIFO_SUFFIX)
    if not base or not _NAME_CHARS.fullmatch(base):
        raise TopologyError(
            f"{what} {name!r}: only letters, digits, hyphens and underscores, with an optional .fifo suffix"
        )
    if len(name) > limit:
        raise TopologyError(f"{what} {name!r}: {len(name)} characters, at most {limit} (.fifo included)")


def check_max_receive_count(value: int) -> int:
    """maxReceiveCount within SQS's 1..1000."""
    low, high = MAX_RECEIVE_COUNT_RANGE
    if not low <= value <= high:
        raise TopologyError(f"maxReceiveCount must be {low}..{high}, got {value}")
    return value


def topic_name_of(topic: str) -> tuple[str, str | None]:
    """(name, ARN or None) of ``--topic NAME|ARN``."""
    if not topic.startswith("arn:"):
        return topic, None
    try:
        arn = Arn.parse(topic)
    except ValueError:
        raise TopologyError(f"--topic {topic!r}: not an ARN") from None
    if arn.service != "sns" or not arn.region or not arn.account or ":" in arn.resource:
        raise TopologyError(f"--topic {topic!r}: not an SNS topic ARN")
    return arn.resource, topic


def build_spec(
    *,
    topic: str,
    queue: str,
    dlq: str | None = None,
    subscription_dlq: str | None = None,
    max_receive_count: int | None = None,
    max_attempts: int = 5,
    raw: bool = False,
    filter_policy: str | None = None,
    filter_policy_scope: str | None = None,
) -> Spec:
    """Validate the arguments against AWS's rules; TopologyError with one line naming the argument."""
    topic_name, topic_arn = topic_name_of(topic)
    check_name(topic_name, "--topic", TOPIC_NAME_MAX)
    dlq = dlq or derived_name(queue, DLQ_SUFFIX)
    subscription_dlq = subscription_dlq or derived_name(queue, SUBSCRIPTION_DLQ_SUFFIX)
    for what, name in (("--queue", queue), ("--dlq", dlq), ("--subscription-dlq", subscription_dlq)):
        check_name(name, what, QUEUE_NAME_MAX)
    if len({queue, dlq, subscription_dlq}) < 3:
        raise TopologyError("--queue, --dlq and --subscription-dlq must be three different queues")
    fifo = topic_name.endswith(FIFO_SUFFIX)
    kind = "FIFO" if fifo else "standard"
    ending = "end" if fifo else "not end"
    rules = (
        ("--queue", queue, f"a {kind} topic delivers to a {kind} queue"),
        ("--dlq", dlq, f"SQS: the DLQ of a {kind} queue is a {kind} queue"),
        ("--subscription-dlq", subscription_dlq, f"SNS: a {kind} topic's subscription DLQ is a {kind} queue"),
    )
    for what, name, rule in rules:
        if name.endswith(FIFO_SUFFIX) != fifo:
            raise TopologyError(f"{what} {name!r}: {rule} (its name must {ending} in .fifo)")
    count = check_max_receive_count(
        default_max_receive_count(max_attempts) if max_receive_count is None else max_receive_count
    )
    if filter_policy_scope is not None and filter_policy is None:
        raise TopologyError("--filter-policy-scope needs --filter-policy")
    scope = filter_policy_scope or "MessageAttributes"
    if scope not in FILTER_POLICY_SCOPES:
        raise TopologyError(f"--filter-policy-scope must be one of {', '.join(FILTER_POLICY_SCOPES)}")
    policy = None
    if filter_policy is not None:
        policy = json.dumps(parse_filter_policy(filter_policy, scope), separators=(",", ":"))
    return Spec(
        topic=topic_name,
        queue=queue,
        dlq=dlq,
        subscription_dlq=subscription_dlq,
        max_receive_count=count,
        raw=raw,
        filter_policy=policy,
        filter_policy_scope=scope,
        topic_arn=topic_arn,
    )

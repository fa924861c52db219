"""``worker topology``'s records (pure): what AWS holds, the topology's ARNs, the fixes and the checks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from worker.ops.topology_spec import Spec

# --- What AWS holds -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueState:
    """A queue as GetQueueUrl / GetQueueAttributes(All) saw it; ``url`` None when it does not exist."""

    name: str
    url: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        """The queue exists."""
        return self.url is not None

    @property
    def fifo(self) -> bool:
        """FifoQueue is true."""
        return self.attributes.get("FifoQueue", "false").lower() == "true"


@dataclass(frozen=True, slots=True)
class TopicState:
    """A topic as GetTopicAttributes saw it; ``exists`` False when not found."""

    arn: str
    exists: bool = False
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def fifo(self) -> bool:
        """FifoTopic is true."""
        return self.attributes.get("FifoTopic", "false").lower() == "true"


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    """The topic's ``sqs`` subscription of the queue (GetSubscriptionAttributes); ``arn`` None when none."""

    arn: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Arns:
    """The ARNs of the topology, known before anything exists (account, partition and regions)."""

    topic: str
    queue: str
    dlq: str
    subscription_dlq: str

    @classmethod
    def of(cls, spec: Spec, *, partition: str, account: str, sqs_region: str, sns_region: str) -> Arns:
        """ARNs in this account: the queues in the SQS region, the topic in the SNS one (or as given)."""

        def queue(name: str) -> str:
            return f"arn:{partition}:sqs:{sqs_region}:{account}:{name}"

        topic = spec.topic_arn or f"arn:{partition}:sns:{sns_region}:{account}:{spec.topic}"
        return cls(topic, queue(spec.queue), queue(spec.dlq), queue(spec.subscription_dlq))


@dataclass(frozen=True, slots=True)
class Observed:
    """Everything the checks look at."""

    topic: TopicState
    queue: QueueState
    dlq: QueueState
    subscription_dlq: QueueState
    subscription: SubscriptionState


# --- Actions and checks -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateTopic:
    """CreateTopic."""

    name: str
    attributes: Mapping[str, str]

    @property
    def text(self) -> str:
        """What it does, for the output."""
        return f"create topic {self.name}"


@dataclass(frozen=True, slots=True)
class CreateQueue:
    """CreateQueue with its attributes (RedrivePolicy, Policy, FIFO, retention)."""

    role: str
    name: str
    attributes: Mapping[str, str]

    @property
    def text(self) -> str:
        """What it does, for the output."""
        extra = sorted(set(self.attributes) - {"FifoQueue"})
        return f"create {self.role} {self.name}" + (f" ({', '.join(extra)})" if extra else "")


@dataclass(frozen=True, slots=True)
class SetQueueAttributes:
    """SetQueueAttributes on an existing queue."""

    role: str
    name: str
    url: str
    attributes: Mapping[str, str]

    @property
    def text(self) -> str:
        """What it does, for the output."""
        return f"set {', '.join(sorted(self.attributes))} of {self.role} {self.name}"


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe (protocol sqs) with every subscription attribute."""

    topic_arn: str
    queue_arn: str
    attributes: Mapping[str, str]

    @property
    def text(self) -> str:
        """What it does, for the output."""
        topic, queue = self.topic_arn.rsplit(":", 1)[-1], self.queue_arn.rsplit(":", 1)[-1]
        return f"subscribe queue {queue} to topic {topic} ({', '.join(sorted(self.attributes))})"


@dataclass(frozen=True, slots=True)
class SetSubscriptionAttribute:
    """SetSubscriptionAttributes (one attribute per call, as the API takes them)."""

    subscription_arn: str
    name: str
    value: str

    @property
    def text(self) -> str:
        """What it does, for the output."""
        return f"set {self.name} of the subscription"


Action = CreateTopic | CreateQueue | SetQueueAttributes | Subscribe | SetSubscriptionAttribute


class Status(StrEnum):
    """The state of one piece of the topology."""

    OK = "ok"
    MISSING = "missing"
    WRONG = "wrong"


@dataclass(frozen=True, slots=True)
class Check:
    """One piece, checked: what was found against what is expected, and what fixes it.

    ``fix`` None on a failing check means either that a fix further up covers it (the queue's creation
    sets its RedrivePolicy) or, when ``manual`` says so, that only a person can fix it.
    """

    key: str
    what: str
    status: Status
    found: str
    expected: str
    fix: Action | None = None
    manual: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The check for ``--json``."""
        return {
            "check": self.key,
            "what": self.what,
            "status": self.status.value,
            "found": self.found,
            "expected": self.expected,
            "fix": self.fix.text if self.fix else None,
            "manual": self.manual or None,
        }

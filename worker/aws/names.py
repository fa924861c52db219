"""AWS names (pure): queue names from URLs and ARNs, the parts of an ARN, a queue's RedrivePolicy."""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Arn:
    """The parts of ``arn:partition:service:region:account:resource``."""

    partition: str
    service: str
    region: str
    account: str
    resource: str

    @classmethod
    def parse(cls, arn: str) -> Arn:
        """Split an ARN; anything else is a ValueError."""
        parts = arn.split(":", 5)
        if len(parts) != 6 or parts[0] != "arn":
            raise ValueError(f"not an ARN: {arn!r}")
        partition, service, region, account, resource = parts[1:]
        return cls(partition, service, region, account, resource)

    @property
    def is_sqs_queue(self) -> bool:
        """True for an SQS queue ARN (``arn:aws:sqs:region:account:name``)."""
        return (
            self.service == "sqs" and bool(self.account) and bool(self.resource) and ":" not in self.resource
        )


def queue_name(ref: str) -> str:
    """The queue name in a queue URL, a queue ARN or a bare name (the metrics' ``queue`` label)."""
    ref = ref.strip().rstrip("/")
    if ref.startswith("arn:"):
        return ref.rsplit(":", 1)[-1]
    return ref.rsplit("/", 1)[-1]


def queue_arn_from_url(url: str, like: str) -> str:
    """The ARN of the queue at ``url``: account and name from the URL, partition and region from ``like``.

    A DLQ lives in its source queue's account and region (SQS requires it); destination queues are
    reached with the same regional client, so they share the region too.
    """
    base = Arn.parse(like)
    segments = [s for s in urlsplit(url).path.split("/") if s]
    if len(segments) < 2:
        raise ValueError(f"not a queue URL: {url!r}")
    account, name = segments[-2], segments[-1]
    return f"arn:{base.partition}:sqs:{base.region}:{account}:{name}"


@dataclass(frozen=True, slots=True)
class RedrivePolicy:
    """A queue's RedrivePolicy attribute: where SQS moves messages, and after how many receives."""

    dead_letter_target_arn: str | None
    max_receive_count: int | None

    @classmethod
    def parse(cls, raw: str | None) -> RedrivePolicy | None:
        """The parsed attribute; None when absent or not a JSON object."""
        try:
            policy = json.loads(raw) if raw else None
        except ValueError:
            return None
        if not isinstance(policy, dict):
            return None
        target = policy.get("deadLetterTargetArn")
        try:
            count = int(policy["maxReceiveCount"]) if "maxReceiveCount" in policy else None
        except (TypeError, ValueError):
            count = None
        return cls(target if isinstance(target, str) else None, count)

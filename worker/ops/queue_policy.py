"""SQS queue policies (pure): the statement letting an SNS topic send to a queue, and whether one does."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

SNS_PRINCIPAL = "sns.amazonaws.com"
SEND_ACTION = "sqs:SendMessage"
POLICY_VERSION = "2012-10-17"


def statement_id(topic_arn: str) -> str:
    """The Sid of the statement ``worker topology`` writes for a topic (letters and digits only)."""
    return "AllowSnsTopic" + hashlib.sha256(topic_arn.encode()).hexdigest()[:16]


def sns_statement(queue_arn: str, topic_arn: str) -> dict[str, Any]:
    """The statement letting ``topic_arn`` (and only it) send to ``queue_arn``."""
    return {
        "Sid": statement_id(topic_arn),
        "Effect": "Allow",
        "Principal": {"Service": SNS_PRINCIPAL},
        "Action": SEND_ACTION,
        "Resource": queue_arn,
        "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
    }


def parse_policy(text: str | None) -> dict[str, Any] | None:
    """A queue's Policy attribute as a document; None when absent, ``{}`` when unreadable."""
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def statements(doc: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The statements of a policy document (a single statement object counts as a list of one)."""
    raw = (doc or {}).get("Statement", [])
    items = raw if isinstance(raw, list) else [raw]
    return [s for s in items if isinstance(s, dict)]


def with_sns_statement(text: str | None, queue_arn: str, topic_arn: str) -> str:
    """The queue policy with this topic's statement added (replacing an older copy); others kept."""
    doc = parse_policy(text)
    ours = sns_statement(queue_arn, topic_arn)
    if not doc or "Statement" not in doc:
        doc = {"Version": POLICY_VERSION, "Statement": []}
    others = [s for s in statements(doc) if s.get("Sid") != ours["Sid"]]
    return json.dumps({**doc, "Statement": [*others, ours]})


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _principal_covers_sns(principal: Any) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, dict):
        return False
    return SNS_PRINCIPAL in _listed(principal.get("Service")) or "*" in _listed(principal.get("AWS"))


def _covers(patterns: Any, value: str, *, fold: bool = False) -> bool:
    if fold:
        return any(isinstance(p, str) and fnmatchcase(value.lower(), p.lower()) for p in _listed(patterns))
    return any(isinstance(p, str) and fnmatchcase(value, p) for p in _listed(patterns))


SourceTest = Literal["none", "match", "no-match", "other"]
_POSITIVE = {"arnequals": True, "arnlike": True, "stringequals": False, "stringlike": True}
_NEGATIVE = {"arnnotequals": True, "arnnotlike": True, "stringnotequals": False, "stringnotlike": True}


def source_arn_test(condition: Any, topic_arn: str) -> SourceTest:
    """How a Condition treats ``aws:SourceArn = topic_arn``.

    ``none``: no condition; ``match`` / ``no-match``: it tests only ``aws:SourceArn`` and the topic passes
    or fails; ``other``: it tests something this module does not evaluate (it is then never taken as
    proof, neither of an allow nor of a deny).
    """
    if not condition:
        return "none"
    if not isinstance(condition, dict):
        return "other"
    results: list[bool] = []
    for operator, tests in condition.items():
        op = str(operator).lower().removeprefix("forallvalues:").removeprefix("foranyvalue:")
        op = op.removesuffix("ifexists")
        if not isinstance(tests, dict):
            return "other"
        for key, values in tests.items():
            if str(key).lower() != "aws:sourcearn" or (op not in _POSITIVE and op not in _NEGATIVE):
                return "other"
            wildcard = _POSITIVE.get(op, _NEGATIVE.get(op, False))
            hit = _covers(values, topic_arn) if wildcard else topic_arn in _listed(values)
            results.append(hit if op in _POSITIVE else not hit)
    return "match" if results and all(results) else "no-match"


@dataclass(frozen=True, slots=True)
class SendVerdict:
    """Whether a queue policy lets the topic send: ``allowed_by`` / ``denied_by`` name the statement."""

    allowed_by: str | None = None
    denied_by: str | None = None
    readable: bool = True

    @property
    def allowed(self) -> bool:
        """An allow statement and no deny statement that applies."""
        return self.readable and self.allowed_by is not None and self.denied_by is None


def sns_send_verdict(text: str | None, queue_arn: str, topic_arn: str) -> SendVerdict:
    """Evaluate Principal, Action, Resource and ``aws:SourceArn`` conditions of a queue policy.

    An allow counts only when scoped to the topic (``aws:SourceArn``); a deny counts when unconditional or
    when its ``aws:SourceArn`` test takes this topic. Statements with NotPrincipal / NotAction /
    NotResource, or other condition keys, are not evaluated (they prove nothing either way).
    """
    doc = parse_policy(text)
    if doc is None:
        return SendVerdict()
    if not doc:
        return SendVerdict(readable=False)
    allowed_by = denied_by = None
    for index, statement in enumerate(statements(doc)):
        if {"NotPrincipal", "NotAction", "NotResource"} & set(statement):
            continue
        if not (
            _principal_covers_sns(statement.get("Principal"))
            and _covers(statement.get("Action"), SEND_ACTION, fold=True)
            and _covers(statement.get("Resource"), queue_arn)
        ):
            continue
        name = str(statement.get("Sid") or f"#{index + 1}")
        test = source_arn_test(statement.get("Condition"), topic_arn)
        if statement.get("Effect") == "Deny" and test in ("none", "match"):
            denied_by = denied_by or name
        elif statement.get("Effect") == "Allow" and test == "match":
            allowed_by = allowed_by or name
    return SendVerdict(allowed_by=allowed_by, denied_by=denied_by)


def topics_allowed_to_send(text: str | None, queue_arn: str) -> list[str]:
    """Topic ARNs a queue policy's scoped allow statements name for SNS (a subscription DLQ's topics)."""
    found: list[str] = []
    for statement in statements(parse_policy(text)):
        if statement.get("Effect") != "Allow" or not _principal_covers_sns(statement.get("Principal")):
            continue
        if not _covers(statement.get("Action"), SEND_ACTION, fold=True):
            continue
        if queue_arn and not _covers(statement.get("Resource"), queue_arn):
            continue
        condition = statement.get("Condition")
        for operator, tests in condition.items() if isinstance(condition, dict) else []:
            if str(operator).lower().removesuffix("ifexists") not in _POSITIVE or not isinstance(tests, dict):
                continue
            for key, values in tests.items():
                if str(key).lower() == "aws:sourcearn":
                    found += [v for v in _listed(values) if isinstance(v, str) and ":sns:" in v]
    return sorted(set(found))

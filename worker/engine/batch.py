"""What a batch handler's call means for each of its messages (pure): its result, partial failures, FIFO.

A batch handler takes the messages of one receive and returns ``None`` (all succeeded), a
:class:`BatchResult` naming the failed ones, or a Lambda-style ``{"batchItemFailures": [{"itemIdentifier":
id}]}``. An exception or a timeout fails the whole batch; so does a result that names a message not in the
batch, or any other return value (Lambda's rule: a malformed report cannot be trusted with deletes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from worker.engine.message import Message
from worker.engine.policy import HandlerResult


class BatchItemFailed(Exception):  # noqa: N818 - what the record says: the batch handler reported it failed
    """The error recorded for a message a batch handler reported failed without an exception of its own."""


class BatchReportInvalid(Exception):  # noqa: N818 - the record's error type
    """A batch handler returned something the worker cannot trust: the whole batch failed."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """A batch handler's report: the messages that failed (by id, with why) and optional responses.

    ``failures`` maps a message id to the exception it failed with (``PermanentError`` dead-letters it,
    ``RetryLater`` delays it, anything else is a transient failure) or to None (a transient failure recorded
    as ``BatchItemFailed``). ``responses`` maps a message id to the ``responsePayload`` of its on-success
    destinations.
    """

    failures: Mapping[str, BaseException | None] = field(default_factory=dict)
    responses: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def failed(cls, *messages: Message, error: BaseException | None = None) -> BatchResult:
        """A report where ``messages`` failed (all with ``error``) and the rest succeeded."""
        return cls(failures={message.id: error for message in messages})


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """One message's share of a batch call: its outcome, its response or error, or held back (FIFO)."""

    outcome: HandlerResult
    response: object = None
    error: BaseException | None = None
    #: FIFO: a message after a failed one of its group; it goes back unprocessed, whatever was reported.
    held_back: bool = False


def _lambda_report(returned: Mapping[object, object]) -> BatchResult | None:
    """A Lambda ``batchItemFailures`` response as a BatchResult; None when it is not well formed."""
    items = returned.get("batchItemFailures")
    if not isinstance(items, list):
        return None
    failures: dict[str, BaseException | None] = {}
    for item in items:
        identifier = item.get("itemIdentifier") if isinstance(item, Mapping) else None
        if not isinstance(identifier, str) or not identifier:
            return None
        failures[identifier] = None
    return BatchResult(failures=failures)


def read_report(returned: object, ids: Sequence[str]) -> BatchResult | BatchReportInvalid:
    """The report a batch call returned, or why it cannot be trusted."""
    if returned is None:
        return BatchResult()
    report: BatchResult | None
    if isinstance(returned, BatchResult):
        report = returned
    elif isinstance(returned, Mapping):
        report = _lambda_report(returned)
        if report is None:
            return BatchReportInvalid("batchItemFailures must be a list of {'itemIdentifier': <message id>}")
    else:
        return BatchReportInvalid(
            "a batch handler must return None, BatchResult or batchItemFailures, "
            f"not {type(returned).__name__}"
        )
    unknown = sorted(set(report.failures) - set(ids))
    if unknown:
        return BatchReportInvalid(f"the report names {len(unknown)} message id(s) not in the batch")
    return report


def _unordered(
    messages: Sequence[Message],
    outcome: HandlerResult,
    returned: object,
    error: BaseException | None,
    classify: Callable[[BaseException], HandlerResult],
) -> list[ItemOutcome]:
    if outcome is not HandlerResult.SUCCESS:  # raised or timed out: the whole batch failed alike
        return [ItemOutcome(outcome, error=error) for _ in messages]
    report = read_report(returned, [message.id for message in messages])
    if isinstance(report, BatchReportInvalid):
        return [ItemOutcome(HandlerResult.ERROR, error=report) for _ in messages]
    items = []
    for message in messages:
        if message.id not in report.failures:
            items.append(ItemOutcome(HandlerResult.SUCCESS, response=report.responses.get(message.id)))
            continue
        failure = report.failures[message.id] or BatchItemFailed("reported failed by the batch handler")
        items.append(ItemOutcome(classify(failure), error=failure))
    return items


def item_outcomes(
    messages: Sequence[Message],
    outcome: HandlerResult,
    returned: object,
    error: BaseException | None,
    classify: Callable[[BaseException], HandlerResult],
    *,
    fifo: bool,
) -> list[ItemOutcome]:
    """Each message's outcome of one batch call that ended with ``outcome`` (returned, or raised ``error``).

    FIFO: in each message group, the messages after the first failed one are held back.
    """
    if outcome is not HandlerResult.SUCCESS:  # raised or timed out: the whole batch failed alike
        whole = [ItemOutcome(outcome, error=error) for _ in messages]
    else:
        report = read_report(returned, [message.id for message in messages])
        if isinstance(report, BatchReportInvalid):
            whole = [ItemOutcome(HandlerResult.ERROR, error=report) for _ in messages]
        else:
            whole = []
            for message in messages:
                if message.id in report.failures:
                    failure = report.failures[message.id] or BatchItemFailed(
                        "reported failed by the batch handler"
                    )
                    whole.append(ItemOutcome(classify(failure), error=failure))
                else:
                    whole.append(
                        ItemOutcome(HandlerResult.SUCCESS, response=report.responses.get(message.id))
                    )
    if not fifo:
        return whole
    failed_groups: set[str | None] = set()
    kept: list[ItemOutcome] = []
    for message, item in zip(messages, whole, strict=True):
        if message.group_id in failed_groups:
            kept.append(ItemOutcome(item.outcome, held_back=True))
            continue
        if item.outcome is not HandlerResult.SUCCESS:
            failed_groups.add(message.group_id)
        kept.append(item)
    return kept

"""What happened to each message of an app-mode pass, and where a message left in the DLQ goes.

``Outcomes`` counts each verdict, keeps the list the report shows, feeds metrics and progress notes, and
keeps a message that stays in the DLQ: invisible until the pass ends (``HeldMessages``), or, in ``--watch``
mode, visible again after a timeout (collected per receive in ``_Received``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from worker.limits import SQS_VISIBILITY_CAP_SECONDS
from worker.ops.hold import HeldMessages
from worker.ops.progress import Progress, Tally
from worker.ops.redrive.plan import DeadLetteredMessage, Verdict
from worker.ops.settings import QueueRef
from worker.telemetry.metrics import Metrics

#: In --watch mode, a message left in the DLQ (filtered out, failed, held) is looked at again after this.
WATCH_RECHECK_SECONDS = 300


@dataclass(frozen=True, slots=True)
class Result:
    """What happened to one message (the report lists these for dry runs, failures and holds)."""

    verdict: Verdict
    id: str
    message_id: str
    error_type: str
    source: str | None
    target: str | None
    reason: str = ""
    redrive_count: int = 0
    dry_run: bool = False


@dataclass(slots=True)
class _Received:
    """Messages of one receive that stay in the DLQ, with the visibility each gets back in watch mode."""

    leave: list[tuple[str, int]] = field(default_factory=list)


class Outcomes:
    """The verdicts of one app-mode pass (or ``--watch`` loop): counts, results, metrics, progress notes."""

    def __init__(
        self,
        dlq: QueueRef,
        held: HeldMessages,
        *,
        watch: bool,
        dry_run: bool,
        metrics: Metrics,
        progress: Progress,
    ) -> None:
        self._dlq_name = dlq.name
        self._held = held
        self._watch = watch
        #: The whole pass is a dry run (``record``'s ``dry_run`` marks one would-be move).
        self._dry_run_pass = dry_run
        self._metrics = metrics
        self._progress = progress
        self.tally = Tally()
        self.results: list[Result] = []
        #: Monotonic time of the last acknowledged move (the rate is measured up to it).
        self.last_move_at: float | None = None

    def keep(self, batch: _Received, dead: DeadLetteredMessage, *, visibility: int) -> None:
        """Leave the message in the DLQ: held to the end of the pass, or (watch) visible again later."""
        if self._watch:
            hold = max(0, min(SQS_VISIBILITY_CAP_SECONDS - 60, visibility))
            batch.leave.append((dead.message.receipt_handle, hold))
        else:
            self._held.add(dead.message.receipt_handle)

    def leave(
        self,
        batch: _Received,
        dead: DeadLetteredMessage,
        verdict: Verdict | None,
        reason: str,
        *,
        target: str | None = None,
        visibility: int = WATCH_RECHECK_SECONDS,
    ) -> None:
        """Keep the message in the DLQ and record why (a None verdict is kept, given back, not counted)."""
        self.keep(batch, dead, visibility=visibility if verdict is not None else 0)
        if verdict is not None:
            self.record(dead, verdict, target, reason, dead.redrive_count)

    def _count(self, verdict: Verdict) -> None:
        match verdict:
            case Verdict.MOVE:
                self.tally.moved += 1
            case Verdict.SKIP:
                self.tally.skipped += 1
            case Verdict.HOLD:
                self.tally.held += 1
            case Verdict.FAIL:
                self.tally.failed += 1

    def record(
        self,
        dead: DeadLetteredMessage,
        verdict: Verdict,
        target: str | None,
        reason: str,
        redrive_count: int,
        *,
        dry_run: bool = False,
    ) -> None:
        """Count the verdict; list it for the report, the metrics and the progress notes as they need."""
        self._count(verdict)
        if not self._dry_run_pass:
            self._metrics.redrive.labels(self._dlq_name, verdict.value).inc()
            if verdict is Verdict.MOVE:
                self.last_move_at = time.monotonic()
        result = Result(
            verdict=verdict,
            id=dead.original_id,
            message_id=dead.message.id,
            error_type=dead.error_type,
            source=dead.source_name,
            target=target,
            reason=reason,
            redrive_count=redrive_count,
            dry_run=dry_run,
        )
        # A --watch loop runs for months: it reports through logs and metrics, and keeps no list.
        if not self._watch and (dry_run or verdict in (Verdict.FAIL, Verdict.HOLD)):
            self.results.append(result)
        if verdict in (Verdict.FAIL, Verdict.HOLD):
            self._progress.note(
                f"{verdict.value}: {dead.original_id} ({dead.error_type}): {reason}",
                message_id=dead.message.id,
                original_message_id=dead.original_id,
                result=verdict.value,
                reason=reason,
            )

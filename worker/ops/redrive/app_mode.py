"""App-mode redrive: receive from the DLQ -> send the copy -> delete, only once the send was acknowledged.

Several receivers run at once. Each received batch is read (``redrive_plan``), filtered and planned; the
copies go out with ``SendMessageBatch`` (one message per FIFO group per call, so a group's order holds even
when a send fails), and only the acknowledged ones are deleted from the DLQ with ``DeleteMessageBatch``.

A message that stays (filtered out, failed, held by the loop guard, beyond ``--max``, or listed by a dry
run) is kept invisible until the pass ends and then given back at once, so one pass never reads it twice.
In ``--watch`` mode it is given back with a visibility timeout instead: a young message exactly when it
reaches ``--min-age``, any other after ``WATCH_RECHECK_SECONDS``.

A crash loses nothing: an unsent message reappears when its lease ends; a message sent but not yet deleted
stays in the DLQ too and is sent again by the next pass (a duplicate; on FIFO targets the deduplication id,
from the original id and the redrive count, removes it within SQS's 5-minute window).

This module receives and plans; ``app_batches`` sends and deletes, ``app_budget`` keeps ``--max`` and
``--rate``, ``app_results`` records what happened to each message and where one left in the DLQ goes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio

from worker.aws.client import CALL_ERRORS, error_code
from worker.aws.queues import receive
from worker.backoff import Backoff
from worker.ops.filters import Filter, all_match
from worker.ops.hold import HeldMessages, change_visibility
from worker.ops.progress import Progress, Tally
from worker.ops.redrive.app_batches import Delivery
from worker.ops.redrive.app_budget import Budget
from worker.ops.redrive.app_results import Outcomes, Result, _Received
from worker.ops.redrive.plan import DeadLetteredMessage, Plan, Verdict, plan_redrive
from worker.ops.settings import QueueDirectory, QueueRef
from worker.telemetry.health import Health
from worker.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from types_aiobotocore_sqs.client import SQSClient
    from types_aiobotocore_sqs.type_defs import MessageTypeDef


log = logging.getLogger("worker.redrive")
#: Between failed DLQ receives: full jitter below 0.5 s doubling, capped at 10 s.
RECEIVE_BACKOFF = Backoff(base=0.5, cap=10.0)
#: Consecutive failed receives after which a one-shot pass gives up.
MAX_RECEIVE_ERRORS = 5


@dataclass(frozen=True, slots=True)
class AppOptions:
    """The knobs of an app-mode pass."""

    filters: Sequence[Filter] = ()
    max_messages: int | None = None
    rate: float | None = None
    dry_run: bool = False
    max_redrives: int = 3
    watch: bool = False
    min_age: float | None = None
    lease: int = 30
    receivers: int = 4
    wait_seconds: int = 1


class AppRedrive:
    """One app-mode pass (or a ``--watch`` loop) over a DLQ."""

    def __init__(
        self,
        client: SQSClient,
        dlq: QueueRef,
        options: AppOptions,
        *,
        to: QueueRef | None,
        default_target: str | None,
        metrics: Metrics,
        progress: Progress,
        health: Health | None = None,
    ) -> None:
        self._client = client
        self.dlq = dlq
        self.options = options
        self._to = to
        self._default_target = default_target
        self._metrics = metrics
        self._progress = progress
        self._health = health
        self._directory = QueueDirectory(client)
        self.held = HeldMessages(client, dlq.url, options.lease)
        self._outcomes = Outcomes(
            dlq, self.held, watch=options.watch, dry_run=options.dry_run, metrics=metrics, progress=progress
        )
        self._budget = Budget(options.max_messages, options.rate)
        self._delivery = Delivery(
            client,
            dlq.url,
            watch=options.watch,
            metrics=metrics,
            outcomes=self._outcomes,
            budget=self._budget,
        )
        self.stop_event = anyio.Event()
        self.fatal: str | None = None

    @property
    def tally(self) -> Tally:
        """The counts so far."""
        return self._outcomes.tally

    @property
    def results(self) -> list[Result]:
        """The messages the report lists (dry runs, failures, holds; none in watch mode)."""
        return self._outcomes.results

    @property
    def last_move_at(self) -> float | None:
        """Monotonic time of the last acknowledged move (the rate is measured up to it)."""
        return self._outcomes.last_move_at

    # --- control -----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop receiving; batches in hand finish (sent ones are deleted), the rest is given back."""
        self.stop_event.set()

    async def run(self) -> Tally:
        """Run the pass (until the DLQ has nothing visible, ``--max``, or ``stop()``); the counts."""
        try:
            async with anyio.create_task_group() as tg:
                if not self.options.watch:
                    tg.start_soon(self.held.keep_alive)
                async with anyio.create_task_group() as receivers:
                    for _ in range(max(1, self.options.receivers)):
                        receivers.start_soon(self._receiver)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                not_released = await self.held.release_all()
                if not_released:
                    log.warning(
                        "some messages could not be given back at once; they reappear when their lease ends",
                        extra={"event": "redrive_release_failed", "count": not_released},
                    )
        return self.tally

    # --- receiving ---------------------------------------------------------------------------------

    async def _receiver(self) -> None:
        errors = 0
        while not self.stop_event.is_set():
            size = await self._budget.claim(self.stop_event)
            if size == 0:
                return
            try:
                response = await receive(
                    self._client,
                    self.dlq.url,
                    size,
                    wait=self.options.wait_seconds,
                    visibility=self.held.lease,
                )
            except CALL_ERRORS as exc:
                self._budget.refund(size)
                code = error_code(exc)
                self._metrics.sqs_errors.labels("ReceiveMessage").inc()
                if self._health is not None:
                    self._health.poll_failed(code)
                errors += 1
                log.warning("DLQ receive failed", extra={"event": "redrive_receive_failed", "error": code})
                if not self.options.watch and errors >= MAX_RECEIVE_ERRORS:
                    self.fatal = f"the DLQ cannot be read ({code})"
                    self.stop()
                    return
                with anyio.move_on_after(RECEIVE_BACKOFF.delay(errors + 1)):
                    await self.stop_event.wait()
                continue
            errors = 0
            if self._health is not None:
                self._health.poll_succeeded()
            entries = list(response.get("Messages", []))
            self._budget.refund(size - len(entries))
            if not entries:
                if self.options.watch:
                    continue
                return
            if self.stop_event.is_set():
                # Received while stopping: give them straight back, untouched.
                await change_visibility(
                    self._client, self.dlq.url, ((e["ReceiptHandle"], 0) for e in entries)
                )
                return
            with anyio.CancelScope(shield=True):
                await self._handle(entries)

    # --- one batch ---------------------------------------------------------------------------------

    async def _handle(self, entries: Sequence[MessageTypeDef]) -> None:
        now = datetime.now(UTC)
        batch = _Received()
        moves: list[tuple[DeadLetteredMessage, str, Plan]] = []
        blocked: set[str] = set()
        for entry in entries:
            dead = DeadLetteredMessage.from_entry(entry, self.dlq.url)
            group = dead.message.group_id if self.dlq.fifo else None
            left = True
            if group is not None and group in blocked:
                self._outcomes.leave(
                    batch, dead, Verdict.SKIP, "waits behind an earlier message of its FIFO group"
                )
            else:
                left = await self._decide(batch, dead, now, moves)
            if left and group is not None:
                blocked.add(group)
        if moves:
            await self._delivery.send_all(batch, moves)
        if self.options.watch and batch.leave:
            await change_visibility(self._client, self.dlq.url, batch.leave)
        self._progress.update(self.tally)

    async def _decide(
        self,
        batch: _Received,
        dead: DeadLetteredMessage,
        now: datetime,
        moves: list[tuple[DeadLetteredMessage, str, Plan]],
    ) -> bool:
        """Plan one message; True when it stays in the DLQ."""
        age = dead.age(now)
        min_age = self.options.min_age
        if min_age and (age is None or age < min_age):
            wait = math.ceil(min_age - (age or 0)) + 1
            self._outcomes.leave(batch, dead, Verdict.SKIP, "younger than --min-age", visibility=wait)
            return True
        if not all_match(self.options.filters, dead.facts(now)):
            self._outcomes.leave(batch, dead, Verdict.SKIP, "does not match the filters")
            return True
        if dead.original_id in self._delivery.moved_ids:
            self._outcomes.leave(
                batch, dead, Verdict.SKIP, "already redriven by this pass (it failed again meanwhile)"
            )
            return True
        target, source_url, problem = await self._target_for(dead)
        if problem:
            self._outcomes.leave(batch, dead, Verdict.FAIL, problem)
            return True
        plan = plan_redrive(
            dead,
            target_url=target,
            dlq_url=self.dlq.url,
            max_redrives=self.options.max_redrives,
            now=now,
            source_url=source_url,
        )
        if plan.verdict is not Verdict.MOVE:
            self._outcomes.leave(batch, dead, plan.verdict, plan.reason, target=target)
            return True
        limit = self.options.max_messages
        if limit is not None and self._budget.reserved >= limit:
            self._outcomes.leave(batch, dead, None, "beyond --max")
            return True
        if self.options.dry_run:
            self._budget.reserved += 1
            self._outcomes.record(dead, Verdict.MOVE, target, "", plan.redrive_count, dry_run=True)
            self._outcomes.keep(batch, dead, visibility=0)
            return True
        self._budget.reserved += 1
        self._budget.outstanding += 1
        moves.append((dead, target or "", plan))  # a MOVE plan always has a target
        return False

    async def _target_for(self, dead: DeadLetteredMessage) -> tuple[str | None, str | None, str]:
        """(target URL, resolved broker source URL, problem): where this message goes."""
        source_url = None
        if dead.record is None and dead.broker_source_arn:
            source_url, code = await self._directory.url_of(dead.broker_source_arn)
            if source_url is None and self._to is None:
                return None, None, f"its source queue {dead.broker_source_arn} cannot be found ({code})"
        if self._to is not None:
            return self._to.url, source_url, ""
        if source_url:
            return source_url, source_url, ""
        if dead.source_url:
            return dead.source_url, None, ""
        if dead.source_arn:
            url, code = await self._directory.url_of(dead.source_arn)
            if url is None:
                return None, None, f"its source queue {dead.source_arn} cannot be found ({code})"
            return url, None, ""
        return self._default_target, None, ""

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
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

from worker.aws.client import CALL_ERRORS, error_code
from worker.aws.queues import receive
from worker.backoff import Backoff
from worker.limits import SQS_BATCH_MAX, SQS_MAX_MESSAGE_BYTES, SQS_VISIBILITY_CAP_SECONDS
from worker.ops.filters import Filter, all_match
from worker.ops.hold import HeldMessages, change_visibility
from worker.ops.progress import Progress, Tally
from worker.ops.redrive.plan import DeadLetteredMessage, Plan, Verdict, plan_redrive
from worker.ops.redrive.ratelimit import TokenBucket, default_burst
from worker.ops.settings import QueueDirectory, QueueRef
from worker.telemetry.health import Health
from worker.telemetry.metrics import Metrics

log = logging.getLogger("worker.redrive")
#: Between failed DLQ receives: full jitter below 0.5 s doubling, capped at 10 s.
RECEIVE_BACKOFF = Backoff(base=0.5, cap=10.0)

#: In --watch mode, a message left in the DLQ (filtered out, failed, held) is looked at again after this.
WATCH_RECHECK_SECONDS = 300
#: SQS caps a visibility timeout at 12 hours.
#: Consecutive failed receives after which a one-shot pass gives up.
MAX_RECEIVE_ERRORS = 5


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


@dataclass(slots=True)
class _Received:
    """Messages of one receive that stay in the DLQ, with the visibility each gets back in watch mode."""

    leave: list[tuple[str, int]] = field(default_factory=list)


class AppRedrive:
    """One app-mode pass (or a ``--watch`` loop) over a DLQ."""

    def __init__(
        self,
        client: Any,
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
        self.tally = Tally()
        self.results: list[Result] = []
        self.stop_event = anyio.Event()
        self.fatal: str | None = None
        #: Monotonic time of the last acknowledged move (the rate is measured up to it).
        self.last_move_at: float | None = None
        rate = options.rate
        self._bucket = TokenBucket(rate, default_burst(rate)) if rate else None
        self._batch_size = int(min(SQS_BATCH_MAX, default_burst(rate))) if rate else SQS_BATCH_MAX
        self._reserved = 0
        self._outstanding = 0
        self._settled = anyio.Event()
        #: Original ids this one-shot pass moved: a copy back in the DLQ meanwhile waits for the next pass.
        self._moved_ids: set[str] = set()

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

    async def _claim(self) -> int:
        """How many to receive next: 0 when ``--max`` is reached and nothing is outstanding."""
        size = self._batch_size
        limit = self.options.max_messages
        if limit is not None:
            while limit - self._reserved <= 0:
                if self._outstanding == 0 or self.stop_event.is_set():
                    return 0
                await self._settled.wait()
            size = min(size, limit - self._reserved)
        if self._bucket is not None:
            delay = self._bucket.reserve(size, anyio.current_time())
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self.stop_event.wait()
                if self.stop_event.is_set():
                    self._bucket.refund(size, anyio.current_time())
                    return 0
        return size

    def _refund(self, n: int) -> None:
        if self._bucket is not None and n > 0:
            self._bucket.refund(n, anyio.current_time())

    async def _receiver(self) -> None:
        errors = 0
        while not self.stop_event.is_set():
            size = await self._claim()
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
                self._refund(size)
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
            self._refund(size - len(entries))
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

    async def _handle(self, entries: list[dict[str, Any]]) -> None:
        now = datetime.now(UTC)
        batch = _Received()
        moves: list[tuple[DeadLetteredMessage, str, Plan]] = []
        blocked: set[str] = set()
        for entry in entries:
            dead = DeadLetteredMessage.from_entry(entry, self.dlq.url)
            group = dead.message.group_id if self.dlq.fifo else None
            left = True
            if group is not None and group in blocked:
                self._leave(batch, dead, Verdict.SKIP, "waits behind an earlier message of its FIFO group")
            else:
                left = await self._decide(batch, dead, now, moves)
            if left and group is not None:
                blocked.add(group)
        if moves:
            await self._send_all(batch, moves)
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
            self._leave(batch, dead, Verdict.SKIP, "younger than --min-age", visibility=wait)
            return True
        if not all_match(self.options.filters, dead.facts(now)):
            self._leave(batch, dead, Verdict.SKIP, "does not match the filters")
            return True
        if dead.original_id in self._moved_ids:
            self._leave(
                batch, dead, Verdict.SKIP, "already redriven by this pass (it failed again meanwhile)"
            )
            return True
        target, source_url, problem = await self._target_for(dead)
        if problem:
            self._leave(batch, dead, Verdict.FAIL, problem)
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
            self._leave(batch, dead, plan.verdict, plan.reason, target=target)
            return True
        limit = self.options.max_messages
        if limit is not None and self._reserved >= limit:
            self._leave(batch, dead, None, "beyond --max")
            return True
        if self.options.dry_run:
            self._reserved += 1
            self._record(dead, Verdict.MOVE, target, "", plan.redrive_count, dry_run=True)
            self._keep(batch, dead, visibility=0)
            return True
        self._reserved += 1
        self._outstanding += 1
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

    # --- sending -----------------------------------------------------------------------------------

    async def _send_all(self, batch: _Received, moves: list[tuple[DeadLetteredMessage, str, Plan]]) -> None:
        by_target: dict[str, list[tuple[DeadLetteredMessage, Plan]]] = {}
        for dead, target, plan in moves:
            by_target.setdefault(target, []).append((dead, plan))
        sent: list[tuple[DeadLetteredMessage, str, Plan]] = []
        for target, items in by_target.items():
            failed_groups: set[str] = set()
            for chunk in _chunks(items, fifo=target.endswith(".fifo")):
                ready = []
                for dead, plan in chunk:
                    group = dead.message.group_id
                    if target.endswith(".fifo") and group in failed_groups:
                        self._unreserve()
                        self._leave(
                            batch,
                            dead,
                            Verdict.FAIL,
                            "an earlier message of its FIFO group failed",
                            target=target,
                        )
                    else:
                        ready.append((dead, plan))
                for (dead, plan), error in zip(ready, await self._send(target, ready), strict=True):
                    if error is None:
                        sent.append((dead, target, plan))
                        continue
                    self._unreserve()
                    self._leave(batch, dead, Verdict.FAIL, error, target=target)
                    if dead.message.group_id:
                        failed_groups.add(dead.message.group_id)
        if sent:
            await self._delete(batch, sent)

    async def _send(self, target: str, items: list[tuple[DeadLetteredMessage, Plan]]) -> list[str | None]:
        """SendMessageBatch; per item None (acknowledged) or the reason it was not."""
        if not items:
            return []
        entries = [{"Id": str(i), **(plan.request or {})} for i, (_, plan) in enumerate(items)]
        try:
            response = await self._client.send_message_batch(QueueUrl=target, Entries=entries)
        except CALL_ERRORS as exc:
            self._metrics.sqs_errors.labels("SendMessageBatch").inc()
            return [f"the target did not take it ({error_code(exc)})"] * len(items)
        errors: list[str | None] = [None] * len(items)
        acknowledged = {int(ok["Id"]) for ok in response.get("Successful", [])}
        for failed in response.get("Failed", []):
            self._metrics.sqs_errors.labels("SendMessageBatch").inc()
            detail = failed.get("Message") or ""
            errors[int(failed["Id"])] = (
                f"the target rejected it ({failed.get('Code', 'Failed')}{': ' + detail if detail else ''})"
            )
        for i in range(len(items)):
            if errors[i] is None and i not in acknowledged:
                errors[i] = "the target did not acknowledge it"
        return errors

    async def _delete(self, batch: _Received, sent: list[tuple[DeadLetteredMessage, str, Plan]]) -> None:
        for start in range(0, len(sent), SQS_BATCH_MAX):
            chunk = sent[start : start + SQS_BATCH_MAX]
            entries = [
                {"Id": str(i), "ReceiptHandle": d.message.receipt_handle} for i, (d, _, _) in enumerate(chunk)
            ]
            failed: dict[int, str] = {}
            try:
                response = await self._client.delete_message_batch(QueueUrl=self.dlq.url, Entries=entries)
                for entry in response.get("Failed", []):
                    failed[int(entry["Id"])] = str(entry.get("Code", "Failed"))
            except CALL_ERRORS as exc:
                failed = dict.fromkeys(range(len(chunk)), error_code(exc))
            if failed:
                self._metrics.sqs_errors.labels("DeleteMessageBatch").inc(len(failed))
            for i, (dead, target, plan) in enumerate(chunk):
                self._outstanding -= 1
                if i in failed:
                    self._reserved -= 1
                    self._leave(
                        batch,
                        dead,
                        Verdict.FAIL,
                        f"sent, but not deleted from the DLQ ({failed[i]}): a later redrive sends it again",
                        target=target,
                    )
                else:
                    if not self.options.watch:
                        self._moved_ids.add(dead.original_id)
                    self._record(dead, Verdict.MOVE, target, "", plan.redrive_count)
            self._settle()

    # --- bookkeeping -------------------------------------------------------------------------------

    def _unreserve(self) -> None:
        self._reserved -= 1
        self._outstanding -= 1
        self._settle()

    def _settle(self) -> None:
        self._settled.set()
        self._settled = anyio.Event()

    def _keep(self, batch: _Received, dead: DeadLetteredMessage, *, visibility: int) -> None:
        """Leave the message in the DLQ: held to the end of the pass, or (watch) visible again later."""
        if self.options.watch:
            hold = max(0, min(SQS_VISIBILITY_CAP_SECONDS - 60, visibility))
            batch.leave.append((dead.message.receipt_handle, hold))
        else:
            self.held.add(dead.message.receipt_handle)

    def _leave(
        self,
        batch: _Received,
        dead: DeadLetteredMessage,
        verdict: Verdict | None,
        reason: str,
        *,
        target: str | None = None,
        visibility: int = WATCH_RECHECK_SECONDS,
    ) -> None:
        self._keep(batch, dead, visibility=visibility if verdict is not None else 0)
        if verdict is not None:
            self._record(dead, verdict, target, reason, dead.redrive_count)

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

    def _record(
        self,
        dead: DeadLetteredMessage,
        verdict: Verdict,
        target: str | None,
        reason: str,
        redrive_count: int,
        *,
        dry_run: bool = False,
    ) -> None:
        self._count(verdict)
        if not self.options.dry_run:
            self._metrics.redrive.labels(self.dlq.name, verdict.value).inc()
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
        if not self.options.watch and (dry_run or verdict in (Verdict.FAIL, Verdict.HOLD)):
            self.results.append(result)
        if verdict in (Verdict.FAIL, Verdict.HOLD):
            self._progress.note(
                f"{verdict.value}: {dead.original_id} ({dead.error_type}): {reason}",
                message_id=dead.message.id,
                original_message_id=dead.original_id,
                result=verdict.value,
                reason=reason,
            )


def _chunks(
    items: list[tuple[DeadLetteredMessage, Plan]], *, fifo: bool
) -> list[list[tuple[DeadLetteredMessage, Plan]]]:
    """SendMessageBatch calls: at most 10 entries and 1 MiB each; on FIFO, one message per group per call."""
    chunks: list[list[tuple[DeadLetteredMessage, Plan]]] = []
    pending = list(items)
    while pending:
        chunk: list[tuple[DeadLetteredMessage, Plan]] = []
        size = 0
        groups: set[str | None] = set()
        rest: list[tuple[DeadLetteredMessage, Plan]] = []
        for item in pending:
            dead, plan = item
            nbytes = _request_size(plan)
            group = dead.message.group_id
            if (
                len(chunk) >= SQS_BATCH_MAX
                or (chunk and size + nbytes > SQS_MAX_MESSAGE_BYTES)
                or (fifo and group in groups)
                or (fifo and rest and any(r[0].message.group_id == group for r in rest))
            ):
                rest.append(item)
                continue
            chunk.append(item)
            size += nbytes
            groups.add(group)
        chunks.append(chunk)
        pending = rest
    return chunks


def _request_size(plan: Plan) -> int:
    request = plan.request or {}
    size = len(str(request.get("MessageBody", "")).encode())
    for name, attr in (request.get("MessageAttributes") or {}).items():
        value = attr.get("StringValue", attr.get("BinaryValue", b""))
        raw = value if isinstance(value, bytes) else str(value).encode()
        size += len(name.encode()) + len(str(attr.get("DataType", "")).encode()) + len(raw)
    return size

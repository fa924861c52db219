"""A receive through a batch handler: one call for its messages, then each one's own retry, DLQ or delete.

The messages of one receive are held together: each has its own lease and heartbeat from the receive on.
Undecodable messages (and dead-letters to redo) leave first, one by one, without reaching the handler. The
rest go to one call; each message's share of the result is decided by the same policy as a per-message
handler's outcome (immediate retries call the handler again with the messages that asked for one), and the
decisions are carried out concurrently, so the deletes of a batch leave in one DeleteMessageBatch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from worker.engine.batch import ItemOutcome, item_outcomes
from worker.engine.breaker import Admission, Denied
from worker.engine.breaker_gate import Reopened
from worker.engine.failure import classify
from worker.engine.lease import Lease
from worker.engine.message import Message
from worker.engine.policy import HandlerResult
from worker.errors import DecodeError
from worker.telemetry.tracing import ProcessSpan

if TYPE_CHECKING:
    from worker.engine.disposition import Disposition
    from worker.engine.processor import Processor


async def run_batch(
    processor: Processor,
    items: Sequence[tuple[Message, DecodeError | None]],
    received_at: float,
    release: Callable[[int], None],
) -> None:
    """Process one receive with the batch handler; ``release(1)`` once per message no longer held."""
    leases = [processor.lease(received_at) for _ in items]
    beats = [
        processor.heartbeats.track(lease, message.receipt_handle)
        for (message, _), lease in zip(items, leases, strict=True)
    ]
    processor.held += len(items)
    held = set(range(len(items)))

    def finish(index: int) -> None:
        if index in held:
            held.discard(index)
            processor.heartbeats.untrack(beats[index])
            processor.held -= 1
            release(1)

    releases = processor.releases
    try:
        if releases.draining:
            await releases.give_back([m for m, _ in items], leases, releases.handback_seconds)
            return
        live: list[int] = []
        for index, ((message, decode_error), lease) in enumerate(zip(items, leases, strict=True)):
            if await processor.before_handler(message, decode_error, lease) is None:
                live.append(index)
            else:
                finish(index)
        run = _BatchRun(processor, [items[i][0] for i in live], [leases[i] for i in live])
        await run.until_decided([partial(finish, i) for i in live])
    except anyio.get_cancelled_exc_class():
        # Forced stop: what is unfinished goes back at once.
        left = sorted(held)
        for index in left:
            processor.heartbeats.untrack(beats[index])
        with anyio.move_on_after(5, shield=True):
            await releases.give_back([items[i][0] for i in left], [leases[i] for i in left], 0)
        raise
    finally:
        for index in sorted(held):
            finish(index)


class _BatchRun:
    """The messages of one receive that reached the handler, until each has its decision carried out.

    FIFO: a message held back behind a failed one of its group (or one its breaker sent back) goes back
    last, with that one's delay, so it cannot come back before it (as a per-message handler's group does).
    """

    def __init__(self, processor: Processor, messages: list[Message], leases: list[Lease]) -> None:
        invoke_batch = processor.handler.invoke_batch
        if invoke_batch is None:
            raise RuntimeError("run_batch needs a batch handler")
        self.invoke_batch = invoke_batch
        self.processor = processor
        self.messages = messages
        self.leases = leases
        self.gate = processor.gate
        self.fifo = processor.settings.is_fifo
        self.handed_back = [processor.handbacks.count(message.id) for message in messages]
        self.first_sent = [processor.first_sent(message) for message in messages]
        self.held_back: dict[str | None, list[int]] = {}
        self.blocker: dict[str | None, int] = {}  # a FIFO group's failed (or sent back) message
        self.dispositions: dict[int, Disposition] = {}

    async def until_decided(self, done: list[Callable[[], None]]) -> None:
        """Call, decide, act; call again with the messages the policy retries at once; hand back the rest."""
        self.done = done
        live = list(range(len(self.messages)))
        immediate = 0
        while live:
            async with anyio.create_task_group() as tg:
                admissions = self._admit(tg, live)
                live = [i for i in live if i in admissions] if self.gate is not None else live
                live = await self._call(tg, live, admissions, immediate) if live else []
            immediate += 1
        async with anyio.create_task_group() as tg:
            for group, behind in self.held_back.items():
                disposition = self.dispositions.get(self.blocker[group])
                delay = 0
                if disposition is not None and not disposition.finished and disposition.give_back is not None:
                    delay = disposition.give_back
                for i in behind:
                    back = partial(self.processor.releases.hand_back, self.messages[i], self.leases[i], delay)
                    tg.start_soon(self._carry_out, back, i)

    def _admit(self, tg: TaskGroup, live: list[int]) -> dict[int, Admission]:
        """Ask the breakers for each message; a denied one goes back (and, FIFO, its group's later ones)."""
        admissions: dict[int, Admission] = {}
        if self.gate is None:
            return admissions
        for i in live:
            group = self.messages[i].group_id
            if self.fifo and group in self.blocker:
                self.held_back.setdefault(group, []).append(i)
                continue
            admitted = self.gate.admit(self.messages[i])
            if isinstance(admitted, Denied):
                self.blocker.setdefault(group, i)
                back = partial(
                    self.processor.releases.breaker_hand_back,
                    self.messages[i],
                    self.leases[i],
                    admitted.dependency,
                    admitted.retry_in,
                )
                tg.start_soon(self._carry_out, back, i)
            else:
                admissions[i] = admitted
        return admissions

    async def _call(
        self, tg: TaskGroup, live: list[int], admissions: dict[int, Admission], immediate: int
    ) -> list[int]:
        """One handler call for ``live`` in its span (current while the decisions start: they log with it)."""
        with self.processor.batch_span([self.messages[i] for i in live]) as span:
            return await self._call_in(span, tg, live, admissions, immediate)

    async def _call_in(
        self,
        span: ProcessSpan,
        tg: TaskGroup,
        live: list[int],
        admissions: dict[int, Admission],
        immediate: int,
    ) -> list[int]:
        """One handler call for ``live``; each decision carried out in ``tg``; the ones to call again."""
        batch = [self.messages[i] for i in live]
        try:
            outcome, returned, error = await self.processor.invoke(
                tuple(batch), partial(self.invoke_batch, batch), span
            )
        except BaseException:
            for admitted in admissions.values():
                self._release(admitted)
            raise
        permanent = partial(classify, permanent=self.processor.permanent)
        shares = item_outcomes(batch, outcome, returned, error, permanent, fifo=self.fifo)
        failed = sum(1 for s in shares if not s.held_back and s.outcome is not HandlerResult.SUCCESS)
        span.failed_items(failed, len(batch))
        again: list[int] = []
        for i, share in zip(live, shares, strict=True):
            group = self.messages[i].group_id
            held = admissions.get(i)
            if share.held_back:
                self._release(held)
                self.held_back.setdefault(group, []).append(i)
                continue
            if share.outcome is not HandlerResult.SUCCESS:
                self.blocker.setdefault(group, i)
            reopened = self._record(held, share)
            if reopened is not None and not reopened.counts:
                message, lease = self.messages[i], self.leases[i]
                hand_back = self.processor.releases.breaker_hand_back
                back = partial(hand_back, message, lease, reopened.dependency, reopened.retry_in)
                tg.start_soon(self._carry_out, back, i)
                continue
            invoked = (share.outcome, share.response, share.error)
            verdict = self.processor.decide(
                self.messages[i], self.leases[i], invoked, immediate, self.handed_back[i], self.first_sent[i]
            )
            if verdict is not None and reopened is not None:
                verdict = verdict.not_before(reopened.retry_in)  # a failed probe
            if verdict is None:
                again.append(i)
            else:
                act = partial(self.processor.act, self.messages[i], self.leases[i], invoked, verdict)
                tg.start_soon(self._carry_out, act, i)
        return again

    def _record(self, admitted: Admission | None, share: ItemOutcome) -> Reopened | None:
        """Count the share's outcome with the breakers (see BreakerGate.record)."""
        if self.gate is None or admitted is None:
            return None
        return self.gate.record(admitted, share.outcome, share.error)

    def _release(self, admitted: Admission | None) -> None:
        if self.gate is not None and admitted is not None:
            self.gate.release(admitted)

    async def _carry_out(self, action: Callable[[], Awaitable[Disposition | bool]], position: int) -> None:
        """Carry out one message's decision, keep its disposition (FIFO delays), then stop holding it."""
        try:
            result = await action()
            if not isinstance(result, bool):
                self.dispositions[position] = result
        finally:
            self.done[position]()

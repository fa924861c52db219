"""A group through a per-message handler: a FIFO group of one receive, or a single message, in order.

Each message has its own lease and heartbeat; after a delayed retry the rest of the group goes back with
it (same delay), so they cannot overtake it. Drain and forced stop hand back what has not started.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import anyio

from worker.engine.breaker import Denied
from worker.engine.breaker_gate import Reopened
from worker.engine.lease import Beat, Lease
from worker.engine.message import Message
from worker.engine.policy import HandlerResult
from worker.errors import DecodeError
from worker.telemetry.tracing import NO_SPAN

if TYPE_CHECKING:
    from worker.engine.canary import Version
    from worker.engine.disposition import Disposition
    from worker.engine.processor import Processor


async def run_group(
    processor: Processor,
    items: Sequence[tuple[Message, DecodeError | None]],
    received_at: float,
    release: Callable[[int], None],
) -> None:
    """Process messages in order, one at a time; after a delayed retry the rest go back with it.

    Each message has its own lease (taken at ``received_at``, the time the receive was sent) and its
    own heartbeat, running until that message is finished. ``release(n)`` is called once for each
    message when the worker no longer holds it: when it is finished or, for the group's last message
    when it succeeded, once its (batched) delete has answered, without keeping this task waiting.
    """

    def settle(count: int = 1) -> None:
        processor.held -= count
        release(count)

    releases = processor.releases
    processor.held += len(items)
    leases = [processor.lease(received_at) for _ in items]
    beats: list[Beat] = []
    done = 0
    try:
        for (message, _), lease in zip(items, leases, strict=True):
            beats.append(processor.heartbeats.track(lease, message.receipt_handle))
        give_back: int | None = None
        last = len(items) - 1
        for (message, decode_error), lease in zip(items, leases, strict=True):
            handed_over = False
            if give_back is None and releases.draining:
                give_back = releases.handback_seconds  # draining: what has not started goes back
            if give_back is not None:
                await releases.hand_back(message, lease, give_back)
            else:
                verdict = await run_one(
                    processor, message, decode_error, lease, settle=settle if done == last else None
                )
                handed_over = verdict.settle_pending
                if not verdict.finished:
                    give_back = verdict.give_back if verdict.give_back is not None else 0
            processor.heartbeats.untrack(beats[done])
            done += 1  # released below, or by the pending delete
            if not handed_over:
                settle()
    except anyio.get_cancelled_exc_class():
        # Forced stop (shutdown deadline, second signal): what is unfinished goes back at once.
        for beat in beats[done:]:
            processor.heartbeats.untrack(beat)
        with anyio.move_on_after(5, shield=True):
            await releases.give_back([m for m, _ in items[done:]], leases[done:], releases.handback_seconds)
        raise
    finally:
        for beat in beats[done:]:
            processor.heartbeats.untrack(beat)
        if done < len(items):
            settle(len(items) - done)


async def run_one(
    processor: Processor,
    message: Message,
    decode_error: DecodeError | None,
    lease: Lease,
    *,
    settle: Callable[[], None] | None = None,
) -> Disposition:
    """Run one message to a verdict: acked, retried later, or dead-lettered.

    With ``settle``, a success does not wait for its delete: the verdict says ``settle_pending`` and
    ``settle()`` runs (after the on-success outcome) once the delete has answered.
    """
    early = await processor.before_handler(message, decode_error, lease)
    if early is not None:
        return early
    handed_back = processor.handbacks.count(message.id)
    first_sent = processor.first_sent(message)
    immediate = 0
    gate = processor.gate
    reopened: Reopened | None = None
    # A canary rollout picks the version once per delivery (by the message's original id: sticky).
    route = processor.canary.pick(message) if processor.canary is not None else None
    handler = processor.handler if route is None else route.handler
    while True:
        # One span per call, current until its decision is carried out (log lines carry its ids).
        with processor.span(message, immediate, handed_back) as span:
            call = partial(handler.invoke, message)
            if gate is None:
                invoked = await processor.invoke((message,), call, span, route)
            else:
                admitted = gate.admit(message)
                if isinstance(admitted, Denied):
                    span.decided("breaker_hand_back", {"dependency": admitted.dependency})
                    return await processor.releases.breaker_hand_back(
                        message, lease, admitted.dependency, admitted.retry_in
                    )
                try:
                    invoked = await processor.invoke((message,), call, span, route)
                except BaseException:
                    gate.release(admitted)  # cancelled: a probe permit must not leak
                    raise
                reopened = gate.record(admitted, invoked[0], invoked[2])
                if reopened is not None and not reopened.counts:
                    # Failed as its dependency's breaker opened: the breaker decides when it runs again.
                    dependency, retry_in = reopened.dependency, reopened.retry_in
                    span.decided("breaker_hand_back", {"dependency": dependency})
                    return await processor.releases.breaker_hand_back(message, lease, dependency, retry_in)
            if route is not None and _on_trial(processor, route, invoked[0]):
                # Failed on the canary while it is on trial: not held against the message (docs/deploying.md).
                span.decided("canary_hand_back", {"version": route.version})
                return await processor.releases.canary_hand_back(message, lease, route.version)
            verdict = processor.decide(message, lease, invoked, immediate, handed_back, first_sent)
            if gate is not None and verdict is not None and reopened is not None:
                verdict = verdict.not_before(reopened.retry_in)  # a failed probe: not back before the next
            if verdict is not None:
                if span is not NO_SPAN:
                    span.decided(*verdict.traced())
                version = None if route is None else route.version
                return await processor.act(message, lease, invoked, verdict, settle=settle, version=version)
            span.decided("retry_now")
        immediate += 1


def _on_trial(processor: Processor, route: Version, outcome: HandlerResult) -> bool:
    """True when a call failed on the canary version while the rollout is still progressing."""
    canary = processor.canary
    return (
        canary is not None and route.candidate and canary.rolling_out and outcome is not HandlerResult.SUCCESS
    )

"""``worker switch``: flip blue/green fleets (``WORKER_COLOR_STATE``), wait for the drain, bake, switch back.

``worker switch --to green`` reads the flag and the heartbeats, refuses when no green replica is alive (a
heartbeat younger than ``--max-heartbeat-age``), writes the flag conditionally (if it is still the one read:
two operators cannot both win), then waits until every live blue replica reports, after seeing this very
flag, ``standby`` with nothing in flight (drained). With ``--bake SECONDS`` it then watches green's failure
ratio (from the heartbeats' processed and failed counts since the switch) and, with ``--auto-rollback``,
switches back on a breach. ``worker switch --status`` shows the flag and both fleets.

``worker switch``'s command line is in ``switch_cli``, its pure decisions and ``--status`` view in
``switch_plan``; this module reads the store and waits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from worker.ops.canary import operator_name
from worker.ops.switch_cli import load_flag_location, options_from_args
from worker.ops.switch_plan import (
    Color,
    Options,
    Tally,
    flag_line,
    live,
    render_status,
    replica_names,
    status_view,
    tally,
    undrained,
)

if TYPE_CHECKING:
    from worker.engine.color_store import ColorStore, Heartbeat

Say = Callable[[str], None]


def main(args: argparse.Namespace) -> int:
    """``worker switch``: 0 on success; 1 refused, timed out, rolled back or store failure; 2 bad usage."""
    import anyio

    from worker.engine.color_store import open_color_store
    from worker.engine.rollout_store import StoreError

    options = options_from_args(args)
    uri = load_flag_location(args.state)

    async def command() -> int:
        async with open_color_store(uri) as store:
            if args.status:
                return await show_status(store, as_json=args.json, max_age=args.max_heartbeat_age)
            return await switch(store, options)

    try:
        return anyio.run(command)
    except StoreError as exc:
        print(f"worker: switch: the flag's store cannot be reached: {exc}", file=sys.stderr)
        return 1


# --- the switch ---


async def switch(
    store: ColorStore, options: Options, *, say: Say = print, clock: Callable[[], float] = time.time
) -> int:
    """Check the target is alive, flip the flag, wait for the drain, then bake (and maybe switch back).

    Run again after a timeout, it finds the target already active and waits for the drain again.
    """
    from worker.engine.color_store import FlagChangedError

    target = options.target
    old: Color = "green" if target == "blue" else "blue"
    flag = await store.read_active()
    beats = await store.read_heartbeats()
    snapshot = {beat.replica: beat for beat in beats if beat.color == target}
    if flag.active == target:
        say(f"{target} is already active ({flag_line(flag)}); waiting for {old} to drain")
    else:
        ready = live(beats, target, clock(), options.max_age)
        if not ready:
            say(
                f"refused: no live {target} replica (no heartbeat younger than {options.max_age:g} s under "
                f"{store.uri}.heartbeats/{target}/); {old} stays active"
            )
            return 1
        try:
            flag = await store.set_active(
                target, by=operator_name(), reason=options.reason or "worker switch", now=clock(), expect=flag
            )
        except FlagChangedError as exc:
            say(f"refused: {exc}; nothing was changed by this command")
            return 1
        say(
            f"{target} is active (flag {flag.id}); {len(ready)} {target} replicas live; "
            f"waiting for {old} to drain"
        )
    if not await wait_drained(store, old, flag.id, options, say=say, clock=clock):
        return 1
    if options.bake is None:
        return 0
    breach = await bake(store, target, snapshot, options.bake, options, say=say, clock=clock)
    if breach is None:
        return 0
    if not options.auto_rollback:
        say(f"{target} breached during the bake: {breach}; not switching back (no --auto-rollback)")
        return 1
    say(f"{target} breached during the bake: {breach}; switching back to {old}")
    try:
        back = await store.set_active(
            old, by=operator_name(), reason=f"auto-rollback: {breach}", now=clock(), expect=flag
        )
    except FlagChangedError as exc:
        say(f"not switched back: {exc}")
        return 1
    await wait_drained(store, target, back.id, options, say=say, clock=clock)
    return 1


async def wait_drained(
    store: ColorStore,
    color: Color,
    flag_id: str,
    options: Options,
    *,
    say: Say = print,
    clock: Callable[[], float] = time.time,
) -> bool:
    """Read the heartbeats every ``interval`` until ``color`` has drained (True) or ``timeout`` (False)."""
    import anyio

    from worker.engine.rollout_store import StoreError

    deadline = clock() + options.timeout
    pending: list[Heartbeat] = []
    while True:
        try:
            pending = undrained(await store.read_heartbeats(color), color, flag_id, clock(), options.max_age)
        except StoreError as exc:
            say(f"cannot read the heartbeats ({exc}); trying again")
        else:
            if not pending:
                say(f"{color} has drained: no live {color} replica is active or has messages in flight")
                return True
        if clock() >= deadline:
            say(
                f"timed out after {options.timeout:g} s waiting for {color} to drain: "
                f"{replica_names(pending) or '?'}"
            )
            return False
        await anyio.sleep(options.interval)


async def bake(
    store: ColorStore,
    color: Color,
    snapshot: Mapping[str, Heartbeat],
    seconds: float,
    options: Options,
    *,
    say: Say = print,
    clock: Callable[[], float] = time.time,
) -> str | None:
    """Watch ``color``'s failure ratio since ``snapshot`` for ``seconds``: a breach's description, or None."""
    import anyio

    from worker.engine.rollout_store import StoreError

    end = clock() + seconds
    say(f"baking {color} for {seconds:g} s (max error ratio {options.max_error_ratio:g})")
    seen = Tally(0, 0)
    while True:
        try:
            beats = await store.read_heartbeats(color)
        except StoreError as exc:
            say(f"cannot read the heartbeats ({exc}); trying again")
        else:
            if not live(beats, color, clock(), options.max_age):
                return f"no live {color} replica"
            seen = tally(snapshot, beats, color)
            if seen.processed >= options.min_samples and seen.ratio > options.max_error_ratio:
                limit = options.max_error_ratio
                return f"error ratio {seen.ratio:.4g} ({seen.failed} of {seen.processed}) above {limit:g}"
        if clock() >= end:
            judged = "" if seen.processed >= options.min_samples else ", too few to judge (--min-samples)"
            say(
                f"{color} baked {seconds:g} s: {seen.failed} failed of {seen.processed} "
                f"({seen.ratio:.4g}){judged}"
            )
            return None
        await anyio.sleep(min(options.interval, max(0.0, end - clock())))


async def show_status(
    store: ColorStore,
    *,
    as_json: bool,
    max_age: float,
    say: Say = print,
    clock: Callable[[], float] = time.time,
) -> int:
    """Print the flag and both fleets."""
    view = status_view(store.uri, await store.read_active(), await store.read_heartbeats(), clock(), max_age)
    say(json.dumps(view, indent=2) if as_json else render_status(view))
    return 0

"""``worker switch``: flip blue/green fleets (``WORKER_COLOR_STATE``), wait for the drain, bake, switch back.

``worker switch --to green`` reads the flag and the heartbeats, refuses when no green replica is alive (a
heartbeat younger than ``--max-heartbeat-age``), writes the flag conditionally (if it is still the one read:
two operators cannot both win), then waits until every live blue replica reports, after seeing this very
flag, ``standby`` with nothing in flight (drained). With ``--bake SECONDS`` it then watches green's failure
ratio (from the heartbeats' processed and failed counts since the switch) and, with ``--auto-rollback``,
switches back on a breach. ``worker switch --status`` shows the flag and both fleets.

Module-level imports are the standard library and light modules only: ``worker config`` builds the parser
that holds this sub-command and must not load the AWS libraries.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings

from worker import settings as worker_settings
from worker.errors import ConfigError
from worker.ops.canary import operator_name
from worker.settings import Settings
from worker.timestamps import iso_utc

if TYPE_CHECKING:
    from worker.engine.color_store import ColorStore, Flag, Heartbeat

Color = Literal["blue", "green"]
Say = Callable[[str], None]
#: Defaults of the options (seconds unless said).
DEFAULT_TIMEOUT = 300.0
DEFAULT_INTERVAL = 2.0
DEFAULT_MAX_AGE = 15.0
DEFAULT_MAX_ERROR_RATIO = 0.1
DEFAULT_MIN_SAMPLES = 20


def _same(name: str) -> Any:
    """The field definition ``Settings`` uses for ``name`` (default, description)."""
    return copy.copy(Settings.model_fields[name])


class SwitchSettings(BaseSettings):
    """The one ``WORKER_*`` setting read: ``WORKER_COLOR_STATE`` (definition and rule as ``worker run``)."""

    model_config = Settings.model_config

    color_state: str | None = _same("color_state")

    @field_validator("color_state")
    @classmethod
    def _flag(cls, value: str | None) -> str | None:
        return Settings._color_flag(value)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a ratio in [0, 1], got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_switch_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``worker switch`` sub-command."""
    switch = sub.add_parser(
        "switch",
        help="blue/green: make a colour active (it must be alive; waits for the other to drain), or --status",
        description="Reads and writes the flag of WORKER_COLOR_STATE (or --state) and the heartbeats the "
        "workers publish next to it. Exit 0 on success, 1 when refused, timed out, rolled back or the store "
        "cannot be reached, 2 on bad usage. See docs/rollouts-operations.md.",
    )
    switch.set_defaults(subparser=switch)
    what = switch.add_mutually_exclusive_group(required=True)
    what.add_argument("--to", choices=("blue", "green"), help="the colour to make active")
    what.add_argument("--status", action="store_true", help="show the flag and both fleets")
    switch.add_argument("--json", action="store_true", help="with --status: one JSON object")
    switch.add_argument(
        "--state", default=None, metavar="s3://BUCKET/KEY", help="the flag (default: WORKER_COLOR_STATE)"
    )
    switch.add_argument("--reason", default="", metavar="TEXT", help="kept in the flag and its history")
    switch.add_argument(
        "--timeout",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help=f"how long to wait for the old colour to drain (default {DEFAULT_TIMEOUT:g})",
    )
    switch.add_argument(
        "--bake",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="after the drain, watch the new colour's failure ratio this long",
    )
    switch.add_argument(
        "--auto-rollback", action="store_true", help="with --bake: switch back when the ratio is breached"
    )
    switch.add_argument(
        "--max-error-ratio",
        type=_ratio,
        default=None,
        metavar="RATIO",
        help=f"with --bake: the failure ratio that breaches (default {DEFAULT_MAX_ERROR_RATIO:g})",
    )
    switch.add_argument(
        "--min-samples",
        type=_count,
        default=None,
        metavar="N",
        help=f"with --bake: handler calls before the ratio is judged (default {DEFAULT_MIN_SAMPLES})",
    )
    switch.add_argument(
        "--max-heartbeat-age",
        type=_positive,
        default=DEFAULT_MAX_AGE,
        metavar="SECONDS",
        help=f"a replica is alive when its heartbeat is younger than this (default {DEFAULT_MAX_AGE:g})",
    )
    switch.add_argument(
        "--interval",
        type=_positive,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help=f"how often the heartbeats are read while waiting (default {DEFAULT_INTERVAL:g})",
    )


@dataclass(frozen=True, slots=True)
class Options:
    """What ``worker switch --to`` was asked to do."""

    target: Color
    reason: str = ""
    timeout: float = DEFAULT_TIMEOUT
    bake: float | None = None
    auto_rollback: bool = False
    max_error_ratio: float = DEFAULT_MAX_ERROR_RATIO
    min_samples: int = DEFAULT_MIN_SAMPLES
    max_age: float = DEFAULT_MAX_AGE
    interval: float = DEFAULT_INTERVAL


def options_from_args(args: argparse.Namespace) -> Options:
    """The Options of ``--to``; argparse's usage error (exit 2) for options that make no sense together."""
    parser: argparse.ArgumentParser = args.subparser
    if args.status:
        extra = [
            flag
            for flag, value in (
                ("--timeout", args.timeout),
                ("--bake", args.bake),
                ("--max-error-ratio", args.max_error_ratio),
                ("--min-samples", args.min_samples),
            )
            if value is not None
        ]
        if args.auto_rollback:
            extra.append("--auto-rollback")
        if args.reason:
            extra.append("--reason")
        if extra:
            parser.error(f"{', '.join(extra)}: not with --status")
        return Options("blue")
    if args.json:
        parser.error("--json: only with --status")
    if args.bake is None and (args.auto_rollback or args.max_error_ratio is not None or args.min_samples):
        parser.error("--auto-rollback, --max-error-ratio and --min-samples need --bake SECONDS")
    return Options(
        target=cast(Color, args.to),
        reason=args.reason,
        timeout=DEFAULT_TIMEOUT if args.timeout is None else args.timeout,
        bake=args.bake,
        auto_rollback=args.auto_rollback,
        max_error_ratio=DEFAULT_MAX_ERROR_RATIO if args.max_error_ratio is None else args.max_error_ratio,
        min_samples=args.min_samples or DEFAULT_MIN_SAMPLES,
        max_age=args.max_heartbeat_age,
        interval=args.interval,
    )


def load_flag_location(flag: str | None) -> str:
    """``--state``, else ``WORKER_COLOR_STATE``; ConfigError (one line naming it) when neither is valid."""
    if flag is not None:
        try:
            Settings._color_flag(flag)
        except ValueError as exc:
            raise ConfigError(f"--state: {exc}") from None
        return flag
    try:
        settings = SwitchSettings()
    except ValidationError as exc:
        raise ConfigError(worker_settings._describe(exc)) from None
    if settings.color_state is None:
        raise ConfigError(
            f"no flag to switch: set {worker_settings.env_name('color_state')} (s3://bucket/key) "
            "or pass --state"
        )
    return settings.color_state


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


# --- what the heartbeats say (pure) ---


def live(beats: Sequence[Heartbeat], color: Color, now: float, max_age: float) -> list[Heartbeat]:
    """The replicas of ``color`` whose heartbeat is younger than ``max_age``."""
    return [beat for beat in beats if beat.color == color and beat.age(now) <= max_age]


def undrained(
    beats: Sequence[Heartbeat], color: Color, flag_id: str, now: float, max_age: float
) -> list[Heartbeat]:
    """Live replicas of ``color`` not yet in ``standby``, nothing in flight, after reading flag ``flag_id``.

    A replica whose heartbeat goes stale stops counting (it is gone: it processes nothing).
    """
    return [
        beat
        for beat in live(beats, color, now, max_age)
        if not (beat.flag == flag_id and beat.state == "standby" and beat.in_flight == 0)
    ]


@dataclass(frozen=True, slots=True)
class Tally:
    """Handler calls and failures of one fleet since a snapshot of its heartbeats."""

    processed: int
    failed: int

    @property
    def ratio(self) -> float:
        """failed / processed; 0.0 without calls."""
        return self.failed / self.processed if self.processed else 0.0


def tally(start: Mapping[str, Heartbeat], beats: Sequence[Heartbeat], color: Color) -> Tally:
    """What ``color``'s replicas did since ``start`` (replica -> heartbeat then).

    A replica that appeared since, or restarted (its counts went down), counts from zero.
    """
    processed = failed = 0
    for beat in beats:
        if beat.color != color:
            continue
        before = start.get(beat.replica)
        if before is None or beat.processed < before.processed or beat.failed < before.failed:
            processed, failed = processed + beat.processed, failed + beat.failed
        else:
            processed += beat.processed - before.processed
            failed += beat.failed - before.failed
    return Tally(processed, failed)


def _time(value: float | None) -> str | None:
    return None if value is None else iso_utc(datetime.fromtimestamp(value, UTC), "milliseconds")


def _names(beats: Sequence[Heartbeat]) -> str:
    return ", ".join(f"{beat.replica} ({beat.state}, {beat.in_flight} in flight)" for beat in beats)


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
        say(f"{target} is already active ({_flag_line(flag)}); waiting for {old} to drain")
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
                f"{_names(pending) or '?'}"
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


# --- --status ---


def _flag_line(flag: Flag) -> str:
    if not flag.exists:
        return "default: the flag does not exist yet"
    return f"since {_time(flag.at)} by {flag.by or '?'}" + (f": {flag.reason}" if flag.reason else "")


def status_view(
    uri: str, flag: Flag, beats: Sequence[Heartbeat], now: float, max_age: float
) -> dict[str, Any]:
    """The JSON of ``worker switch --status --json`` (pure)."""
    fleets: dict[str, Any] = {}
    colors: tuple[Color, ...] = ("blue", "green")
    for color in colors:
        mine = [beat for beat in beats if beat.color == color]
        alive = live(mine, color, now, max_age)
        fleets[color] = {
            "active": flag.active == color,
            "live": len(alive),
            "in_flight": sum(beat.in_flight for beat in alive),
            "replicas": [
                {
                    **beat.to_dict(),
                    "at": _time(beat.at),
                    "age_seconds": round(beat.age(now), 1),
                    "live": beat in alive,
                    "seen_flag": beat.flag == flag.id,
                }
                for beat in mine
            ],
        }
    return {
        "store": uri,
        "active": flag.active,
        "flag": {**flag.to_dict(), "at": _time(flag.at), "exists": flag.exists},
        "fleets": fleets,
    }


def render_status(view: Mapping[str, Any]) -> str:
    """``worker switch --status`` for people."""
    flag = view["flag"]
    since = f"since {flag['at']} by {flag['by'] or '?'}" if flag["exists"] else "default: no flag yet"
    reason = f": {flag['reason']}" if flag.get("reason") else ""
    lines = [f"active  {view['active']} ({since}{reason})", f"flag    {view['store']}"]
    for color, fleet in view["fleets"].items():
        role = "active" if fleet["active"] else "inactive"
        lines.append(
            f"{color:<7} {role}: {fleet['live']} live replicas, {fleet['in_flight']} messages in flight"
        )
        for beat in fleet["replicas"]:
            gone = "" if beat["live"] else ", stale"
            lines.append(
                f"  {beat['replica']}  {beat['state']}  in flight {beat['in_flight']}  processed "
                f"{beat['processed']}  failed {beat['failed']}  {beat['age_seconds']:g} s ago{gone}"
            )
    return "\n".join(lines)


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

"""``worker switch``'s command line: its parser, its arguments read into Options, and the flag's location.

Module-level imports are the standard library and light modules only: ``worker config`` builds the parser
that holds this sub-command and must not load the AWS libraries.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any, cast

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings

from worker import settings as worker_settings
from worker.errors import ConfigError
from worker.ops.switch_plan import (
    DEFAULT_INTERVAL,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_ERROR_RATIO,
    DEFAULT_MIN_SAMPLES,
    DEFAULT_TIMEOUT,
    Color,
    Options,
)
from worker.settings import Settings


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

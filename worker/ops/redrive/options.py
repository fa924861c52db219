"""The options of ``worker redrive`` and the choice between a native move task and app mode."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from enum import StrEnum

from worker.ops.filters import Filter
from worker.ops.redrive.native import MAX_NATIVE_RATE
from worker.settings import env_name


class RedriveMode(StrEnum):
    """``--mode``: an SQS move task, app mode (receive, send, delete), or the right one for the queues."""

    AUTO = "auto"
    NATIVE = "native"
    APP = "app"


#: ``--min-age`` default of ``--watch``: long enough for an outage to be over, short enough to matter.
WATCH_MIN_AGE = 300.0


@dataclass(frozen=True, slots=True)
class RedriveOptions:
    """The command-line options of ``worker redrive``."""

    dlq: str | None = None
    to: str | None = None
    mode: RedriveMode = RedriveMode.AUTO
    filters: tuple[Filter, ...] = ()
    max_messages: int | None = None
    rate: float | None = None
    dry_run: bool = False
    max_redrives: int = 3
    watch: bool = False
    min_age: float | None = None
    yes: bool = False
    force: bool = False
    json: bool = False
    visibility_timeout: int = 30

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RedriveOptions:
        """From the parsed arguments."""
        return cls(
            dlq=args.dlq,
            to=args.to,
            mode=RedriveMode(args.mode),
            filters=tuple(args.filter or ()),
            max_messages=args.max,
            rate=args.rate,
            dry_run=args.dry_run,
            max_redrives=args.max_redrives,
            watch=args.watch,
            min_age=args.min_age,
            yes=args.yes,
            force=args.force,
            json=args.json,
            visibility_timeout=args.visibility_timeout,
        )

    @property
    def app_only(self) -> list[str]:
        """The options given that only app mode can honour."""
        given = {
            "--filter": bool(self.filters),
            "--max": self.max_messages is not None,
            "--dry-run": self.dry_run,
            "--watch": self.watch,
            "--min-age": self.min_age is not None,
        }
        return [name for name, on in given.items() if on]

    @property
    def effective_min_age(self) -> float | None:
        """``--min-age``, defaulting to 5 minutes with ``--watch``."""
        if self.min_age is None and self.watch:
            return WATCH_MIN_AGE
        return self.min_age


def usage_problem(options: RedriveOptions) -> str | None:
    """A contradiction between options (reported by argparse as a usage error), or None."""
    if options.mode == RedriveMode.NATIVE and options.app_only:
        return (
            f"--mode native cannot honour {', '.join(options.app_only)}: SQS moves every message as it is; "
            "use --mode app (or leave --mode out)"
        )
    if options.mode == RedriveMode.NATIVE and options.rate is not None and options.rate > MAX_NATIVE_RATE:
        return f"--rate above {MAX_NATIVE_RATE} is beyond SQS move tasks: use --mode app"
    if options.watch and options.dry_run:
        return "--watch and --dry-run do not go together: a dry run is one pass"
    return None


def choose_mode(options: RedriveOptions, *, fifo: bool, has_destination: bool) -> tuple[RedriveMode, str]:
    """(mode, why) for ``--mode auto``; an explicit mode is kept."""
    if options.mode != RedriveMode.AUTO:
        return RedriveMode(options.mode), f"--mode {options.mode}"
    if options.app_only:
        return RedriveMode.APP, f"{', '.join(options.app_only)} need app mode"
    if fifo:
        return RedriveMode.APP, "FIFO queues: app mode carries group and deduplication ids"
    if not has_destination:
        return (
            RedriveMode.APP,
            f"no --to or {env_name('queue_url')}: app mode sends each message to the source it names",
        )
    if options.rate is not None and options.rate > MAX_NATIVE_RATE:
        return RedriveMode.APP, f"--rate above {MAX_NATIVE_RATE}"
    return RedriveMode.NATIVE, "SQS message move task"

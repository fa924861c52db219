"""``worker redrive``: replay dead-lettered messages, natively (SQS move task) or in app mode.

The DLQ and the default target come from the same settings as ``worker run`` (``WORKER_DLQ_URL``,
``WORKER_QUEUE_URL``), overridable with ``--dlq`` and ``--to``. ``--filter``, ``--max``, ``--dry-run``,
``--min-age`` and ``--watch`` need app mode and select it by themselves, as do FIFO queues and a DLQ with
no known destination (app mode sends each message back to the source its metadata names); otherwise the
default is SQS's own move task. See ``redrive_app`` and ``redrive_native`` for the two engines.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any, TextIO

import anyio
import anyio.abc
import anyio.to_thread

from worker.aws.client import client_config, create_client
from worker.aws.names import queue_name
from worker.errors import ConfigError, first_of
from worker.ops.dlq import refuse_if_self_redriving
from worker.ops.filters import Filter
from worker.ops.progress import Progress, Tally, format_duration
from worker.ops.redrive.app_mode import AppOptions, AppRedrive, Result
from worker.ops.redrive.native import MAX_NATIVE_RATE, NativeResult, run_native
from worker.ops.redrive.plan import Verdict
from worker.ops.settings import QueueRef, ToolError, ToolSettings, is_loopback, open_queue, resolve_dlq
from worker.service.http import HttpServer
from worker.service.signals import stop_on_signals
from worker.settings import env_name
from worker.telemetry.health import Health
from worker.telemetry.logs import configure_logging
from worker.telemetry.metrics import Metrics

log = logging.getLogger("worker.redrive")


class RedriveMode(StrEnum):
    """``--mode``: an SQS move task, app mode (receive, send, delete), or the right one for the queues."""

    AUTO = "auto"
    NATIVE = "native"
    APP = "app"


NATIVE = RedriveMode.NATIVE
APP = RedriveMode.APP
#: ``--min-age`` default of ``--watch``: long enough for an outage to be over, short enough to matter.
WATCH_MIN_AGE = 300.0
#: Long-poll wait of ``--watch`` receivers: a stop lets receives in flight return, so it bounds the exit time.
WATCH_WAIT_SECONDS = 5
#: At most this many messages per section in the text summary (``--json`` has them all).
LISTED = 200


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
    if options.mode == NATIVE and options.app_only:
        return (
            f"--mode native cannot honour {', '.join(options.app_only)}: SQS moves every message as it is; "
            "use --mode app (or leave --mode out)"
        )
    if options.mode == NATIVE and options.rate is not None and options.rate > MAX_NATIVE_RATE:
        return f"--rate above {MAX_NATIVE_RATE} is beyond SQS move tasks: use --mode app"
    if options.watch and options.dry_run:
        return "--watch and --dry-run do not go together: a dry run is one pass"
    return None


def choose_mode(options: RedriveOptions, *, fifo: bool, has_destination: bool) -> tuple[RedriveMode, str]:
    """(mode, why) for ``--mode auto``; an explicit mode is kept."""
    if options.mode != RedriveMode.AUTO:
        return RedriveMode(options.mode), f"--mode {options.mode}"
    if options.app_only:
        return APP, f"{', '.join(options.app_only)} need app mode"
    if fifo:
        return APP, "FIFO queues: app mode carries group and deduplication ids"
    if not has_destination:
        return APP, f"no --to or {env_name('queue_url')}: app mode sends each message to the source it names"
    if options.rate is not None and options.rate > MAX_NATIVE_RATE:
        return APP, f"--rate above {MAX_NATIVE_RATE}"
    return NATIVE, "SQS message move task"


@dataclass(slots=True)
class Report:
    """The outcome of ``worker redrive`` (text summary or ``--json``)."""

    mode: RedriveMode
    why: str
    dlq: str
    target: str
    dry_run: bool = False
    watch: bool = False
    tally: Tally = field(default_factory=Tally)
    elapsed: float = 0.0
    #: Seconds from the start to the last move (the rate's window; the final empty poll is not counted).
    active: float = 0.0
    results: list[Result] = field(default_factory=list)
    native: NativeResult | None = None
    interrupted: bool = False
    fatal: str | None = None
    max_redrives: int = 3

    @property
    def rate(self) -> float:
        """Moves per second, from the start to the last move."""
        window = self.active or self.elapsed
        return self.tally.moved / window if window > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when nothing failed or was held; 1 otherwise; 130 for an interrupted one-shot pass."""
        if self.fatal or self.tally.failed or self.tally.held:
            return 1
        if self.native is not None and self.native.status not in ("COMPLETED", "CANCELLED"):
            return 1
        if self.interrupted and not self.watch:
            return 130
        return 0

    def to_json(self) -> dict[str, Any]:
        """The report as plain data."""
        return {
            "mode": self.mode,
            "why": self.why,
            "dlq": self.dlq,
            "target": self.target,
            "dry_run": self.dry_run,
            "watch": self.watch,
            "counts": asdict(self.tally),
            "elapsed_seconds": round(self.elapsed, 3),
            "rate": round(self.rate, 1),
            "interrupted": self.interrupted,
            "fatal": self.fatal,
            "native": asdict(self.native) if self.native else None,
            "messages": [{**asdict(r), "verdict": r.verdict.value} for r in self.results],
            "exit_code": self.exit_code,
        }

    def render(self) -> str:
        """The summary for a terminal."""
        what = "native move task" if self.mode == NATIVE else "app mode"
        lines = [f"Redrive ({what}: {self.why}) from {self.dlq} to {self.target}"]
        if self.dry_run:
            lines.append("  dry run: nothing was moved, every message is where it was")
        if self.native is not None:
            n = self.native
            of = f" of ~{n.to_move}" if n.to_move is not None else ""
            lines.append(f"  task {n.status}: moved {n.moved}{of}")
            if n.failure_reason:
                lines.append(f"  failure reason: {n.failure_reason}")
            lines.append(
                "  note: SQS moves messages unchanged: the redrive counter is not raised on the way out and "
                "--max-redrives is not applied (the worker counts the trip if the message fails again); "
                "use --mode app when the loop guard matters"
            )
        else:
            t = self.tally
            lines += [
                f"  {'would move' if self.dry_run else 'moved':<12} {t.moved:>7}",
                f"  {'skipped':<12} {t.skipped:>7}   (filtered out or too young; still in the DLQ)",
                f"  {'held':<12} {t.held:>7}   (redriven {self.max_redrives}+ times; still in the DLQ)",
                f"  {'failed':<12} {t.failed:>7}   (still in the DLQ)",
            ]
        rate = "" if self.dry_run else f" ({self.rate:.1f} msg/s)"
        lines.append(f"  in {format_duration(self.elapsed)}{rate}")
        if self.interrupted:
            lines.append("  interrupted: stopped early; messages not moved were given back to the DLQ")
        if self.fatal:
            lines.append(f"  stopped: {self.fatal}")
        sections = (
            ("Would move", [r for r in self.results if r.dry_run]),
            (
                "Would fail" if self.dry_run else "Failed",
                [r for r in self.results if r.verdict is Verdict.FAIL],
            ),
            (
                "Would be held by the loop guard" if self.dry_run else "Held by the loop guard",
                [r for r in self.results if r.verdict is Verdict.HOLD],
            ),
        )
        for title, results in sections:
            if not results:
                continue
            lines += ["", f"{title} ({len(results)}):"]
            for r in results[:LISTED]:
                route = f"{r.source or '?'} -> {_name(r.target)}"
                detail = f"redrive #{r.redrive_count}" if r.dry_run else r.reason
                lines.append(f"  {r.id}  {r.error_type}  {route}  {detail}")
            if len(results) > LISTED:
                lines.append(f"  ... and {len(results) - LISTED} more (--json lists them all)")
        return "\n".join(lines)


def _name(url: str | None) -> str:
    return queue_name(url) if url else "?"


def _ask(prompt: str) -> str:
    sys.stderr.write(prompt)
    sys.stderr.flush()
    return sys.stdin.readline()


async def _confirm(
    endpoint: str, count: int, options: RedriveOptions, dlq: QueueRef, target: str, ask: Callable[[str], str]
) -> None:
    """Ask on the terminal before moving messages on a real endpoint."""
    shown = min(count, options.max_messages) if options.max_messages is not None else count
    what = f"~{shown} messages" + (" (before filters)" if options.filters else "")
    answer = await anyio.to_thread.run_sync(
        ask, f"Redrive {what} from {dlq.name} to {target} at {endpoint}? [y/N] "
    )
    if answer.strip().lower() not in ("y", "yes"):
        raise ToolError("not confirmed: nothing was moved")


@dataclass(frozen=True, slots=True)
class _Setup:
    """The queues and the mode, resolved before anything moves."""

    dlq: QueueRef
    to: QueueRef | None
    default: QueueRef | None
    mode: RedriveMode
    why: str
    target_text: str

    @property
    def destination(self) -> QueueRef | None:
        return self.to or self.default


async def _prepare(
    client: Any,
    options: RedriveOptions,
    settings: ToolSettings,
    *,
    stdin_tty: bool,
    ask: Callable[[str], str],
) -> _Setup:
    """Check the endpoint, resolve the queues, choose the mode, confirm on a real endpoint."""
    endpoint = str(getattr(client.meta, "endpoint_url", ""))
    remote = not is_loopback(endpoint) and not options.dry_run and not options.yes
    if remote and not stdin_tty:
        raise ToolError(
            f"refusing to redrive against {endpoint} without --yes: stdin is not a terminal to confirm on"
        )
    dlq = await resolve_dlq(client, settings, options.dlq)
    to = await open_queue(client, options.to, "--to") if options.to else None
    default = None
    if to is None and settings.queue_url:
        default = await open_queue(client, settings.queue_url, env_name("queue_url"))
    if to is not None and to.url == dlq.url:
        raise ToolError("--to names the DLQ itself")
    destination = to or default
    mode, why = choose_mode(
        options,
        fifo=dlq.fifo or bool(destination and destination.fifo),
        has_destination=destination is not None,
    )
    if to is not None:
        target_text = to.name
    elif mode == NATIVE:
        target_text = default.name if default else "the queues SQS moved them from"
    else:
        target_text = "their source queues" + (f" (else {default.name})" if default else "")
    if remote:
        await _confirm(endpoint, dlq.count("ApproximateNumberOfMessages"), options, dlq, target_text, ask)
    if mode == APP:
        refuse_if_self_redriving(dlq, force=options.force, action="redriving from")
    return _Setup(dlq, to, default, mode, why, target_text)


async def run_redrive(
    options: RedriveOptions,
    settings: ToolSettings,
    *,
    metrics: Metrics | None = None,
    stderr: TextIO | None = None,
    stdin_tty: bool = False,
    stderr_tty: bool = False,
    handle_signals: bool = True,
    ask: Callable[[str], str] = _ask,
) -> Report:
    """Resolve the queues, choose the mode, check the endpoint, run, and report."""
    metrics = metrics or Metrics()
    async with create_client("sqs", client_config(read_timeout=40)) as client:
        setup = await _prepare(client, options, settings, stdin_tty=stdin_tty, ask=ask)
        count = setup.dlq.count("ApproximateNumberOfMessages")
        total = None if options.watch else (min(count, options.max_messages or count) or None)
        progress = Progress(stderr or sys.stderr, tty=stderr_tty, total=total, dry_run=options.dry_run)
        report = Report(
            mode=setup.mode,
            why=setup.why,
            dlq=setup.dlq.name,
            target=setup.target_text,
            dry_run=options.dry_run,
            watch=options.watch,
            max_redrives=options.max_redrives,
        )
        log.info(
            "redrive starting",
            extra={"event": "redrive_start", "mode": setup.mode, "dlq": setup.dlq.name, "why": setup.why},
        )
        async with anyio.create_task_group() as tg:
            health = None
            if options.watch:
                health = Health()
                await tg.start(HttpServer(settings.http_host, settings.http_port, metrics, health).serve)
                health.started = True
            if setup.mode == NATIVE:
                await _native(client, setup, options, report, metrics, progress, tg, handle_signals)
            else:
                engine = AppRedrive(
                    client,
                    setup.dlq,
                    AppOptions(
                        filters=options.filters,
                        max_messages=options.max_messages,
                        rate=options.rate,
                        dry_run=options.dry_run,
                        max_redrives=options.max_redrives,
                        watch=options.watch,
                        min_age=options.effective_min_age,
                        lease=options.visibility_timeout,
                        wait_seconds=WATCH_WAIT_SECONDS if options.watch else 1,
                    ),
                    to=setup.to,
                    default_target=setup.default.url if setup.default else None,
                    metrics=metrics,
                    progress=progress,
                    health=health,
                )
                if handle_signals:
                    await tg.start(stop_on_signals, engine.stop, tg.cancel_scope.cancel)
                await engine.run()
                report.tally = engine.tally
                report.results = engine.results
                report.fatal = engine.fatal
                report.interrupted = engine.stop_event.is_set() and engine.fatal is None
                if engine.last_move_at is not None:
                    report.active = engine.last_move_at - progress.started
            tg.cancel_scope.cancel()
        report.elapsed = progress.elapsed()
        progress.finish()
    return report


async def _native(
    client: Any,
    setup: _Setup,
    options: RedriveOptions,
    report: Report,
    metrics: Metrics,
    progress: Progress,
    tg: anyio.abc.TaskGroup,
    handle_signals: bool,
) -> None:
    stop = anyio.Event()
    if handle_signals:
        await tg.start(stop_on_signals, stop.set, tg.cancel_scope.cancel)
    destination = setup.destination
    report.native = await run_native(
        client,
        setup.dlq,
        destination_arn=destination.arn if destination else None,
        rate=options.rate,
        metrics=metrics,
        progress=progress,
        stop=stop,
    )
    report.interrupted = stop.is_set()
    report.tally = Tally(moved=report.native.moved)


def main(args: argparse.Namespace, settings: ToolSettings) -> int:
    """``worker redrive``: run, print the summary, return the exit code."""
    options = RedriveOptions.from_args(args)
    problem = usage_problem(options)
    if problem is not None:
        parser: argparse.ArgumentParser | None = getattr(args, "subparser", None)
        if parser is not None:
            parser.error(problem)
        print(f"worker redrive: error: {problem}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    run = partial(
        run_redrive, options, settings, stdin_tty=sys.stdin.isatty(), stderr_tty=sys.stderr.isatty()
    )
    try:
        try:
            report = anyio.run(run)
        except BaseExceptionGroup as group:
            leaf = first_of(group, ToolError, ConfigError)
            if leaf is None:
                raise
            raise leaf from None
    except ToolError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=2) if options.json else report.render())
    return report.exit_code

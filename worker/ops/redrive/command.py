"""``worker redrive``: replay dead-lettered messages, natively (SQS move task) or in app mode.

The DLQ and the default target come from the same settings as ``worker run`` (``WORKER_DLQ_URL``,
``WORKER_QUEUE_URL``), overridable with ``--dlq`` and ``--to``. ``--filter``, ``--max``, ``--dry-run``,
``--min-age`` and ``--watch`` need app mode and select it by themselves, as do FIFO queues and a DLQ with
no known destination (app mode sends each message back to the source its metadata names); otherwise the
default is SQS's own move task. See ``app_mode`` and ``native`` for the two engines.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, TextIO

import anyio
import anyio.abc
import anyio.to_thread

from worker.aws.client import client_config, create_client
from worker.errors import ConfigError, first_of
from worker.ops.dlq import refuse_if_self_redriving
from worker.ops.progress import Progress, Tally
from worker.ops.redrive.app_mode import AppOptions, AppRedrive
from worker.ops.redrive.native import run_native
from worker.ops.redrive.options import RedriveMode, RedriveOptions, choose_mode, usage_problem
from worker.ops.redrive.report import Report
from worker.ops.settings import QueueRef, ToolError, ToolSettings, is_loopback, open_queue, resolve_dlq
from worker.service.http import HttpServer
from worker.service.signals import stop_on_signals
from worker.settings import env_name
from worker.telemetry.health import Health
from worker.telemetry.logs import configure_logging
from worker.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from types_aiobotocore_sqs.client import SQSClient


log = logging.getLogger("worker.redrive")
#: Long-poll wait of ``--watch`` receivers: a stop lets receives in flight return, so it bounds the exit time.
WATCH_WAIT_SECONDS = 5


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
    client: SQSClient,
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
    elif mode == RedriveMode.NATIVE:
        target_text = default.name if default else "the queues SQS moved them from"
    else:
        target_text = "their source queues" + (f" (else {default.name})" if default else "")
    if remote:
        await _confirm(endpoint, dlq.count("ApproximateNumberOfMessages"), options, dlq, target_text, ask)
    if mode == RedriveMode.APP:
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
            if setup.mode == RedriveMode.NATIVE:
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
    client: SQSClient,
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

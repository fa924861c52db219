"""The ``worker`` command line: parses arguments, loads Settings once, passes them down."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from worker._version import __version__
from worker.errors import ConfigError, first_of

if TYPE_CHECKING:
    from worker.settings import Settings


def build_parser(*, operator_tools: bool = True) -> argparse.ArgumentParser:
    """The argument parser with one sub-command per job.

    ``operator_tools=False`` leaves out ``dlq``, ``redrive``, ``topology``, ``canary`` and ``switch`` (their
    arguments live in worker.ops): the parser ``worker run`` uses, so its start imports nothing it does not
    need.
    """
    parser = argparse.ArgumentParser(
        prog="worker",
        description="A resilient SQS/SNS worker. Settings come from WORKER_* variables; AWS ones from AWS_*.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser(
        "run",
        help="consume the configured queue with the configured handler until SIGTERM",
        epilog="Settings come from WORKER_* variables (every one in docs/configuration.md); `worker config` "
        "prints the effective ones and their sources, `worker config --check` validates them.",
    )
    config = sub.add_parser(
        "config",
        help="print the effective settings of `worker run` and their sources (credentials redacted)",
        description="Loads the WORKER_* settings exactly as `worker run` does, without connecting anywhere. "
        "Exit 0 when they are valid, 2 with one line naming the variable when not.",
    )
    config_output = config.add_mutually_exclusive_group()
    config_output.add_argument("--json", action="store_true", help="one JSON object, for tooling")
    config_output.add_argument(
        "--check", action="store_true", help='validate only: print "configuration OK" or the error'
    )
    local = sub.add_parser("localstack", help="start the embedded LocalStack (host mode) in the foreground")
    local.add_argument("--port", type=int, default=None, help="loopback port (default: a free one)")
    demo = sub.add_parser(
        "demo", help="embedded end-to-end demo: LocalStack, topology, traffic, worker, summary"
    )
    demo.add_argument("--messages", type=int, default=300, help="messages to publish (default 300)")
    demo.add_argument("--keep", action="store_true", help="leave the stack and worker running until Ctrl-C")
    demo.add_argument(
        "--quick", action="store_true", help="a short run with shorter timeouts (used by tests)"
    )
    demo.add_argument("--endpoint", default=None, help="use this running LocalStack instead of starting one")
    demo.add_argument("--prefix", default="demo", help="name prefix of the resources it creates")
    demo.add_argument("--summary-json", default=None, metavar="PATH", help="also write the summary as JSON")
    demo.add_argument(
        "--http-port",
        type=int,
        default=9102,
        metavar="PORT",
        help="the worker's metrics/health port (default 9102, or any free one when taken; 0: any free one)",
    )
    demo.add_argument(
        "--canary",
        action="store_true",
        help="then roll out a deliberately bad handler version as a canary and show it rolled back",
    )
    demo.add_argument(
        "--shadow",
        action="store_true",
        help="also run a green candidate on a shadow subscription (no destinations) and judge it",
    )
    if operator_tools:
        from worker.ops.arguments import add_dlq_parser, add_redrive_parser
        from worker.ops.canary import add_canary_parser
        from worker.ops.switch_cli import add_switch_parser
        from worker.ops.topology_cli import add_topology_parser

        add_dlq_parser(sub)
        add_redrive_parser(sub)
        add_topology_parser(sub)
        add_canary_parser(sub)
        add_switch_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``worker`` script; returns the exit code."""
    words = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(operator_tools=words[:1] != ["run"]).parse_args(words)
    try:
        if args.command == "run":
            return _run()
        if args.command == "config":
            return _config(as_json=args.json, check=args.check)
        if args.command == "localstack":
            from worker.devkit.localstack import main_foreground

            return main_foreground(args.port)
        if args.command == "demo":
            from worker.devkit.demo import main as demo_main

            return demo_main(
                messages=args.messages,
                keep=args.keep,
                quick=args.quick,
                endpoint=args.endpoint,
                prefix=args.prefix,
                summary_json=args.summary_json,
                canary=args.canary,
                shadow=args.shadow,
                http_port=args.http_port,
            )
        if args.command == "topology":
            from worker.ops.topology import main as topology_main

            return topology_main(args)
        if args.command == "canary":
            from worker.ops.canary import main as canary_main

            return canary_main(args)
        if args.command == "switch":
            from worker.ops.switch import main as switch_main

            return switch_main(args)
        if args.command in ("dlq", "redrive"):
            from worker.ops.settings import load_tool_settings

            tool_settings = load_tool_settings()
            if args.command == "dlq":
                from worker.ops.dlq import main as dlq_main

                return dlq_main(args, tool_settings)
            from worker.ops.redrive.command import main as redrive_main

            return redrive_main(args, tool_settings)
    except ConfigError as exc:
        from worker.ops.config_view import redact_text

        print(f"worker: configuration error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


def _run() -> int:
    # Start-up builds about 70,000 objects that live as long as the process (modules, the SDK's models): no
    # garbage collection passes over them while they are made (about 45 ms of the launch), and once the
    # worker has started they are frozen out of every later collection (``_serve``).
    gc.disable()
    try:
        import anyio

        from worker.service.app import run_worker
        from worker.settings import load_settings
        from worker.telemetry.logs import configure_logging

        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)
        anyio.run(_serve, run_worker, settings)
    except BaseExceptionGroup as group:
        raise (first_of(group, ConfigError) or group) from None
    finally:
        gc.enable()
    return 0


async def _serve(run_worker: Callable[..., Coroutine[Any, Any, None]], settings: Settings) -> None:
    """``run_worker``; once it has started, what start-up built is frozen and garbage collection resumes."""
    import anyio

    async with anyio.create_task_group() as tg:
        await tg.start(partial(run_worker, settings))
        gc.freeze()
        gc.enable()


def _config(*, as_json: bool, check: bool) -> int:
    import json
    import os

    from worker.ops.config_view import config_view, redact_text, render_json, render_text
    from worker.settings import ENV_PREFIX, load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        if as_json:
            print(json.dumps({"valid": False, "error": redact_text(str(exc))}))
        raise
    if check:
        print("configuration OK")
        return 0
    view = config_view(settings, os.environ, ENV_PREFIX)
    print(render_json(view) if as_json else render_text(view))
    return 0

"""The benchmark: the worker against the raw aiobotocore ceiling and bbc/sqs-consumer, in one run.

``python -m bench`` (``make bench``): starts an emulator (the embedded LocalStack, or ``--emulator fauxqs``,
or ``--endpoint URL``), and for each consumer and handler preloads a fresh queue with N 200-byte JSON
messages, starts the consumer as a subprocess, and measures while it drains the queue:

- messages/s: the drop of the queue's depth (visible + in flight) between the first sample that shows
  consumption and the first that shows an empty queue, sampled every 50 ms;
- CPU seconds per 1,000 messages of the consumer process over the same interval (psutil, or /proc);
- peak RSS of the consumer process (VmHWM, or the largest sample);
then, at a low steady rate (single SendMessage calls), the handler start latency: handler start minus the
time the producer stamped into the body just before sending (the SendMessage round trip included, the
same for every consumer). Every ratio compares figures measured in this run on this machine.

``--quick`` is the smoke mode (N=3000, one repetition); ``--soak`` runs the worker soak instead.

This module parses the options and runs the whole; the parts live beside it: ``emulators`` (the
emulator and the sealed AWS environment), ``consumers`` (the table of consumers and a running one),
``measure`` (queues, drains, latency), ``process`` (CPU and RSS from the OS), ``soak``, and ``report``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from bench import consumers, report
from bench.common import RESULTS_DIR, log
from bench.emulators import emulator, sealed_aws_env
from bench.measure import Bench
from bench.process import CPU_FIGURES_FROM
from bench.soak import soak

HANDLERS = ("noop", "sleep50")


def machine() -> dict[str, Any]:
    """What this ran on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in load],
        "cpu_figures_from": CPU_FIGURES_FROM,
    }


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", "-n", type=int, default=20_000, help="N preloaded per no-op drain")
    p.add_argument("--io-messages", type=int, default=5_000, help="N per drain with the 50 ms handler")
    p.add_argument("--pollers", "-p", type=int, default=2, help="P: pollers / consumers (default 2)")
    p.add_argument("--io-concurrency", type=int, default=200, help="worker concurrency, 50 ms handler")
    p.add_argument("--concurrency", type=int, default=None, help="worker concurrency, no-op (default 50)")
    p.add_argument("--wait", type=int, default=5, help="long-poll wait of every consumer, seconds")
    p.add_argument("--repeat", type=int, default=3, help="repetitions of each drain (median reported)")
    p.add_argument(
        "--consumers",
        default="raw,worker,sqs-consumer",
        help="comma-separated, from " + ",".join(consumers.CONSUMERS) + " (default raw,worker,sqs-consumer)",
    )
    p.add_argument("--handlers", default=",".join(HANDLERS), help="comma-separated subset of noop,sleep50")
    p.add_argument("--emulator", choices=("localstack", "fauxqs"), default="localstack")
    p.add_argument("--endpoint", default=None, help="use this running emulator (loopback only)")
    p.add_argument("--warmup", type=int, default=3000, help="messages of an unmeasured first drain")
    p.add_argument("--latency-messages", type=int, default=300, help="messages of the latency run")
    p.add_argument("--latency-rate", type=float, default=20.0, help="messages/s of the latency run")
    p.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    p.add_argument("--quick", action="store_true", help="smoke mode: N=3000, one repetition, short runs")
    p.add_argument("--soak", action="store_true", help="run the worker soak instead of the comparison")
    p.add_argument("--soak-messages", type=int, default=100_000)
    p.add_argument("--soak-concurrent", type=int, default=1000)
    p.add_argument("--soak-worker", choices=("worker", "worker-candidate"), default="worker")
    p.add_argument("--drain-timeout", type=float, default=300.0, help="seconds one drain may take")
    p.add_argument("--node", default=None, help="node binary for sqs-consumer (default: node on PATH)")
    p.add_argument(
        "--worker-command", default="-m worker run", help="arguments after the python of the worker"
    )
    p.add_argument(
        "--candidate-src",
        default=None,
        metavar="DIR",
        help="a source tree (e.g. this repo with a patch applied) run as the worker-candidate consumer",
    )
    p.add_argument("--output", default=None, help="results JSON (default bench/results/<date>.json)")
    p.add_argument("--profile", default=None, metavar="DIR", help="py-spy the Python consumers into DIR")
    p.add_argument("--keep-workdir", action="store_true", help="keep logs of every process")
    args = p.parse_args(argv)
    if args.quick:
        args.messages = min(args.messages, 3000)
        args.io_messages = min(args.io_messages, 1000)
        args.repeat = 1
        args.warmup = min(args.warmup, 500)
        args.latency_messages = min(args.latency_messages, 60)
        args.soak_messages = min(args.soak_messages, 10_000)
        args.soak_concurrent = min(args.soak_concurrent, 200)
    args.consumers = [c for c in args.consumers.split(",") if c]
    for c in args.consumers:
        if c not in consumers.SPECS:
            p.error(f"unknown consumer {c!r}")
    wanted = [consumers.spec(c) for c in args.consumers]
    for spec in wanted:
        if spec.needs_candidate_src and not args.candidate_src:
            p.error(f"{spec.name} needs --candidate-src DIR")
    for spec in wanted:
        if spec.needs_module and not _importable(spec.needs_module):
            log(f"{spec.needs_module} is not installed: skipping {spec.name}")
            args.consumers.remove(spec.name)
    args.handlers = [h for h in args.handlers.split(",") if h]
    for h in args.handlers:
        if h not in HANDLERS:
            p.error(f"unknown handler {h!r}")
    return args


@contextlib.asynccontextmanager
async def sqs_client() -> AsyncIterator[Any]:
    """The bench's own client (preloading, depth samples, latency sends)."""
    from worker.aws.client import client_config, create_client

    async with create_client("sqs", client_config(read_timeout=30, pool=20)) as client:
        yield client


async def run(
    args: argparse.Namespace, endpoint: str, description: str, emulator_pid: int | None, workdir: Path
) -> dict[str, Any]:
    """The whole comparison (or the soak); returns the results document."""
    os.environ.update(sealed_aws_env(endpoint, workdir))
    node = consumers.node_binary(args)
    names = [c for c in args.consumers if node is not None or not consumers.spec(c).needs_node]
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "emulator": description,
        "machine": machine(),
        "n": args.messages,
        "io_n": args.io_messages,
        "pollers": args.pollers,
        "io_worker_concurrency": args.io_concurrency,
        "wait_seconds": args.wait,
        "repeat": args.repeat,
        "quick": args.quick,
        "consumers": names,
    }
    if node is not None:
        version = await anyio.run_process([node, "--version"], check=False)
        results["node"] = version.stdout.decode().strip()
    async with sqs_client() as client:
        bench = Bench(args, sealed_aws_env(endpoint, workdir), workdir, client, node, emulator_pid)
        if args.soak:
            results["soak"] = await soak(bench)
            return results
        if args.warmup:
            log(f"warm-up: {args.warmup} messages through the raw loop (not measured)")
            await bench.drain("raw", "noop", args.warmup)
        throughput: list[dict[str, Any]] = []
        for handler in args.handlers:
            count = args.messages if handler == "noop" else args.io_messages
            runs: dict[str, list[dict[str, Any]]] = {c: [] for c in names}
            for _ in range(args.repeat):
                for name in names:  # interleaved, so a noisy neighbour hits every consumer alike
                    runs[name].append(await bench.drain(name, handler, count))
            throughput.extend(report.median_runs(runs[name]) for name in names)
        results["throughput"] = throughput
        if not args.no_latency:
            results["latency"] = [await bench.latency(name) for name in names]
    results["ratios"] = report.ratios(results)
    results["targets"] = report.targets(results)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON."""
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="worker-bench-"))
    try:
        with emulator(args.emulator, args.endpoint, workdir) as (endpoint, description, pid):
            log(f"emulator: {description}; N={args.messages}, P={args.pollers}, {os.cpu_count()} cores")
            results = anyio.run(run, args, endpoint, description, pid, workdir)
    finally:
        if args.keep_workdir:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    output = Path(args.output) if args.output else RESULTS_DIR / f"{datetime.now(UTC):%Y-%m-%dT%H%M%S}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    if "throughput" in results:
        print(
            f"\n{results['emulator']}, N={results['n']} (50 ms handler: {results['io_n']}), "
            f"P={results['pollers']}, {results['machine']['cores']} cores\n"
        )
        print(report.table(results))
        print()
        for t in results["targets"]:
            state = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
            print(f"  {state:>12}  {t['target']}  ({t['value']})")
    if "soak" in results:
        print(report.soak_summary(results["soak"]))
    print(f"\nresults: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark: the worker against the raw aiobotocore ceiling, bbc/sqs-consumer and the Python peers
(sqs-workers, dramatiq-sqs, Celery's SQS transport), in one run.

``python -m bench`` (``make bench``): starts an emulator (the embedded LocalStack, or ``--emulator fauxqs``,
or ``--endpoint URL``), and for each consumer and handler preloads a fresh queue with N 200-byte JSON
payloads (in the consumer's own message format), launches the consumer as a subprocess, and measures while
it drains the queue, sampling its depth every 50 ms from the launch:

- messages/s from process start (N over launch -> empty queue), at steady state (between 10 % and 90 %
  consumed), and after the first consumption (the figure of the earlier runs);
- CPU seconds per 1,000 messages of the consumer's whole process tree (psutil, or /proc);
- peak RSS of the process tree (VmHWM, or the largest sample);
in ``--repeat`` rounds (5), each running the consumers in a random order (``--seed``; the seed and every
round's order are in the JSON); every figure is the median of its rounds and every ratio the median of the
per-round ratios, each with its bootstrap 95 % interval (``stats``); then, per consumer and on a fresh queue
each (one consumer per configuration that differs there: not the raw variants or sqs-consumer-N): launch ->
first message handled and SIGTERM -> exit when idle (and what it left in flight), SIGTERM -> exit in the
middle of a 50 ms drain, SQS requests per 1,000 messages and per idle hour (through a counting proxy), and,
at a low steady rate (single SendMessage calls), the handler start latency. Every ratio compares figures
measured in this run on this machine.

``--quick`` is the smoke mode (N=3000, one repetition); ``--soak`` runs the worker soak instead.

This module parses the options and runs the whole; the parts live beside it: ``emulators`` (the
emulator and the sealed AWS environment), ``consumers`` (the table of consumers and a running one),
``measure`` (queues, drains, latency), ``lifecycle`` (start, stops, requests), ``countproxy``, ``process``
(CPU and RSS from the OS), ``soak``, ``report`` (ratios, targets, tables) and ``stats`` (medians and their
intervals); the Python peers in ``peers/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from bench import consumers, lifecycle, report
from bench.common import BENCH_DIR, ROOT, log, write_results
from bench.emulators import http_get, run_on_emulator, sealed_aws_env
from bench.measure import Bench
from bench.process import CPU_FIGURES_FROM
from bench.soak import soak

HANDLERS = consumers.HANDLERS


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
    p.add_argument(
        "--messages",
        "-n",
        type=int,
        default=5_000,
        help="N: at least this many per no-op drain, the from-start reference (default 5,000)",
    )
    p.add_argument(
        "--io-messages",
        type=int,
        default=500,
        help="at least this many per drain with the 50 ms handler, the from-start reference (default 500)",
    )
    p.add_argument(
        "--steady-seconds",
        type=float,
        default=10.0,
        help="size each consumer's drains (from an unmeasured sizing drain) for this many seconds between 10 "
        "and 90 %% consumed; 0: every drain has N messages (default 10)",
    )
    p.add_argument("--max-messages", type=int, default=40_000, help="most messages of a sized drain")
    p.add_argument(
        "--pollers", "-p", type=int, default=4, help="P: pollers of raw, WORKER_POLLERS of worker (default 4)"
    )
    p.add_argument(
        "--io-concurrency",
        type=int,
        default=20,
        help="total concurrency of every consumer with the 50 ms handler (default 20)",
    )
    p.add_argument("--concurrency", type=int, default=None, help="worker concurrency, no-op (default 50)")
    p.add_argument("--wait", type=int, default=5, help="long-poll wait of every consumer but worker-defaults")
    p.add_argument(
        "--repeat", type=int, default=5, help="rounds of every drain, each in a random order (default 5)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the rounds' random orders (default: from the clock; the JSON records it)",
    )
    p.add_argument(
        "--consumers",
        default=",".join(consumers.DEFAULT_CONSUMERS),
        help="comma-separated, from " + ",".join(consumers.CONSUMERS) + " (default: all but worker-candidate "
        "and worker-uvloop)",
    )
    p.add_argument("--handlers", default=",".join(HANDLERS), help="comma-separated subset of noop,sleep50")
    p.add_argument("--emulator", choices=("localstack", "fauxqs"), default="localstack")
    p.add_argument("--endpoint", default=None, help="use this running emulator (loopback only)")
    p.add_argument("--warmup", type=int, default=3000, help="messages of an unmeasured first drain")
    p.add_argument("--latency-messages", type=int, default=300, help="messages of the latency run")
    p.add_argument("--latency-rate", type=float, default=20.0, help="messages/s of the latency run")
    p.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    p.add_argument("--no-lifecycle", action="store_true", help="skip the start and stop runs")
    p.add_argument("--no-requests", action="store_true", help="skip the request-counting runs")
    p.add_argument("--request-messages", type=int, default=2000, help="N of each request-counting drain")
    p.add_argument(
        "--idle-seconds", type=float, default=30.0, help="idle window of the request counts (after 10 s)"
    )
    p.add_argument("--idle-before-stop", type=float, default=3.0, help="seconds idle before the idle SIGTERM")
    p.add_argument(
        "--stranded-seconds",
        type=float,
        default=10.0,
        help="how long messages left in flight at a stop are watched until visible again",
    )
    p.add_argument(
        "--peers-python",
        default=str(consumers.PEERS_VENV / "bin" / "python"),
        help="python of the peers' virtualenv (make bench-peers)",
    )
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
    return _checked(p, p.parse_args(argv))


def _checked(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """The options after --quick, with the consumers that cannot run here dropped (and said so)."""
    if args.quick:
        args.messages = min(args.messages, 3000)
        args.io_messages = min(args.io_messages, 1000)
        args.repeat = 1
        args.steady_seconds = 0.0
        args.warmup = min(args.warmup, 500)
        args.latency_messages = min(args.latency_messages, 60)
        args.soak_messages = min(args.soak_messages, 10_000)
        args.soak_concurrent = min(args.soak_concurrent, 200)
        args.request_messages = min(args.request_messages, 300)
        args.idle_seconds = min(args.idle_seconds, 1.0)
        args.idle_before_stop = min(args.idle_before_stop, 1.0)
        args.stranded_seconds = min(args.stranded_seconds, 1.0)
    if args.seed is None:
        args.seed = time.time_ns() % 2**32
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
    peers = [spec.name for spec in wanted if spec.peer]
    if peers and not Path(args.peers_python).exists():
        log(f"no peers' virtualenv at {args.peers_python} (make bench-peers): skipping {', '.join(peers)}")
        args.consumers = [c for c in args.consumers if c not in peers]
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
    emulator_kind, emulator_version = emulator_identity(endpoint, description)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "emulator": description,
        "emulator_kind": emulator_kind,
        "emulator_version": emulator_version,
        "machine": machine(),
        "git": git_state(),
        "versions": python_versions(),
        "n": args.messages,
        "io_n": args.io_messages,
        "pollers": args.pollers,
        "io_concurrency": args.io_concurrency,
        "wait_seconds": args.wait,
        "repeat": args.repeat,
        "seed": args.seed,
        "order": {},
        "quick": args.quick,
        "consumers": names,
        "configs": {},
    }
    rng = random.Random(args.seed)
    if node is not None:
        version = await anyio.run_process([node, "--version"], check=False)
        results["node"] = version.stdout.decode().strip()
    if any(consumers.spec(c).peer for c in names):
        results["peer_versions"] = await peer_versions(args.peers_python)
    if any(consumers.spec(c).needs_node for c in names):
        results.setdefault("peer_versions", {}).update(node_package_versions())
    async with sqs_client() as client:
        bench = Bench(args, sealed_aws_env(endpoint, workdir), workdir, client, node, emulator_pid)
        if args.soak:
            results["soak"] = await soak(bench)
            return results
        if args.warmup:
            log(f"warm-up: {args.warmup} messages through the raw loop (not measured)")
            await bench.drain("raw", "noop", args.warmup)
        results["throughput"] = await throughput_rounds(bench, args, names, rng, results)
        # The start/stop, request and latency runs: one consumer per configuration that differs there (the
        # raw variants and sqs-consumer's instance counts differ only in throughput).
        side = [c for c in names if consumers.spec(c).side_runs]
        noop_names = [c for c in side if "noop" in consumers.spec(c).handlers]
        io_names = [c for c in side if "sleep50" in consumers.spec(c).handlers]
        if not args.no_lifecycle:
            starts: dict[str, list[dict[str, Any]]] = {c: [] for c in noop_names}
            results["order"]["lifecycle"] = rounds = round_orders(noop_names, args.repeat, rng)
            for order in rounds:
                for name in order:
                    starts[name].append(await lifecycle.start_and_idle_stop(bench, name))
            results["lifecycle"] = [report.median_lifecycle(starts[name]) for name in noop_names]
            if "sleep50" in args.handlers:
                results["busy_stop"] = [await lifecycle.busy_stop(bench, name) for name in io_names]
        if not args.no_requests:
            results["requests"] = [
                await lifecycle.requests(bench, name, endpoint, args.request_messages, args.idle_seconds)
                for name in noop_names
            ]
        if not args.no_latency:
            results["latency"] = [await bench.latency(name) for name in side if not consumers.spec(name).peer]
    for row in results.get("throughput", []):
        results["configs"].setdefault(f"{row['consumer']} {row['handler']}", row.get("config", ""))
    results["baselines"] = report.baselines(results)
    results["ratios"] = report.ratios(results)
    results["peers"] = report.peer_comparison(results)
    results["cost"] = report.cost(results)
    results["targets"] = report.targets(results) + report.issue20_targets(results)
    return results


async def throughput_rounds(
    bench: Bench, args: argparse.Namespace, names: list[str], rng: random.Random, results: dict[str, Any]
) -> list[dict[str, Any]]:
    """Per handler: size each consumer's drains, then ``--repeat`` rounds, each in a fresh random order (no
    consumer always runs first); the median row of each consumer (``sizes`` and ``order`` go to results)."""
    throughput: list[dict[str, Any]] = []
    results["sizes"] = {}
    for handler in args.handlers:
        count = args.messages if handler == "noop" else args.io_messages
        running = [c for c in names if handler in consumers.spec(c).handlers]
        sizes = results["sizes"][handler] = await drain_sizes(bench, args, running, handler, count)
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in running}
        results["order"][handler] = rounds = round_orders(running, args.repeat, rng)
        for order in rounds:
            for name in order:
                runs[name].append(await bench.drain(name, handler, sizes[name]["n"], count))
        throughput.extend(report.median_runs(runs[name]) for name in running)
    return throughput


#: Messages of the unmeasured sizing drain of each consumer, per handler.
SIZING_MESSAGES = {"noop": 1_500, "sleep50": 300}
#: The steady window is 10 % to 90 % of a drain: 80 % of its messages.
STEADY_FRACTION = 0.8


def drain_size(rate: float | None, steady_seconds: float, least: int, most: int) -> int:
    """Messages a drain needs for ``steady_seconds`` between 10 and 90 % consumed at ``rate`` msg/s, within
    [least, most] (``least`` when the rate is unknown or sizing is off)."""
    if not rate or steady_seconds <= 0:
        return least
    return max(least, min(most, math.ceil(rate * steady_seconds / STEADY_FRACTION)))


async def drain_sizes(
    bench: Bench, args: argparse.Namespace, names: list[str], handler: str, least: int
) -> dict[str, dict[str, Any]]:
    """Per consumer, the N of its measured drains: sized from an unmeasured drain so its steady window lasts
    ``--steady-seconds`` (at least ``least``, the from-start reference, at most ``--max-messages``)."""
    sizes: dict[str, dict[str, Any]] = {}
    for name in names:
        rate = None
        if args.steady_seconds > 0:
            probe = await bench.drain(name, handler, SIZING_MESSAGES[handler])
            rate = probe["steady_msgs_per_s"] or probe["msgs_per_s"]
        n = drain_size(rate, args.steady_seconds, least, args.max_messages)
        sizes[name] = {"sizing_msgs_per_s": rate, "n": n}
    log(f"{handler} drains sized: " + ", ".join(f"{k} {v['n']:,}" for k, v in sizes.items()))
    return sizes


def round_orders(names: list[str], rounds: int, rng: random.Random) -> list[list[str]]:
    """``rounds`` orders of ``names``, each a fresh random permutation (every name once per round)."""
    return [rng.sample(names, len(names)) for _ in range(rounds)]


def emulator_identity(endpoint: str, description: str) -> tuple[str, str | None]:
    """(kind, version) of the emulator: "localstack" (its health endpoint names the running version),
    "fauxqs" (from the description this run gave it), or "unknown"."""
    status, body = http_get(f"{endpoint.rstrip('/')}/_localstack/health")
    if status == 200:
        with contextlib.suppress(ValueError, AttributeError):
            version = json.loads(body).get("version")
            return "localstack", str(version) if version else None
    words = description.split()
    if words and words[0].lower() in ("localstack", "fauxqs"):
        return words[0].lower(), words[1] if len(words) > 1 else None
    return "unknown", None


def node_package_versions() -> dict[str, str]:
    """The installed versions of the Node consumer's packages (bench/node_modules)."""
    out: dict[str, str] = {}
    for package in ("sqs-consumer", "@aws-sdk/client-sqs"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            manifest = BENCH_DIR / "node_modules" / package / "package.json"
            out[package] = str(json.loads(manifest.read_text())["version"])
    return out


def python_versions() -> dict[str, str]:
    """The versions of what the worker and the raw loop run on (this virtualenv)."""
    from importlib import metadata

    out: dict[str, str] = {"python": platform.python_version()}
    for package in ("aiobotocore", "botocore", "anyio", "resilient-sqs-worker"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[package] = metadata.version(package)
    return out


def git_state(tree: Path = ROOT) -> dict[str, Any]:
    """The commit ``tree`` (this one by default) is at, whether it has changes (untracked files included) and
    which."""
    import subprocess

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=tree, capture_output=True, text=True, check=False)
        return done.stdout.rstrip()

    # Each line is "XY path": the status columns may start with a space, so the lines are not stripped.
    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if line.strip()]
    return {"sha": git("rev-parse", "HEAD").strip() or None, "dirty": bool(changed), "changed": changed}


async def peer_versions(python: str) -> dict[str, str]:
    """The installed versions of the peers and what they run on, from their virtualenv."""
    code = (
        "import importlib.metadata as m, json;"
        "print(json.dumps({p: m.version(p) for p in "
        "('sqs-workers','dramatiq','dramatiq-sqs','celery','kombu','boto3','botocore','pycurl')}))"
    )
    done = await anyio.run_process([python, "-c", code], check=False)
    return dict(json.loads(done.stdout)) if done.returncode == 0 else {}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON."""
    args = parse_args(argv)
    detail = f"N={args.messages}, P={args.pollers}, {os.cpu_count()} cores"
    results = run_on_emulator(args, run, "", detail)
    output = write_results(results, args.output, "")
    if "throughput" in results:
        print(
            f"\n{results['emulator']}, N={results['n']} (50 ms handler: {results['io_n']}), "
            f"P={results['pollers']}, {results['machine']['cores']} cores\n"
        )
        print(report.table(results))
        if results.get("peers"):
            print()
            print(report.peers_table(results))
        if results.get("cost"):
            print()
            print(report.cost_table(results))
        print()
        for t in results["targets"]:
            print(report.target_line(t))
    if "soak" in results:
        print(report.soak_summary(results["soak"]))
    print(f"\nresults: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

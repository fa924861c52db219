"""The scaling curve (issue 15, T7): the worker alone over pollers x concurrency x handler time, with the raw
loop at the same pollers as a reference line; ``python -m bench.scaling`` (``make bench-scaling``).

Each cell is one drain (``Bench.drain``: a fresh queue preloaded with N 200-byte messages, the consumer
launched, the queue depth sampled every 50 ms): steady msg/s (10 % to 90 % consumed), CPU s per 1,000
messages and peak RSS. N is sized so the steady window lasts ``--seconds`` (10 s): from the expected rate,
concurrency / handler time, capped by the no-op rate measured at the same pollers and concurrency (the no-op
cells run first; they are sized from a first no-op probe at the grid's largest pollers and concurrency). A
cell that still drained faster than planned is run once more with N from its measured rate.

The estimate of the whole grid's wall time is printed before it starts (``--dry-run``: only the plan, from
assumed rates, without an emulator). The JSON (git SHA, dirty flag, emulator, every drain) goes to
``bench/results/scaling-<date>.json``, with the sizing advice of ``bench/plot.py``; that module draws the
PNG, run with the Python of the peers' virtualenv (matplotlib), which this runs afterwards when it exists.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import ROOT, log, write_results
from bench.plot import advice_lines, sizing_advice

#: The handlers of the grid, by their time in ms (bench/handlers.py).
HANDLER_NAMES = {0: "noop", 5: "sleep5", 50: "sleep50", 500: "sleep500"}
#: The handlers the raw loop implements (bench/raw_consumer.py): its reference line exists for these.
RAW_HANDLERS_MS = frozenset({0, 50})
#: Messages each raw poller receives (and handles at once): its concurrency is 10 per poller.
RAW_BATCH = 10
#: The steady window is the drain between 10 % and 90 % of the messages consumed (bench/measure.py).
STEADY_FRACTION = 0.8
#: Seconds of one cell besides the preload and the drain: queues created and deleted, the consumer launched
#: until it receives, stopped, the last samples.
CELL_OVERHEAD_S = 4.0
#: The fewest messages of a cell, per unit of concurrency: a drain must be several times what is in flight
#: at once, or there is no steady state to measure.
MESSAGES_PER_SLOT = 3

DEFAULT_POLLERS = (1, 2, 4, 8)
DEFAULT_CONCURRENCY = (10, 100, 1000)
DEFAULT_HANDLERS_MS = (0, 5, 50, 500)


@dataclass(frozen=True)
class Cell:
    """One point of the grid: a consumer (``worker`` or ``raw``), its pollers and concurrency, a handler."""

    consumer: str
    pollers: int
    concurrency: int
    handler_ms: int

    @property
    def handler(self) -> str:
        """The handler's name in bench/handlers.py (and the raw loop)."""
        return HANDLER_NAMES[self.handler_ms]

    @property
    def label(self) -> str:
        """For the progress log."""
        return f"{self.consumer} P={self.pollers} C={self.concurrency} {self.handler_ms} ms"


@dataclass(frozen=True)
class Sizing:
    """How cells are sized: the steady window wanted, and the bounds of N."""

    seconds: float = 10.0
    minimum: int = 200
    maximum: int = 60_000


@dataclass(frozen=True)
class Planned:
    """A cell with the rate it is expected to reach, the messages that make its steady window, and how long
    it should take."""

    cell: Cell
    expected_msgs_per_s: float
    messages: int
    seconds: float


def grid(
    pollers: Sequence[int], concurrency: Sequence[int], handlers_ms: Sequence[int], *, raw: bool = True
) -> list[Cell]:
    """Every worker cell, then the raw loop's reference cells (each pollers count, the handlers it has)."""
    cells = [Cell("worker", p, c, h) for h in handlers_ms for p in pollers for c in concurrency]
    if raw:
        cells += [
            Cell("raw", p, RAW_BATCH * p, h) for h in handlers_ms if h in RAW_HANDLERS_MS for p in pollers
        ]
    return cells


def expected_rate(cell: Cell, cap: float) -> float:
    """Messages/s the cell can reach: concurrency over the handler time, at most ``cap`` (what the consumer
    does with a no-op handler; the emulator's ceiling)."""
    if cell.handler_ms == 0:
        return cap
    return min(cell.concurrency * 1000.0 / cell.handler_ms, cap)


def messages_for(rate: float, concurrency: int, sizing: Sizing) -> int:
    """N that keeps a drain at ``rate`` msg/s in its steady window (the middle 80 %) for ``sizing.seconds``:
    at least ``sizing.minimum`` and a few times the concurrency, at most ``sizing.maximum``; a multiple of 10
    (one batch)."""
    if rate <= 0 or sizing.seconds <= 0:
        raise ValueError("rate and seconds must be positive")
    wanted = max(
        math.ceil(rate * sizing.seconds / STEADY_FRACTION), sizing.minimum, MESSAGES_PER_SLOT * concurrency
    )
    return min(math.ceil(wanted / 10) * 10, sizing.maximum)


def cell_seconds(messages: int, rate: float, preload_rate: float) -> float:
    """Wall seconds of one cell: the preload, the drain, the overhead."""
    return messages / preload_rate + messages / rate + CELL_OVERHEAD_S


def plan(
    cells: Iterable[Cell],
    caps: dict[tuple[str, int, int], float],
    default_cap: float,
    preload_rate: float,
    sizing: Sizing,
) -> list[Planned]:
    """Size each cell: its cap is the no-op rate measured for its consumer, pollers and concurrency (``caps``)
    or, before those are known, ``default_cap`` (the probe)."""
    out = []
    for cell in cells:
        cap = caps.get((cell.consumer, cell.pollers, cell.concurrency), default_cap)
        rate = expected_rate(cell, cap)
        n = messages_for(rate, cell.concurrency, sizing)
        out.append(Planned(cell, round(rate, 1), n, round(cell_seconds(n, rate, preload_rate), 1)))
    return out


def steady_window(result: dict[str, Any]) -> float | None:
    """Seconds the drain spent in its steady window (None when it had none)."""
    rate = result.get("steady_msgs_per_s")
    if not rate:
        return None
    return float(STEADY_FRACTION * result["messages"] / rate)


def rerun_messages(result: dict[str, Any], concurrency: int, sizing: Sizing) -> int | None:
    """N for a second run when the steady window came out shorter than 90 % of ``sizing.seconds`` (the cell
    drained faster than its cap said), from the rate it measured with 10 % to spare; None when it was long
    enough or a second run could not be longer."""
    window = steady_window(result)
    if window is not None and window >= 0.9 * sizing.seconds:
        return None
    rate = result.get("steady_msgs_per_s") or result.get("msgs_per_s") or 0.0
    if rate <= 0:
        return None
    n = messages_for(1.1 * rate, concurrency, sizing)
    return n if n > result["messages"] else None


def cell_args(base: argparse.Namespace, cell: Cell) -> argparse.Namespace:
    """The options ``Bench.drain`` reads, for this cell: the worker gets WORKER_POLLERS=P and
    WORKER_CONCURRENCY=C (drain passes ``concurrency``, or ``io_concurrency`` for sleep50); the raw loop gets
    P pollers (it derives them from ``io_concurrency`` / 10 with sleep50)."""
    values = dict(vars(base))
    values.update(pollers=cell.pollers, concurrency=cell.concurrency, io_concurrency=cell.concurrency)
    return argparse.Namespace(**values)


#: The figures of a cell's row: the median over its rounds.
FIGURES = ("steady_msgs_per_s", "from_start_msgs_per_s", "msgs_per_s", "cpu_s_per_1k", "peak_rss_mb")


def summarize(cell: Cell, planned: Planned, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A cell's row: each figure the median of its rounds (a round's second run, when its first was too
    short, counts for it), every run kept."""
    row: dict[str, Any] = {
        "consumer": cell.consumer,
        "pollers": cell.pollers,
        "concurrency": cell.concurrency,
        "handler_ms": cell.handler_ms,
        "handler": cell.handler,
        "expected_msgs_per_s": planned.expected_msgs_per_s,
        "messages": max(r["messages"] for r in runs),
    }
    for key in FIGURES:
        values = [r[key] for r in runs if r.get(key) is not None]
        row[key] = round(statistics.median(values), 4) if values else None
    windows = [w for w in map(steady_window, runs) if w is not None]
    row["steady_window_s"] = round(min(windows), 1) if windows else None
    row["runs"] = runs
    return row


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"not a list of non-negative integers: {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (and the ones ``Bench`` reads, at the values ``python -m bench`` uses)."""
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--pollers", dest="grid_pollers", type=_ints, default=DEFAULT_POLLERS, help="default 1,2,4,8"
    )
    p.add_argument(
        "--concurrency",
        dest="grid_concurrency",
        type=_ints,
        default=DEFAULT_CONCURRENCY,
        help="default 10,100,1000",
    )
    p.add_argument(
        "--handlers",
        dest="grid_handlers",
        type=_ints,
        default=DEFAULT_HANDLERS_MS,
        help="handler times in ms, from " + ",".join(map(str, HANDLER_NAMES)) + " (default all)",
    )
    p.add_argument("--no-raw", action="store_true", help="leave out the raw loop's reference cells")
    p.add_argument(
        "--seconds", type=float, default=10.0, help="steady window each cell is sized for (default 10)"
    )
    p.add_argument("--min-messages", type=int, default=200, help="the fewest messages of a cell")
    p.add_argument("--max-messages", type=int, default=60_000, help="the most messages of a cell")
    p.add_argument("--probe-messages", type=int, default=5000, help="messages of the first no-op probe")
    p.add_argument("--repeat", type=int, default=1, help="rounds of the grid (each cell's median is kept)")
    p.add_argument("--seed", type=int, default=None, help="seed of the cells' random order (default: random)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its wall time; run nothing")
    p.add_argument("--assume-rate", type=float, default=1800.0, help="--dry-run: no-op msg/s of every cell")
    p.add_argument("--assume-preload-rate", type=float, default=2500.0, help="--dry-run: preload msg/s")
    p.add_argument("--emulator", choices=("localstack", "fauxqs"), default="localstack")
    p.add_argument("--endpoint", default=None, help="use this running emulator (loopback only)")
    p.add_argument("--wait", type=int, default=5, help="long-poll wait of the consumers (default 5)")
    p.add_argument("--drain-timeout", type=float, default=600.0, help="seconds one drain may take")
    p.add_argument(
        "--worker-command", default="-m worker run", help="arguments after the python of the worker"
    )
    p.add_argument("--output", default=None, help="results JSON (default bench/results/scaling-<date>.json)")
    p.add_argument(
        "--plot-python",
        default=str(ROOT / ".venv-peers" / "bin" / "python"),
        help="python with matplotlib that runs bench/plot.py afterwards (make bench-peers; none: no plot)",
    )
    p.add_argument("--plot", default=None, help="PNG path (default docs/img/scaling-<sha>.png)")
    p.add_argument("--keep-workdir", action="store_true", help="keep logs of every process")
    args = p.parse_args(argv)
    unknown = [h for h in args.grid_handlers if h not in HANDLER_NAMES]
    if unknown:
        p.error(f"--handlers: no handler of {unknown} ms; known: {', '.join(map(str, HANDLER_NAMES))}")
    if min(args.grid_pollers) < 1 or max(args.grid_pollers) > 64:
        p.error("--pollers: each between 1 and 64 (WORKER_POLLERS)")
    if min(args.grid_concurrency) < 1:
        p.error("--concurrency: each at least 1")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    # What Bench reads besides: the per-cell values are set by cell_args.
    args.pollers = max(args.grid_pollers)
    args.concurrency = max(args.grid_concurrency)
    args.io_concurrency = max(args.grid_concurrency)
    args.candidate_src = None
    args.peers_python = args.plot_python
    args.profile = None
    return args


def minutes(seconds: float) -> str:
    """A duration as the log shows it."""
    return f"{seconds / 60:.0f} min" + (f" ({seconds / 3600:.1f} h)" if seconds >= 3600 else "")


def print_plan(planned: list[Planned], preload_rate: float, head: str) -> float:
    """The plan on stderr, with its total wall time; returns that total."""
    total = sum(p.seconds for p in planned)
    messages = sum(p.messages for p in planned)
    log(f"{head}: {len(planned)} cells, {messages:,} messages, preload {preload_rate:.0f} msg/s")
    for p in planned:
        rate = p.expected_msgs_per_s
        log(f"  {p.cell.label:<32} N={p.messages:>6}  ~{rate:>8.0f} msg/s  ~{p.seconds:>5.0f} s")
    log(f"estimated wall time: {minutes(total)}")
    return total


def sizing(args: argparse.Namespace) -> Sizing:
    """The options' sizing."""
    return Sizing(args.seconds, args.min_messages, args.max_messages)


def dry_run(args: argparse.Namespace) -> int:
    """The plan from assumed rates: how big the grid is and how long it takes."""
    cells = (
        grid(args.grid_pollers, args.grid_concurrency, args.grid_handlers, raw=not args.no_raw) * args.repeat
    )
    planned = plan(cells, {}, args.assume_rate, args.assume_preload_rate, sizing(args))
    head = f"dry run (no-op {args.assume_rate:.0f} msg/s assumed for every cell)"
    total = print_plan(planned, args.assume_preload_rate, head)
    print(f"{len(planned)} cells, estimated wall time {minutes(total)}")
    return 0


def schedule(cells: list[Cell], repeat: int, rng: random.Random) -> list[list[Cell]]:
    """The rounds in the order they run: every no-op round first (they give the other cells their caps), then
    the others; each round's cells in a random order."""
    phases = ([c for c in cells if c.handler_ms == 0], [c for c in cells if c.handler_ms != 0])
    return [rng.sample(phase, len(phase)) for phase in phases if phase for _ in range(repeat)]


def no_op_caps(runs: dict[Cell, list[dict[str, Any]]]) -> dict[tuple[str, int, int], float]:
    """The median no-op rate measured so far for each consumer, pollers and concurrency."""
    caps = {}
    for cell, results in runs.items():
        rates = [r.get("steady_msgs_per_s") or r["msgs_per_s"] for r in results]
        if cell.handler_ms == 0 and rates:
            caps[(cell.consumer, cell.pollers, cell.concurrency)] = float(statistics.median(rates))
    return caps


async def run_grid(args: argparse.Namespace, bench: Any, started: float) -> dict[str, Any]:
    """The probe, then the rounds of ``schedule``; the cells' rows."""
    rng = random.Random(args.seed)
    size = sizing(args)
    base = bench.args
    probe_cell = Cell("worker", max(args.grid_pollers), max(args.grid_concurrency), 0)
    log(f"probe: {args.probe_messages} messages, {probe_cell.label} (warm-up and the first cap)")
    bench.args = cell_args(base, probe_cell)
    probe = await bench.drain("worker", "noop", args.probe_messages)
    probe_rate = float(probe.get("steady_msgs_per_s") or probe["msgs_per_s"])
    preload_rate = float(probe["preload_msgs_per_s"])
    cells = grid(args.grid_pollers, args.grid_concurrency, args.grid_handlers, raw=not args.no_raw)
    rounds = schedule(cells, args.repeat, rng)
    planned_all = plan([c for r in rounds for c in r], {}, probe_rate, preload_rate, size)
    estimate = print_plan(planned_all, preload_rate, "grid")
    runs: dict[Cell, list[dict[str, Any]]] = {cell: [] for cell in cells}
    planned_by_cell: dict[Cell, Planned] = {}
    order: list[str] = []
    for k, round_cells in enumerate(rounds):
        todo = plan(round_cells, no_op_caps(runs), probe_rate, preload_rate, size)
        for i, planned in enumerate(todo, 1):
            cell = planned.cell
            planned_by_cell.setdefault(cell, planned)
            order.append(cell.label)
            log(f"cell {len(order)}/{len(planned_all)}: {cell.label}, N={planned.messages}")
            bench.args = cell_args(base, cell)
            result = await bench.drain(cell.consumer, cell.handler, planned.messages)
            again = rerun_messages(result, cell.concurrency, size)
            if again is not None:
                log(f"  steady window {steady_window(result) or 0:.1f} s: again with N={again}")
                result = {**await bench.drain(cell.consumer, cell.handler, again), "rerun_of": result}
            runs[cell].append(result)
            later = [c for r in rounds[k + 1 :] for c in r]
            left = sum(
                p.seconds for p in [*todo[i:], *plan(later, no_op_caps(runs), probe_rate, preload_rate, size)]
            )
            log(f"  {minutes(time.perf_counter() - started)} so far, ~{minutes(left)} left")
    bench.args = base
    rows = [summarize(cell, planned_by_cell[cell], runs[cell]) for cell in cells]
    return {"probe": probe, "estimated_wall_s": round(estimate), "order": order, "cells": rows}


async def run(
    args: argparse.Namespace, endpoint: str, description: str, pid: int | None, workdir: Path
) -> dict[str, Any]:
    """The whole grid against a running emulator; returns the results document."""
    from bench.emulators import sealed_aws_env
    from bench.measure import Bench
    from bench.run import git_state, machine, sqs_client

    started = time.perf_counter()
    os.environ.update(sealed_aws_env(endpoint, workdir))
    results: dict[str, Any] = {
        "kind": "scaling",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "emulator": description,
        "machine": machine(),
        "git": git_state(),
        "options": {
            "pollers": list(args.grid_pollers),
            "concurrency": list(args.grid_concurrency),
            "handlers_ms": list(args.grid_handlers),
            "raw": not args.no_raw,
            "seconds": args.seconds,
            "min_messages": args.min_messages,
            "max_messages": args.max_messages,
            "repeat": args.repeat,
            "seed": args.seed,
            "wait_seconds": args.wait,
        },
    }
    async with sqs_client() as client:
        bench = Bench(args, sealed_aws_env(endpoint, workdir), workdir, client, None, pid)
        results.update(await run_grid(args, bench, started))
    results["wall_s"] = round(time.perf_counter() - started)
    results["advice"] = sizing_advice(results)
    return results


def plot(args: argparse.Namespace, output: Path) -> None:
    """bench/plot.py on the results, with the Python that has matplotlib (the peers' virtualenv)."""
    python = Path(args.plot_python)
    if not python.exists():
        log(
            f"no {python} (make bench-peers): no plot; later: <python with matplotlib> -m bench.plot {output}"
        )
        return
    argv = [str(python), "-m", "bench.plot", "--quiet", str(output)]
    argv += ["--output", args.plot] if args.plot else []
    done = subprocess.run(argv, cwd=ROOT, check=False)
    if done.returncode != 0:
        log(f"bench/plot.py failed (exit {done.returncode})")


def main(argv: list[str] | None = None) -> int:
    """Run the grid, write the JSON, print the advice, draw the plot."""
    from bench.emulators import run_on_emulator

    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    results = run_on_emulator(args, run, "scaling-", f"{os.cpu_count()} cores")
    output = write_results(results, args.output, "scaling-")
    print(
        f"{results['emulator']}, {len(results['cells'])} cells in {results['wall_s'] / 60:.0f} min "
        f"(estimated {results['estimated_wall_s'] / 60:.0f})\n"
    )
    print("\n".join(advice_lines(results["advice"])))
    print(f"\nresults: {output}")
    plot(args, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

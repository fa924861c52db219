"""The scaling bench's arithmetic (grid, N per cell, wall-time plan, second runs), the plot's data preparation
and sizing advice, and the memory run's pieces (256 KiB bodies, the HTTP handler against the bench's slow
server); no emulator."""

from __future__ import annotations

import argparse
import inspect
import json
import random
import resource
from pathlib import Path
from typing import Any

import anyio
import pytest

from bench import handlers, plot, scaling, soak
from bench.common import ROOT
from bench.scaling import Cell, Planned, Sizing
from worker import Message


def test_grid_is_every_worker_cell_then_the_raw_loop_where_it_has_the_handler() -> None:
    """P x C x H worker cells; the raw loop at each P with concurrency 10 per poller, for no-op and 50 ms only
    (the handlers bench/raw_consumer.py implements)."""
    cells = scaling.grid((1, 8), (10, 1000), (0, 5, 50, 500))
    worker = [c for c in cells if c.consumer == "worker"]
    raw = [c for c in cells if c.consumer == "raw"]
    assert len(worker) == 2 * 2 * 4
    assert len(set(worker)) == len(worker)
    assert sorted((c.pollers, c.concurrency, c.handler_ms) for c in raw) == [
        (1, 10, 0),
        (1, 10, 50),
        (8, 80, 0),
        (8, 80, 50),
    ]
    assert scaling.grid((1,), (10,), (0, 50), raw=False) == [
        Cell("worker", 1, 10, 0),
        Cell("worker", 1, 10, 50),
    ]


def test_every_grid_handler_is_an_async_handler_of_bench_handlers() -> None:
    """WORKER_HANDLER=bench.handlers:<name> resolves for every handler time of the grid, and the memory run's
    ``http``."""
    for name in [*scaling.HANDLER_NAMES.values(), "http"]:
        assert inspect.iscoroutinefunction(getattr(handlers, name)), name


def test_expected_rate_is_concurrency_over_handler_time_capped_by_the_no_op_rate() -> None:
    """No-op: the cap; otherwise C / t, at most the cap."""
    assert scaling.expected_rate(Cell("worker", 4, 100, 0), 1800.0) == 1800.0
    assert scaling.expected_rate(Cell("worker", 4, 10, 50), 1800.0) == 200.0
    assert scaling.expected_rate(Cell("worker", 4, 10, 500), 1800.0) == 20.0
    assert scaling.expected_rate(Cell("worker", 4, 1000, 5), 1800.0) == 1800.0


def test_messages_make_the_steady_window_last_the_wanted_seconds() -> None:
    """N = rate x seconds / 0.8 (the 10-90 % window), rounded up to a batch of 10, at least the minimum and
    three times the concurrency, at most the maximum."""
    size = Sizing(seconds=10.0, minimum=200, maximum=60_000)
    assert scaling.messages_for(1000.0, 10, size) == 12_500
    assert scaling.messages_for(333.0, 10, size) == 4170  # 4162.5 -> 4170
    assert scaling.messages_for(20.0, 10, size) == 250
    assert scaling.messages_for(5.0, 10, size) == 200
    assert scaling.messages_for(200.0, 1000, size) == 3000
    assert scaling.messages_for(9000.0, 10, size) == 60_000
    assert scaling.messages_for(1000.0, 10, Sizing(seconds=4.0, minimum=200, maximum=60_000)) == 5000
    for rate, seconds in ((0.0, 10.0), (100.0, 0.0)):
        with pytest.raises(ValueError, match="positive"):
            scaling.messages_for(rate, 10, Sizing(seconds, 1, 10))


def test_plan_takes_the_measured_no_op_cap_of_the_same_pollers_and_concurrency() -> None:
    """A cell's cap is its own consumer's no-op rate at the same P and C once measured, the probe's before;
    each cell's seconds are its preload, its drain and the overhead."""
    cells = [Cell("worker", 1, 100, 5), Cell("worker", 8, 100, 5), Cell("raw", 1, 10, 0)]
    caps = {("worker", 1, 100): 400.0}
    planned = scaling.plan(cells, caps, 2000.0, 2500.0, Sizing())
    assert [p.expected_msgs_per_s for p in planned] == [400.0, 2000.0, 2000.0]
    assert [p.messages for p in planned] == [5000, 25_000, 25_000]
    assert planned[0].seconds == round(5000 / 2500 + 5000 / 400 + scaling.CELL_OVERHEAD_S, 1)


def test_no_op_rounds_run_first_each_in_a_random_order_and_give_the_caps() -> None:
    """Every no-op round precedes the other rounds (their caps come from it); a seed fixes the order; the
    caps are the median no-op rate of each consumer, pollers and concurrency, the other handlers ignored."""
    cells = scaling.grid((1, 2), (10, 100), (0, 50))
    rounds = scaling.schedule(cells, 2, random.Random(7))
    assert [{c.handler_ms for c in r} for r in rounds] == [{0}, {0}, {50}, {50}]
    noop, slow = [c for c in cells if c.handler_ms == 0], [c for c in cells if c.handler_ms == 50]
    assert [sorted(r, key=str) for r in rounds] == [sorted(x, key=str) for x in (noop, noop, slow, slow)]
    assert rounds == scaling.schedule(cells, 2, random.Random(7))
    assert rounds[0] != rounds[1] or rounds[2] != rounds[3]  # shuffled (seed 7 reorders at least one)
    runs: dict[Cell, list[dict[str, Any]]] = {
        Cell("worker", 1, 10, 0): [
            {"steady_msgs_per_s": 500.0},
            {"steady_msgs_per_s": None, "msgs_per_s": 300.0},
        ],
        Cell("raw", 1, 10, 0): [{"steady_msgs_per_s": 900.0}],
        Cell("worker", 1, 10, 50): [{"steady_msgs_per_s": 150.0}],
        Cell("worker", 2, 10, 0): [],
    }
    assert scaling.no_op_caps(runs) == {("worker", 1, 10): 400.0, ("raw", 1, 10): 900.0}


def test_a_too_short_steady_window_is_run_again_with_more_messages() -> None:
    """Window >= 90 % of the wanted seconds: no second run; shorter: N from the measured rate + 10 %; no rate
    or no room under the maximum: none."""
    size = Sizing(seconds=10.0, minimum=200, maximum=60_000)
    long_enough = {"messages": 12_500, "steady_msgs_per_s": 1000.0}  # 10 s
    assert scaling.steady_window(long_enough) == 10.0
    assert scaling.rerun_messages(long_enough, 100, size) is None
    short = {"messages": 12_500, "steady_msgs_per_s": 2000.0}  # 5 s
    assert scaling.rerun_messages(short, 100, size) == 27_500
    no_window = {"messages": 1000, "steady_msgs_per_s": None, "msgs_per_s": 1000.0}
    assert scaling.steady_window(no_window) is None
    assert scaling.rerun_messages(no_window, 100, size) == 13_750
    assert scaling.rerun_messages({"messages": 60_000, "steady_msgs_per_s": 9000.0}, 100, size) is None
    assert scaling.rerun_messages({"messages": 10, "steady_msgs_per_s": None}, 100, size) is None


def test_cell_args_set_the_pollers_and_concurrency_drain_reads_and_leave_the_base_alone() -> None:
    """The worker's WORKER_POLLERS / WORKER_CONCURRENCY come from ``pollers`` and ``concurrency`` (or
    ``io_concurrency`` with sleep50); the raw loop's pollers from ``io_concurrency`` / 10 with sleep50."""
    base = argparse.Namespace(pollers=4, concurrency=None, io_concurrency=20, wait=5)
    args = scaling.cell_args(base, Cell("worker", 2, 1000, 50))
    assert (args.pollers, args.concurrency, args.io_concurrency, args.wait) == (2, 1000, 1000, 5)
    raw = scaling.cell_args(base, Cell("raw", 8, 80, 50))
    assert raw.io_concurrency // scaling.RAW_BATCH == 8
    assert (base.pollers, base.concurrency, base.io_concurrency) == (4, None, 20)


def test_a_cell_row_is_the_median_of_its_rounds_with_every_run_kept() -> None:
    """Each figure is the median over the rounds; the window shown is the shortest."""
    cell = Cell("worker", 2, 100, 50)
    planned = Planned(cell, 1800.0, 2500, 20.0)
    runs = [
        {"messages": 2500, "steady_msgs_per_s": rate, "cpu_s_per_1k": cpu, "msgs_per_s": rate}
        for rate, cpu in ((200.0, 0.5), (250.0, 0.4), (150.0, 0.9))
    ]
    row = scaling.summarize(cell, planned, runs)
    assert (row["steady_msgs_per_s"], row["cpu_s_per_1k"], row["msgs_per_s"]) == (200.0, 0.5, 200.0)
    assert row["peak_rss_mb"] is None
    assert row["steady_window_s"] == 8.0  # 0.8 x 2500 / 250
    assert row["runs"] == runs
    assert (row["handler"], row["expected_msgs_per_s"]) == ("sleep50", 1800.0)


def test_dry_run_prints_the_plan_and_its_wall_time_without_an_emulator(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--dry-run`` sizes every cell from the assumed rates and prints the total."""
    argv = [
        "--dry-run",
        "--pollers",
        "1,2",
        "--concurrency",
        "10",
        "--handlers",
        "0,500",
        "--assume-rate",
        "1000",
    ]
    assert scaling.main(argv) == 0
    out = capsys.readouterr()
    # worker: 2 x 1 x 2, raw: 2 (no-op only).
    assert out.out.strip() == "6 cells, estimated wall time 2 min"
    assert "worker P=1 C=10 500 ms" in out.err


def test_options_refuse_a_handler_time_without_a_handler() -> None:
    """Only the handler times bench/handlers.py has."""
    with pytest.raises(SystemExit):
        scaling.parse_args(["--handlers", "0,20"])


def row(
    consumer: str, p: int, c: int, ms: int, rate: float | None, cpu: float | None = 0.4
) -> dict[str, Any]:
    """A cell row as bench/scaling.py writes it."""
    return {
        "consumer": consumer,
        "pollers": p,
        "concurrency": c,
        "handler_ms": ms,
        "steady_msgs_per_s": rate,
        "msgs_per_s": None if rate is None else rate * 0.9,
        "cpu_s_per_1k": cpu,
    }


DOC: dict[str, Any] = {
    "kind": "scaling",
    "git": {"sha": "0123456789abcdef", "dirty": False},
    "cells": [
        row("worker", 1, 10, 0, 900.0),
        row("worker", 1, 100, 0, 1700.0, cpu=0.45),
        row("worker", 2, 100, 0, 1750.0, cpu=0.40),
        row("worker", 2, 10, 0, 1000.0),
        row("worker", 2, 1000, 0, 1800.0),
        row("worker", 1, 10, 500, 19.0),
        row("worker", 1, 100, 500, None),
        row("worker", 2, 100, 500, 150.0),
        row("worker", 2, 1000, 500, 1500.0),
        row("raw", 1, 10, 0, 1900.0),
        row("raw", 2, 20, 0, 2000.0),
    ],
}


def test_series_are_the_worker_lines_per_handler_and_pollers_in_concurrency_order() -> None:
    """Raw cells are left out of the lines (they are the reference levels); a cell without a steady window
    falls back to its rate from the first consumption; one without any rate is left out."""
    lines = plot.series(DOC, plot.THROUGHPUT[0])
    assert lines == {
        0: {1: [(10, 900.0), (100, 1700.0)], 2: [(10, 1000.0), (100, 1750.0), (1000, 1800.0)]},
        500: {1: [(10, 19.0)], 2: [(100, 150.0), (1000, 1500.0)]},
    }
    assert plot.reference(DOC, plot.THROUGHPUT[0]) == {0: {1: 1900.0, 2: 2000.0}}
    fallback = {"cells": [row("worker", 1, 10, 5, None)]}
    fallback["cells"][0]["msgs_per_s"] = 300.0
    assert plot.series(fallback, plot.THROUGHPUT[0]) == {5: {1: [(10, 300.0)]}}
    assert plot.series(fallback, plot.CPU[0]) == {5: {1: [(10, 0.4)]}}
    assert plot.handler_times(DOC) == [0, 500]
    assert plot.pollers_label("worker", 1) == "worker, 1 poller"
    assert plot.pollers_label("raw", 4) == "raw loop, 4 pollers (concurrency 40)"


def test_sizing_advice_is_the_smallest_pollers_times_concurrency_within_5_percent_of_the_best() -> None:
    """No-op: 1 x 100 (1,700, 94 % of 1,800) misses; 2 x 100 (1,750, 97 %) is the smallest within 5 %. 500 ms:
    only the best itself, at the grid's largest concurrency (more may help)."""
    advice = plot.sizing_advice(DOC)
    assert [(a["handler_ms"], a["pollers"], a["concurrency"]) for a in advice] == [
        (0, 2, 100),
        (500, 2, 1000),
    ]
    noop, slow = advice
    assert noop["best"] == {"pollers": 2, "concurrency": 1000, "msgs_per_s": 1800.0}
    assert (noop["of_best"], noop["at_grid_edge"]) == (0.972, False)
    assert noop["text"] == (
        "no-op handler: WORKER_POLLERS=2 WORKER_CONCURRENCY=100: 1,750 msg/s, 97% of the best "
        "(1,800 msg/s at 2 pollers x 1000), 0.400 CPU s / 1k"
    )
    assert slow["at_grid_edge"] is True
    assert slow["text"].endswith(
        "(the best of the grid), 0.400 CPU s / 1k; the best is at the grid's largest "
        "concurrency: more may still help"
    )
    # A wider tolerance takes the smaller 1 x 100; among equal products the lower CPU wins.
    wider = plot.sizing_advice(DOC, tolerance=0.10)[0]
    assert (wider["pollers"], wider["concurrency"]) == (1, 100)
    tie = {"cells": [row("worker", 1, 100, 5, 1000.0, cpu=0.5), row("worker", 2, 50, 5, 1000.0, cpu=0.3)]}
    assert [(a["pollers"], a["concurrency"]) for a in plot.sizing_advice(tie)] == [(2, 50)]
    assert plot.advice_lines(advice)[1:] == [f"  {noop['text']}", f"  {slow['text']}"]


def test_the_plot_is_named_after_the_commit() -> None:
    """docs/img/scaling-<short sha>.png, ``-dirty`` when the tree had changes."""
    assert plot.default_output(DOC).relative_to(ROOT) == Path("docs/img/scaling-0123456.png")
    dirty = {**DOC, "git": {"sha": "0123456789abcdef", "dirty": True}}
    assert plot.default_output(dirty).name == "scaling-0123456-dirty.png"
    assert "commit 0123456 (dirty)" in plot.title(dirty)


def test_plot_imports_nothing_from_the_worker() -> None:
    """bench/plot.py runs in the peers' virtualenv, where the worker is not installed."""
    source = Path(plot.__file__).read_text()
    assert "worker" not in {
        line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))
    }
    json.dumps(plot.sizing_advice(DOC))  # what it stores in the JSON serializes


def test_large_bodies_are_just_under_the_sqs_limit() -> None:
    """262,000 bytes of JSON: under SQS's 262,144 for body and attributes together."""
    bodies = [soak.large_body(i) for i in (0, 12_345)]
    assert [len(b.encode()) for b in bodies] == [soak.LARGE_BODY_BYTES] * 2
    assert soak.LARGE_BODY_BYTES < 262_144
    assert json.loads(bodies[1])["i"] == 12_345


def test_memory_summary_sets_the_peak_rss_against_the_bodies_in_flight() -> None:
    """Met only when every slot was taken at once and every message succeeded; the RSS per in-flight handler
    is above the ready worker's."""
    server = soak.SlowServer(3.0, peak_concurrent=1000, requests=2000)

    def summary(handler_stats: dict[str, Any]) -> dict[str, Any]:
        return soak.large_bodies_summary(
            concurrency=1000,
            count=2000,
            seconds=8.5,
            peak=600 * 2**20,
            at_ready=70 * 2**20,
            handler_stats=handler_stats,
            server=server,
            succeeded=2000,
            preload_rate=250.0,
        )

    out = summary({"peak_concurrent": 1000, "calls": 2000})
    assert out["met"] is True
    assert (out["peak_rss_mb"], out["rss_at_ready_mb"], out["in_flight_bodies_mb"]) == (600.0, 70.0, 249.9)
    assert out["rss_per_in_flight_kib"] == round(530 * 1024 / 1000, 1)
    assert (out["http_calls"], out["peak_concurrent_http_calls"], out["http_delay_s"]) == (2000, 1000, 3.0)
    fewer = summary({"peak_concurrent": 650, "calls": 2000})
    assert fewer["met"] is False
    none = summary({})
    assert (none["met"], none["rss_per_in_flight_kib"]) == (False, None)


def test_open_files_limit_is_raised_towards_the_need_within_the_hard_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Raised to what is needed, never past the hard limit, never lowered."""
    calls: list[tuple[int, int]] = []
    limits = {"now": (1024, 4096)}
    monkeypatch.setattr(resource, "getrlimit", lambda _which: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda _which, value: calls.append(value))
    soak.raise_open_files(5000)
    soak.raise_open_files(2000)
    limits["now"] = (8192, 65536)
    soak.raise_open_files(5000)
    assert calls == [(4096, 4096), (2000, 4096)]


async def test_http_handler_calls_the_slow_server_all_at_once_and_closes_its_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20 calls of the ``http`` handler are all in flight at the server at once, each reads its answer, the
    last one closes the shared session; a status other than 200 fails the message."""
    monkeypatch.setattr(handlers, "_stats", {"peak_concurrent": 0, "calls": 0})
    message = Message(id="m-1", receipt_handle="rh", raw_body="{}", body="{}", queue_url="http://q")
    async with soak.slow_server(0.5) as server:
        monkeypatch.setenv(handlers.HTTP_URL_ENV, server.url)
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(handlers.http, message)
        assert (server.requests, server.peak_concurrent, server.running) == (20, 20, 0)
        assert handlers._stats == {"peak_concurrent": 20, "calls": 20}
        assert handlers._session is None
        monkeypatch.setenv(handlers.HTTP_URL_ENV, server.url + "missing")
        with pytest.raises(RuntimeError, match="answered 404"):
            await handlers.http(message)
        assert handlers._session is None

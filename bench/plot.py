"""The scaling curve's plot and sizing advice, from the JSON of ``python -m bench.scaling``.

``python -m bench.plot bench/results/scaling-<date>.json [--output PNG]``, with a Python that has
matplotlib (``.venv-peers/bin/python``, ``make bench-peers``): one PNG, a column per handler time, throughput
(steady msg/s) against concurrency in the top row and CPU seconds per 1,000 messages in the bottom one, a
line per pollers count and the raw loop at the same pollers as dashed lines; by default
``docs/img/scaling-<sha>.png``. It prints the sizing advice (for each handler time, the smallest
pollers x concurrency within 5 % of the best throughput) and stores it in the JSON.

Everything but ``render`` is pure and imports only the standard library (the tests and bench/scaling.py use
it from the project's virtualenv); nothing here imports the worker.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from bench.common import ROOT

#: What "as good as the best" means for the sizing advice.
TOLERANCE = 0.05
#: The figures drawn: the key in a cell's row, and the axis title.
THROUGHPUT = ("steady_msgs_per_s", "msg/s (steady state)")
CPU = ("cpu_s_per_1k", "CPU s / 1,000 msgs")

#: One line: (concurrency, value) points in concurrency order.
Points = list[tuple[int, float]]


def figure(row: dict[str, Any], key: str) -> float | None:
    """A cell's figure; the steady throughput falls back to the rate from the first consumption when the
    drain had no steady window."""
    value = row.get(key)
    if value is None and key == THROUGHPUT[0]:
        value = row.get("msgs_per_s")
    return float(value) if value is not None else None


def handler_times(doc: dict[str, Any]) -> list[int]:
    """The handler times of the worker's cells, ascending."""
    return sorted({row["handler_ms"] for row in doc["cells"] if row["consumer"] == "worker"})


def series(doc: dict[str, Any], key: str) -> dict[int, dict[int, Points]]:
    """The worker's lines: handler ms -> pollers -> (concurrency, figure) points, cells without the figure
    left out."""
    out: dict[int, dict[int, Points]] = {}
    for row in doc["cells"]:
        value = figure(row, key)
        if row["consumer"] != "worker" or value is None:
            continue
        out.setdefault(row["handler_ms"], {}).setdefault(row["pollers"], []).append(
            (row["concurrency"], value)
        )
    for lines in out.values():
        for points in lines.values():
            points.sort()
    return {h: dict(sorted(lines.items())) for h, lines in sorted(out.items())}


def reference(doc: dict[str, Any], key: str) -> dict[int, dict[int, float]]:
    """The raw loop's reference levels: handler ms -> pollers -> figure."""
    out: dict[int, dict[int, float]] = {}
    for row in doc["cells"]:
        value = figure(row, key)
        if row["consumer"] == "raw" and value is not None:
            out.setdefault(row["handler_ms"], {})[row["pollers"]] = value
    return out


def pollers_label(consumer: str, pollers: int) -> str:
    """A line's legend: the raw loop's concurrency is 10 per poller (one batch each)."""
    noun = "poller" if pollers == 1 else "pollers"
    if consumer == "raw":
        return f"raw loop, {pollers} {noun} (concurrency {10 * pollers})"
    return f"worker, {pollers} {noun}"


def handler_title(ms: int) -> str:
    """A panel's title."""
    return "no-op handler" if ms == 0 else f"{ms} ms handler"


def sizing_advice(doc: dict[str, Any], tolerance: float = TOLERANCE) -> list[dict[str, Any]]:
    """For each handler time, the worker's cell with the smallest pollers x concurrency whose throughput is
    within ``tolerance`` of the best cell's (ties: the lower CPU per message, then fewer pollers)."""
    grid_concurrency = max(
        (row["concurrency"] for row in doc["cells"] if row["consumer"] == "worker"), default=0
    )
    advice = []
    for ms in handler_times(doc):
        rows = [
            row
            for row in doc["cells"]
            if row["consumer"] == "worker"
            and row["handler_ms"] == ms
            and figure(row, THROUGHPUT[0]) is not None
        ]
        if not rows:
            continue

        def rate(row: dict[str, Any]) -> float:
            return figure(row, THROUGHPUT[0]) or 0.0

        best = max(rows, key=rate)
        good = [row for row in rows if rate(row) >= (1 - tolerance) * rate(best)]
        pick = min(
            good,
            key=lambda row: (
                row["pollers"] * row["concurrency"],
                figure(row, CPU[0]) if figure(row, CPU[0]) is not None else math.inf,
                row["pollers"],
            ),
        )
        item = {
            "handler_ms": ms,
            "pollers": pick["pollers"],
            "concurrency": pick["concurrency"],
            "msgs_per_s": rate(pick),
            "cpu_s_per_1k": figure(pick, CPU[0]),
            "best": {
                "pollers": best["pollers"],
                "concurrency": best["concurrency"],
                "msgs_per_s": rate(best),
            },
            "of_best": round(rate(pick) / rate(best), 3) if rate(best) else None,
            # The best cell at the grid's largest concurrency with a handler that waits: the curve may still
            # be rising there, so more concurrency may pay.
            "at_grid_edge": bool(ms > 0 and best["concurrency"] == grid_concurrency),
        }
        item["text"] = advice_text(item)
        advice.append(item)
    return advice


def advice_text(item: dict[str, Any]) -> str:
    """One line of advice."""
    best = item["best"]
    text = (
        f"{handler_title(item['handler_ms'])}: WORKER_POLLERS={item['pollers']} "
        f"WORKER_CONCURRENCY={item['concurrency']}: {item['msgs_per_s']:,.0f} msg/s"
    )
    if (best["pollers"], best["concurrency"]) == (item["pollers"], item["concurrency"]):
        text += " (the best of the grid)"
    else:
        text += (
            f", {item['of_best']:.0%} of the best ({best['msgs_per_s']:,.0f} msg/s at "
            f"{best['pollers']} pollers x {best['concurrency']})"
        )
    if item["cpu_s_per_1k"] is not None:
        text += f", {item['cpu_s_per_1k']:.3f} CPU s / 1k"
    if item["at_grid_edge"]:
        text += "; the best is at the grid's largest concurrency: more may still help"
    return text


def advice_lines(advice: list[dict[str, Any]]) -> list[str]:
    """The advice as printed: a heading and one line per handler time."""
    head = (
        f"sizing advice (the smallest pollers x concurrency within {TOLERANCE:.0%} of the best throughput):"
    )
    return [head, *(f"  {item['text']}" for item in advice)]


def default_output(doc: dict[str, Any]) -> Path:
    """docs/img/scaling-<short sha>[-dirty].png."""
    git = doc.get("git") or {}
    sha = (git.get("sha") or "unknown")[:7]
    return ROOT / "docs" / "img" / f"scaling-{sha}{'-dirty' if git.get('dirty') else ''}.png"


def title(doc: dict[str, Any]) -> str:
    """The figure's title: what ran where."""
    git = doc.get("git") or {}
    sha = (git.get("sha") or "unknown")[:7] + (" (dirty)" if git.get("dirty") else "")
    return f"worker scaling: {doc.get('emulator', '?')}, commit {sha}, {doc.get('date', '?')[:10]}"


def render(doc: dict[str, Any], output: Path) -> None:
    """Draw the two rows of panels into ``output`` (matplotlib, Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = handler_times(doc)
    fig, axes = plt.subplots(2, len(times), figsize=(4.2 * len(times), 7.5), squeeze=False, sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    pollers = sorted({row["pollers"] for row in doc["cells"]})
    concurrency = sorted({row["concurrency"] for row in doc["cells"] if row["consumer"] == "worker"})
    colour = {p: colours[i % len(colours)] for i, p in enumerate(pollers)}
    for r, (key, label) in enumerate((THROUGHPUT, CPU)):
        lines, levels = series(doc, key), reference(doc, key)
        for c, ms in enumerate(times):
            ax = axes[r][c]
            for p, points in lines.get(ms, {}).items():
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", color=colour[p], label=pollers_label("worker", p))
            for p, value in levels.get(ms, {}).items():
                ax.axhline(value, color=colour[p], linestyle="--", linewidth=1, label=pollers_label("raw", p))
            ax.set_xscale("log")
            ax.set_xticks(concurrency, [str(c) for c in concurrency])
            ax.minorticks_off()
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            if r == 0:
                ax.set_title(handler_title(ms))
            else:
                ax.set_xlabel("WORKER_CONCURRENCY")
            if c == 0:
                ax.set_ylabel(label)
    # One legend: the worker's lines in the first column, the raw loop's levels in the second.
    entries = {
        text: handle for ax in axes.flat for handle, text in zip(*ax.get_legend_handles_labels(), strict=True)
    }
    labels = [pollers_label(kind, p) for kind in ("worker", "raw") for p in pollers]
    labels = [text for text in labels if text in entries]
    columns = 2 if any(text.startswith("raw") for text in labels) else min(4, len(labels))
    rows = math.ceil(len(labels) / max(columns, 1))
    fig.legend([entries[t] for t in labels], labels, loc="lower center", ncol=columns, frameon=False)
    fig.suptitle(title(doc))
    fig.tight_layout(rect=(0, 0.02 + 0.035 * rows, 1, 0.96))
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Draw the PNG, print the advice and store it in the JSON."""
    p = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a JSON of python -m bench.scaling")
    p.add_argument("--output", default=None, help="PNG path (default docs/img/scaling-<sha>.png)")
    p.add_argument("--no-store", action="store_true", help="leave the JSON as it is")
    p.add_argument("--quiet", action="store_true", help="print only the PNG's path, not the advice")
    args = p.parse_args(argv)
    path = Path(args.results)
    doc = json.loads(path.read_text())
    if doc.get("kind") != "scaling":
        p.error(f"{path} is not a scaling result (python -m bench.scaling)")
    output = Path(args.output) if args.output else default_output(doc)
    render(doc, output)
    doc["advice"] = sizing_advice(doc)
    if not args.quiet:
        print("\n".join(advice_lines(doc["advice"])))
    print(f"plot: {output}")
    if not args.no_store:
        path.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

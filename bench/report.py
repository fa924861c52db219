"""The benchmark's figures turned into ratios, targets and the Markdown table (pure functions)."""

from __future__ import annotations

import statistics
from typing import Any

#: The consumers that are the worker (as shipped, a candidate source tree, on uvloop).
WORKERS = ("worker", "worker-candidate", "worker-uvloop")


def median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, with every repetition's figures attached."""
    ordered = sorted(runs, key=lambda r: r["msgs_per_s"])
    chosen = dict(ordered[len(ordered) // 2])
    if len(runs) > 1:
        chosen["repetitions"] = [
            {k: r[k] for k in ("msgs_per_s", "cpu_s_per_1k", "peak_rss_mb")} for r in runs
        ]
        chosen["cpu_s_per_1k"] = statistics.median(r["cpu_s_per_1k"] for r in runs)
    return chosen


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Every ratio the issue's targets name, for each worker variant, from this run's figures."""
    by = {(r["consumer"], r["handler"]): r for r in results["throughput"]}
    out: dict[str, Any] = {}
    for w in WORKERS:
        key = w.replace("-", "_")
        out[f"{key}_vs_raw_throughput_noop"] = paired(by, (w, "noop"), ("raw", "noop"), "msgs_per_s")
        out[f"{key}_vs_raw_cpu_noop"] = paired(by, (w, "noop"), ("raw", "noop"), "cpu_s_per_1k")
        out[f"{key}_vs_raw_throughput_sleep50"] = paired(by, (w, "sleep50"), ("raw", "sleep50"), "msgs_per_s")
        for handler in ("noop", "sleep50"):
            out[f"{key}_vs_sqs_consumer_{handler}"] = paired(
                by, (w, handler), ("sqs-consumer", handler), "msgs_per_s"
            )
    return {k: v for k, v in out.items() if v is not None}


def paired(
    by: dict[tuple[str, str], dict[str, Any]], a: tuple[str, str], b: tuple[str, str], key: str
) -> float | None:
    """Median over repetitions of a's figure over b's measured just before it (a noisy neighbour's load
    changes within minutes; adjacent runs share it), or the plain ratio with one repetition."""
    if a not in by or b not in by:
        return None
    ra, rb = by[a].get("repetitions"), by[b].get("repetitions")
    if ra and rb and len(ra) == len(rb):
        pairs = [float(x[key]) / float(y[key]) for x, y in zip(ra, rb, strict=True) if y[key]]
        return round(statistics.median(pairs), 3) if pairs else None
    return round(float(by[a][key]) / float(by[b][key]), 3) if by[b][key] else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for each worker variant, with the figure and whether it is met (None: not run)."""
    r = results["ratios"]
    fauxqs = results["emulator"].startswith("fauxqs")
    rows: list[dict[str, Any]] = []
    for w in WORKERS:
        if w not in results["consumers"]:
            continue
        k = w.replace("-", "_")
        checks = [
            ("no-op throughput >= 0.95 x raw", r.get(f"{k}_vs_raw_throughput_noop"), 0.95, True),
            ("CPU per 1k messages <= 1.2 x raw", r.get(f"{k}_vs_raw_cpu_noop"), 1.2, False),
            ("50 ms handler: >= 5 x sqs-consumer", r.get(f"{k}_vs_sqs_consumer_sleep50"), 5.0, True),
        ]
        if fauxqs:
            checks.insert(2, ("no-op: >= 1.5 x sqs-consumer", r.get(f"{k}_vs_sqs_consumer_noop"), 1.5, True))
        for name, value, threshold, at_least in checks:
            met = None if value is None else (value >= threshold if at_least else value <= threshold)
            rows.append({"target": f"{w}: {name}", "value": value, "met": met})
    return rows


def table(results: dict[str, Any]) -> str:
    """The Markdown table of a run (ratios paired per repetition, as the targets use them)."""
    by = {(r["consumer"], r["handler"]): r for r in results["throughput"]}
    lat = {r["consumer"]: r for r in results.get("latency", [])}
    lines = [
        "| consumer | handler | msg/s | vs raw | CPU s / 1k msgs | vs raw | peak RSS MB "
        "| handler start p50 / p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["throughput"]:
        raw = ("raw", r["handler"])
        speed = paired(by, (r["consumer"], r["handler"]), raw, "msgs_per_s")
        cpu = paired(by, (r["consumer"], r["handler"]), raw, "cpu_s_per_1k")
        latency = "-"
        if r["handler"] == "noop" and r["consumer"] in lat:
            latency = f"{lat[r['consumer']]['p50_ms']:.1f} / {lat[r['consumer']]['p99_ms']:.1f}"
        lines.append(
            f"| {r['consumer']} | {r['handler']} | {r['msgs_per_s']:,.0f} | {_x(speed)} | "
            f"{r['cpu_s_per_1k']:.3f} | {_x(cpu)} | {r['peak_rss_mb']:.0f} | {latency} |"
        )
    return "\n".join(lines)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def soak_summary(soak: dict[str, Any]) -> str:
    """Two lines: the RSS trend of the long flow, and the concurrent handlers' peak RSS."""
    flow, conc = soak["flow"], soak["concurrent"]
    verdict = {True: "met", False: "MISSED"}
    return (
        f"\nsoak: {flow['messages']} messages in {flow['seconds']:.0f} s, "
        f"RSS {flow['rss_after_warmup_mb']} -> {flow['rss_end_mb']} MB after warm-up "
        f"({flow['growth_pct']:+.1f} %, "
        f"slope {flow['slope_mb_per_min']:+.2f} MB/min): {verdict[flow['met']]}\n"
        f"      {conc['peak_concurrent_handlers']} concurrent 1 s handlers, "
        f"peak RSS {conc['peak_rss_mb']} MB: {verdict[conc['met']]}"
    )

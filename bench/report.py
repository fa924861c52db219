"""The benchmark's figures turned into ratios, targets and the Markdown table (pure functions)."""

from __future__ import annotations

import statistics
from typing import Any

#: The consumers that are the worker (as shipped, a candidate source tree, on uvloop).
WORKERS = ("worker", "worker-candidate", "worker-uvloop")
#: The worker as a new user runs it: the consumer issue 20's targets are about.
DEFAULTS = "worker-defaults"
#: The Python peers' families, and every family a best configuration is picked for.
PEER_FAMILIES = ("sqs-workers", "dramatiq", "celery")
FAMILIES = ("sqs-consumer", *PEER_FAMILIES)
#: Figures kept per repetition, and those whose median replaces the median run's own.
_REPEATED = ("msgs_per_s", "from_start_msgs_per_s", "steady_msgs_per_s", "cpu_s_per_1k", "peak_rss_mb")
_MEDIANS = ("from_start_msgs_per_s", "steady_msgs_per_s", "cpu_s_per_1k", "cpu_s_per_1k_from_start")


def median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, with every repetition's figures attached; the other rates and the
    CPU are the medians of their own repetitions."""
    ordered = sorted(runs, key=lambda r: r["msgs_per_s"])
    chosen = dict(ordered[len(ordered) // 2])
    if len(runs) > 1:
        chosen["repetitions"] = [{k: r[k] for k in _REPEATED if k in r} for r in runs]
        for key in _MEDIANS:
            values = [r[key] for r in runs if r.get(key) is not None]
            if values:
                chosen[key] = statistics.median(values)
    return chosen


def median_lifecycle(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One consumer's start and idle-stop runs: medians of the times, the worst of what was left in flight,
    every repetition kept."""
    out = dict(runs[0])
    for key in ("launch_to_first_handled_s", "idle_stop_s"):
        out[key] = round(statistics.median(r[key] for r in runs), 3)
        out[f"{key}_max"] = max(r[key] for r in runs)
    out["idle_in_flight_at_exit"] = max(r["idle_in_flight_at_exit"] for r in runs)
    waits = [r["idle_visible_again_s"] for r in runs]
    out["idle_visible_again_s"] = None if None in waits else max(waits)
    out["repetitions"] = [
        {k: r[k] for k in ("launch_to_first_handled_s", "idle_stop_s", "idle_in_flight_at_exit")}
        for r in runs
    ]
    return out


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
        pairs = [
            float(x[key]) / float(y[key])
            for x, y in zip(ra, rb, strict=True)
            if x.get(key) is not None and y.get(key)
        ]
        return round(statistics.median(pairs), 3) if pairs else None
    x, y = by[a].get(key), by[b].get(key)
    return round(float(x) / float(y), 3) if x is not None and y else None


def best_configs(results: dict[str, Any], key: str = "from_start_msgs_per_s") -> dict[str, str]:
    """Each family's no-op configuration with the highest median ``key``: {family: consumer}."""
    from bench.consumers import SPECS

    best: dict[str, tuple[float, str]] = {}
    for r in results["throughput"]:
        family = SPECS[r["consumer"]].family if r["consumer"] in SPECS else ""
        if (
            r["handler"] == "noop"
            and family in FAMILIES
            and r.get(key) is not None
            and (family not in best or r[key] > best[family][0])
        ):
            best[family] = (float(r[key]), r["consumer"])
    return {family: name for family, (_, name) in best.items()}


def io_entry(results: dict[str, Any], family: str) -> str | None:
    """The consumer of ``family`` that ran the 50 ms drain."""
    from bench.consumers import SPECS

    for r in results["throughput"]:
        if r["handler"] == "sleep50" and r["consumer"] in SPECS and SPECS[r["consumer"]].family == family:
            return str(r["consumer"])
    return None


def peer_comparison(results: dict[str, Any]) -> dict[str, Any]:
    """worker-defaults against each family's best no-op configuration (by throughput from process start) and
    its 50 ms entry: paired ratios of throughput from start, at steady state, and CPU per message."""
    by = {(r["consumer"], r["handler"]): r for r in results["throughput"]}
    if (DEFAULTS, "noop") not in by:
        return {}
    out: dict[str, Any] = {}
    for family, name in best_configs(results).items():
        row: dict[str, Any] = {"best": name, "config": by[name, "noop"].get("config", "")}
        for key in ("from_start_msgs_per_s", "steady_msgs_per_s", "cpu_s_per_1k"):
            row[f"worker_defaults_vs_best_{key}"] = paired(by, (DEFAULTS, "noop"), (name, "noop"), key)
        io = io_entry(results, family)
        if io is not None and (DEFAULTS, "sleep50") in by:
            row["io"] = io
            row["worker_defaults_vs_io_steady_msgs_per_s"] = paired(
                by, (DEFAULTS, "sleep50"), (io, "sleep50"), "steady_msgs_per_s"
            )
        out[family] = row
    return out


def _start_ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Launch -> first handled of ``a`` over ``b``'s: the median of the per-round ratios."""
    pairs = [
        x["launch_to_first_handled_s"] / y["launch_to_first_handled_s"]
        for x, y in zip(a["repetitions"], b["repetitions"], strict=True)
    ]
    return round(float(statistics.median(pairs)), 3)


def _verdict(target: str, value: float | None, threshold: float, at_least: bool) -> dict[str, Any]:
    met = None if value is None else (value >= threshold if at_least else value <= threshold)
    return {"target": target, "value": value, "met": met}


def issue20_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 20's "done when", for the worker with only the required settings, and issue 15's T4 (the best
    Python peer); a figure that was not measured is None."""
    if DEFAULTS not in results["consumers"]:
        return []
    by = {(r["consumer"], r["handler"]): r for r in results["throughput"]}
    best = best_configs(results)
    d, n = (DEFAULTS, "noop"), "noop"
    rows = [
        _verdict(
            f"{DEFAULTS}: no-op from process start >= 0.95 x raw ({results['pollers']} pollers)",
            paired(by, d, ("raw", n), "from_start_msgs_per_s"),
            0.95,
            True,
        )
    ]
    sw = best.get("sqs-workers")
    rows.append(
        _verdict(
            f"{DEFAULTS}: no-op from process start >= 1.5 x sqs-workers' best ({sw})",
            paired(by, d, (sw, n), "from_start_msgs_per_s") if sw else None,
            1.5,
            True,
        )
    )
    rows.append(
        _verdict(
            f"{DEFAULTS}: CPU per message <= sqs-workers' best ({sw})",
            paired(by, d, (sw, n), "cpu_s_per_1k") if sw else None,
            1.0,
            False,
        )
    )
    life = {r["consumer"]: r for r in results.get("lifecycle", [])}
    start = _start_ratio(life[DEFAULTS], life["raw"]) if DEFAULTS in life and "raw" in life else None
    rows.append(_verdict(f"{DEFAULTS}: launch -> first handled <= 1.5 x raw's", start, 1.5, False))
    idle = life.get(DEFAULTS)
    rows.append(
        _verdict(
            f"{DEFAULTS}: idle SIGTERM -> exit <= 2 s (slowest repetition)",
            idle["idle_stop_s_max"] if idle else None,
            2.0,
            False,
        )
    )
    stranded = None
    if idle:
        stranded = 0.0 if idle["idle_visible_again_s"] is not None else float(idle["idle_in_flight_at_exit"])
    rows.append(
        _verdict(
            f"{DEFAULTS}: idle SIGTERM strands no message (any left in flight visible again soon)",
            stranded,
            0.0,
            False,
        )
    )
    peers = {f: name for f, name in best_configs(results, "steady_msgs_per_s").items() if f in PEER_FAMILIES}
    if peers:
        top = max(peers.values(), key=lambda name: by[name, n]["steady_msgs_per_s"])
        rows.append(
            _verdict(
                f"{DEFAULTS}: no-op at steady state >= 2 x the best Python peer ({top})",
                paired(by, d, (top, n), "steady_msgs_per_s"),
                2.0,
                True,
            )
        )
        rows.append(
            _verdict(
                f"{DEFAULTS}: CPU per message < the best Python peer's ({top})",
                paired(by, d, (top, n), "cpu_s_per_1k"),
                1.0,
                False,
            )
        )
        ios = [io for f in peers if (io := io_entry(results, f)) is not None]
        if ios and (DEFAULTS, "sleep50") in by:
            top_io = max(ios, key=lambda name: by[name, "sleep50"]["steady_msgs_per_s"] or 0)
            rows.append(
                _verdict(
                    f"{DEFAULTS}: 50 ms handler, same concurrency, >= 2 x the best Python peer ({top_io})",
                    paired(by, (DEFAULTS, "sleep50"), (top_io, "sleep50"), "steady_msgs_per_s"),
                    2.0,
                    True,
                )
            )
    return rows


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
            (
                "50 ms handler, same total concurrency: >= 1.5 x sqs-consumer",
                r.get(f"{k}_vs_sqs_consumer_sleep50"),
                1.5,
                True,
            ),
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
        "| consumer | handler | msg/s from start | vs raw | steady msg/s | vs raw | CPU s / 1k msgs | vs raw "
        "| peak RSS MB | handler start p50 / p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["throughput"]:
        here, raw = (r["consumer"], r["handler"]), ("raw", r["handler"])
        latency = "-"
        if r["handler"] == "noop" and r["consumer"] in lat:
            latency = f"{lat[r['consumer']]['p50_ms']:.1f} / {lat[r['consumer']]['p99_ms']:.1f}"
        lines.append(
            f"| {r['consumer']} | {r['handler']} | {_n(r.get('from_start_msgs_per_s'))} | "
            f"{_x(paired(by, here, raw, 'from_start_msgs_per_s'))} | {_n(r.get('steady_msgs_per_s'))} | "
            f"{_x(paired(by, here, raw, 'steady_msgs_per_s'))} | {r['cpu_s_per_1k']:.3f} | "
            f"{_x(paired(by, here, raw, 'cpu_s_per_1k'))} | {r['peak_rss_mb']:.0f} | {latency} |"
        )
    return "\n".join(lines)


def peers_table(results: dict[str, Any]) -> str:
    """The Markdown tables of the start, stop and request figures, and worker-defaults against each family's
    best configuration."""
    out: list[str] = []
    life = {r["consumer"]: r for r in results.get("lifecycle", [])}
    reqs = {r["consumer"]: r for r in results.get("requests", [])}
    names = list(dict.fromkeys([*life, *reqs]))
    if names:
        raw = life.get("raw")
        out += [
            "| consumer | launch -> first handled s | vs raw | idle SIGTERM -> exit s | left in flight "
            "| SQS requests / 1k msgs | idle requests / hour |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name in names:
            lr, rq = life.get(name), reqs.get(name)
            ratio = _start_ratio(lr, raw) if lr and raw else None
            left = "-"
            if lr:
                again = lr["idle_visible_again_s"]
                left = f"{lr['idle_in_flight_at_exit']}" + (
                    "" if not lr["idle_in_flight_at_exit"] else f" ({_again(again)})"
                )
            out.append(
                f"| {name} | {_f(lr and lr['launch_to_first_handled_s'])} | {_x(ratio)} | "
                f"{_f(lr and lr['idle_stop_s'])} | {left} | {_n(rq and rq['requests_per_1k'])} | "
                f"{_n(rq and rq['idle_requests_per_hour'])} |"
            )
    busy = results.get("busy_stop", [])
    if busy:
        out += [
            "",
            "| consumer (50 ms handler) | busy SIGTERM -> exit s | left in flight | visible again after |",
            "|---|---:|---:|---:|",
        ]
        for r in busy:
            out.append(
                f"| {r['consumer']} | {r['busy_stop_s']:.2f} | {r['busy_in_flight_at_exit']} | "
                f"{_again(r['busy_visible_again_s']) if r['busy_in_flight_at_exit'] else '-'} |"
            )
    peers = results.get("peers", {})
    if peers:
        out += [
            "",
            "| family | best no-op configuration | worker-defaults / it: from start | steady | CPU per msg "
            "| 50 ms, same concurrency |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for family, row in peers.items():
            out.append(
                f"| {family} | {row['best']} ({row['config']}) | "
                f"{_x(row['worker_defaults_vs_best_from_start_msgs_per_s'])} | "
                f"{_x(row['worker_defaults_vs_best_steady_msgs_per_s'])} | "
                f"{_x(row['worker_defaults_vs_best_cpu_s_per_1k'])} | "
                f"{_x(row.get('worker_defaults_vs_io_steady_msgs_per_s'))} |"
            )
    return "\n".join(out)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _again(seconds: float | None) -> str:
    return "not yet" if seconds is None else f"{seconds:.1f} s"


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

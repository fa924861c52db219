"""The benchmark's figures turned into ratios, targets and the Markdown table (pure functions)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from bench import stats

#: The consumers that are the worker (as shipped, a candidate source tree, on uvloop).
WORKERS = ("worker", "worker-candidate", "worker-uvloop")
#: The worker as a new user runs it: the consumer issue 20's targets are about.
DEFAULTS = "worker-defaults"
#: The Python peers' families, and every family a best configuration is picked for.
PEER_FAMILIES = ("sqs-workers", "dramatiq", "celery")
FAMILIES = ("sqs-consumer", *PEER_FAMILIES)
#: The raw loop and its variants (the worker's cached User-Agent; pipelined deletes): T1's "best raw".
RAW_VARIANTS = ("raw", "raw-ua", "raw-pipelined")
#: bbc/sqs-consumer with its default settings (one instance, batchSize 1): not an instance-count
#: configuration, and not at the same concurrency with the 50 ms handler.
SQS_CONSUMER_DEFAULT = "sqs-consumer-default"
#: Figures kept per repetition.
_REPEATED = (
    "msgs_per_s",
    "from_start_msgs_per_s",
    "steady_msgs_per_s",
    "cpu_s_per_1k",
    "cpu_s_per_1k_from_start",
    "peak_rss_mb",
)
#: The figures whose median (and its 95 % interval, ``<figure>_ci95``) a row reports, with their decimals.
_MEDIANS = {
    "msgs_per_s": 1,
    "from_start_msgs_per_s": 1,
    "steady_msgs_per_s": 1,
    "cpu_s_per_1k": 4,
    "cpu_s_per_1k_from_start": 4,
    "peak_rss_mb": 1,
}
#: A ratio or figure and the bootstrap 95 % interval of its median ([low, high], None for one repetition).
Stat = tuple[float | None, list[float] | None]


def median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, with every repetition's figures attached; each figure is the
    median of its repetitions, with its bootstrap 95 % interval beside it (``<figure>_ci95``, None with one
    repetition)."""
    ordered = sorted(runs, key=lambda r: r["msgs_per_s"])
    chosen = dict(ordered[len(ordered) // 2])
    if len(runs) > 1:
        chosen["repetitions"] = [{k: r[k] for k in _REPEATED if k in r} for r in runs]
    for key, digits in _MEDIANS.items():
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            chosen[key], chosen[f"{key}_ci95"] = stats.summary(values, digits)
    return chosen


def median_lifecycle(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One consumer's start and idle-stop runs: medians of the times, the worst of what was left in flight,
    every repetition kept."""
    out = dict(runs[0])
    for key in ("launch_to_first_handled_s", "idle_stop_s"):
        out[key], out[f"{key}_ci95"] = stats.summary([r[key] for r in runs], 3)
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
    """Every ratio the issue's targets name, for each worker variant, from this run's figures, each with its
    bootstrap 95 % interval beside it (``<ratio>_ci95``); a ratio whose figures did not run is left out."""
    by = _by(results)
    chosen = baselines(results)
    raws = chosen["raw_variants"]
    out: dict[str, Any] = {}

    def put(name: str, value: Stat) -> None:
        if value[0] is not None:
            out[name], out[f"{name}_ci95"] = value

    for variant in RAW_VARIANTS[1:]:
        key = variant.replace("-", "_")
        for figure, field in _FIGURES.items():
            put(f"{key}_vs_raw_{figure}_noop", paired_ci(by, (variant, "noop"), ("raw", "noop"), field))
    for w in WORKERS:
        key = w.replace("-", "_")
        put(f"{key}_vs_raw_throughput_noop", paired_ci(by, (w, "noop"), ("raw", "noop"), "msgs_per_s"))
        put(f"{key}_vs_raw_cpu_noop", paired_ci(by, (w, "noop"), ("raw", "noop"), "cpu_s_per_1k"))
        put(
            f"{key}_vs_raw_throughput_sleep50",
            paired_ci(by, (w, "sleep50"), ("raw", "sleep50"), "msgs_per_s"),
        )
        for handler in ("noop", "sleep50"):
            put(
                f"{key}_vs_sqs_consumer_{handler}",
                paired_ci(by, (w, handler), ("sqs-consumer", handler), "msgs_per_s"),
            )
        # T1 and T2: against the best raw variant of each round (the fastest; the cheapest in CPU).
        for figure, field in _FIGURES.items():
            pick = min if figure == "cpu" else max
            put(
                f"{key}_vs_best_raw_{figure}_noop",
                ratio_of(per_round(by, (w, "noop"), field), best_per_round(by, raws, "noop", field, pick)),
            )
        # T2 and T3: against bbc/sqs-consumer's best configurations (picked by their medians).
        best, cheapest = chosen["sqs_consumer_best_noop"], chosen["sqs_consumer_lowest_cpu_noop"]
        if best is not None:
            for figure in ("steady", "from_start"):
                put(
                    f"{key}_vs_sqs_consumer_best_{figure}_noop",
                    paired_ci(by, (w, "noop"), (best, "noop"), _FIGURES[figure]),
                )
        if cheapest is not None:
            put(
                f"{key}_vs_sqs_consumer_lowest_cpu_noop",
                paired_ci(by, (w, "noop"), (cheapest, "noop"), "cpu_s_per_1k"),
            )
        for base, name in (
            ("sqs_consumer_best", chosen["sqs_consumer_best_sleep50"]),
            ("sqs_consumer_default", chosen["sqs_consumer_default_sleep50"]),
        ):
            if name is not None:
                put(
                    f"{key}_vs_{base}_steady_sleep50",
                    paired_ci(by, (w, "sleep50"), (name, "sleep50"), "steady_msgs_per_s"),
                )
    return out


#: The figures a ratio is named after: {name in the ratio's key: field of a row}.
_FIGURES = {"steady": "steady_msgs_per_s", "from_start": "from_start_msgs_per_s", "cpu": "cpu_s_per_1k"}


def _by(results: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["consumer"], r["handler"]): r for r in results["throughput"]}


def _family(name: str) -> str:
    from bench.consumers import SPECS

    return SPECS[name].family if name in SPECS else ""


def _pick(
    results: dict[str, Any], handler: str, key: str, names: Iterable[str], lowest: bool = False
) -> str | None:
    """Of ``names``, the one whose ``handler`` row has the highest (or lowest) median ``key``."""
    rows = [r for r in results["throughput"] if r["handler"] == handler and r["consumer"] in set(names)]
    rows = [r for r in rows if r.get(key) is not None]
    if not rows:
        return None
    chosen = (min if lowest else max)(rows, key=lambda r: float(r[key]))
    return str(chosen["consumer"])


def baselines(results: dict[str, Any]) -> dict[str, Any]:
    """What the T1-T3 ratios are taken against in this run: the raw variants that ran (per round, the best
    of them), bbc/sqs-consumer's best instance count (median steady no-op rate), its configuration with the
    lowest median CPU per message (any, its defaults included), its best at the 50 ms handler's total
    concurrency, and its defaults at the 50 ms handler."""
    ran = {(r["consumer"], r["handler"]) for r in results["throughput"]}
    sqs_consumers = [name for name, _ in ran if _family(name) == "sqs-consumer"]
    instance_counts = [name for name in sqs_consumers if name != SQS_CONSUMER_DEFAULT]
    return {
        "raw_variants": [name for name in RAW_VARIANTS if (name, "noop") in ran],
        "sqs_consumer_best_noop": _pick(results, "noop", "steady_msgs_per_s", instance_counts),
        "sqs_consumer_lowest_cpu_noop": _pick(results, "noop", "cpu_s_per_1k", sqs_consumers, lowest=True),
        "sqs_consumer_best_sleep50": _pick(results, "sleep50", "steady_msgs_per_s", instance_counts),
        "sqs_consumer_default_sleep50": (
            SQS_CONSUMER_DEFAULT if (SQS_CONSUMER_DEFAULT, "sleep50") in ran else None
        ),
    }


def per_round(
    by: dict[tuple[str, str], dict[str, Any]], entry: tuple[str, str], key: str
) -> list[float | None] | None:
    """``entry``'s figure in each round (its one value without repetitions); None when it did not run."""
    if entry not in by:
        return None
    row = by[entry]
    repetitions = row.get("repetitions")
    if repetitions:
        return [r.get(key) for r in repetitions]
    return [row.get(key)]


def best_per_round(
    by: dict[tuple[str, str], dict[str, Any]],
    names: Iterable[str],
    handler: str,
    key: str,
    pick: Callable[[list[float]], float] = max,
) -> list[float | None] | None:
    """Per round, the best (``pick``) of the figures of those of ``names`` that ran: None when none did or
    they ran different numbers of rounds."""
    series = [s for name in names if (s := per_round(by, (name, handler), key)) is not None]
    if not series or len({len(s) for s in series}) != 1:
        return None
    out: list[float | None] = []
    for values in zip(*series, strict=True):
        present = [float(v) for v in values if v is not None]
        out.append(pick(present) if present else None)
    return out


def ratio_of(a: list[float | None] | None, b: list[float | None] | None) -> Stat:
    """The median of the per-round ratios a / b, with its 95 % interval (rounds where either is missing, or
    b is zero, left out)."""
    if a is None or b is None or len(a) != len(b):
        return None, None
    pairs = [float(x) / float(y) for x, y in zip(a, b, strict=True) if x is not None and y]
    return stats.summary(pairs) if pairs else (None, None)


def paired_ci(
    by: dict[tuple[str, str], dict[str, Any]], a: tuple[str, str], b: tuple[str, str], key: str
) -> Stat:
    """a's figure over b's measured in the same round, the median over the rounds and its 95 % interval; the
    plain ratio of the two medians (no interval) when they ran different numbers of rounds."""
    ra, rb = per_round(by, a, key), per_round(by, b, key)
    if ra is None or rb is None:
        return None, None
    if len(ra) == len(rb):
        return ratio_of(ra, rb)
    x, y = by[a].get(key), by[b].get(key)
    return (round(float(x) / float(y), 3), None) if x is not None and y else (None, None)


def paired(
    by: dict[tuple[str, str], dict[str, Any]], a: tuple[str, str], b: tuple[str, str], key: str
) -> float | None:
    """The median of a's figure over b's measured in the same round (a noisy neighbour's load changes within
    minutes; a round shares it), or the plain ratio with one repetition."""
    return paired_ci(by, a, b, key)[0]


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
    """The consumer of ``family`` that ran the 50 ms drain at the total concurrency every consumer gets
    (sqs-consumer-default, at its own concurrency of 1, is not one)."""
    for r in results["throughput"]:
        if (
            r["handler"] == "sleep50"
            and r["consumer"] != SQS_CONSUMER_DEFAULT
            and _family(r["consumer"]) == family
        ):
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
            row[f"worker_defaults_vs_best_{key}"], row[f"worker_defaults_vs_best_{key}_ci95"] = paired_ci(
                by, (DEFAULTS, "noop"), (name, "noop"), key
            )
        io = io_entry(results, family)
        if io is not None and (DEFAULTS, "sleep50") in by:
            row["io"] = io
            (
                row["worker_defaults_vs_io_steady_msgs_per_s"],
                row["worker_defaults_vs_io_steady_msgs_per_s_ci95"],
            ) = paired_ci(by, (DEFAULTS, "sleep50"), (io, "sleep50"), "steady_msgs_per_s")
        out[family] = row
    return out


def _start_ratio(a: dict[str, Any], b: dict[str, Any]) -> Stat:
    """Launch -> first handled of ``a`` over ``b``'s: the median of the per-round ratios, its interval."""
    pairs = [
        x["launch_to_first_handled_s"] / y["launch_to_first_handled_s"]
        for x, y in zip(a["repetitions"], b["repetitions"], strict=True)
    ]
    return stats.summary(pairs)


def _verdict(target: str, value: float | Stat | None, threshold: float, at_least: bool) -> dict[str, Any]:
    """A target entry: the figure (a median), its 95 % interval, the threshold, and whether the median meets
    it (None: not measured)."""
    figure, interval = value if isinstance(value, tuple) else (value, None)
    met = None if figure is None else (figure >= threshold if at_least else figure <= threshold)
    return {
        "target": target,
        "value": figure,
        "ci95": interval,
        "threshold": threshold,
        "at_least": at_least,
        "met": met,
    }


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
            paired_ci(by, d, ("raw", n), "from_start_msgs_per_s"),
            0.95,
            True,
        )
    ]
    sw = best.get("sqs-workers")
    rows.append(
        _verdict(
            f"{DEFAULTS}: no-op from process start >= 1.5 x sqs-workers' best ({sw})",
            paired_ci(by, d, (sw, n), "from_start_msgs_per_s") if sw else None,
            1.5,
            True,
        )
    )
    rows.append(
        _verdict(
            f"{DEFAULTS}: CPU per message <= sqs-workers' best ({sw})",
            paired_ci(by, d, (sw, n), "cpu_s_per_1k") if sw else None,
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
                paired_ci(by, d, (top, n), "steady_msgs_per_s"),
                2.0,
                True,
            )
        )
        rows.append(
            _verdict(
                f"{DEFAULTS}: CPU per message < the best Python peer's ({top})",
                paired_ci(by, d, (top, n), "cpu_s_per_1k"),
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
                    paired_ci(by, (DEFAULTS, "sleep50"), (top_io, "sleep50"), "steady_msgs_per_s"),
                    2.0,
                    True,
                )
            )
    return rows


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 15's T1-T3 for each worker variant that ran: the figure (the median of the per-round ratios),
    its 95 % interval, and whether the median meets the target (None: not measured)."""
    r = results["ratios"]
    chosen = results.get("baselines") or baselines(results)
    fauxqs = results.get("emulator_kind") == "fauxqs" or str(results.get("emulator", "")).startswith("fauxqs")
    emulator, noop_floor = ("fauxqs", 1.5) if fauxqs else ("LocalStack", 1.15)
    raws = ", ".join(chosen["raw_variants"]) or "none ran"
    best, cheapest = chosen["sqs_consumer_best_noop"], chosen["sqs_consumer_lowest_cpu_noop"]
    io_best = chosen["sqs_consumer_best_sleep50"]
    best_raw = f"the best raw variant of each round ({raws})"
    # (target, the ratio's key after "<worker>_vs_", threshold, at least): the same for every worker variant.
    checks = [
        (f"T1: no-op at steady state >= 0.95 x {best_raw}", "best_raw_steady_noop", 0.95, True),
        (f"T1: no-op from process start >= 0.95 x {best_raw}", "best_raw_from_start_noop", 0.95, True),
        ("T2: CPU per 1k messages <= 1.0 x raw's", "raw_cpu_noop", 1.0, False),
        (
            f"T2: CPU per 1k messages <= 1.0 x the best raw variant's of each round ({raws})",
            "best_raw_cpu_noop",
            1.0,
            False,
        ),
        (
            f"T2: CPU per 1k messages <= 0.8 x sqs-consumer's lowest-CPU configuration ({cheapest})",
            "sqs_consumer_lowest_cpu_noop",
            0.8,
            False,
        ),
        (
            f"T3: no-op at steady state >= {noop_floor} x sqs-consumer's best instance count ({best}) "
            f"on {emulator}",
            "sqs_consumer_best_steady_noop",
            noop_floor,
            True,
        ),
        (
            f"T3: 50 ms handler at steady state, same total concurrency "
            f"({results.get('io_concurrency')}): >= 1.5 x sqs-consumer's best ({io_best})",
            "sqs_consumer_best_steady_sleep50",
            1.5,
            True,
        ),
        (
            f"T3: 50 ms handler at steady state >= 4 x {SQS_CONSUMER_DEFAULT}'s (1 instance, its defaults)",
            "sqs_consumer_default_steady_sleep50",
            4.0,
            True,
        ),
    ]
    return [_target(r, w, *check) for w in WORKERS if w in results["consumers"] for check in checks]


def _target(
    ratios: dict[str, Any], worker: str, target: str, ratio: str, threshold: float, at_least: bool
) -> dict[str, Any]:
    """The verdict of one of issue 15's targets for ``worker``: its ratio ``<worker>_vs_<ratio>``."""
    key = f"{worker.replace('-', '_')}_vs_{ratio}"
    return _verdict(f"{worker}: {target}", _stat(ratios, key), threshold, at_least)


def table(results: dict[str, Any]) -> str:
    """The Markdown table of a run (ratios paired per repetition, as the targets use them, with their 95 %
    intervals)."""
    by = _by(results)
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
            f"{_x(paired_ci(by, here, raw, 'from_start_msgs_per_s'))} | {_n(r.get('steady_msgs_per_s'))} | "
            f"{_x(paired_ci(by, here, raw, 'steady_msgs_per_s'))} | {r['cpu_s_per_1k']:.3f} | "
            f"{_x(paired_ci(by, here, raw, 'cpu_s_per_1k'))} | {r['peak_rss_mb']:.0f} | {latency} |"
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
                f"{_x(_stat(row, 'worker_defaults_vs_best_from_start_msgs_per_s'))} | "
                f"{_x(_stat(row, 'worker_defaults_vs_best_steady_msgs_per_s'))} | "
                f"{_x(_stat(row, 'worker_defaults_vs_best_cpu_s_per_1k'))} | "
                f"{_x(_stat(row, 'worker_defaults_vs_io_steady_msgs_per_s'))} |"
            )
    return "\n".join(out)


def _stat(row: dict[str, Any], key: str) -> Stat:
    return row.get(key), row.get(f"{key}_ci95")


def _x(value: float | Stat | None) -> str:
    """A ratio as "0.97 [0.95-0.99]" (its 95 % interval in brackets, when there is one), or "-"."""
    figure, interval = value if isinstance(value, tuple) else (value, None)
    if figure is None:
        return "-"
    return f"{figure:.2f}" + ("" if interval is None else f" [{interval[0]:.2f}-{interval[1]:.2f}]")


def target_line(target: dict[str, Any]) -> str:
    """One target as the run prints it: met/MISSED/not measured, the target, the median and its interval."""
    state = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
    interval = target.get("ci95")
    shown = "-" if target["value"] is None else f"{target['value']}"
    if interval is not None:
        shown += f" [{interval[0]}-{interval[1]}]"
    return f"  {state:>12}  {target['target']}  ({shown})"


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
    ) + _memory_line(soak.get("memory"))


def _memory_line(m: dict[str, Any] | None) -> str:
    """The 1,000 HTTP-calling handlers on 256 KiB bodies, when the soak ran them."""
    if not m:
        return ""
    verdict = {True: "met", False: "MISSED"}
    return (
        f"\n      {m['peak_concurrent_handlers']} concurrent HTTP calls on {m['body_bytes']:,}-byte bodies, "
        f"peak RSS {m['peak_rss_mb']} MB ({m['in_flight_bodies_mb']} MB of bodies in flight): "
        f"{verdict[m['met']]}"
    )


#: SQS's request price in US dollars per million requests, Standard queues, after the free tier of one million
#: a month (https://aws.amazon.com/sqs/pricing/, us-east-1; FIFO: 0.50). Each 64 KiB of a payload is one
#: request; the bench's messages are 200 bytes.
USD_PER_MILLION_REQUESTS = 0.40
#: Hours in an average month (8,760 / 12).
HOURS_PER_MONTH = 730


def cost(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per consumer, what its SQS requests cost: per million messages handled, and per month of idling."""
    rows = []
    for rq in results.get("requests", []):
        per_million_msgs = rq["requests_per_1k"] * 1000  # requests per million messages
        idle_month = rq["idle_requests_per_hour"] * HOURS_PER_MONTH
        rows.append(
            {
                "consumer": rq["consumer"],
                "requests_per_million_messages": round(per_million_msgs),
                "usd_per_million_messages": round(per_million_msgs * USD_PER_MILLION_REQUESTS / 1e6, 4),
                "idle_requests_per_month": round(idle_month),
                "usd_per_idle_month": round(idle_month * USD_PER_MILLION_REQUESTS / 1e6, 4),
            }
        )
    return rows


def cost_table(results: dict[str, Any]) -> str:
    """The cost rows as Markdown."""
    lines = [
        "| consumer | requests / 1M msgs | $ / 1M msgs | idle requests / month | $ / idle month |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in results.get("cost", []):
        lines.append(
            f"| {c['consumer']} | {c['requests_per_million_messages']:,} | "
            f"{c['usd_per_million_messages']:.3f} | {c['idle_requests_per_month']:,} | "
            f"{c['usd_per_idle_month']:.3f} |"
        )
    return "\n".join(lines)

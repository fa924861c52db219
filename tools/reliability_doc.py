"""Render the figures section of docs/RELIABILITY.md from the fault suite's report, docs/chaos-results.json.

    python tools/reliability_doc.py            # rewrite the section between the markers (make chaos/soak)
    python tools/reliability_doc.py --check    # exit 1 with one line when the page is stale

The report is written by tests/chaos_report.py: the git SHA and dirty flag of the measured code, when it was
updated, and one entry per scenario with its figures, failing ones included. Every figure is shown as
recorded; a failed scenario is shown as a failure with its error. A report in an older layout (a bare list of
kill -9 trials, no commit stamp) is summarised as such, with the instruction to re-run ``make chaos``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from settings_doc import page_main, replace_between  # tools/settings_doc.py: the one marker helper

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "RELIABILITY.md"
REPORT = ROOT / "docs" / "chaos-results.json"
START = "<!-- chaos-figures:start -->"
END = "<!-- chaos-figures:end -->"
NOTE = (
    "<!-- generated from docs/chaos-results.json by tools/reliability_doc.py (make chaos runs it); "
    "do not edit -->"
)

#: What each scenario of the report is, in the words of the table above the figures (unknown names: as is).
TITLES = {
    "kill_9": "kill -9 under load, restart",
    "outage_then_reset_storm": "SQS blackholed, then a reset storm",
    "dlq_outage": "DLQ blackholed, source watched",
    "fuzz": "bad-input fuzz",
    "soak": "soak (mixed load, one worker)",
}
#: Figures too long for a table cell, left to the JSON: name -> what the cell says instead.
DETAIL_ONLY = {"trials", "samples", "sample_columns", "violations"}
#: Keys of a scenario entry that are not figures.
META = {"passed", "error", "seconds", "git_sha", "dirty"}


def _value(value: Any) -> str:
    """One figure as it reads in a table cell."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, Mapping):
        return ", ".join(f"{key} {_value(item)}" for key, item in sorted(value.items())) or "none"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]" if value else "none"
    if value is None:
        return "n/a"
    return str(value)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _short(sha: Any) -> str:
    return f"`{str(sha)[:7]}`" if sha else "unknown"


def figures_text(name: str, entry: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    """The figures of one scenario, ``key: value`` separated by semicolons (long lists named, not shown)."""
    parts = []
    for key in sorted(entry):
        if key in META:
            continue
        value = entry[key]
        if key in DETAIL_ONLY and isinstance(value, list | tuple) and len(value) > 4:
            parts.append(f"{key}: {len(value)} entries (in the JSON)")
        else:
            parts.append(f"{key}: {_value(value)}")
    if entry.get("git_sha") and entry.get("git_sha") != report.get("git_sha"):
        dirty = " (dirty)" if entry.get("dirty") else ""
        parts.insert(0, f"measured on {_short(entry['git_sha'])}{dirty}")
    return "; ".join(parts)


def render(report: Any) -> str:
    """The markdown of the figures section for a parsed report (any JSON value)."""
    if isinstance(report, list):
        return _render_old_list(report)
    if not isinstance(report, Mapping) or not isinstance(report.get("scenarios"), Mapping):
        return (
            "**The report is not in a known format: re-run `make chaos`.** "
            "[`chaos-results.json`](chaos-results.json) holds no `scenarios`."
        )
    scenarios: Mapping[str, Mapping[str, Any]] = report["scenarios"]
    failed = sorted(name for name, entry in scenarios.items() if not entry.get("passed"))
    dirty = report.get("dirty")
    state = {True: "dirty: uncommitted changes were measured, **not publishable**", False: "clean"}.get(
        dirty, "dirty flag unknown"
    )
    lines = [
        f"Report [`chaos-results.json`](chaos-results.json) of commit {_short(report.get('git_sha'))} "
        f"({state}), updated {report.get('updated_at', 'at an unknown time')}: {len(scenarios)} scenarios, "
        f"{len(scenarios) - len(failed)} passed, {len(failed)} failed.",
        "",
        "| scenario | result | seconds | figures |",
        "|---|---|---|---|",
    ]
    for name in sorted(scenarios):
        entry = scenarios[name]
        title = TITLES.get(name, name)
        result = "passed" if entry.get("passed") else "**FAILED**"
        seconds = _value(entry.get("seconds"))
        figures = _cell(figures_text(name, entry, report))
        lines.append(f"| {_cell(title)} (`{name}`) | {result} | {seconds} | {figures} |")
    if failed:
        lines += ["", "Failures:", ""]
        lines += [
            f"- `{name}`: {_cell(str(scenarios[name].get('error', 'no error recorded')))}" for name in failed
        ]
    return "\n".join(lines)


def _render_old_list(trials: list[Any]) -> str:
    """An older report: a bare list of kill -9 trials, without commit, date or the other scenarios."""
    rows = [t for t in trials if isinstance(t, Mapping)]
    text = (
        "**Report in an older format: re-run `make chaos`.** "
        "[`chaos-results.json`](chaos-results.json) is a bare list of kill -9 trials, with no git SHA, dirty "
        "flag or date and no other scenario, so nothing here says which code it measured."
    )
    if not rows:
        return text
    recovery = [float(t["recovery_s"]) for t in rows if isinstance(t.get("recovery_s"), int | float)]
    seeds = sorted({str(t["seed"]) for t in rows if "seed" in t})
    summary = (
        f"It holds {len(rows)} trials, {sum(int(t.get('messages', 0)) for t in rows):,} messages: "
        f"{sum(int(t.get('lost', 0)) for t in rows)} lost, "
        f"{sum(int(t.get('duplicates', 0)) for t in rows)} duplicates "
        f"(at most {max(int(t.get('duplicates', 0)) for t in rows)} in a trial)"
    )
    if recovery:
        summary += f", recovery {min(recovery):.2f} to {max(recovery):.2f} s"
    if seeds:
        summary += f"; seed {', '.join(seeds)}"
    return f"{text}\n\n{summary}."


def load_report(path: Path | None = None) -> Any:
    """The parsed report (``REPORT`` by default)."""
    return json.loads((path or REPORT).read_text(encoding="utf-8"))


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def update_page(text: str, report: Any = None) -> str:
    """``text`` with the figures section rendered from ``report`` (default: the committed report)."""
    body = render(load_report() if report is None else report)
    return replace_between(text, START, END, f"{NOTE}\n\n{body}", _shown(PAGE))


def main(argv: list[str] | None = None) -> int:
    """Rewrite the page, or with ``--check`` report (exit 1) that it is stale."""
    return page_main(
        argv,
        tool="reliability_doc",
        page=PAGE,
        update=update_page,
        what="the figures",
        stale=f"figures differ from {_shown(REPORT)}: run python tools/reliability_doc.py",
    )


if __name__ == "__main__":
    sys.exit(main())

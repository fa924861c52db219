"""The outcome of ``worker redrive``: counts, exit code, and the text summary or ``--json`` document."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from worker.aws.names import queue_name
from worker.ops.progress import Tally, format_duration
from worker.ops.redrive.app_results import Result
from worker.ops.redrive.native import NativeResult
from worker.ops.redrive.options import RedriveMode
from worker.ops.redrive.plan import Verdict

#: At most this many messages per section in the text summary (``--json`` has them all).
LISTED = 200


@dataclass(slots=True)
class Report:
    """The outcome of ``worker redrive`` (text summary or ``--json``)."""

    mode: RedriveMode
    why: str
    dlq: str
    target: str
    dry_run: bool = False
    watch: bool = False
    tally: Tally = field(default_factory=Tally)
    elapsed: float = 0.0
    #: Seconds from the start to the last move (the rate's window; the final empty poll is not counted).
    active: float = 0.0
    results: list[Result] = field(default_factory=list)
    native: NativeResult | None = None
    interrupted: bool = False
    fatal: str | None = None
    max_redrives: int = 3

    @property
    def rate(self) -> float:
        """Moves per second, from the start to the last move."""
        window = self.active or self.elapsed
        return self.tally.moved / window if window > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when nothing failed or was held; 1 otherwise; 130 for an interrupted one-shot pass."""
        if self.fatal or self.tally.failed or self.tally.held:
            return 1
        if self.native is not None and self.native.status not in ("COMPLETED", "CANCELLED"):
            return 1
        if self.interrupted and not self.watch:
            return 130
        return 0

    def to_json(self) -> dict[str, Any]:
        """The report as plain data."""
        return {
            "mode": self.mode,
            "why": self.why,
            "dlq": self.dlq,
            "target": self.target,
            "dry_run": self.dry_run,
            "watch": self.watch,
            "counts": asdict(self.tally),
            "elapsed_seconds": round(self.elapsed, 3),
            "rate": round(self.rate, 1),
            "interrupted": self.interrupted,
            "fatal": self.fatal,
            "native": asdict(self.native) if self.native else None,
            "messages": [{**asdict(r), "verdict": r.verdict.value} for r in self.results],
            "exit_code": self.exit_code,
        }

    def render(self) -> str:
        """The summary for a terminal."""
        what = "native move task" if self.mode == RedriveMode.NATIVE else "app mode"
        lines = [f"Redrive ({what}: {self.why}) from {self.dlq} to {self.target}"]
        if self.dry_run:
            lines.append("  dry run: nothing was moved, every message is where it was")
        if self.native is not None:
            n = self.native
            of = f" of ~{n.to_move}" if n.to_move is not None else ""
            lines.append(f"  task {n.status}: moved {n.moved}{of}")
            if n.failure_reason:
                lines.append(f"  failure reason: {n.failure_reason}")
            lines.append(
                "  note: SQS moves messages unchanged: the redrive counter is not raised on the way out and "
                "--max-redrives is not applied (the worker counts the trip if the message fails again); "
                "use --mode app when the loop guard matters"
            )
        else:
            t = self.tally
            lines += [
                f"  {'would move' if self.dry_run else 'moved':<12} {t.moved:>7}",
                f"  {'skipped':<12} {t.skipped:>7}   (filtered out or too young; still in the DLQ)",
                f"  {'held':<12} {t.held:>7}   (redriven {self.max_redrives}+ times; still in the DLQ)",
                f"  {'failed':<12} {t.failed:>7}   (still in the DLQ)",
            ]
        rate = "" if self.dry_run else f" ({self.rate:.1f} msg/s)"
        lines.append(f"  in {format_duration(self.elapsed)}{rate}")
        if self.interrupted:
            lines.append("  interrupted: stopped early; messages not moved were given back to the DLQ")
        if self.fatal:
            lines.append(f"  stopped: {self.fatal}")
        sections = (
            ("Would move", [r for r in self.results if r.dry_run]),
            (
                "Would fail" if self.dry_run else "Failed",
                [r for r in self.results if r.verdict is Verdict.FAIL],
            ),
            (
                "Would be held by the loop guard" if self.dry_run else "Held by the loop guard",
                [r for r in self.results if r.verdict is Verdict.HOLD],
            ),
        )
        for title, results in sections:
            if not results:
                continue
            lines += ["", f"{title} ({len(results)}):"]
            for r in results[:LISTED]:
                route = f"{r.source or '?'} -> {_name(r.target)}"
                detail = f"redrive #{r.redrive_count}" if r.dry_run else r.reason
                lines.append(f"  {r.id}  {r.error_type}  {route}  {detail}")
            if len(results) > LISTED:
                lines.append(f"  ... and {len(results) - LISTED} more (--json lists them all)")
        return "\n".join(lines)


def _name(url: str | None) -> str:
    return queue_name(url) if url else "?"

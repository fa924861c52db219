"""The fault suite's JSON report: one entry per scenario, failing ones included, stamped with the git commit.

``CHAOS_REPORT=path`` turns it on (``make chaos`` sets it). Each scenario replaces its own entry, so a run of
one test updates the report without losing the others; ``git_sha`` and ``dirty`` say which code produced the
figures (a dirty tree means uncommitted changes were measured: such figures are not publishable).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


#: The suite's own outputs: writing them does not make the measured code dirty.
OUTPUTS = ("docs/chaos-results.json", "docs/RELIABILITY.md")


def git_state(root: Path = ROOT) -> dict[str, Any]:
    """{"git_sha": full SHA or None, "dirty": True when tracked files other than OUTPUTS differ from it}."""

    def git(*args: str) -> str | None:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False, timeout=30
        )
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git(
        "status", "--porcelain", "--untracked-files=no", "--", ".", *(f":!{path}" for path in OUTPUTS)
    )
    return {"git_sha": sha, "dirty": None if status is None else bool(status)}


def record(scenario: str, figures: Mapping[str, Any], path: str | None = None) -> None:
    """Write ``figures`` under ``scenario`` into the report (no-op without CHAOS_REPORT)."""
    target = path or os.environ.get("CHAOS_REPORT")
    if not target:
        return
    report_path = Path(target)
    report: dict[str, Any] = {}
    if report_path.exists():
        try:
            report = json.loads(report_path.read_text())
        except ValueError:
            report = {}
    if not isinstance(report, dict) or "scenarios" not in report:
        report = {"scenarios": {}}  # an older layout (a bare list of trials) is replaced
    report.update(git_state())
    report["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report["scenarios"][scenario] = dict(figures)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


@contextmanager
def scenario(name: str, **fixed: Any) -> Iterator[dict[str, Any]]:
    """Collect a scenario's figures in the yielded dict; recorded on exit, with ``passed`` and the error."""
    figures: dict[str, Any] = dict(fixed)
    started = time.monotonic()
    try:
        yield figures
    except BaseException as exc:
        figures.update(passed=False, error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    else:
        figures["passed"] = True
    finally:
        figures["seconds"] = round(time.monotonic() - started, 1)
        record(name, figures)

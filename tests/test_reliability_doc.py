"""tools/reliability_doc.py renders the chaos report honestly: commit, dirty flag, failures, older layouts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.test_docs import ROOT, _load_tool


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    """tools/reliability_doc.py, loaded from its file."""
    return _load_tool("reliability_doc")


REPORT = {
    "git_sha": "0123456789abcdef",
    "dirty": False,
    "updated_at": "2026-12-01T10:00:00Z",
    "scenarios": {
        "kill_9": {"passed": True, "seconds": 250.4, "lost": 0, "messages": 100000, "trials": [{}] * 20},
        "dlq_outage": {
            "passed": False,
            "seconds": 130.0,
            "error": "AssertionError: 2 lost | see log",
            "lost": 2,
        },
    },
}


def test_a_report_shows_commit_state_each_scenario_and_each_failure(tool: ModuleType) -> None:
    """The short SHA, clean, the counts, every scenario with its figures, the failure and its error."""
    text = tool.render(REPORT)
    assert "commit `0123456` (clean), updated 2026-12-01T10:00:00Z: 2 scenarios, 1 passed, 1 failed" in text
    assert "| kill -9 under load, restart (`kill_9`) | passed | 250.4 |" in text
    assert "messages: 100,000" in text
    assert "trials: 20 entries (in the JSON)" in text
    assert "| DLQ blackholed, source watched (`dlq_outage`) | **FAILED** | 130 | lost: 2 |" in text
    assert "- `dlq_outage`: AssertionError: 2 lost \\| see log" in text


def test_a_dirty_report_is_marked_unpublishable(tool: ModuleType) -> None:
    """Figures measured on uncommitted changes say so."""
    assert "**not publishable**" in tool.render({**REPORT, "dirty": True})


def test_an_older_list_report_asks_for_a_new_run_and_claims_no_commit(tool: ModuleType) -> None:
    """A bare list of trials: summarised, flagged as an older format, no SHA invented."""
    trials = [
        {"trial": 0, "seed": 5, "messages": 2000, "lost": 0, "duplicates": 3, "recovery_s": 0.6},
        {"trial": 1, "seed": 5, "messages": 2000, "lost": 1, "duplicates": 7, "recovery_s": 0.9},
    ]
    text = tool.render(trials)
    assert "older format: re-run `make chaos`" in text
    assert (
        "2 trials, 4,000 messages: 1 lost, 10 duplicates (at most 7 in a trial), recovery 0.60 to 0.90 s"
        in text
    )
    assert "commit" not in text
    assert "re-run `make chaos`" in tool.render({"something": "else"})


def test_check_mode_reports_a_stale_page_and_passes_the_committed_one(
    tool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--check` exits 1 on a page rendered from another report, 0 on the committed one; it never writes."""
    page = tool.PAGE.read_text(encoding="utf-8")
    stale = tmp_path / "RELIABILITY.md"
    stale.write_text(tool.update_page(page, REPORT), encoding="utf-8")
    monkeypatch.setattr(tool, "PAGE", stale)
    assert tool.main(["--check"]) == 1
    assert stale.read_text(encoding="utf-8") == tool.update_page(page, REPORT), "--check must not write"
    report = tmp_path / "report.json"
    report.write_text(json.dumps(REPORT), encoding="utf-8")
    monkeypatch.setattr(tool, "REPORT", report)
    assert tool.main(["--check"]) == 0
    script = [sys.executable, str(ROOT / "tools" / "reliability_doc.py"), "--check"]
    done = subprocess.run(script, capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr

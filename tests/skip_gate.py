"""A pytest plugin: under CI, a skipped test fails the run unless its reason is on the documented allow-list.

Locally a missing service or tool skips (so a laptop without it still runs the rest); in CI (`CI` set, as
`.ci/run` does) every skip is printed and the session fails unless the skip's reason starts with one of
ALLOWED's keys. Each allowed skip says why it cannot run on the CI machines.
"""

from __future__ import annotations

import os

import pytest

#: Skip reasons (prefixes) that may pass CI, and why.
ALLOWED: dict[str, str] = {
    "no docker CLI": "the CI machines have no Docker; the compose file is validated by compose-spec instead",
    "docker CLI without the compose plugin": "the CI machines have no Docker engine or compose plugin",
}


def skip_reason(report: pytest.TestReport) -> str:
    """The reason a skipped test report carries (``Skipped: `` stripped)."""
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def disallowed(reasons: list[str]) -> list[str]:
    """The reasons not covered by the allow-list."""
    return [reason for reason in reasons if not reason.startswith(tuple(ALLOWED))]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI, turn a run with a skip outside the allow-list into a failed run."""
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = [r for r in reporter.stats.get("skipped", []) if isinstance(r, pytest.TestReport)]
    bad = disallowed([skip_reason(r) for r in skipped])
    if bad:
        reporter.write_line(
            f"skip gate: {len(bad)} skip(s) outside the allow-list fail this CI run:", red=True
        )
        for reason in bad:
            reporter.write_line(f"  {reason}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    for report in skipped:
        reason = skip_reason(report)
        why = next((why for prefix, why in ALLOWED.items() if reason.startswith(prefix)), None)
        if why is not None:
            reporter.write_line(f"skip gate: allowed skip: {reason} ({why})")

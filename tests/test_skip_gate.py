"""The skip gate: under CI a skip fails the run unless its reason is allow-listed; locally it stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_pytest(tmp_path: Path, reason: str, *, ci: bool) -> subprocess.CompletedProcess[str]:
    """Run a one-test file that skips with ``reason``, with the gate loaded, CI set or not."""
    (tmp_path / "test_one.py").write_text(
        f"import pytest\n\ndef test_it():\n    pytest.skip({reason!r})\n", encoding="utf-8"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci:
        env["CI"] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.skip_gate",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_one.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_skip_fails_ci(tmp_path: Path) -> None:
    """With CI set, a skip whose reason is not allow-listed makes pytest exit 1 and names the reason."""
    done = run_pytest(tmp_path, "embedded LocalStack unavailable: boom", ci=True)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    assert "embedded LocalStack unavailable: boom" in done.stdout


def test_an_allowed_skip_passes_ci(tmp_path: Path) -> None:
    """With CI set, an allow-listed skip passes and is printed with why it is allowed."""
    done = run_pytest(tmp_path, "docker CLI without the compose plugin", ci=True)
    assert done.returncode == pytest.ExitCode.OK, done.stdout
    assert "allowed skip: docker CLI without the compose plugin" in done.stdout


def test_a_skip_stays_a_skip_locally(tmp_path: Path) -> None:
    """Without CI the same skip is only a skip (exit 0)."""
    done = run_pytest(tmp_path, "embedded LocalStack unavailable: boom", ci=False)
    assert done.returncode == pytest.ExitCode.OK, done.stdout
    assert "1 skipped" in done.stdout

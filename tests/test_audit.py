"""``make audit``'s verdict (tools/audit.py): only a complete, clean pip-audit report passes."""

from __future__ import annotations

import json
import stat
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.test_docs import _load_tool

PINS = {"aiohttp": "3.14.5", "pyyaml": "6.0.4"}


@cache
def audit() -> ModuleType:
    """tools/audit.py, loaded from its file."""
    return _load_tool("audit")


def report(*dependencies: dict[str, Any]) -> str:
    """pip-audit's ``--format json`` document for these dependency entries."""
    return json.dumps({"dependencies": list(dependencies), "fixes": []})


def clean(name: str, version: str) -> dict[str, Any]:
    """A dependency pip-audit audited and found nothing in."""
    return {"name": name, "version": version, "vulns": []}


def skipped(name: str, version: str) -> dict[str, Any]:
    """A dependency pip-audit could not audit, as it reports one when its service is out of reach."""
    return {
        "name": name,
        "skip_reason": f"Dependency not found on PyPI and could not be audited: {name} ({version})",
    }


def test_a_complete_clean_report_passes() -> None:
    """Every pin audited at its version, none vulnerable, exit 0: the one passing verdict."""
    verdict = audit().decide(PINS, report(clean("aiohttp", "3.14.5"), clean("pyyaml", "6.0.4")), 0)
    assert verdict.ok
    assert verdict.audited == ("aiohttp", "pyyaml")
    assert verdict.summary() == "audit passed: 2 audited, 0 vulnerable, 0 not audited"
    assert verdict.details() == []


def test_everything_skipped_is_a_failure_although_pip_audit_exits_0() -> None:
    """pip-audit's 'No known vulnerabilities found' over skipped dependencies fails, with the reasons."""
    verdict = audit().decide(PINS, report(skipped("aiohttp", "3.14.5"), skipped("pyyaml", "6.0.4")), 0)
    assert not verdict.ok
    assert verdict.error is None
    assert [name for name, _ in verdict.not_audited] == ["aiohttp", "pyyaml"]
    assert verdict.summary() == "audit FAILED: 0 audited, 0 vulnerable, 2 not audited"
    assert "NOT AUDITED aiohttp: Dependency not found on PyPI" in verdict.details()[0]


def test_one_skipped_dependency_fails_the_audit() -> None:
    """A single not-audited pin among clean ones is enough to fail."""
    verdict = audit().decide(PINS, report(clean("aiohttp", "3.14.5"), skipped("pyyaml", "6.0.4")), 0)
    assert not verdict.ok
    assert verdict.summary() == "audit FAILED: 1 audited, 0 vulnerable, 1 not audited"


def test_a_vulnerability_fails_with_its_ids_and_fixed_versions() -> None:
    """pip-audit exit 1 with a vulnerable pin: failed, its line names the ids and the versions fixing them."""
    vulnerable = {
        "name": "aiohttp",
        "version": "3.14.5",
        "vulns": [
            {"id": "GHSA-aaaa-bbbb-cccc", "fix_versions": ["3.14.6"]},
            {"id": "PYSEC-2026-1", "fix_versions": ["3.15.0", "3.14.6"]},
        ],
    }
    verdict = audit().decide(PINS, report(vulnerable, clean("pyyaml", "6.0.4")), 1)
    assert not verdict.ok
    assert verdict.error is None
    assert verdict.summary() == "audit FAILED: 2 audited, 1 vulnerable, 0 not audited"
    assert verdict.details() == [
        "VULNERABLE aiohttp 3.14.5: GHSA-aaaa-bbbb-cccc, PYSEC-2026-1 (fixed in 3.14.6, 3.15.0)"
    ]


def test_a_pin_missing_from_the_report_or_audited_at_another_version_is_not_audited() -> None:
    """The report must cover every pin at its pinned version; names compare canonically (PyYAML = pyyaml)."""
    verdict = audit().decide(PINS, report(clean("aiohttp", "3.14.4")), 0)
    assert dict(verdict.not_audited) == {
        "aiohttp": "audited at 3.14.4, pinned at 3.14.5",
        "pyyaml": "missing from pip-audit's report",
    }
    assert audit().decide(PINS, report(clean("aiohttp", "3.14.5"), clean("PyYAML", "6.0.4")), 0).ok
    assert audit().decide({"six": "1.17"}, report(clean("six", "1.17.0")), 0).ok  # versions, not strings


@pytest.mark.parametrize(
    ("document", "returncode", "error"),
    [
        (None, 1, "pip-audit wrote no usable JSON report"),
        ("Traceback (most recent call last):", 1, "pip-audit wrote no usable JSON report"),
        ('{"fixes": []}', 0, "pip-audit wrote no usable JSON report"),
        (report(clean("aiohttp", "3.14.5"), clean("pyyaml", "6.0.4")), 2, "pip-audit exited 2"),
        (report(clean("aiohttp", "3.14.5"), clean("pyyaml", "6.0.4")), 1, "exited 1 without reporting"),
    ],
    ids=["no-report", "not-json", "no-dependencies", "exit-2", "exit-1-no-vulns"],
)
def test_a_failed_pip_audit_run_fails_the_audit(document: str | None, returncode: int, error: str) -> None:
    """A crash, a usage error or a report that is not pip-audit's JSON is a failed audit, whatever it said."""
    verdict = audit().decide(PINS, document, returncode)
    assert not verdict.ok
    assert verdict.error is not None
    assert error in verdict.error
    assert verdict.audited == ()
    assert [name for name, _ in verdict.not_audited] == ["aiohttp", "pyyaml"]
    assert verdict.summary().startswith("audit FAILED: ")
    assert verdict.summary().endswith("(0 audited, 0 vulnerable, 2 not audited)")


def test_read_pins_reads_hashed_annotated_locks() -> None:
    """Continuations, hashes, markers, comments and option lines as uv and pip-compile write them."""
    text = (
        "# header\n--index-url https://example.invalid/simple\n"
        "aiohttp==3.14.5 \\\n    --hash=sha256:" + "a" * 64 + " \\\n    --hash=sha256:" + "b" * 64 + "\n"
        "    # via aiobotocore\n"
        "PyYAML==6.0.4 ; python_version >= '3.11'  # comment\n"
    )
    pins = audit().read_pins(text)
    assert list(pins) == ["aiohttp", "pyyaml"]
    assert pins["aiohttp"].version == "3.14.5"
    assert pins["aiohttp"].hashes == ("a" * 64, "b" * 64)
    assert pins["pyyaml"].version == "6.0.4"
    assert pins["pyyaml"].hashes == ()
    assert pins["pyyaml"].marker == "python_version >= '3.11'"


@pytest.mark.parametrize(
    "text", ["aiohttp>=3.9\n", "aiohttp==3.14.5\nAIOHTTP==3.14.5\n"], ids=["range", "twice"]
)
def test_read_pins_refuses_what_is_no_lock(text: str) -> None:
    """A range instead of an exact pin, or one package pinned twice, is an error, not a skipped line."""
    with pytest.raises(ValueError, match="aiohttp"):
        audit().read_pins(text)


def _fake_pip_audit(tmp_path: Path, document: str | None, returncode: int) -> Path:
    """An executable that writes ``document`` where pip-audit's --output points and exits ``returncode``."""
    script = tmp_path / "pip-audit"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nargs = sys.argv[1:]\n"
        f"document = {document!r}\n"
        "if document is not None:\n"
        "    open(args[args.index('--output') + 1], 'w').write(document)\n"
        f"sys.exit({returncode})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_main_exits_0_only_on_a_clean_complete_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The script end to end on a fake pip-audit: exit 0 and the summary line; exit 1 on skips or a crash."""
    lock = tmp_path / "lock.txt"
    lock.write_text("aiohttp==3.14.5 \\\n    --hash=sha256:" + "a" * 64 + "\npyyaml==6.0.4\n")
    cases = [
        (report(clean("aiohttp", "3.14.5"), clean("pyyaml", "6.0.4")), 0, 0, "audit passed: 2 audited"),
        (report(clean("aiohttp", "3.14.5"), skipped("pyyaml", "6.0.4")), 0, 1, "1 not audited"),
        (None, 1, 1, "pip-audit wrote no usable JSON report"),
    ]
    for document, returncode, expected, line in cases:
        fake = _fake_pip_audit(tmp_path, document, returncode)
        assert audit().main(["--pip-audit", str(fake), str(lock)]) == expected
        assert line in capsys.readouterr().out.splitlines()[-1]

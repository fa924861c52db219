"""``make audit``: pip-audit over every pinned dependency, failing when any is vulnerable or was not audited.

    python tools/audit.py [--pip-audit PATH] LOCK [LOCK ...]

pip-audit itself prints "No known vulnerabilities found" and exits 0 when it could not audit anything
(every dependency "skipped": the vulnerability service unreachable, a package it cannot find). Here that is a
failure: the script runs pip-audit once over the union of the locks' pins with JSON output, and ``decide``
(pure) reads the report. Exit 0 only when every pin was audited at its pinned version and none is vulnerable;
1 otherwise, with one summary line (``N audited, M vulnerable, K not audited``) and the reasons.

``read_pins`` is also how tests/test_locks.py reads the locks: one parser for the audit and the lock checks.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

#: One requirement of a lock, options cut off: ``name==version``, then an optional ``; marker``.
_PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*(?P<version>[^\s;]+)\s*(?:;(?P<marker>.*))?")
_HASH = re.compile(r"--hash=sha256:(?P<digest>\S+)")
#: How many not-audited dependencies are listed one by one before the rest is counted.
SHOWN = 10


@dataclass(frozen=True)
class Pin:
    """One locked package: its canonical name, exact version and the sha256 digests the lock allows."""

    name: str
    version: str
    hashes: tuple[str, ...]
    marker: str | None = None


def read_pins(text: str) -> dict[str, Pin]:
    """The pins of a lock file (pip requirements syntax), by canonical name; a line that is no pin raises."""
    pins: dict[str, Pin] = {}
    for line in _logical_lines(text):
        if line.startswith("-"):  # an option line (--index-url, -c ...): not a pin
            continue
        requirement = re.split(r"\s--?[a-z]", line, maxsplit=1)[0]
        match = _PIN.fullmatch(requirement.strip())
        if match is None:
            raise ValueError(f"not an exact pin (name==version): {line!r}")
        name = canonicalize_name(match["name"])
        if name in pins:
            raise ValueError(f"{name} is pinned twice")
        marker = (match["marker"] or "").strip() or None
        hashes = tuple(m["digest"] for m in _HASH.finditer(line))
        pins[name] = Pin(name=name, version=match["version"], hashes=hashes, marker=marker)
    return pins


def _logical_lines(text: str) -> list[str]:
    """Lines with comments dropped and backslash continuations joined, blank ones skipped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            lines.append(line)
    if pending.strip():
        lines.append(pending.strip())
    return lines


@dataclass(frozen=True)
class Vulnerable:
    """A pinned dependency with known vulnerabilities: their ids and the versions that fix them."""

    name: str
    version: str
    ids: tuple[str, ...]
    fixed_in: tuple[str, ...]


@dataclass(frozen=True)
class Verdict:
    """What one pip-audit run says about the pins: audited, vulnerable, not audited, or a failed run."""

    audited: tuple[str, ...]
    vulnerable: tuple[Vulnerable, ...]
    not_audited: tuple[tuple[str, str], ...]  # (name, why)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Every pin audited, none vulnerable, and pip-audit itself ran."""
        return self.error is None and not self.vulnerable and not self.not_audited

    def summary(self) -> str:
        """The one line ``make audit`` ends with."""
        counts = ", ".join(
            f"{len(found)} {label}"
            for found, label in (
                (self.audited, "audited"),
                (self.vulnerable, "vulnerable"),
                (self.not_audited, "not audited"),
            )
        )
        if self.error is not None:
            return f"audit FAILED: {self.error} ({counts})"
        if not self.ok:
            return f"audit FAILED: {counts}"
        return f"audit passed: {counts}"

    def details(self) -> list[str]:
        """The lines before the summary: each vulnerability, then why dependencies were not audited."""
        lines = [
            f"VULNERABLE {v.name} {v.version}: {', '.join(v.ids)}"
            + (f" (fixed in {', '.join(v.fixed_in)})" if v.fixed_in else " (no fixed version yet)")
            for v in self.vulnerable
        ]
        lines += [f"NOT AUDITED {name}: {why}" for name, why in self.not_audited[:SHOWN]]
        if len(self.not_audited) > SHOWN:
            lines.append(f"... and {len(self.not_audited) - SHOWN} more not audited")
        if self.not_audited:
            lines.append(
                "A dependency that was not audited may be vulnerable: this is a failure, not a pass "
                "(is the vulnerability service reachable from here?)"
            )
        return lines


def decide(pins: Mapping[str, str], report: str | None, returncode: int) -> Verdict:
    """The verdict on ``pins`` (canonical name -> version) from pip-audit's JSON ``report`` and exit code.

    pip-audit exits 0 when it found no vulnerability (even when it audited nothing) and 1 when it found one or
    failed; anything else, or a report that is not its JSON, is a failed run.
    """
    if returncode not in {0, 1}:
        return _failed_run(pins, f"pip-audit exited {returncode}")
    try:
        document: Any = json.loads(report or "")
        entries = document["dependencies"]
    except (ValueError, KeyError, TypeError) as exc:
        entries, problem = None, f"{type(exc).__name__}: {exc}"
    else:
        problem = "its dependencies are not a list"
    if not isinstance(entries, list):
        return _failed_run(pins, f"pip-audit wrote no usable JSON report ({problem}); exit {returncode}")
    seen: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            seen[canonicalize_name(entry["name"])] = entry
    audited: list[str] = []
    vulnerable: list[Vulnerable] = []
    not_audited: list[tuple[str, str]] = []
    for name, version in sorted(pins.items()):
        entry = seen.get(name)
        if entry is None:
            not_audited.append((name, "missing from pip-audit's report"))
        elif "skip_reason" in entry:
            not_audited.append((name, str(entry["skip_reason"])))
        elif not _same_version(str(entry.get("version")), version):
            not_audited.append((name, f"audited at {entry.get('version')}, pinned at {version}"))
        elif not isinstance(entry.get("vulns"), list):
            not_audited.append((name, "no vulnerability list in pip-audit's report"))
        else:
            audited.append(name)
            if entry["vulns"]:
                ids = tuple(str(v.get("id")) for v in entry["vulns"])
                fixed = sorted({str(f) for v in entry["vulns"] for f in v.get("fix_versions", [])})
                vulnerable.append(Vulnerable(name, version, ids, tuple(fixed)))
    if returncode == 1 and not vulnerable:  # its error exit: the report cannot be trusted
        return _failed_run(pins, "pip-audit exited 1 without reporting a vulnerability")
    return Verdict(tuple(audited), tuple(vulnerable), tuple(not_audited))


def _failed_run(pins: Mapping[str, str], error: str) -> Verdict:
    """A run that produced no verdict: every pin is not audited."""
    return Verdict((), (), tuple((name, "pip-audit failed") for name in sorted(pins)), error=error)


def _same_version(reported: str, pinned: str) -> bool:
    """Whether pip-audit's version is the pin's (compared as versions: 1.0 is 1.0.0)."""
    try:
        return Version(reported) == Version(pinned)
    except InvalidVersion:
        return reported == pinned


def union_of_pins(locks: Sequence[Path]) -> dict[str, str]:
    """Every pin of the locks (canonical name -> version); two locks pinning one package differently raise."""
    pins: dict[str, str] = {}
    for lock in locks:
        for name, pin in read_pins(lock.read_text()).items():
            if pins.setdefault(name, pin.version) != pin.version:
                raise ValueError(f"{name} is pinned at {pins[name]} and at {pin.version} ({lock})")
    return pins


def run_pip_audit(pip_audit: str, pins: Mapping[str, str]) -> tuple[str | None, int, str]:
    """(JSON report or None, exit code, stderr) of pip-audit over exactly these pins, without resolving."""
    with tempfile.TemporaryDirectory(prefix="audit-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
        output = Path(tmp) / "report.json"
        command = [pip_audit, "--no-deps", "--disable-pip", "--progress-spinner", "off", "--format", "json"]
        command += ["--output", str(output), "--requirement", str(requirements)]
        try:
            result = subprocess.run(  # noqa: S603 - the pip-audit the Makefile installed, fixed arguments
                command, capture_output=True, text=True, timeout=900, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, -1, str(exc)
        report = output.read_text() if output.exists() else None
        return report, result.returncode, result.stderr


def main(argv: Sequence[str] | None = None) -> int:
    """Audit the locks named on the command line; 0 only on a clean, complete audit."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pip-audit", default="pip-audit", help="the pip-audit executable")
    parser.add_argument("locks", nargs="+", type=Path, help="lock files (name==version lines)")
    args = parser.parse_args(argv)
    try:
        pins = union_of_pins(args.locks)
    except (OSError, ValueError) as exc:
        print(f"audit FAILED: cannot read the locks: {exc}", file=sys.stderr)
        return 1
    report, returncode, stderr = run_pip_audit(args.pip_audit, pins)
    verdict = decide(pins, report, returncode)
    if verdict.error is not None and stderr.strip():
        print(stderr.strip()[-2000:], file=sys.stderr)
    for line in verdict.details():
        print(line)
    print(verdict.summary())
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())

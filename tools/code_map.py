"""Render the code map in docs/development.md from the first docstring line of every module in ``worker/``.

    python tools/code_map.py            # rewrite the map between the markers (make docs)
    python tools/code_map.py --check    # exit 1 with one line when the page is stale

The map lists every module, folder by folder, with what it says it is: a new module appears in the docs the
moment it exists, and a module without a docstring fails the check.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "worker"
PAGE = ROOT / "docs" / "development.md"
START = "<!-- codemap:start -->"
END = "<!-- codemap:end -->"
NOTE = "<!-- generated from the module docstrings by tools/code_map.py (make docs); do not edit -->"


def summary(path: Path) -> str:
    """The first line of a module's docstring; ValueError when it has none."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    if not doc:
        raise ValueError(f"{path.relative_to(ROOT)} has no docstring")
    return doc.strip().splitlines()[0]


def render_map(package: Path = PACKAGE) -> str:
    """One section per folder (its ``__init__`` docstring), one line per module."""
    lines: list[str] = []
    folders = sorted({p.parent for p in package.rglob("*.py")}, key=lambda p: p.relative_to(ROOT).parts)
    for folder in folders:
        rel = folder.relative_to(ROOT).as_posix()
        init = folder / "__init__.py"
        title = f"- `{rel}/`" + (f": {summary(init)}" if folder != package and init.exists() else "")
        lines.append(title)
        for module in sorted(folder.glob("*.py")):
            if module.name == "__init__.py":
                continue
            lines.append(f"  - `{module.name}`: {summary(module)}")
    return "\n".join(lines)


def update_page(text: str, block: str | None = None) -> str:
    """``text`` with the map between the markers replaced by ``block`` (default: the current map)."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{PAGE.relative_to(ROOT)}: markers {START} ... {END} not found")
    body = render_map() if block is None else block
    return f"{text[:start]}{START}\n{NOTE}\n\n{body}\n\n{text[end:]}"


def main(argv: list[str] | None = None) -> int:
    """Rewrite the page, or with ``--check`` report (exit 1) that it is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is stale; write nothing")
    args = parser.parse_args(argv)
    try:
        current = PAGE.read_text(encoding="utf-8")
        wanted = update_page(current)
    except (OSError, ValueError, SyntaxError) as exc:
        print(f"code_map: {exc}", file=sys.stderr)
        return 1
    if wanted == current:
        return 0
    if args.check:
        print(
            "code_map: docs/development.md is stale (the code map differs from worker/): run make docs",
            file=sys.stderr,
        )
        return 1
    PAGE.write_text(wanted, encoding="utf-8")
    print("code_map: docs/development.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())

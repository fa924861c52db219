"""The docs stay true to the code: the generated settings table, descriptions, links, no dead names."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import unicodedata
from functools import cache
from pathlib import Path
from types import ModuleType
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINKED_PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
#: Inline links and images, ``[text](target "title")``; reference definitions, ``[id]: target``.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+[^>]*(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)


@cache
def settings_doc() -> ModuleType:
    """tools/settings_doc.py, loaded from its file."""
    return _load_tool("settings_doc")


def _load_tool(name: str) -> ModuleType:
    """A script of tools/ loaded from its file (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def prose_lines(path: Path) -> list[str]:
    """The lines of a markdown file outside fenced code blocks (links and headings there are not real)."""
    lines, fence = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        match = FENCE.match(line)
        if match and (not fence or match.group(1) == fence):
            fence = "" if fence else match.group(1)
            continue
        if not fence:
            lines.append(line)
    return lines


def _strip_code_spans(line: str) -> str:
    return re.sub(r"(`+)(.+?)\1", lambda m: "\0" * len(m.group(0)), line)


def links(path: Path) -> list[str]:
    """Every link target of a markdown file (inline, image and reference style), code excluded."""
    masked = [_strip_code_spans(line) for line in prose_lines(path)]
    found = [m.group(1) for m in INLINE_LINK.finditer("\n".join(masked))]  # link texts may wrap
    found += [m.group(1) for line in masked if (m := REFERENCE_LINK.match(line))]
    return found


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = text.lower()
    text = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LNM")
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors a markdown file defines: heading slugs (repeats get -1, -2, ...) and HTML ids."""
    seen: dict[str, int] = {}
    result = set()
    for line in prose_lines(path):
        result.update(HTML_ANCHOR.findall(line))
        heading = HEADING.match(line)
        if not heading:
            continue
        base = slug(heading.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return frozenset(result)


def test_settings_reference_is_up_to_date() -> None:
    """docs/configuration.md holds exactly the table tools/settings_doc.py renders from Settings now."""
    module = settings_doc()
    page = module.PAGE.read_text(encoding="utf-8")
    assert module.update_page(page) == page, "the settings table is stale: run `make docs`"


def test_settings_doc_check_mode_reports_a_stale_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--check` exits 1 with one line when the table differs, and 0 on the page as committed."""
    module = settings_doc()
    page = module.PAGE.read_text(encoding="utf-8")
    stale = tmp_path / "configuration.md"
    stale.write_text(module.update_page(page, table="| variable |\n|---|"), encoding="utf-8")
    monkeypatch.setattr(module, "PAGE", stale)
    assert module.main(["--check"]) == 1
    assert stale.read_text(encoding="utf-8") != page, "--check must not write"
    script = [sys.executable, str(ROOT / "tools" / "settings_doc.py"), "--check"]
    done = subprocess.run(script, capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_code_map_is_up_to_date() -> None:
    """docs/development.md lists every module of worker/ with its docstring's first line, as rendered now."""
    module = _load_tool("code_map")
    page = module.PAGE.read_text(encoding="utf-8")
    assert module.update_page(page) == page, "the code map is stale: run `make docs`"
    modules = [path for path in (ROOT / "worker").rglob("*.py") if path.name != "__init__.py"]
    assert len(modules) > 40
    for path in modules:
        assert f"`{path.name}`: " in page, f"{path} is missing from the code map"


def test_reliability_figures_match_the_chaos_report() -> None:
    """RELIABILITY.md's figures section is what tools/reliability_doc.py renders from chaos-results.json."""
    module = _load_tool("reliability_doc")
    page = module.PAGE.read_text(encoding="utf-8")
    assert module.update_page(page) == page, "the figures are stale: run `python tools/reliability_doc.py`"


def test_code_map_refuses_a_module_without_docstring(tmp_path: Path) -> None:
    """A module with no docstring cannot be mapped: the renderer names it instead of leaving a blank."""
    module = _load_tool("code_map")
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text('"""A package."""\n')
    (package / "bare.py").write_text("x = 1\n")
    monkey_root = module.ROOT
    module.ROOT = tmp_path
    try:
        with pytest.raises(ValueError, match=r"bare\.py has no docstring"):
            module.render_map(package)
    finally:
        module.ROOT = monkey_root


def test_every_setting_has_a_description() -> None:
    """Every Settings field, nested models' fields included, carries a non-empty description."""
    module = settings_doc()
    rows = list(module.iter_rows())
    top_level = {row.path[0] for row in rows}
    assert top_level == set(module.settings_class().model_fields), "the walk missed a field"
    missing = [row.variable for row in rows if not (row.info.description or "").strip()]
    assert not missing, f"settings without a description: {missing}"


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    """Every relative link of the page points to an existing file, and its #anchor to a heading there."""
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # https:, mailto: ...
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and unquote(anchor) not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_slug_follows_github() -> None:
    """The anchor rule used above gives GitHub's anchors for the kinds of headings these pages use."""
    assert slug("Timeouts, visibility, shutdown: how they fit") == "timeouts-visibility-shutdown-how-they-fit"
    assert slug("Keep it running: `--watch`") == "keep-it-running---watch"
    assert slug("3. Redrive: `worker redrive`") == "3-redrive-worker-redrive"
    assert slug("ECS (Fargate)") == "ecs-fargate"
    assert slug("The queue's RedrivePolicy") == "the-queues-redrivepolicy"
    assert slug("`WORKER_HTTP_PORT` and [links](x.md)") == "worker_http_port-and-links"


def test_no_tracked_markdown_mentions_removed_documents() -> None:
    """No tracked markdown file names a design or style document the project does not have."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--", "*.md"], capture_output=True, check=False, cwd=ROOT
    )
    if listed.returncode == 0:
        files = {ROOT / name for name in listed.stdout.decode().split("\0") if name}
    else:  # not a git checkout (an unpacked sdist): every markdown file outside the virtualenvs
        files = {
            path
            for path in ROOT.rglob("*.md")
            if not any(
                part.startswith(".") or part == "node_modules" for part in path.relative_to(ROOT).parts
            )
        }
    files.update(LINKED_PAGES)  # new pages count before they are added
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted(files)
        if path.exists()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\b(DESIGN|STYLE)\.md\b", line, re.IGNORECASE)
    ]
    assert not offenders, f"mentions of documents that do not exist: {offenders}"

"""Render the settings reference in docs/configuration.md from ``worker.settings.Settings``.

    python tools/settings_doc.py            # rewrite the table between the markers (make docs)
    python tools/settings_doc.py --check    # exit 1 with one line when the page is stale

Every field comes from pydantic's ``model_fields`` (nested models included, named with the ``__`` delimiter),
so the table can never list a variable the code does not read, or miss one it does.
"""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "configuration.md"
START = "<!-- settings:start -->"
END = "<!-- settings:end -->"
NOTE = "<!-- generated from worker/settings.py by tools/settings_doc.py (make docs); do not edit -->"

#: annotated-types constraint attribute -> how the table shows it.
BOUNDS = (
    ("ge", "≥"),
    ("gt", ">"),
    ("le", "≤"),
    ("lt", "<"),
    ("min_length", "min length"),
    ("max_length", "max length"),
)


@dataclass(frozen=True)
class Row:
    """One environment variable of the reference."""

    variable: str
    path: tuple[str, ...]
    info: FieldInfo
    default: Any


def settings_class() -> type[BaseModel]:
    """``worker.settings.Settings``, importable from a checkout without installing it."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from worker.settings import Settings

    return Settings


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (also inside ``X | None`` or ``Annotated``), else None."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _nested_model(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        models = [m for m in (_nested_model(arg) for arg in get_args(annotation)) if m is not None]
        return models[0] if len(models) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _default(info: FieldInfo) -> Any:
    return info.get_default(call_default_factory=True, validated_data={})


def iter_rows(model: type[BaseModel] | None = None) -> Iterator[Row]:
    """Every leaf setting of ``model`` (default: Settings), nested models walked depth first."""
    root = model or settings_class()
    config = root.model_config
    prefix = str(config.get("env_prefix", ""))
    delimiter = str(config.get("env_nested_delimiter") or "__")
    yield from _walk(root, (), prefix, delimiter, PydanticUndefined)


def _walk(
    model: type[BaseModel], path: tuple[str, ...], prefix: str, delimiter: str, instance: Any
) -> Iterator[Row]:
    for name, info in model.model_fields.items():
        key = info.alias or name
        here = (*path, key)
        default = _default(info)
        if instance is not PydanticUndefined and instance is not None:
            default = getattr(instance, name, default)
        nested = _nested_model(info.annotation)
        if nested is not None:
            yield from _walk(nested, here, prefix, delimiter, default)
            continue
        variable = (prefix + delimiter.join(here)).upper()
        if not path and isinstance(info.validation_alias, str):
            variable = info.validation_alias.upper()  # pydantic-settings: an alias replaces prefix + name
        yield Row(variable=variable, path=here, info=info, default=default)


def type_name(annotation: Any) -> str:
    """A short name of a field type: ``int``, ``str, optional``, ``list of str``, ``one of `a`, `b```."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return type_name(args[0])
    if origin is Literal:
        return "one of " + ", ".join(f"`{arg.value if isinstance(arg, Enum) else arg}`" for arg in args)
    if origin in (Union, types.UnionType):
        present = [arg for arg in args if arg is not type(None)]
        name = " or ".join(type_name(arg) for arg in present)
        return f"{name}, optional" if len(present) < len(args) else name
    if origin in (list, tuple, set, frozenset) and args:
        return f"list of {type_name(args[0])}"
    if origin is dict and len(args) == 2:
        return f"map of {type_name(args[0])} to {type_name(args[1])}"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e15 else str(value)
    return str(value)


def bounds(info: FieldInfo) -> str:
    """The field's numeric and length constraints, e.g. ``≥ 1, ≤ 64``."""
    found = []
    for item in info.metadata:
        for attribute, symbol in BOUNDS:
            value = getattr(item, attribute, None)
            if value is not None:
                found.append(f"{symbol} {_number(value)}")
    return ", ".join(found)


def default_text(row: Row) -> str:
    """How the default reads in the table: ``required``, ``unset``, ``empty`` or the value."""
    if row.info.is_required() and row.default is PydanticUndefined:
        return "required"
    value = row.default
    if value is None:
        return "unset"
    if isinstance(value, list | tuple | set | frozenset | dict) and not value:
        return "empty"
    if isinstance(value, list | tuple | set | frozenset):
        value = ",".join(str(item) for item in value)
    if isinstance(value, Enum):
        value = value.value
    return f"`{_number(value)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_table(model: type[BaseModel] | None = None) -> str:
    """The markdown table of every setting: variable, type (with bounds), default, description."""
    lines = ["| variable | type | default | description |", "|---|---|---|---|"]
    for row in iter_rows(model):
        kind = type_name(row.info.annotation)
        limits = bounds(row.info)
        if limits:
            kind = f"{kind} ({limits})"
        description = row.info.description or ""
        lines.append(
            f"| `{row.variable}` | {_cell(kind)} | {_cell(default_text(row))} | {_cell(description)} |"
        )
    return "\n".join(lines)


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def replace_between(text: str, start: str, end: str, block: str, page: str) -> str:
    """``text`` with what lies between the ``start`` and ``end`` markers replaced by ``block`` (markers kept).

    The one marker helper of the generated docs (tools/reliability_doc.py uses it too); ``page`` names the
    file in the error when the markers are missing.
    """
    first, last = text.find(start), text.find(end)
    if first < 0 or last < first:
        raise ValueError(f"{page}: markers {start} ... {end} not found")
    return f"{text[:first]}{start}\n{block}\n\n{text[last:]}"


def update_page(text: str, table: str | None = None) -> str:
    """``text`` with the block between the markers replaced by ``table`` (default: the current one)."""
    body = render_table() if table is None else table
    return replace_between(text, START, END, f"{NOTE}\n\n{body}", _shown(PAGE))


def page_main(
    argv: list[str] | None,
    *,
    tool: str,
    page: Path,
    update: Callable[[str], str],
    what: str,
    stale: str,
) -> int:
    """The command line of a generated page: rewrite it, or with ``--check`` exit 1 when it is stale.

    Shared by this tool and tools/reliability_doc.py; ``what`` names the generated part ("the settings
    table"), ``stale`` says why it differs and how to regenerate it.
    """
    parser = argparse.ArgumentParser(prog=tool, description=f"regenerate {what} in {_shown(page)}")
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is stale; write nothing")
    args = parser.parse_args(argv)
    name = _shown(page)
    try:
        current = page.read_text(encoding="utf-8")
        wanted = update(current)
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"{tool}: {exc}", file=sys.stderr)
        return 1
    if wanted == current:
        if not args.check:
            print(f"{tool}: {name} is up to date")
        return 0
    if args.check:
        print(f"{tool}: {name} is stale ({stale})", file=sys.stderr)
        return 1
    page.write_text(wanted, encoding="utf-8")
    print(f"{tool}: rewrote {what} in {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Rewrite the page, or with ``--check`` report (exit 1) that it is stale."""
    return page_main(
        argv,
        tool="settings_doc",
        page=PAGE,
        update=update_page,
        what="the settings table",
        stale="settings table differs from worker/settings.py: run make docs",
    )


if __name__ == "__main__":
    sys.exit(main())

"""``worker config``: the effective settings of ``worker run`` and their sources, credentials redacted (pure).

A settings model (sources from ``model_fields_set``: what pydantic-settings read from the environment)
and an environment mapping (the ``aws`` section) go in; rows come out, rendered as text or as JSON.
Nothing here reads the process environment, imports an AWS library or opens a connection.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote_plus

from pydantic import BaseModel

Source = Literal["default", "environment", "unset"]
#: What a row's value can be in the JSON document: already redacted.
Value = str | int | float | bool | list[str] | None

REDACTED = "***"
#: Words that make a setting's name, or a URL's query or fragment, a credential.
SENSITIVE_WORDS = ("secret", "token", "password", "passwd", "key", "credential", "signature", "sig")
_SENSITIVE_NAME_WORDS = ("secret", "token", "password", "passwd", "key", "credential")
#: AWS variables shown with their value (botocore reads them; they are not worker settings).
AWS_SHOWN = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")
#: AWS credentials: only whether they are set, never a value.
AWS_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

# scheme://userinfo@ : greedy up to the last '@' before the path, so an unencoded '@' in a password goes too.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@")
# A query (after '?') or a fragment (after '#'), up to whitespace or the next fragment.
_QUERY_OR_FRAGMENT = re.compile(r"([?#])([^\s#]*)")
# AWS access key ids (long-term AKIA, temporary ASIA) wherever they appear.
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")


@dataclass(frozen=True, slots=True)
class Row:
    """One line of ``worker config``: a variable, its (redacted) value and where it came from."""

    name: str
    value: Value
    source: Source

    @property
    def line(self) -> str:
        """``NAME=value  (source)``."""
        return f"{self.name}={display(self.value)}  ({self.source})"


@dataclass(frozen=True, slots=True)
class ConfigView:
    """What ``worker config`` prints: the ``WORKER_*`` settings and the ``aws`` section."""

    settings: tuple[Row, ...]
    aws: tuple[Row, ...]


def is_sensitive_name(name: str) -> bool:
    """True when a setting's name says it holds a credential (secret, token, password, key, credential)."""
    lowered = name.lower()
    return any(word in lowered for word in _SENSITIVE_NAME_WORDS)


def redact_text(text: str) -> str:
    """``text`` with credentials replaced by ``***``: URL userinfo, credential-bearing queries and
    fragments (the host and path stay visible), and AWS access key ids."""
    text = _USERINFO.sub(lambda match: f"{match.group(1)}{REDACTED}@", text)
    text = _QUERY_OR_FRAGMENT.sub(_redact_query, text)
    return _ACCESS_KEY_ID.sub(REDACTED, text)


def _redact_query(match: re.Match[str]) -> str:
    decoded = unquote_plus(unquote_plus(match.group(2))).lower()
    if any(word in decoded for word in SENSITIVE_WORDS):
        # A closing quote is kept: an error line quotes the URL with repr().
        closing = match.group(2)[-1:] if match.group(2).endswith(("'", '"')) else ""
        return f"{match.group(1)}{REDACTED}{closing}"
    return match.group(0)


def redact_value(name: str, value: object) -> Value:
    """A setting's value as ``worker config`` shows it: ``***`` for a credential's name, texts redacted."""
    if value is None:
        return None
    if is_sensitive_name(name):
        return REDACTED
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_text(str(item)) for item in value]
    return redact_text(str(value))


def display(value: Value) -> str:
    """A value as the text form prints it: as it would be written in the environment."""
    if value is None:
        return "<unset>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value)
    text = str(value)
    return text if text.isprintable() else json.dumps(text)


def setting_rows(model: BaseModel, prefix: str) -> tuple[Row, ...]:
    """One row per field of ``model`` (nested models: one per leaf, ``PARENT__CHILD``), in field order.

    The source is ``environment`` for the fields pydantic-settings read from the environment (the
    model's ``model_fields_set``), ``default`` for the others.
    """
    rows: list[Row] = []
    for field in type(model).model_fields:
        name = f"{prefix}{field.upper()}"
        value = getattr(model, field)
        if isinstance(value, BaseModel):
            rows.extend(setting_rows(value, f"{name}__"))
            continue
        source: Source = "environment" if field in model.model_fields_set else "default"
        rows.append(Row(name, redact_value(name, value), source))
    return tuple(rows)


def aws_rows(environ: Mapping[str, str]) -> tuple[Row, ...]:
    """The AWS variables botocore will read: endpoint and region with their values, credentials set/unset."""
    rows: list[Row] = []
    for name in AWS_SHOWN:
        value = environ.get(name)
        rows.append(
            Row(name, None, "unset") if value is None else Row(name, redact_text(value), "environment")
        )
    for name in AWS_CREDENTIALS:
        rows.append(Row(name, "set", "environment") if name in environ else Row(name, "unset", "unset"))
    return tuple(rows)


def config_view(settings: BaseModel, environ: Mapping[str, str], prefix: str) -> ConfigView:
    """Everything ``worker config`` shows, from loaded settings and the environment they were loaded from."""
    return ConfigView(settings=setting_rows(settings, prefix), aws=aws_rows(environ))


def render_text(view: ConfigView) -> str:
    """The text form: one ``NAME=value  (source)`` line per setting, then the ``aws`` section."""
    lines = [row.line for row in view.settings]
    lines += ["", "# aws (read by botocore, not worker settings; credentials: set or unset only)"]
    lines += [row.line for row in view.aws]
    return "\n".join(lines)


def render_json(view: ConfigView) -> str:
    """The ``--json`` form: ``{"settings": {NAME: {"value", "source"}}, "aws": {...}, "valid": true}``."""
    document = {
        "settings": {row.name: {"value": row.value, "source": row.source} for row in view.settings},
        "aws": {row.name: {"value": row.value, "source": row.source} for row in view.aws},
        "valid": True,
    }
    return json.dumps(document, indent=2)

"""SNS subscription filter policies (pure): SNS's limits, stricter than LocalStack's, and their equality.

Not ``filters``: those are the ``--filter`` expressions of ``worker redrive`` and ``worker dlq``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from worker.ops.topology_error import TopologyError

#: SNS filter policies: five keys (leaf keys of a nested policy), 150 value combinations, 256 KiB.
FILTER_POLICY_MAX_KEYS = 5
FILTER_POLICY_MAX_COMBINATIONS = 150
FILTER_POLICY_MAX_BYTES = 256 * 1024
FILTER_POLICY_SCOPES = ("MessageAttributes", "MessageBody")


def parse_filter_policy(text: str, scope: str = "MessageAttributes") -> dict[str, Any]:
    """A filter policy as SNS accepts it: a JSON object, 5 leaf keys, 150 combinations, 256 KiB."""
    if len(text.encode()) > FILTER_POLICY_MAX_BYTES:
        raise TopologyError(f"--filter-policy: larger than {FILTER_POLICY_MAX_BYTES // 1024} KiB")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise TopologyError(f"--filter-policy: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not doc:
        raise TopologyError("--filter-policy: must be a non-empty JSON object")
    keys, combinations = _walk_policy(doc, scope, depth=1, path="")
    if len(keys) > FILTER_POLICY_MAX_KEYS:
        raise TopologyError(
            f"--filter-policy: {len(keys)} keys ({', '.join(sorted(keys))}); SNS allows "
            f"{FILTER_POLICY_MAX_KEYS} (leaf keys of a nested policy count)"
        )
    if combinations > FILTER_POLICY_MAX_COMBINATIONS:
        raise TopologyError(
            f"--filter-policy: {combinations} value combinations; SNS allows {FILTER_POLICY_MAX_COMBINATIONS}"
        )
    return doc


def _walk_policy(node: Mapping[str, Any], scope: str, *, depth: int, path: str) -> tuple[set[str], int]:
    """The leaf keys under ``node`` and its combinations (values per array x nesting depth, multiplied)."""
    keys: set[str] = set()
    combinations = 1
    for key, value in node.items():
        where = f"{path}.{key}" if path else key
        if key == "$or":
            if (
                not isinstance(value, list)
                or len(value) < 2
                or not all(isinstance(b, dict) and b for b in value)
            ):
                raise TopologyError(f'--filter-policy: "{where}" takes a list of at least two objects')
            total = 0
            for branch in value:
                branch_keys, branch_combinations = _walk_policy(branch, scope, depth=depth, path=path)
                keys |= branch_keys
                total += branch_combinations
            combinations *= total
        elif isinstance(value, dict):
            if scope != "MessageBody":
                raise TopologyError(
                    f'--filter-policy: "{where}" is nested: only --filter-policy-scope MessageBody nests'
                )
            if not value:
                raise TopologyError(f'--filter-policy: "{where}" is an empty object')
            nested_keys, nested = _walk_policy(value, scope, depth=depth + 1, path=where)
            keys |= nested_keys
            combinations *= nested
        elif isinstance(value, list):
            if not value:
                raise TopologyError(f'--filter-policy: "{where}" is an empty array (SNS refuses them)')
            for rule in value:
                if isinstance(rule, dict) and len(rule) != 1:
                    raise TopologyError(f'--filter-policy: "{where}": one operator per match expression')
                if isinstance(rule, list):
                    raise TopologyError(f'--filter-policy: "{where}": a value cannot be an array')
            keys.add(where)
            combinations *= len(value) * depth
        else:
            raise TopologyError(
                f'--filter-policy: "{where}" must be an array of values (or an object, nested)'
            )
    return keys, combinations


def same_filter_policy(found: str | None, expected: str | None) -> bool:
    """Equal as JSON; an absent policy, ``""`` and ``{}`` all mean no filtering."""
    return bool(_policy_value(found) == _policy_value(expected))


def _policy_value(text: str | None) -> Any:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value or None

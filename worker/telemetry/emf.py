"""CloudWatch Embedded Metric Format documents (pure): build them within the spec's limits, split, serialise.

A document is one JSON object on one line: an ``_aws`` metadata object (``Timestamp`` in milliseconds and
one MetricDirective: ``Namespace``, ``Dimensions``, ``Metrics``), then the dimension values and the metric
values as top-level members. CloudWatch Logs extracts the metrics from such a log event; nothing here
writes anything. The spec's limits (and CloudWatch's for names and values) are enforced here, and a group
that does not fit one document is split over several, never truncated.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: EMF: a MetricDirective holds at most 100 MetricDefinitions.
MAX_METRICS_PER_DOCUMENT = 100
#: EMF: a DimensionSet names at most 30 dimensions.
MAX_DIMENSIONS_PER_SET = 30
#: EMF: an array metric target holds at most 100 values.
MAX_VALUES_PER_METRIC = 100
#: EMF: a dimension value (its target member) is at most 1,024 characters.
MAX_DIMENSION_VALUE_CHARS = 1024
#: EMF's JSON schema: a dimension name is at most 250 characters.
MAX_DIMENSION_NAME_CHARS = 250
#: CloudWatch: a metric name is at most 255 characters (PutMetricData; EMF's schema allows 1,024).
MAX_METRIC_NAME_CHARS = 255
#: CloudWatch: a namespace is at most 255 characters.
MAX_NAMESPACE_CHARS = 255
#: EMF: a document is a CloudWatch Logs event, at most 256 KiB.
MAX_DOCUMENT_BYTES = 262_144
#: CloudWatch rejects values outside +-2^360 (and NaN or infinities, which JSON cannot carry anyway).
MAX_ABS_VALUE = 2.0**360
#: EMF: StorageResolution is 1 (high resolution) or 60 (standard, the default when absent).
STORAGE_RESOLUTIONS = frozenset({1, 60})
#: The units a MetricDefinition may name (EMF's JSON schema).
UNITS = frozenset(
    {
        "Seconds",
        "Microseconds",
        "Milliseconds",
        "Bytes",
        "Kilobytes",
        "Megabytes",
        "Gigabytes",
        "Terabytes",
        "Bits",
        "Kilobits",
        "Megabits",
        "Gigabits",
        "Terabits",
        "Percent",
        "Count",
        "Bytes/Second",
        "Kilobytes/Second",
        "Megabytes/Second",
        "Gigabytes/Second",
        "Terabytes/Second",
        "Bits/Second",
        "Kilobits/Second",
        "Megabits/Second",
        "Gigabits/Second",
        "Terabits/Second",
        "Count/Second",
        "None",
    }
)
#: CloudWatch namespaces: letters, digits, ``. - _ / # :`` and spaces, not all blank, not ``AWS/...``.
_NAMESPACE = re.compile(r"^[0-9A-Za-z._/#: -]+$")
#: Dimension values: printable ASCII (CloudWatch refuses other characters and control characters).
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_METADATA = "_aws"

Value = float | tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric of a group: a single value, or several (CloudWatch aggregates them)."""

    name: str
    unit: str
    value: Value
    storage_resolution: int | None = None

    def values(self) -> tuple[float, ...]:
        """The value(s) as a tuple."""
        return self.value if isinstance(self.value, tuple) else (self.value,)


@dataclass(frozen=True, slots=True)
class Group:
    """Metrics that share their dimension values and the dimension sets they are published under."""

    dimensions: tuple[tuple[str, str], ...]
    dimension_sets: tuple[tuple[str, ...], ...]
    metrics: tuple[Metric, ...]


def check_namespace(namespace: str) -> str:
    """The namespace if CloudWatch takes it for custom metrics; ValueError saying why otherwise."""
    if not namespace.strip():
        raise ValueError("must not be empty")
    if len(namespace) > MAX_NAMESPACE_CHARS:
        raise ValueError(f"must be at most {MAX_NAMESPACE_CHARS} characters")
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError("may contain only letters, digits, spaces and . - _ / # :")
    if namespace.startswith("AWS/"):
        raise ValueError("must not start with AWS/ (reserved for AWS services)")
    return namespace


def dimension_value(text: str, *, empty: str = "unknown") -> str:
    """``text`` made a valid dimension value: printable ASCII, not blank, at most 1,024 characters."""
    cleaned = _UNPRINTABLE.sub("?", text).strip()[:MAX_DIMENSION_VALUE_CHARS]
    return cleaned or empty


def build_documents(namespace: str, timestamp_ms: int, groups: Iterable[Group]) -> list[dict[str, Any]]:
    """The EMF documents of ``groups``, each within every limit (ValueError on input no split can fix).

    A group becomes one document when it fits, several otherwise: at most 100 metrics per document, value
    arrays cut into runs of at most 100 (one run per document, so a metric appears at most once in each),
    and no document above 256 KiB. Values of a metric spread over documents add up in CloudWatch as if sent
    in one.
    """
    check_namespace(namespace)
    if isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int) or timestamp_ms < 0:
        raise ValueError(f"timestamp must be a non-negative integer of milliseconds, got {timestamp_ms!r}")
    documents: list[dict[str, Any]] = []
    for group in groups:
        documents.extend(_group_documents(namespace, timestamp_ms, group))
    return documents


def render(documents: Sequence[dict[str, Any]]) -> str:
    """The documents as JSON lines (compact, ASCII, one per line, each ended by a newline)."""
    return "".join(_dumps(document) + "\n" for document in documents)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _group_documents(namespace: str, timestamp_ms: int, group: Group) -> list[dict[str, Any]]:
    dimensions = dict(group.dimensions)
    _check_group(group, dimensions)
    if not group.metrics:
        return []
    directive_base: dict[str, Any] = {
        "Namespace": namespace,
        "Dimensions": [list(s) for s in group.dimension_sets],
    }
    base: dict[str, Any] = {
        _METADATA: {"Timestamp": timestamp_ms, "CloudWatchMetrics": [{**directive_base, "Metrics": []}]}
    }
    base.update(dimensions)
    base_bytes = len(_dumps(base))
    # (definition, value) entries: run k of every metric, then run k + 1; a document takes entries in order.
    entries: list[tuple[dict[str, Any], str, float | list[float]]] = []
    runs = [_runs(metric) for metric in group.metrics]
    for index in range(max(len(r) for r in runs)):
        for metric, metric_runs in zip(group.metrics, runs, strict=True):
            if index < len(metric_runs):
                entries.append((_definition(metric), metric.name, metric_runs[index]))
    documents: list[dict[str, Any]] = []
    current: list[tuple[dict[str, Any], str, float | list[float]]] = []
    size = base_bytes
    for definition, name, value in entries:
        # Each entry adds its definition to the Metrics array and "name":value to the root, commas included.
        cost = len(_dumps(definition)) + len(_dumps(name)) + len(_dumps(value)) + 3
        if base_bytes + cost > MAX_DOCUMENT_BYTES:
            raise ValueError(f"metric {name!r} alone does not fit a {MAX_DOCUMENT_BYTES}-byte document")
        full = len(current) == MAX_METRICS_PER_DOCUMENT or size + cost > MAX_DOCUMENT_BYTES
        if current and (full or any(n == name for _, n, _ in current)):
            documents.append(_document(base, directive_base, current))
            current, size = [], base_bytes
        current.append((definition, name, value))
        size += cost
    if current:
        documents.append(_document(base, directive_base, current))
    return documents


def _document(
    base: dict[str, Any],
    directive_base: dict[str, Any],
    entries: list[tuple[dict[str, Any], str, float | list[float]]],
) -> dict[str, Any]:
    metadata = {
        "Timestamp": base[_METADATA]["Timestamp"],
        "CloudWatchMetrics": [{**directive_base, "Metrics": [definition for definition, _, _ in entries]}],
    }
    document = {**base, _METADATA: metadata}
    document.update({name: value for _, name, value in entries})
    return document


def _definition(metric: Metric) -> dict[str, Any]:
    definition: dict[str, Any] = {"Name": metric.name, "Unit": metric.unit}
    if metric.storage_resolution is not None:
        definition["StorageResolution"] = metric.storage_resolution
    return definition


def _runs(metric: Metric) -> list[float | list[float]]:
    if not isinstance(metric.value, tuple):
        return [metric.value]
    values = list(metric.value)
    return [values[i : i + MAX_VALUES_PER_METRIC] for i in range(0, len(values), MAX_VALUES_PER_METRIC)]


def _check_group(group: Group, dimensions: dict[str, str]) -> None:
    if len(dimensions) != len(group.dimensions):
        raise ValueError("a dimension is given twice")
    for name, value in group.dimensions:
        _check_name(name, "dimension name", MAX_DIMENSION_NAME_CHARS)
        if not isinstance(value, str) or dimension_value(value) != value:
            raise ValueError(f"dimension {name!r}: value {value!r} is not printable ASCII of 1..1024 chars")
    if not group.dimension_sets:
        raise ValueError("a group needs at least one dimension set (it may be empty)")
    for dimension_set in group.dimension_sets:
        if len(dimension_set) > MAX_DIMENSIONS_PER_SET:
            raise ValueError(f"a dimension set names at most {MAX_DIMENSIONS_PER_SET} dimensions")
        if len(set(dimension_set)) != len(dimension_set):
            raise ValueError(f"dimension set {dimension_set} names a dimension twice")
        missing = [name for name in dimension_set if name not in dimensions]
        if missing:
            raise ValueError(f"dimension set {dimension_set} names {missing} without a value")
    names = [metric.name for metric in group.metrics]
    if len(set(names)) != len(names):
        raise ValueError("a metric is given twice in one group")
    for metric in group.metrics:
        _check_metric(metric, dimensions)


def _check_metric(metric: Metric, dimensions: dict[str, str]) -> None:
    _check_name(metric.name, "metric name", MAX_METRIC_NAME_CHARS)
    if metric.name in dimensions:
        raise ValueError(f"metric {metric.name!r} has a dimension's name")
    if metric.unit not in UNITS:
        raise ValueError(f"metric {metric.name!r}: unknown unit {metric.unit!r}")
    if metric.storage_resolution is not None and metric.storage_resolution not in STORAGE_RESOLUTIONS:
        raise ValueError(f"metric {metric.name!r}: StorageResolution must be 1 or 60")
    values = metric.values()
    if not values:
        raise ValueError(f"metric {metric.name!r} has no value")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"metric {metric.name!r}: {value!r} is not a number")
        if not math.isfinite(value) or abs(value) > MAX_ABS_VALUE:
            raise ValueError(f"metric {metric.name!r}: {value!r} is out of CloudWatch's range")


def _check_name(name: str, what: str, limit: int) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > limit:
        raise ValueError(f"{what} {name!r} must be 1..{limit} characters")
    if name == _METADATA or _UNPRINTABLE.search(name) or name.startswith(":"):
        raise ValueError(f"{what} {name!r} must be printable ASCII, not {_METADATA!r}, not starting with ':'")


def histogram_values(
    buckets: Sequence[tuple[float, float]], limit: int = MAX_VALUES_PER_METRIC
) -> tuple[float, ...]:
    """At most ``limit`` values spread over a histogram's buckets as its observations are.

    ``buckets`` are ``(upper bound, observations in that bucket)`` by increasing bound, the last one may be
    ``inf``. With N observations this returns min(N, limit) values, the quantiles (k + 0.5) / M of the
    histogram, interpolated linearly inside their bucket as Prometheus's histogram_quantile does (a value
    past the last finite bound is that bound). With N <= limit each bucket gets exactly its count of values;
    above, every value stands for N / limit observations, so CloudWatch's percentiles and maximum of them
    are those of the histogram, within a bucket.
    """
    total = sum(count for _, count in buckets)
    wanted = min(round(total), limit)
    if total <= 0 or wanted <= 0:
        return ()
    values: list[float] = []
    rank = 0
    seen = 0.0
    lower = 0.0
    for upper, count in buckets:
        while count > 0 and rank < wanted and (rank + 0.5) * total / wanted <= seen + count:
            position = ((rank + 0.5) * total / wanted - seen) / count
            if math.isinf(upper):
                value = lower
            elif upper <= lower:
                value = upper
            else:
                value = lower + (upper - lower) * position
            short = round(value, 6)  # shorter lines, but never onto or past a bucket's bound
            values.append(short if lower < short <= upper or math.isinf(upper) else value)
            rank += 1
        seen += count
        if not math.isinf(upper):
            lower = upper
    while len(values) < wanted:  # float rounding left the last rank just past the last bucket
        values.append(values[-1] if values else round(lower, 6))
    return tuple(values)

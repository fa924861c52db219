"""CloudWatch EMF: documents checked against the spec's rules and limits, registry deltas, the exporter."""

from __future__ import annotations

import io
import json
import math
import os
import random
import re
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import QueueFactory
from tests.helpers import WorkerProcess, http_get, send_bodies, wait_for
from worker.settings import Settings, load_settings
from worker.telemetry.emf import (
    MAX_DOCUMENT_BYTES,
    UNITS,
    Group,
    Metric,
    build_documents,
    check_namespace,
    dimension_value,
    histogram_values,
    render,
)
from worker.telemetry.emf_writer import EmfExporter, RegistryReader
from worker.telemetry.metrics import DURATION_BUCKETS, Metrics

QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/orders"

# -- a validator of the spec's rules, written from the spec, independent of the builder --

#: Units EMF's JSON schema allows (its pattern, spelled out).
_SIZES = ("Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes", "Bits", "Kilobits", "Megabits")
SPEC_UNITS = {
    "Seconds",
    "Microseconds",
    "Milliseconds",
    *_SIZES,
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    *(f"{unit}/Second" for unit in (*_SIZES, "Gigabits", "Terabits", "Count")),
    "None",
}


def emf_errors(line: str) -> list[str]:
    """What breaks the EMF specification in one log line (empty: a valid document)."""
    errors: list[str] = []
    if len(line.encode()) > 262_144:
        errors.append("event above 256 KiB")
    try:
        doc = json.loads(line)
    except ValueError as exc:
        return [f"not JSON: {exc}"]
    if not isinstance(doc, dict):
        return ["root is not an object"]
    meta = doc.get("_aws")
    if not isinstance(meta, dict):
        return ["no _aws object"]
    if set(meta) != {"Timestamp", "CloudWatchMetrics"}:
        errors.append(f"_aws members {sorted(meta)}")
    stamp = meta.get("Timestamp")
    if not isinstance(stamp, int) or isinstance(stamp, bool) or stamp < 0:
        errors.append("Timestamp is not an integer of milliseconds")
    directives = meta.get("CloudWatchMetrics")
    if not isinstance(directives, list) or not directives:
        return [*errors, "CloudWatchMetrics is not a non-empty array"]
    for directive in directives:
        if not isinstance(directive, dict) or set(directive) != {"Namespace", "Dimensions", "Metrics"}:
            errors.append(f"directive members {directive!r}")
            continue
        namespace = directive["Namespace"]
        if not isinstance(namespace, str) or not 1 <= len(namespace) <= 1024:
            errors.append("Namespace")
        sets = directive["Dimensions"]
        if not isinstance(sets, list) or not sets:
            errors.append("Dimensions is not a non-empty array of DimensionSets")
            sets = []
        for dimension_set in sets:
            if not isinstance(dimension_set, list) or len(dimension_set) > 30:
                errors.append("DimensionSet above 30 keys")
                continue
            for key in dimension_set:
                if not isinstance(key, str) or not 1 <= len(key) <= 250:
                    errors.append(f"dimension key {key!r}")
                elif not isinstance(doc.get(key), str):
                    errors.append(f"dimension target {key!r} missing or not a string")
                elif not 1 <= len(doc[key]) <= 1024:
                    errors.append(f"dimension value of {key!r} is not 1..1024 characters")
        metrics = directive["Metrics"]
        if not isinstance(metrics, list) or len(metrics) > 100:
            errors.append("Metrics is not an array of at most 100 MetricDefinitions")
            continue
        for definition in metrics:
            if not isinstance(definition, dict) or not set(definition) <= {
                "Name",
                "Unit",
                "StorageResolution",
            }:
                errors.append(f"MetricDefinition {definition!r}")
                continue
            name = definition.get("Name")
            if not isinstance(name, str) or not 1 <= len(name) <= 1024:
                errors.append(f"metric name {name!r}")
                continue
            if "Unit" in definition and definition["Unit"] not in SPEC_UNITS:
                errors.append(f"unit {definition['Unit']!r}")
            if "StorageResolution" in definition and definition["StorageResolution"] not in (1, 60):
                errors.append("StorageResolution is not 1 or 60")
            target = doc.get(name)
            numbers = target if isinstance(target, list) else [target]
            if isinstance(target, list) and not 1 <= len(target) <= 100:
                errors.append(f"metric {name!r}: array of {len(target)} values")
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
                errors.append(f"metric target {name!r} missing or not numeric")
    return errors


def metric_values(lines: list[str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]:
    """Every value of every metric in EMF lines, by (metric name, dimension values of the document)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = defaultdict(list)
    for line in lines:
        doc = json.loads(line)
        (directive,) = doc["_aws"]["CloudWatchMetrics"]
        keys = sorted({key for dimension_set in directive["Dimensions"] for key in dimension_set})
        dims = tuple((key, doc[key]) for key in keys)
        for definition in directive["Metrics"]:
            value = doc[definition["Name"]]
            out[(definition["Name"], dims)].extend(value if isinstance(value, list) else [value])
    return out


def total(lines: list[str], name: str, **dims: str) -> float:
    """The sum of a metric over EMF lines, over the documents whose dimensions include ``dims``."""
    return sum(
        sum(values)
        for (metric, doc_dims), values in metric_values(lines).items()
        if metric == name and set(dims.items()) <= set(doc_dims)
    )


def test_validator_accepts_the_spec_example_and_rejects_broken_documents() -> None:
    """The validator passes the spec's example and finds each broken rule (so the tests below can fail)."""
    example = {
        "_aws": {
            "Timestamp": 1574109732004,
            "CloudWatchMetrics": [
                {
                    "Namespace": "lambda-function-metrics",
                    "Dimensions": [["functionVersion"]],
                    "Metrics": [{"Name": "time", "Unit": "Milliseconds", "StorageResolution": 60}],
                }
            ],
        },
        "functionVersion": "$LATEST",
        "time": 100,
        "requestId": "989ffbf8-9ace-4817-a57c-e4dd734019ee",
    }
    assert emf_errors(json.dumps(example)) == []

    def broken(change: Any) -> list[str]:
        doc = json.loads(json.dumps(example))
        change(doc)
        return emf_errors(json.dumps(doc))

    directive = lambda doc: doc["_aws"]["CloudWatchMetrics"][0]  # noqa: E731
    assert broken(lambda doc: doc.pop("time"))
    assert broken(lambda doc: doc.pop("functionVersion"))
    assert broken(lambda doc: doc.update(time=list(range(101))))
    assert broken(lambda doc: doc.update(time="100"))
    assert broken(lambda doc: directive(doc).update(Dimensions=[[f"d{i}" for i in range(31)]]))
    assert broken(lambda doc: directive(doc).update(Metrics=[{"Name": "time"}] * 101))
    assert broken(lambda doc: directive(doc)["Metrics"][0].update(Unit="Hours"))
    assert broken(lambda doc: directive(doc)["Metrics"][0].update(StorageResolution=30))
    assert broken(lambda doc: doc["_aws"].update(Timestamp=1.5))
    assert broken(lambda doc: doc["_aws"].update(Extra=1))
    assert broken(lambda doc: doc.update(functionVersion="x" * 1025))


def test_a_group_is_one_document_with_its_dimensions_and_values_at_the_root() -> None:
    """The document: _aws (Timestamp, one directive), then dimension values, then metric values."""
    group = Group(
        (("Queue", "orders"), ("HandlerVersion", "1.2.0"), ("Outcome", "succeeded")),
        (("Queue", "Outcome"), ("Queue", "HandlerVersion", "Outcome")),
        (Metric("MessagesProcessed", "Count", 42.0),),
    )
    (doc,) = build_documents("SqsWorker", 1_700_000_000_123, [group])
    assert doc == {
        "_aws": {
            "Timestamp": 1_700_000_000_123,
            "CloudWatchMetrics": [
                {
                    "Namespace": "SqsWorker",
                    "Dimensions": [["Queue", "Outcome"], ["Queue", "HandlerVersion", "Outcome"]],
                    "Metrics": [{"Name": "MessagesProcessed", "Unit": "Count"}],
                }
            ],
        },
        "Queue": "orders",
        "HandlerVersion": "1.2.0",
        "Outcome": "succeeded",
        "MessagesProcessed": 42.0,
    }
    text = render([doc])
    assert text.endswith("\n")
    assert text.count("\n") == 1
    assert emf_errors(text.rstrip("\n")) == []


_ONE = Metric("A", "Count", 1.0)


@pytest.mark.parametrize(
    ("namespace", "group", "error"),
    [
        ("AWS/SQS", Group((), ((),), (Metric("A", "Count", 1.0),)), "AWS/"),
        ("Sqs\nWorker", Group((), ((),), (Metric("A", "Count", 1.0),)), "letters"),
        ("SqsWorker", Group((), ((),), (Metric("A", "Hours", 1.0),)), "unit"),
        ("SqsWorker", Group((), ((),), (Metric("A", "Count", 1.0, 30),)), "StorageResolution"),
        ("SqsWorker", Group((), ((),), (Metric("A", "Count", math.nan),)), "range"),
        ("SqsWorker", Group((), ((),), (Metric("A", "Count", 2.0**400),)), "range"),
        ("SqsWorker", Group((), ((),), (Metric("A", "Count", ()),)), "no value"),
        ("SqsWorker", Group((), ((),), (Metric("A", "Count", 1.0), Metric("A", "Count", 2.0))), "twice"),
        ("SqsWorker", Group((), (("Queue",),), (Metric("A", "Count", 1.0),)), "without a value"),
        ("SqsWorker", Group((("Queue", "q"),), (("Queue",),), (Metric("Queue", "Count", 1.0),)), "dimension"),
        ("SqsWorker", Group((("Queue", "é"),), (("Queue",),), (Metric("A", "Count", 1.0),)), "ASCII"),
        (
            "SqsWorker",
            Group(tuple((f"d{i}", "v") for i in range(31)), (tuple(f"d{i}" for i in range(31)),), (_ONE,)),
            "at most 30 dimensions",
        ),
        ("SqsWorker", Group((), (), (Metric("A", "Count", 1.0),)), "dimension set"),
        ("SqsWorker", Group((), ((),), (Metric("_aws", "Count", 1.0),)), "_aws"),
    ],
)
def test_input_no_split_can_fix_is_refused(namespace: str, group: Group, error: str) -> None:
    """Bad namespaces, units, resolutions, values, names and dimension sets raise ValueError, never a line."""
    with pytest.raises(ValueError, match=re.escape(error)):
        build_documents(namespace, 1, [group])


#: Printable ASCII, the characters of a dimension value.
_PRINTABLE = [chr(c) for c in range(33, 127)]
#: Sizes around the limits: a single value (0), arrays of 1, 99..101, 200, 201 and 350 values.
_ARRAY_SIZES = (0, 1, 2, 99, 100, 101, 200, 201, 350)


def _value(rng: random.Random) -> float:
    """A double with a long decimal form (about 23 characters), within CloudWatch's range."""
    return rng.uniform(-1, 1) * 10.0 ** rng.randint(-300, 100)


@st.composite
def groups(draw: st.DrawFn) -> Group:
    """Valid groups near every limit: 0..30 dimensions of up to 1,024 characters, 0..250 metrics, arrays of
    up to 350 values (the bulk comes from a seeded generator, so large groups stay cheap to draw)."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    names = [f"D{i}" for i in range(draw(st.sampled_from([0, 1, 2, 29, 30]) | st.integers(0, 30)))]
    width = draw(st.sampled_from([1, 40, 1024]))
    dimensions = tuple((name, "".join(rng.choices(_PRINTABLE, k=width))) for name in names)
    sets = draw(
        st.lists(
            st.lists(st.sampled_from(names), unique=True).map(tuple) if names else st.just(()),
            min_size=1,
            max_size=3,
        )
    )
    count = draw(st.sampled_from([0, 1, 99, 100, 101, 200, 201, 250]) | st.integers(0, 250))
    sizes = draw(st.sampled_from([(0,), (0, 1, 2), (99, 100, 101), (100, 350), _ARRAY_SIZES]))
    metrics = []
    for index in range(count):
        size = rng.choice(sizes)
        value = _value(rng) if size == 0 else tuple(_value(rng) for _ in range(size))
        unit = rng.choice(sorted(UNITS))
        metrics.append(Metric(f"M{index}.{rng.randint(0, 10**9)}", unit, value, rng.choice([None, 1, 60])))
    return Group(dimensions, tuple(sets), tuple(metrics))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(group=groups())
def test_any_group_splits_into_valid_documents_that_lose_and_repeat_nothing(group: Group) -> None:
    """Every document passes the validator (100 metrics, 100 values, 30 dimensions, 256 KiB) and together
    they carry each metric's values exactly once, in order, under the group's dimensions."""
    _check_split(group)


def test_the_largest_group_splits_by_count_and_by_size() -> None:
    """30 dimensions of 1,024 characters and 250 metrics of 350 long values: split by every limit."""
    rng = random.Random(7)
    names = [f"D{i}" for i in range(30)]
    group = Group(
        tuple((name, "".join(rng.choices(_PRINTABLE, k=1024))) for name in names),
        (tuple(names), tuple(names[:1])),
        tuple(Metric(f"M{i}", "Seconds", tuple(_value(rng) for _ in range(350))) for i in range(250)),
    )
    documents = _check_split(group)
    sizes = [len(line.encode()) for line in render(documents).splitlines()]
    assert max(sizes) > 0.9 * MAX_DOCUMENT_BYTES, "documents are filled up to the size limit"
    assert len(documents) > 10, "250 metrics x 4 runs: 10 documents of 100 by count, more by size"


def _check_split(group: Group) -> list[dict[str, Any]]:
    documents = build_documents("SqsWorker", 1_700_000_000_000, [group])
    lines = render(documents).splitlines()
    for line in lines:
        assert emf_errors(line) == []
        assert len(line.encode()) <= MAX_DOCUMENT_BYTES
    got = metric_values(lines)
    dims = tuple(sorted((key, dict(group.dimensions)[key]) for key in _used(group)))
    assert {name for name, _ in got} == {metric.name for metric in group.metrics}
    for metric in group.metrics:
        assert got[(metric.name, dims)] == list(metric.values())
    needed = max((math.ceil(len(m.values()) / 100) for m in group.metrics), default=0)
    assert len(documents) >= max(needed, math.ceil(len(group.metrics) / 100))
    return documents


def _used(group: Group) -> set[str]:
    return {key for dimension_set in group.dimension_sets for key in dimension_set}


@settings(max_examples=200, deadline=None)
@given(counts=st.lists(st.integers(min_value=0, max_value=5000), min_size=len(DURATION_BUCKETS) + 1))
def test_histogram_values_are_bounded_and_spread_like_the_observations(counts: list[int]) -> None:
    """min(N, 100) sorted values: up to 100 observations exactly each bucket's count of values in it, above
    that within 1/M of each cumulative fraction (runs past the last bound read as that bound)."""
    bounds = list(DURATION_BUCKETS)
    finite, overflow = counts[: len(bounds)], counts[len(bounds)]
    buckets = [*zip(bounds, map(float, finite), strict=True), (math.inf, float(overflow))]
    values = histogram_values(buckets)
    n = sum(counts[: len(bounds) + 1])
    m = min(n, 100)
    assert len(values) == m
    assert list(values) == sorted(values)
    assert all(0 < v <= bounds[-1] for v in values)
    expected = [*finite[:-1], finite[-1] + overflow]
    lower, cumulative = 0.0, 0
    for bound, count in zip(bounds, expected, strict=True):
        cumulative += count
        if n <= 100:
            assert sum(1 for v in values if lower < v <= bound) == count, bound
        else:
            assert abs(sum(1 for v in values if v <= bound) / m - cumulative / n) <= 1 / m + 1e-9, bound
        lower = bound


def test_histogram_values_interpolate_inside_a_bucket() -> None:
    """Four runs in (0.1, 0.25]: four values spread inside it; runs past 900 s read as 900 s."""
    assert histogram_values([(0.1, 0.0), (0.25, 4.0), (math.inf, 0.0)]) == (
        0.11875,
        0.15625,
        0.19375,
        0.23125,
    )
    assert histogram_values([(900.0, 0.0), (math.inf, 2.0)]) == (900.0, 900.0)
    assert histogram_values([(1.0, 0.0)]) == ()


def test_dimension_values_are_made_valid() -> None:
    """Non-ASCII and control characters become ?, blank becomes unknown, long values are cut to 1,024."""
    assert dimension_value("v1.2") == "v1.2"
    assert dimension_value("vé\n") == "v??"
    assert dimension_value("  ") == "unknown"
    assert len(dimension_value("x" * 2000)) == 1024


# -- settings --


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Only the required WORKER_* variables set."""
    for name in list(os.environ):
        if name.upper().startswith("WORKER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("WORKER_QUEUE_URL", QUEUE)
    monkeypatch.setenv("WORKER_HANDLER", "tests.handlers:scripted")
    return monkeypatch


def test_emf_settings_defaults_and_values(env: pytest.MonkeyPatch) -> None:
    """Off by default, namespace SqsWorker, 60 s; STDOUT and an absolute path are read as given."""
    settings = load_settings()
    assert (settings.metrics_emf, settings.metrics_emf_namespace) == ("off", "SqsWorker")
    assert settings.metrics_emf_interval_seconds == 60
    env.setenv("WORKER_METRICS_EMF", " STDOUT ")
    env.setenv("WORKER_METRICS_EMF_NAMESPACE", "Orders/Worker")
    env.setenv("WORKER_METRICS_EMF_INTERVAL_SECONDS", "10")
    settings = load_settings()
    assert (settings.metrics_emf, settings.metrics_emf_namespace) == ("stdout", "Orders/Worker")
    assert settings.metrics_emf_interval_seconds == 10
    env.setenv("WORKER_METRICS_EMF", "/var/log/worker/emf.log")
    assert load_settings().metrics_emf == "/var/log/worker/emf.log"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WORKER_METRICS_EMF", "emf.log"),
        ("WORKER_METRICS_EMF", "stderr"),
        ("WORKER_METRICS_EMF_NAMESPACE", "AWS/SQS"),
        ("WORKER_METRICS_EMF_NAMESPACE", "sqs worker é"),
        ("WORKER_METRICS_EMF_INTERVAL_SECONDS", "0"),
    ],
)
def test_bad_emf_settings_name_their_variable(env: pytest.MonkeyPatch, variable: str, value: str) -> None:
    """A relative path, a reserved or invalid namespace, a zero interval: one line naming the variable."""
    from worker.errors import ConfigError

    env.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(f"{variable}: ")
    assert "\n" not in str(caught.value)


@settings(max_examples=300, deadline=None)
@given(
    namespace=st.text(st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=260) | st.just("AWS/x")
)
def test_settings_and_builder_agree_on_namespaces(namespace: str) -> None:
    """WORKER_METRICS_EMF_NAMESPACE accepts exactly the namespaces the document builder accepts."""
    try:
        check_namespace(namespace)
        builder_ok = True
    except ValueError:
        builder_ok = False
    try:
        Settings(queue_url=QUEUE, handler="a.b:c", metrics_emf_namespace=namespace)
        settings_ok = True
    except ValueError:
        settings_ok = False
    assert builder_ok == settings_ok


# -- deltas from the registry, and the exporter --


def _processed(metrics: Metrics, outcome: str, n: int = 1, version: str = "1.0") -> None:
    metrics.processed.labels("orders", "app:handle", version, outcome).inc(n)


def test_reader_publishes_deltas_of_the_registry_since_the_last_commit() -> None:
    """Counters as deltas (zero when idle), gauges as they are; an uncommitted read is counted again."""
    metrics = Metrics()
    reader = RegistryReader(metrics, "orders", clock=lambda: 1000.0)
    metrics.received.labels("orders").inc(5)
    _processed(metrics, "succeeded", 4)
    _processed(metrics, "retried", 1)
    metrics.retries.labels("orders", "delayed").inc()
    metrics.dead_lettered.labels("orders", "RetriesExhausted").inc(2)
    metrics.sqs_errors.labels("ReceiveMessage").inc(3)
    metrics.heartbeats.labels("orders", "lease_lost").inc()
    metrics.heartbeats.labels("orders", "ok").inc(7)
    metrics.destination_deliveries.labels("sqs:out", "failed").inc()
    metrics.destination_deliveries.labels("sqs:out", "ok").inc(9)
    metrics.in_flight.labels("orders").set(6)
    metrics.in_flight.labels("orders-dlq").set(100)  # another queue's series: not this worker's
    metrics.last_poll_success.labels("orders").set(990.0)
    for seconds in (0.02, 0.3, 0.3):
        metrics.handler_duration.labels("orders", "app:handle", "1.0").observe(seconds)

    first = reader.read()
    lines = render(build_documents("SqsWorker", 1, first.groups)).splitlines()
    assert all(emf_errors(line) == [] for line in lines)
    assert total(lines, "MessagesReceived") == 5
    assert total(lines, "MessagesProcessed", Outcome="succeeded", HandlerVersion="1.0") == 4
    assert total(lines, "MessagesProcessed", Outcome="retried") == 1
    assert (total(lines, "Retries"), total(lines, "DeadLettered"), total(lines, "SqsErrors")) == (1, 2, 3)
    assert (total(lines, "LeasesLost"), total(lines, "DestinationFailures")) == (1, 1)
    assert (total(lines, "MessagesInFlight"), total(lines, "SecondsSinceLastPoll")) == (6, 10)
    durations = metric_values(lines)[("HandlerDuration", (("HandlerVersion", "1.0"), ("Queue", "orders")))]
    assert len(durations) == 3
    assert 0.01 < durations[0] <= 0.025
    assert all(0.25 < d <= 0.5 for d in durations[1:])

    again = render(build_documents("SqsWorker", 2, reader.read().groups)).splitlines()
    assert total(again, "MessagesReceived") == 5, "not committed: the same counts go out again"
    reader.commit(first)
    metrics.received.labels("orders").inc(2)
    _processed(metrics, "succeeded", 2)
    later = render(build_documents("SqsWorker", 3, reader.read().groups)).splitlines()
    assert total(later, "MessagesReceived") == 2
    assert total(later, "MessagesProcessed", Outcome="succeeded") == 2
    assert total(later, "MessagesProcessed", Outcome="retried") == 0, "a known outcome reports its zero"
    assert total(later, "Retries") == 0
    assert total(later, "MessagesInFlight") == 6
    assert not any(name == "HandlerDuration" for name, _ in metric_values(later)), "no runs: no duration line"


class FailingOnce(io.StringIO):
    """A stdout whose first write fails (a full disk, a closed pipe)."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    def write(self, text: str) -> int:
        """Fail the first time."""
        if self.failures == 0:
            self.failures += 1
            raise OSError(28, "No space left on device")
        return super().write(text)


async def test_exporter_flushes_periodically_and_once_more_when_cancelled() -> None:
    """Lines every interval; a failed write goes out with the next flush; cancelling flushes the rest."""
    metrics = Metrics()
    out = FailingOnce()
    exporter = EmfExporter(
        metrics, "orders", target="stdout", namespace="SqsWorker", interval=0.05, stdout=out
    )
    metrics.received.labels("orders").inc(3)
    async with anyio.create_task_group() as tg:
        await tg.start(exporter.run)
        await wait_for(lambda: exporter.lines_written >= 2, timeout=10, what="two flushes written")
        assert out.failures == 1
        assert exporter.failed_writes == 1
        metrics.received.labels("orders").inc(4)
        tg.cancel_scope.cancel()
    lines = out.getvalue().splitlines()
    assert all(emf_errors(line) == [] for line in lines)
    assert total(lines, "MessagesReceived") == 7, "the failed flush's 3 went out later, the last 4 at cancel"


async def test_exporter_refuses_a_file_it_cannot_append_to(tmp_path: Path) -> None:
    """A path in a missing directory stops start-up with a ConfigError naming WORKER_METRICS_EMF."""
    from worker.errors import ConfigError

    exporter = EmfExporter(
        Metrics(), "orders", target=str(tmp_path / "missing" / "emf.log"), namespace="SqsWorker", interval=60
    )
    with pytest.raises(ConfigError, match=r"^WORKER_METRICS_EMF: cannot append to .*emf\.log"):
        await exporter.run()


# -- end to end: a worker process with EMF to a file --


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = http_get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def _prometheus_sum(
    scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return sum(v for (n, ls), v in scrape.items() if n == name and set(labels.items()) <= set(ls))


@pytest.mark.localstack
async def test_worker_writes_emf_whose_counts_match_metrics_and_flushes_at_sigterm(
    sqs: Any, queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """EMF to a file: nothing before the (hour-long) interval, then at SIGTERM valid lines whose sums equal
    what /metrics said: received, processed by outcome, dead-lettered, durations."""
    q = await queues()
    emf = tmp_path / "emf.log"
    worker = WorkerProcess(
        aws_env,
        tmp_path,
        queue_url=q["url"],
        dlq_url=q["dlq_url"],
        max_attempts=1,
        handler_version="2.1.0",
        metrics_emf=str(emf),
        metrics_emf_namespace="SqsWorkerTest",
        metrics_emf_interval_seconds=3600,
    ).start()
    try:
        await worker.wait_ready()
        await send_bodies(
            sqs, q["url"], [{"key": f"ok{i}"} for i in range(4)] + [{"key": "bad", "do": "fail"}]
        )

        def settled() -> Any:
            scrape = _scrape(worker.port)
            done = _prometheus_sum(scrape, "worker_messages_processed_total")
            return scrape if done == 5 and _prometheus_sum(scrape, "worker_messages_in_flight") == 0 else None

        scrape = await wait_for(settled, timeout=30, what="5 messages processed")
        assert emf.exists(), "created (checked) at start-up"
        assert emf.read_text() == "", "no flush before the interval or the stop"
        worker.signal(signal.SIGTERM)
        assert await worker.wait(timeout=30) == 0
    finally:
        worker.kill()
    lines = emf.read_text().splitlines()
    assert lines, worker.logs()[-2000:]
    assert [error for line in lines for error in emf_errors(line)] == []
    assert {json.loads(line)["_aws"]["CloudWatchMetrics"][0]["Namespace"] for line in lines} == {
        "SqsWorkerTest"
    }
    queue = q["url"].rsplit("/", 1)[-1]
    docs = [json.loads(line) for line in lines]
    assert len({doc["_aws"]["Timestamp"] for doc in docs}) == 1, "one flush, at the stop"
    assert sum(1 for doc in docs if "MessagesReceived" in doc) == 1
    processed = {
        outcome: _prometheus_sum(scrape, "worker_messages_processed_total", queue=queue, outcome=outcome)
        for outcome in ("succeeded", "retried", "dead_lettered")
    }
    assert processed == {"succeeded": 4, "retried": 0, "dead_lettered": 1}
    for outcome, count in processed.items():
        assert (
            total(lines, "MessagesProcessed", Queue=queue, Outcome=outcome, HandlerVersion="2.1.0") == count
        )
    received = _prometheus_sum(scrape, "worker_messages_received_total", queue=queue)
    assert total(lines, "MessagesReceived", Queue=queue) == received == 5
    assert total(lines, "DeadLettered", Queue=queue) == 1
    durations = metric_values(lines)[("HandlerDuration", (("HandlerVersion", "2.1.0"), ("Queue", queue)))]
    assert len(durations) == _prometheus_sum(scrape, "worker_handler_duration_seconds_count") == 5

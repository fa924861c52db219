"""CloudWatch EMF export: deltas read from the Prometheus registry, written as EMF lines every N seconds.

The Prometheus registry stays the one source of truth: each flush reads it, subtracts what the previous
flush read, and writes the difference as Embedded Metric Format lines (built by ``emf.py``) to stdout or
appended to a file. Nothing in the engine knows this exporter exists. A failed write keeps the baseline,
so its counts go out with the next flush; the last flush runs at shutdown, shielded and bounded.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TextIO

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from worker.errors import ConfigError
from worker.telemetry.emf import Group, Metric, build_documents, dimension_value, histogram_values, render
from worker.telemetry.metrics import Metrics

log = logging.getLogger("worker.emf")

#: The value of WORKER_METRICS_EMF that writes to the process's standard output.
STDOUT = "stdout"
#: A write gives up after this long (a stuck stdout must hold neither the loop nor the exit).
WRITE_TIMEOUT_SECONDS = 5.0

Key = tuple[str, tuple[tuple[str, str], ...]]
Samples = Mapping[str, list[tuple[dict[str, str], float]]]
#: The delta of one series since the baseline: (sample name, labels) -> change.
Delta = Callable[[str, dict[str, str]], float]

#: Queue-level counters: EMF name -> (sample name, which of its series count). A series without a
#: ``queue`` label (SQS errors, destinations) belongs to the worker's one queue.
_QUEUE_COUNTERS: tuple[tuple[str, str, Callable[[Mapping[str, str]], bool]], ...] = (
    ("MessagesReceived", "worker_messages_received_total", lambda labels: True),
    ("Retries", "worker_retries_total", lambda labels: True),
    ("DeadLettered", "worker_dead_lettered_total", lambda labels: True),
    ("HandlerTimeouts", "worker_handler_timeouts_total", lambda labels: True),
    ("LeasesLost", "worker_visibility_extensions_total", lambda labels: labels["result"] == "lease_lost"),
    ("SqsErrors", "worker_sqs_errors_total", lambda labels: True),
    ("DestinationFailures", "worker_destination_deliveries_total", lambda labels: labels["result"] != "ok"),
)
#: Queue-level gauges, sampled at each flush: EMF name -> (sample name, which of its series count).
_QUEUE_GAUGES: tuple[tuple[str, str, Callable[[Mapping[str, str]], bool]], ...] = (
    ("MessagesInFlight", "worker_messages_in_flight", lambda labels: True),
    ("AbandonedThreads", "worker_abandoned_threads", lambda labels: True),
    ("CircuitsOpen", "worker_circuit_state", lambda labels: labels["state"] == "open"),
)
_LAST_POLL = "worker_last_poll_success_timestamp_seconds"
_PROCESSED = "worker_messages_processed_total"
_DURATION_BUCKET = "worker_handler_duration_seconds_bucket"


class EmfSettings(Protocol):
    """The settings the exporter reads (``worker.settings.Settings`` has them)."""

    @property
    def metrics_emf(self) -> str: ...
    @property
    def metrics_emf_namespace(self) -> str: ...
    @property
    def metrics_emf_interval_seconds(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Reading:
    """One read of the registry: the groups to publish, and the totals that become the next baseline."""

    groups: tuple[Group, ...]
    totals: Mapping[Key, float]


class RegistryReader:
    """Turns the registry's totals into EMF groups of what changed since the last committed reading."""

    def __init__(self, metrics: Metrics, queue: str, *, clock: Callable[[], float] = time.time) -> None:
        self._metrics = metrics
        self._queue = queue
        self._clock = clock
        self._baseline: dict[Key, float] = {}

    def read(self) -> Reading:
        """The groups since the baseline (counters as deltas, gauges as they are now)."""
        samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        totals: dict[Key, float] = {}
        for family in self._metrics.registry.collect():
            for sample in family.samples:
                labels = dict(sample.labels)
                if labels.get("queue", self._queue) != self._queue:
                    continue  # the DLQ's depth gauges, a redrive's series
                samples[sample.name].append((labels, sample.value))
                totals[(sample.name, tuple(sorted(labels.items())))] = sample.value
        deltas = {key: self._delta(key, value) for key, value in totals.items()}

        def delta(name: str, labels: dict[str, str]) -> float:
            return deltas[(name, tuple(sorted(labels.items())))]

        groups = [self._queue_group(samples, delta)]
        groups.extend(self._processed_groups(samples, delta))
        groups.extend(self._duration_groups(samples, delta))
        return Reading(tuple(groups), totals)

    def commit(self, reading: Reading) -> None:
        """Make ``reading`` the baseline of the next one (once its lines were written)."""
        self._baseline.update(reading.totals)

    def _delta(self, key: Key, value: float) -> float:
        change = value - self._baseline.get(key, 0.0)
        return value if change < 0 else change  # below the baseline: the series restarted

    def _queue_group(self, samples: Samples, delta: Delta) -> Group:
        metrics = [
            Metric(name, "Count", sum(delta(sample, labels) for labels, _ in samples[sample] if keep(labels)))
            for name, sample, keep in _QUEUE_COUNTERS
        ]
        metrics.extend(
            Metric(name, "Count", sum(value for labels, value in samples[sample] if keep(labels)))
            for name, sample, keep in _QUEUE_GAUGES
        )
        last_poll = max((value for _, value in samples[_LAST_POLL]), default=0.0)
        if last_poll > 0:
            metrics.append(
                Metric("SecondsSinceLastPoll", "Seconds", round(max(0.0, self._clock() - last_poll), 3))
            )
        return Group((("Queue", self._queue),), (("Queue",),), tuple(metrics))

    def _processed_groups(self, samples: Samples, delta: Delta) -> Iterable[Group]:
        counts: dict[tuple[str, str], float] = defaultdict(float)
        for labels, _ in samples[_PROCESSED]:
            counts[(labels["handler_version"], labels["outcome"])] += delta(_PROCESSED, labels)
        for (version, outcome), count in sorted(counts.items()):
            yield Group(
                (("Queue", self._queue), ("HandlerVersion", dimension_value(version)), ("Outcome", outcome)),
                (("Queue", "Outcome"), ("Queue", "HandlerVersion", "Outcome")),
                (Metric("MessagesProcessed", "Count", count),),
            )

    def _duration_groups(self, samples: Samples, delta: Delta) -> Iterable[Group]:
        cumulative: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        for labels, _ in samples[_DURATION_BUCKET]:
            bound = math.inf if labels["le"] == "+Inf" else float(labels["le"])
            cumulative[labels["handler_version"]][bound] += delta(_DURATION_BUCKET, labels)
        for version, by_bound in sorted(cumulative.items()):
            buckets: list[tuple[float, float]] = []
            below = 0.0
            for bound in sorted(by_bound):
                buckets.append((bound, max(0.0, by_bound[bound] - below)))
                below = by_bound[bound]
            values = histogram_values(buckets)
            if values:  # no run since the last flush: no line (an empty array is not a metric value)
                yield Group(
                    (("Queue", self._queue), ("HandlerVersion", dimension_value(version))),
                    (("Queue",), ("Queue", "HandlerVersion")),
                    (Metric("HandlerDuration", "Seconds", values),),
                )


class EmfExporter:
    """Flushes the registry's changes as EMF lines every ``interval`` seconds and once more at shutdown."""

    def __init__(
        self,
        metrics: Metrics,
        queue: str,
        *,
        target: str,
        namespace: str,
        interval: float,
        clock: Callable[[], float] = time.time,
        stdout: TextIO | None = None,
    ) -> None:
        self.target = target
        self.namespace = namespace
        self.interval = interval
        self._clock = clock
        self._stdout = stdout
        self._reader = RegistryReader(metrics, queue, clock=clock)
        #: Lines written so far, and flushes whose write failed (their counts went out with a later one).
        self.lines_written = 0
        self.failed_writes = 0

    @classmethod
    def for_settings(cls, settings: EmfSettings, metrics: Metrics, queue: str) -> EmfExporter:
        """The exporter WORKER_METRICS_EMF, _NAMESPACE and _INTERVAL_SECONDS describe."""
        return cls(
            metrics,
            queue,
            target=settings.metrics_emf,
            namespace=settings.metrics_emf_namespace,
            interval=settings.metrics_emf_interval_seconds,
        )

    def check_target(self) -> None:
        """ConfigError naming WORKER_METRICS_EMF when the file cannot be appended to."""
        if self.target == STDOUT:
            return
        try:
            open(self.target, "a", encoding="ascii").close()  # created, or checked, once
        except OSError as exc:
            raise ConfigError(
                f"WORKER_METRICS_EMF: cannot append to {self.target}: {exc.strerror or exc}"
            ) from None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Check the target, then flush every interval until cancelled, and once more when cancelled."""
        self.check_target()
        task_status.started()
        due = anyio.current_time()
        try:
            while True:
                due += self.interval  # a fixed cadence: one flush per interval, no drift
                await anyio.sleep_until(due)
                await self.flush()
        finally:
            await self.flush()  # shielded inside: runs whole in a cancelled task

    async def flush(self) -> int:
        """Write what changed since the last written flush; returns the number of lines written.

        The write runs in a thread, shielded from cancellation and bounded by WRITE_TIMEOUT_SECONDS: a
        flush under way at shutdown completes (no half-written baseline), a stuck stdout is given up on.
        A failed or abandoned write leaves the baseline where it was: its counts go with the next flush.
        """
        reading = self._reader.read()
        timestamp = int(self._clock() * 1000)
        text = render(build_documents(self.namespace, timestamp, reading.groups))
        error: OSError | None = None
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + WRITE_TIMEOUT_SECONDS
            try:
                await anyio.to_thread.run_sync(self._write, text, abandon_on_cancel=True)
            except OSError as exc:
                error = exc
        if error is not None or scope.cancelled_caught:
            self.failed_writes += 1
            log.warning(
                "EMF metrics not written; their counts go with the next flush",
                extra={
                    "event": "emf_write_failed",
                    "error": type(error).__name__ if error else "timeout",
                    "errno": error.errno if error else None,
                },
            )
            return 0
        self._reader.commit(reading)
        lines = text.count("\n")
        self.lines_written += lines
        return lines

    def _write(self, text: str) -> None:
        if self.target == STDOUT:
            stream = self._stdout or sys.stdout
            stream.write(text)
            stream.flush()
            return
        with open(self.target, "a", encoding="ascii") as fh:
            fh.write(text)

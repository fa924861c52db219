"""One Prometheus registry and every metric object of the worker (names are the public contract)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from worker._version import __version__

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
AGE_BUCKETS = (0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400, 345600)


class Metrics:
    """All metrics, registered in their own registry (no globals, one instance per worker)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "worker_messages_received", "Messages received from SQS.", ["queue"], registry=r
        )
        self.processed = Counter(
            "worker_messages_processed",
            "Messages that left a handler run, by outcome (succeeded, retried, dead_lettered).",
            ["queue", "handler", "handler_version", "outcome"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "worker_dead_lettered",
            "Messages written to the DLQ, by condition.",
            ["queue", "condition"],
            registry=r,
        )
        self.handler_duration = Histogram(
            "worker_handler_duration_seconds",
            "Wall time of one handler invocation.",
            ["queue", "handler", "handler_version"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.handler_timeouts = Counter(
            "worker_handler_timeouts",
            "Handler invocations cancelled by the per-message timeout.",
            ["queue", "handler", "handler_version"],
            registry=r,
        )
        self.retries = Counter(
            "worker_retries",
            "Retries scheduled, by kind (immediate, delayed).",
            ["queue", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "worker_messages_in_flight", "Messages held by this worker.", ["queue"], registry=r
        )
        self.concurrency_limit = Gauge(
            "worker_concurrency_limit", "Configured maximum of messages in flight.", ["queue"], registry=r
        )
        self.pollers = Gauge(
            "worker_pollers",
            "Receive loops running (automatic between 1 and its bound unless WORKER_POLLERS fixes them).",
            ["queue"],
            registry=r,
        )
        self.abandoned_threads = Gauge(
            "worker_abandoned_threads",
            "Threads of timed-out plain def handlers still running (abandoned at their deadline).",
            ["queue"],
            registry=r,
        )
        self.abandoned_threads_limit = Gauge(
            "worker_abandoned_threads_limit",
            "WORKER_MAX_ABANDONED_THREADS: receiving pauses while this many (when above 0) still run.",
            ["queue"],
            registry=r,
        )
        self.message_age = Histogram(
            "worker_message_age_seconds",
            "Age of a message when received (sent to received).",
            ["queue"],
            buckets=AGE_BUCKETS,
            registry=r,
        )
        self.last_poll_success = Gauge(
            "worker_last_poll_success_timestamp_seconds",
            "Unix time of the last successful ReceiveMessage.",
            ["queue"],
            registry=r,
        )
        self.queue_messages = Gauge(
            "worker_queue_messages",
            "Queue depth from GetQueueAttributes, by state (visible, in_flight, delayed).",
            ["queue", "state"],
            registry=r,
        )
        self.destination_deliveries = Counter(
            "worker_destination_deliveries",
            "Destination deliveries, by result (ok, failed, dropped).",
            ["destination", "result"],
            registry=r,
        )
        self.sqs_errors = Counter(
            "worker_sqs_errors", "Failed SQS calls or batch entries, by operation.", ["operation"], registry=r
        )
        self.heartbeats = Counter(
            "worker_visibility_extensions",
            "Visibility extensions (heartbeats) by result (ok, failed, lease_lost).",
            ["queue", "result"],
            registry=r,
        )
        self.redrive = Counter(
            "worker_redrive_messages",
            "Messages handled by the redrive worker, by result.",
            ["source", "result"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "worker_circuit_state",
            "Circuit breaker state per dependency: 1 for its current state (closed, open, half_open).",
            ["queue", "dependency", "state"],
            registry=r,
        )
        self.circuit_transitions = Counter(
            "worker_circuit_transitions",
            "Circuit breaker state changes per dependency, by the state entered.",
            ["queue", "dependency", "to"],
            registry=r,
        )
        self.canary_weight = Gauge(
            "worker_canary_weight",
            "Percent of messages routed to the canary handler version (0-100).",
            ["queue"],
            registry=r,
        )
        self.canary_state = Gauge(
            "worker_canary_state",
            "Canary rollout state: 1 for the current one (progressing, promoted, rolled_back).",
            ["queue", "state"],
            registry=r,
        )
        self.canary_transitions = Counter(
            "worker_canary_transitions",
            "Canary rollout state changes, by the state entered.",
            ["queue", "to"],
            registry=r,
        )
        self.active = Gauge(
            "worker_active",
            "Blue/green: 1 while this worker's colour is the active one (it polls), 0 in standby.",
            ["color"],
            registry=r,
        )
        self.build_info = Info("worker_build", "Build information.", registry=r)
        self.build_info.info({"version": __version__})

"""Open-loop latency (issue 15, T5): each consumer under a producer at 50 % and 80 % of its measured capacity,
latencies recorded into HDR histograms.

``python -m bench.openloop`` (or :func:`open_loop` from the bench's own run): for each consumer, its capacity
first (a closed-loop no-op drain, ``Bench.drain``, steady-state rate; or ``--capacity``), then for each load
level a fresh queue, the consumer with the ``latency`` handler, and an **open-loop** producer for
``--warmup-seconds`` + ``--seconds``: SendMessageBatch calls (up to 10 messages) on a fixed schedule of evenly
spaced ticks, sent by several sender tasks, each tick at its scheduled time however long earlier sends took.
A send that cannot start on time (every sender busy, the event loop late) starts late, and its messages still
carry their *scheduled* time: the delay counts in every latency below instead of being left out (no
coordinated omission), and the lag itself is reported (``schedule_lag``: scheduled -> send started, per tick).

The consumer talks to the emulator through a timing proxy (a subclass of the bench's counting proxy, in this
process): it reads the answers to ReceiveMessage (message id, receipt handle, ``SentTimestamp``) and to
DeleteMessageBatch/DeleteMessage, and stamps each answer as its last byte is handed on to the consumer.
The handler writes its start (``bench/handlers.py``: handler start - the body's ``"t"``, with the message id).
All times are this machine's wall clock. Per message (the warm-up's messages excluded):

- ``end_to_end``: ``SentTimestamp`` (SQS's attribute, ms) -> delete acknowledged (the DeleteMessageBatch
  answer back at the consumer): the issue's definition. Only where the consumer's receives ask for
  ``SentTimestamp``: otherwise left out, and ``omitted`` says why.
- ``scheduled_to_deleted``: the scheduled send time -> delete acknowledged: end to end including any producer
  lag; every consumer has it.
- ``scheduled_to_handler``: the scheduled send time -> handler start (the handler's own record).
- ``receive_to_handler``: the ReceiveMessage answer back at the consumer -> handler start: the consumer's own
  dispatch delay (``ApproximateFirstReceiveTimestamp`` is not used: the emulator's clock, in ms, before the
  answer's trip back).

Each figure is an ``hdrhistogram.HdrHistogram`` of microseconds (1 us .. 1 h, 3 significant digits), reported
as p50/p90/p99/p99.9/max in ms, the count, and its ``encode()`` text (``HdrHistogram.decode`` reads it back).
Every run also checks that each acknowledged message was handled and deleted (counts, duplicates; a message
still missing ``--settle-seconds`` after the schedule is counted as missing, not in the histograms, and the
table flags it), and counts the consumer's SQS requests per 1,000 messages under this load. The proxy is one
more loopback hop on every SQS call of the consumer (the same for each consumer); the capacity drain runs
without it, and without the producer's sends, which the emulator also serves during the open loop: a level
above what it sustains then shows as a growing backlog, i.e. as latency, not as a lower send rate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from bench import consumers
from bench.common import log, write_results
from bench.countproxy import ConnectionHooks, CountingProxy
from bench.emulators import http_get
from bench.measure import BODY_BYTES, Bench

#: The histograms' range and precision: 1 us .. 1 h, 3 significant digits.
LOWEST_US = 1
HIGHEST_US = 3_600 * 1_000_000
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
#: SendMessageBatch's limit.
BATCH_MAX = 10
#: The figures of every run, in the table's order.
FIGURES = ("end_to_end", "scheduled_to_deleted", "scheduled_to_handler", "receive_to_handler")
#: Consumers of the default run: the raw loop, the worker and bbc/sqs-consumer.
DEFAULT_CONSUMERS = ("raw", "worker", "sqs-consumer")
DEFAULT_LEVELS = (0.5, 0.8)

# --------------------------------------------------------------------------------------------------
# Histograms


@dataclass
class Histogram:
    """Seconds recorded as microseconds in an HdrHistogram; values out of range are clamped and counted."""

    hdr: HdrHistogram = field(default_factory=lambda: HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS))
    #: Values below zero (clocks disagreeing), recorded as 1 us, and the lowest of them.
    negative: int = 0
    most_negative: float = 0.0
    #: Values above an hour, recorded as an hour.
    above: int = 0

    def record(self, seconds: float) -> None:
        """One value, in seconds."""
        us = round(seconds * 1_000_000)
        if seconds < 0:
            self.negative += 1
            self.most_negative = min(self.most_negative, seconds)
        if us > HIGHEST_US:
            self.above += 1
        self.hdr.record_value(min(max(us, LOWEST_US), HIGHEST_US))

    @property
    def count(self) -> int:
        """Values recorded."""
        return int(self.hdr.get_total_count())

    def summary(self) -> dict[str, Any]:
        """count, p50/p90/p99/p99.9/max in ms (each the highest value equivalent to the recorded one, within
        0.1 %), the clamped counts, and the histogram's ``encode()`` text."""
        out: dict[str, Any] = {"count": self.count}
        if not self.count:
            return out
        for pct in PERCENTILES:
            out[percentile_key(pct)] = self.hdr.get_value_at_percentile(pct) / 1000
        out["max_ms"] = self.hdr.get_max_value() / 1000
        if self.negative:
            out["negative"] = self.negative
            out["most_negative_ms"] = round(self.most_negative * 1000, 3)
        if self.above:
            out["above_range"] = self.above
        out["hdr"] = self.hdr.encode().decode("ascii")
        return out


def percentile_key(pct: float) -> str:
    """The JSON key of a percentile: p50_ms, p99_ms, p99_9_ms."""
    return "p" + f"{pct:g}".replace(".", "_") + "_ms"


# --------------------------------------------------------------------------------------------------
# The schedule


@dataclass(frozen=True)
class Tick:
    """One SendMessageBatch of the schedule."""

    #: Seconds after the start of the schedule.
    at: float
    #: Messages in it (1 .. 10).
    size: int
    #: The sequence number of its first message.
    first: int


def schedule(rate: float, seconds: float, tick_hz: float = 50.0, batch_max: int = BATCH_MAX) -> list[Tick]:
    """``round(rate * seconds)`` messages in ``n`` evenly spaced ticks, tick ``k`` at ``k * seconds / n``:
    ``n`` is ``tick_hz * seconds`` (at most one tick per message), or more when ``batch_max`` a tick would not
    carry the rate. Sizes differ by at most one and add up to the total."""
    if rate <= 0 or seconds <= 0 or tick_hz <= 0 or batch_max < 1:
        raise ValueError("rate, seconds, tick_hz and batch_max must be positive")
    total = round(rate * seconds)
    if total == 0:
        return []
    n = max(math.ceil(total / batch_max), min(total, math.ceil(tick_hz * seconds)))
    return [
        Tick(at=k * seconds / n, size=(k + 1) * total // n - k * total // n, first=k * total // n)
        for k in range(n)
    ]


def message_body(scheduled: float, i: int) -> str:
    """A JSON body of BODY_BYTES bytes carrying the scheduled send time (``"t"``, unix s) the latency handler
    subtracts from its start."""
    head = json.dumps({"t": scheduled, "i": i, "pad": ""})
    return json.dumps({"t": scheduled, "i": i, "pad": "x" * max(0, BODY_BYTES - len(head))})


@dataclass(frozen=True)
class Sent:
    """One acknowledged message of the producer."""

    #: Scheduled send time, unix s (the body's ``"t"``).
    scheduled: float
    #: Scheduled in the warm-up (sent and checked, not measured).
    warmup: bool


@dataclass
class Production:
    """What the open-loop producer did."""

    #: Message id -> its scheduled time, for every message SQS acknowledged.
    sent: dict[str, Sent] = field(default_factory=dict)
    #: Scheduled -> send started, per tick.
    lag: Histogram = field(default_factory=Histogram)
    ticks: int = 0
    scheduled_messages: int = 0
    #: Messages whose send raised or that SendMessageBatch reported failed.
    send_errors: int = 0
    #: Seconds from the start of the schedule to the last acknowledgement.
    last_ack: float = 0.0
    #: The schedule's length, seconds.
    seconds: float = 0.0

    @property
    def achieved_rate(self) -> float:
        """Messages acknowledged per second, from the start of the schedule to the last acknowledgement."""
        span = max(self.last_ack, self.seconds)
        return len(self.sent) / span if span > 0 else 0.0


async def produce(
    client: Any, url: str, ticks: Sequence[Tick], *, seconds: float, warmup: float, senders: int = 8
) -> Production:
    """Send ``ticks`` open-loop: ``senders`` tasks take the next tick, wait for its time and send it, so a
    slow send delays only the ticks no free sender can take; each tick's lag is recorded, and its messages
    carry their scheduled time."""
    production = Production(ticks=len(ticks), scheduled_messages=sum(t.size for t in ticks), seconds=seconds)
    start_clock, start_wall = anyio.current_time(), time.time()
    position = 0

    async def sender() -> None:
        nonlocal position
        while position < len(ticks):
            tick = ticks[position]
            position += 1
            due = start_clock + tick.at
            delay = due - anyio.current_time()
            if delay > 0:
                await anyio.sleep(delay)
            production.lag.record(max(0.0, anyio.current_time() - due))
            scheduled = start_wall + tick.at
            entries = [
                {"Id": str(k), "MessageBody": message_body(scheduled, tick.first + k)}
                for k in range(tick.size)
            ]
            try:
                response = await client.send_message_batch(QueueUrl=url, Entries=entries)
            except Exception as exc:  # counted and reported; the schedule goes on
                production.send_errors += tick.size
                log(f"open loop: SendMessageBatch failed: {type(exc).__name__}")
                continue
            production.last_ack = max(production.last_ack, anyio.current_time() - start_clock)
            production.send_errors += len(response.get("Failed", []))
            for entry in response.get("Successful", []):
                production.sent[entry["MessageId"]] = Sent(scheduled, tick.at < warmup)

    async with anyio.create_task_group() as tg:
        for _ in range(senders):
            tg.start_soon(sender)
    return production


# --------------------------------------------------------------------------------------------------
# The timing proxy


@dataclass(frozen=True)
class Received:
    """The first ReceiveMessage answer that carried a message, back at the consumer."""

    at: float
    #: SQS's SentTimestamp in s (None when the consumer did not ask for it).
    sent_timestamp: float | None


class ResponseReader:
    """Splits a stream of HTTP/1.1 response bytes into whole responses: ``Content-Length`` or chunked bodies,
    gzip/deflate decoded. Anything else raises ValueError."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The responses these bytes completed, as (status, body)."""
        self.buffer += data
        out: list[tuple[int, bytes]] = []
        while (response := self._next()) is not None:
            out.append(response)
        return out

    def _next(self) -> tuple[int, bytes] | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self.buffer[:end]
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        rest = self.buffer[end + 4 :]
        if 100 <= status < 200 or status in (204, 304):
            self.buffer = rest
            return status, b""
        if headers.get(b"transfer-encoding", b"identity") == b"chunked":
            parsed = _chunked(rest)
            if parsed is None:
                return None
            body, used = parsed
        elif b"content-length" in headers:
            length = int(headers[b"content-length"])
            if len(rest) < length:
                return None
            body, used = rest[:length], length
        else:
            raise ValueError("a response without Content-Length or chunked encoding")
        self.buffer = rest[used:]
        encoding = headers.get(b"content-encoding", b"identity")
        if encoding == b"gzip":
            body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
        elif encoding == b"deflate":
            body = zlib.decompress(body)
        elif encoding != b"identity":
            raise ValueError(f"content encoding {encoding!r}")
        return status, body


def _chunked(data: bytes) -> tuple[bytes, int] | None:
    """(body, bytes used) of a whole chunked body at the start of ``data``, or None while incomplete."""
    body, position = b"", 0
    while True:
        line_end = data.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(data[position:line_end].split(b";")[0], 16)
        position = line_end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", position - 2)
            return (body, trailer_end + 4) if trailer_end >= 0 else None
        if len(data) < position + size + 2:
            return None
        body += data[position : position + size]
        position += size + 2


class _TimedConnection(ConnectionHooks):
    """One connection of the timing proxy: its requests still waiting for an answer, and the reader of the
    answers. One connection carries one request at a time (the SDKs do not pipeline): each answer belongs to
    the oldest request still waiting for one."""

    def __init__(self, proxy: TimingProxy) -> None:
        self.proxy = proxy
        self.waiting: deque[tuple[str, bytes]] = deque()
        #: None once an answer could not be read: this connection is only piped from then on.
        self.reader: ResponseReader | None = ResponseReader()

    def request(self, action: str, body: bytes) -> None:
        """Remember the request until its answer."""
        self.waiting.append((action, body))

    def response(self, chunk: bytes, at: float) -> None:
        """Read each whole answer once its last byte has gone (``at``: stamped just before that write)."""
        if self.reader is None:
            return
        try:
            answers = self.reader.feed(chunk)
        except ValueError:
            self.proxy.unreadable += 1
            self.reader = None
            return
        for status, body in answers:
            if 100 <= status < 200:
                continue
            if not self.waiting:
                self.proxy.unreadable += 1
                continue
            action, request = self.waiting.popleft()
            if status == 200:
                self.proxy.answered(action, request, body, at)


class TimingProxy(CountingProxy):
    """The counting proxy, also reading the answers to ReceiveMessage and DeleteMessage(Batch) of the JSON
    protocol: when each message was first received (and its SentTimestamp) and when its delete was
    acknowledged, each stamped as the answer's last byte is handed on to the consumer."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.received: dict[str, Received] = {}
        self.deleted: dict[str, float] = {}
        #: Message id -> receives that carried it (more than one: a redelivery).
        self.receives: Counter[str] = Counter()
        #: Answers this proxy could not read (another protocol, an unknown framing).
        self.unreadable = 0
        self._receipts: dict[str, str] = {}

    def hooks(self) -> ConnectionHooks:
        """A new connection's reader of the answers."""
        return _TimedConnection(self)

    def answered(self, action: str, request: bytes, body: bytes, now: float) -> None:
        """Record what a successful answer says about the messages."""
        try:
            if action == "ReceiveMessage":
                for message in json.loads(body).get("Messages", []):
                    message_id = message["MessageId"]
                    self._receipts[message["ReceiptHandle"]] = message_id
                    self.receives[message_id] += 1
                    if message_id not in self.received:
                        sent = (message.get("Attributes") or {}).get("SentTimestamp")
                        self.received[message_id] = Received(now, int(sent) / 1000 if sent else None)
            elif action == "DeleteMessageBatch":
                handles = {e["Id"]: e["ReceiptHandle"] for e in json.loads(request).get("Entries", [])}
                for entry in json.loads(body).get("Successful", []):
                    self._deleted(handles.get(entry["Id"]), now)
            elif action == "DeleteMessage":
                self._deleted(json.loads(request).get("ReceiptHandle"), now)
        except (ValueError, KeyError, TypeError, AttributeError):
            self.unreadable += 1

    def _deleted(self, handle: str | None, now: float) -> None:
        message_id = self._receipts.get(handle or "")
        if message_id is not None and message_id not in self.deleted:
            self.deleted[message_id] = now


# --------------------------------------------------------------------------------------------------
# Per-message figures


def handler_starts(lines: Iterable[str], sent: Mapping[str, Sent]) -> tuple[dict[str, float], int]:
    """The latency handler's records (``<start - "t"> <message id>``) as message id -> handler start (unix s),
    the first of each; and how many more records repeated a message (handled twice)."""
    starts: dict[str, float] = {}
    repeats = 0
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or parts[1] not in sent:
            continue
        if parts[1] in starts:
            repeats += 1
            continue
        starts[parts[1]] = sent[parts[1]].scheduled + float(parts[0])
    return starts, repeats


@dataclass
class Outcome:
    """Every figure's histogram and the completeness counts of one run."""

    histograms: dict[str, Histogram]
    measured: int
    warmup: int
    handled: int
    deleted: int
    #: Acknowledged messages the handler never recorded / whose delete was never acknowledged.
    missing_handled: int
    missing_deleted: int
    #: Measured messages received without a SentTimestamp.
    no_sent_timestamp: int


def figures(
    sent: Mapping[str, Sent],
    handled: Mapping[str, float],
    received: Mapping[str, Received],
    deleted: Mapping[str, float],
) -> Outcome:
    """Record each measured (not warm-up) message's figures; count what is missing."""
    histograms = {name: Histogram() for name in FIGURES}
    measured = no_sent_timestamp = 0
    for message_id, message in sent.items():
        if message.warmup:
            continue
        measured += 1
        start, receive, gone = handled.get(message_id), received.get(message_id), deleted.get(message_id)
        if start is not None:
            histograms["scheduled_to_handler"].record(start - message.scheduled)
            if receive is not None:
                histograms["receive_to_handler"].record(start - receive.at)
        if gone is not None:
            histograms["scheduled_to_deleted"].record(gone - message.scheduled)
            if receive is not None and receive.sent_timestamp is not None:
                histograms["end_to_end"].record(gone - receive.sent_timestamp)
        if receive is not None and receive.sent_timestamp is None:
            no_sent_timestamp += 1
    return Outcome(
        histograms=histograms,
        measured=measured,
        warmup=len(sent) - measured,
        handled=sum(1 for m in sent if m in handled),
        deleted=sum(1 for m in sent if m in deleted),
        missing_handled=sum(1 for m in sent if m not in handled),
        missing_deleted=sum(1 for m in sent if m not in deleted),
        no_sent_timestamp=no_sent_timestamp,
    )


# --------------------------------------------------------------------------------------------------
# Runs


@dataclass(frozen=True)
class OpenLoopOptions:
    """What :func:`open_loop` runs."""

    consumers: tuple[str, ...] = DEFAULT_CONSUMERS
    #: Load levels, as fractions of each consumer's capacity.
    levels: tuple[float, ...] = DEFAULT_LEVELS
    #: Measured seconds of each level (after the warm-up).
    seconds: float = 60.0
    #: Seconds at the same rate before them, sent and checked but not measured.
    warmup_seconds: float = 5.0
    #: Ticks a second, at most (more when 10 messages a tick would not carry the rate).
    tick_hz: float = 50.0
    senders: int = 8
    #: Messages of each capacity drain.
    capacity_messages: int = 3000
    #: Messages of an unmeasured raw drain before the first capacity drain (a fresh emulator is slower).
    warmup_drain: int = 1000
    #: Capacities given (msg/s by consumer name); the others are measured.
    capacities: Mapping[str, float] = field(default_factory=dict)
    #: How long, after the schedule, every message may take to be handled and deleted.
    settle_seconds: float = 120.0


def supports_latency(name: str) -> bool:
    """Whether consumer ``name`` runs the ``latency`` handler on bodies as the bench sends them (the Python
    peers read their own encodings and have no such handler)."""
    return not consumers.spec(name).peer


async def open_loop(bench: Bench, endpoint: str, options: OpenLoopOptions) -> dict[str, Any]:
    """Every consumer's capacity, then each load level open-loop: ``{"capacity": [...], "runs": [...]}``."""
    capacity: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for name in options.consumers:
        if not supports_latency(name):
            raise ValueError(f"{name} has no latency handler")
    if options.warmup_drain and any(name not in options.capacities for name in options.consumers):
        log(f"warm-up: {options.warmup_drain} messages through the raw loop (not measured)")
        await bench.drain("raw", "noop", options.warmup_drain)
    for name in options.consumers:
        if name in options.capacities:
            rate, source = float(options.capacities[name]), "given"
        else:
            drained = await bench.drain(name, "noop", options.capacity_messages)
            rate, source = float(drained["steady_msgs_per_s"] or drained["msgs_per_s"]), "drain"
            capacity.append(drained)
        for level in options.levels:
            row = await run_level(bench, endpoint, name, rate, level, options)
            runs.append({"capacity_msgs_per_s": rate, "capacity_from": source, **row})
    return {"capacity": capacity, "runs": runs}


async def run_level(
    bench: Bench, endpoint: str, name: str, capacity: float, level: float, options: OpenLoopOptions
) -> dict[str, Any]:
    """Consumer ``name`` on a fresh queue through the timing proxy, the producer at ``level`` x ``capacity``
    for the warm-up and the measured seconds, then until every message is handled and deleted (or
    ``settle_seconds`` pass): the figures."""
    rate = capacity * level
    total_seconds = options.warmup_seconds + options.seconds
    ticks = schedule(rate, total_seconds, options.tick_hz)
    queue = await bench.make_queue(f"{name}-open{round(level * 100)}")
    path = bench.workdir / f"openloop-{bench.counter}-{name}.txt"
    path.write_text("")
    proxy = TimingProxy(endpoint)
    log(
        f"{name:>18} open loop at {level:.0%} of {capacity:.0f} msg/s: {rate:.1f} msg/s "
        f"for {total_seconds:g} s"
    )
    try:
        async with anyio.create_task_group() as tg:
            port = await tg.start(proxy.serve)
            extra = {"BENCH_LATENCY_FILE": str(path), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
            consumer = bench.spawn(name, queue, "latency", extra=extra)
            try:
                await consumer.wait_ready()
                await anyio.sleep(1.0)  # every poller is in its long poll
                async with anyio.create_task_group() as watched:
                    watched.start_soon(_watch, consumer)
                    production = await produce(
                        bench.client,
                        queue.url,
                        ticks,
                        seconds=total_seconds,
                        warmup=options.warmup_seconds,
                        senders=options.senders,
                    )
                    settled = await _settle(path, proxy, production.sent, options.settle_seconds)
                    watched.cancel_scope.cancel()
            finally:
                await consumer.stop()
                tg.cancel_scope.cancel()
    finally:
        await bench.delete_queue(queue)
    handled, repeats = handler_starts(path.read_text().splitlines(), production.sent)
    outcome = figures(production.sent, handled, proxy.received, proxy.deleted)
    latency = {figure: hist.summary() for figure, hist in outcome.histograms.items()}
    omitted: dict[str, str] = {}
    if outcome.histograms["end_to_end"].count == 0:
        del latency["end_to_end"]
        omitted["end_to_end"] = "its receives carried no SentTimestamp (the consumer does not ask for it)"
    elif outcome.no_sent_timestamp:
        latency["end_to_end"]["without_sent_timestamp"] = outcome.no_sent_timestamp
    requests = proxy.snapshot()
    sent_count = len(production.sent)
    result: dict[str, Any] = {
        "consumer": name,
        "config": consumer.config,
        "level": level,
        "target_msgs_per_s": round(rate, 2),
        "achieved_send_msgs_per_s": round(production.achieved_rate, 2),
        "seconds": options.seconds,
        "warmup_seconds": options.warmup_seconds,
        "ticks": production.ticks,
        "scheduled": production.scheduled_messages,
        "sent": sent_count,
        "send_errors": production.send_errors,
        "schedule_lag": production.lag.summary(),
        "measured": outcome.measured,
        "warmup_messages": outcome.warmup,
        "handled": outcome.handled,
        "deleted": outcome.deleted,
        "missing_handled": outcome.missing_handled,
        "missing_deleted": outcome.missing_deleted,
        "handled_twice": repeats,
        "redelivered": sum(1 for n in proxy.receives.values() if n > 1),
        "settle_s": round(settled, 3),
        "unreadable_answers": proxy.unreadable,
        "latency": latency,
        "omitted": omitted,
        "requests_per_1k": {
            k: round(v / sent_count * 1000, 1) for k, v in sorted(requests.items()) if sent_count
        },
    }
    lag = result["schedule_lag"]
    e2e = result["latency"].get("scheduled_to_deleted", {})
    log(
        f"{name:>18} {level:.0%}: sent {sent_count} at {result['achieved_send_msgs_per_s']:.1f} msg/s "
        f"(lag p99 {lag.get('p99_ms', 0):.1f} ms, max {lag.get('max_ms', 0):.1f} ms); handled "
        f"{outcome.handled}, deleted {outcome.deleted}; scheduled->deleted "
        f"p50 {e2e.get('p50_ms', 0):.1f} ms, p99 {e2e.get('p99_ms', 0):.1f} ms"
    )
    return result


async def _watch(consumer: consumers.ConsumerProcess) -> None:
    """Fail the run when the consumer exits under load."""
    while True:
        if not consumer.alive():
            raise consumer.failure("exited during the open-loop run")
        await anyio.sleep(0.5)


async def _settle(path: Path, proxy: TimingProxy, sent: Mapping[str, Sent], limit: float) -> float:
    """Wait until every acknowledged message was handled and its delete acknowledged, at most ``limit``
    seconds; the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        if all(m in proxy.deleted for m in sent):
            handled, _ = handler_starts((await anyio.Path(path).read_text()).splitlines(), sent)
            if len(handled) == len(sent):
                break
        await anyio.sleep(0.25)
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------------
# The command line


def parse_capacities(text: str | None, names: Sequence[str]) -> dict[str, float]:
    """``--capacity``: one msg/s figure for every consumer (``900``), or ``name=msg/s`` pairs separated by
    commas (``raw=1200,worker=1100``; the others are measured)."""
    if not text:
        return {}
    pairs = [("", text)] if "=" not in text else [pair.partition("=")[::2] for pair in text.split(",")]
    out: dict[str, float] = {}
    for name, figure in pairs:
        rate = float(figure)
        if rate <= 0 or not math.isfinite(rate):
            raise ValueError(f"--capacity must be a positive msg/s figure, not {figure!r}")
        if not name:
            return dict.fromkeys(names, rate)
        if name.strip() not in names:
            raise ValueError(f"--capacity names {name.strip()!r}, not one of the consumers run")
        out[name.strip()] = rate
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (the consumers' launch options are those of ``python -m bench``)."""
    p = argparse.ArgumentParser(prog="python -m bench.openloop", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--consumers", default=",".join(DEFAULT_CONSUMERS), help="comma-separated (default %(default)s)"
    )
    p.add_argument(
        "--levels", default=",".join(f"{x:g}" for x in DEFAULT_LEVELS), help="fractions of capacity"
    )
    p.add_argument("--seconds", type=float, default=60.0, help="measured seconds per level (default 60)")
    p.add_argument("--warmup-seconds", type=float, default=5.0, help="unmeasured seconds before them")
    p.add_argument(
        "--capacity", default=None, help="msg/s for all (900) or per consumer (raw=1200,worker=1100)"
    )
    p.add_argument("--capacity-messages", type=int, default=3000, help="messages of each capacity drain")
    p.add_argument("--warmup-drain", type=int, default=1000, help="messages of an unmeasured first drain")
    p.add_argument("--tick-hz", type=float, default=50.0, help="send ticks per second, at most (default 50)")
    p.add_argument("--senders", type=int, default=8, help="concurrent sender tasks (default 8)")
    p.add_argument("--settle-seconds", type=float, default=120.0, help="how long the backlog may take after")
    p.add_argument("--pollers", "-p", type=int, default=4, help="pollers of raw, WORKER_POLLERS of worker")
    p.add_argument("--concurrency", type=int, default=None, help="worker concurrency (default 50)")
    p.add_argument("--wait", type=int, default=5, help="long-poll wait of every consumer")
    p.add_argument("--emulator", choices=("localstack", "fauxqs"), default="localstack")
    p.add_argument("--endpoint", default=None, help="use this running emulator (loopback only)")
    p.add_argument("--drain-timeout", type=float, default=300.0, help="seconds one capacity drain may take")
    p.add_argument("--node", default=None, help="node binary for sqs-consumer (default: node on PATH)")
    p.add_argument(
        "--worker-command", default="-m worker run", help="arguments after the python of the worker"
    )
    p.add_argument("--output", default=None, help="results JSON (default bench/results/openloop-<date>.json)")
    p.add_argument("--keep-workdir", action="store_true", help="keep logs of every process")
    args = p.parse_args(argv)
    # What Bench.spawn and Bench.drain read besides: the defaults of ``python -m bench``.
    from bench.run import parse_args as bench_args

    for key, value in vars(bench_args(["--consumers", "raw"])).items():
        if not hasattr(args, key):
            setattr(args, key, value)
    args.consumers = [c for c in args.consumers.split(",") if c]
    for name in args.consumers:
        if name not in consumers.SPECS:
            p.error(f"unknown consumer {name!r}")
        if not supports_latency(name) or consumers.spec(name).needs_candidate_src:
            p.error(f"{name} cannot run here: it has no latency handler or needs --candidate-src")
    try:
        args.levels = tuple(float(x) for x in args.levels.split(",") if x)
        args.capacities = parse_capacities(args.capacity, args.consumers)
    except ValueError as exc:
        p.error(str(exc))
    if not args.levels or any(x <= 0 for x in args.levels):
        p.error("--levels must be positive fractions")
    if args.seconds <= 0 or args.warmup_seconds < 0 or args.senders < 1 or args.tick_hz <= 0:
        p.error("--seconds, --senders and --tick-hz must be positive, --warmup-seconds not negative")
    return args


def emulator_version(endpoint: str, description: str) -> str:
    """The emulator's version: LocalStack's health endpoint says it; else the description."""
    status, body = http_get(f"{endpoint.rstrip('/')}/_localstack/health")
    if status == 200:
        with contextlib.suppress(ValueError, AttributeError):
            version = json.loads(body).get("version")
            if version:
                return f"LocalStack {version}"
    return description


async def _main(
    args: argparse.Namespace, endpoint: str, description: str, pid: int | None, workdir: Path
) -> dict[str, Any]:
    import os

    from bench.emulators import sealed_aws_env
    from bench.run import git_state, machine, sqs_client

    os.environ.update(sealed_aws_env(endpoint, workdir))
    node = consumers.node_binary(args)
    names = tuple(c for c in args.consumers if node is not None or not consumers.spec(c).needs_node)
    options = OpenLoopOptions(
        consumers=names,
        levels=args.levels,
        seconds=args.seconds,
        warmup_seconds=args.warmup_seconds,
        tick_hz=args.tick_hz,
        senders=args.senders,
        capacity_messages=args.capacity_messages,
        warmup_drain=args.warmup_drain,
        capacities=args.capacities,
        settle_seconds=args.settle_seconds,
    )
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "emulator": description,
        "emulator_version": emulator_version(endpoint, description),
        "machine": machine(),
        "git": git_state(),
        "pollers": args.pollers,
        "wait_seconds": args.wait,
        "options": {
            "consumers": list(names),
            "levels": list(args.levels),
            "seconds": args.seconds,
            "warmup_seconds": args.warmup_seconds,
            "tick_hz": args.tick_hz,
            "senders": args.senders,
            "capacity_messages": args.capacity_messages,
            "warmup_drain": args.warmup_drain,
            "capacities_given": dict(args.capacities),
            "settle_seconds": args.settle_seconds,
        },
        "histogram": {"unit": "us", "lowest": LOWEST_US, "highest": HIGHEST_US, "digits": SIGNIFICANT_DIGITS},
    }
    if node is not None:
        results["node"] = (await anyio.run_process([node, "--version"], check=False)).stdout.decode().strip()
    async with sqs_client() as client:
        bench = Bench(args, sealed_aws_env(endpoint, workdir), workdir, client, node, pid)
        results.update(await open_loop(bench, endpoint, options))
    return results


def table(results: Mapping[str, Any]) -> str:
    """One line per run and figure: the run's rates and schedule lag, the figure's percentiles (ms)."""
    head = (
        f"{'consumer':<14}{'load':>5}{'target/s':>10}{'sent/s':>9}{'lag p99':>9}{'lag max':>9}  "
        f"{'figure':<22}{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>9}{'n':>8}"
    )
    lines = [head, "-" * len(head)]
    for run in results.get("runs", []):
        lag = run["schedule_lag"]
        left = (
            f"{run['consumer']:<14}{run['level']:>5.0%}{run['target_msgs_per_s']:>10.1f}"
            f"{run['achieved_send_msgs_per_s']:>9.1f}"
            f"{lag.get('p99_ms', 0):>9.2f}{lag.get('max_ms', 0):>9.2f}  "
        )
        for figure in FIGURES:
            row = run["latency"].get(figure)
            if row is None:
                text = f"{figure:<22}{'(not measured: see omitted)':>45}"
            else:
                values = [row.get(percentile_key(p), 0.0) for p in PERCENTILES] + [row.get("max_ms", 0.0)]
                text = f"{figure:<22}" + "".join(f"{v:>9.1f}" for v in values) + f"{row['count']:>8}"
            lines.append(left + text)
            left = " " * len(left)
        if run["missing_handled"] or run["missing_deleted"]:
            lines.append(
                f"{'':<14}  ! {run['missing_handled']} never handled, {run['missing_deleted']} never deleted "
                f"within {run['settle_s']:.0f} s"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the open-loop latency bench, print the table, write the JSON."""
    from bench.emulators import run_on_emulator

    args = parse_args(argv)
    detail = f"consumers {', '.join(args.consumers)}, levels {args.levels}"
    results = run_on_emulator(args, _main, "openloop-", detail)
    output = write_results(results, args.output, "openloop-")
    print(
        f"\n{results['emulator_version']}, P={args.pollers}, wait {args.wait} s, "
        f"{args.seconds:g} s per level\n"
    )
    print(table(results))
    print(f"\nresults: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

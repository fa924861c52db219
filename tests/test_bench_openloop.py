"""The open-loop latency bench (bench/openloop.py): its schedule, lag accounting, histograms, the timing
proxy's reading of receives and deletes, and a short run against the raw loop on LocalStack."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from bench.openloop import (
    FIGURES,
    HIGHEST_US,
    Histogram,
    Received,
    ResponseReader,
    Sent,
    TimingProxy,
    figures,
    handler_starts,
    parse_capacities,
    percentile_key,
    produce,
    schedule,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("rate", "seconds", "tick_hz"),
    [(800.0, 60.0, 50.0), (20.0, 3.0, 50.0), (333.3, 7.0, 50.0), (1000.0, 2.0, 10.0), (0.5, 3.0, 50.0)],
)
def test_schedule_ticks_at_exact_times_and_sizes_add_up_to_rate_times_seconds(
    rate: float, seconds: float, tick_hz: float
) -> None:
    """Tick k of n is at exactly k x seconds / n; sizes are 1..10, differ by at most one, cover the messages
    in order and add up to rate x seconds; there are as many ticks as tick_hz allows, more only when 10 a
    tick would not carry the rate."""
    ticks = schedule(rate, seconds, tick_hz)
    total = round(rate * seconds)
    n = len(ticks)
    assert sum(t.size for t in ticks) == total
    assert [t.at for t in ticks] == [k * seconds / n for k in range(n)]
    assert all(1 <= t.size <= 10 for t in ticks)
    assert max(t.size for t in ticks) - min(t.size for t in ticks) <= 1
    assert [t.first for t in ticks] == [sum(t.size for t in ticks[:k]) for k in range(n)]
    assert n == max(math.ceil(total / 10), min(total, math.ceil(tick_hz * seconds)))


def test_schedule_at_high_rates_sends_full_batches_and_refuses_nonsense() -> None:
    """800 msg/s for 60 s is 4,800 batches of 10, 12.5 ms apart; a zero rate or length is an error."""
    ticks = schedule(800.0, 60.0)
    assert len(ticks) == 4800
    assert {t.size for t in ticks} == {10}
    assert ticks[1].at == pytest.approx(0.0125)
    with pytest.raises(ValueError, match="positive"):
        schedule(0.0, 60.0)
    with pytest.raises(ValueError, match="positive"):
        schedule(10.0, 0.0)


class FakeSQS:
    """SendMessageBatch that takes ``delay`` seconds; raises on the calls listed in ``fail_calls``; reports
    the first ``failed_ids`` entries of the first call as failed."""

    def __init__(self, delay: float, fail_calls: frozenset[int] = frozenset(), failed_ids: int = 0) -> None:
        self.delay = delay
        self.fail_calls = fail_calls
        self.failed_ids = failed_ids
        self.calls: list[list[dict[str, str]]] = []

    async def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:  # noqa: N803
        call = len(self.calls)
        self.calls.append(Entries)
        await anyio.sleep(self.delay)
        if call in self.fail_calls:
            raise OSError("connection reset")
        failed = Entries[: self.failed_ids] if call == 0 else []
        ok = [e for e in Entries if e not in failed]
        return {
            "Successful": [{"Id": e["Id"], "MessageId": f"m{call}-{e['Id']}"} for e in ok],
            "Failed": [{"Id": e["Id"], "Code": "X"} for e in failed],
        }


async def test_producer_keeps_the_scheduled_times_and_counts_the_lag_of_busy_senders() -> None:
    """One sender whose sends take 30 ms, ticks every 10 ms: tick k cannot start before 30 ms x k, so its
    lag is at least 20 ms x k, and every lag is recorded; each body still carries its scheduled time (10 ms
    apart), not the late send's."""
    ticks = schedule(100.0, 0.1, tick_hz=100.0)
    assert len(ticks) == 10
    client = FakeSQS(delay=0.03)
    production = await produce(client, "url", ticks, seconds=0.1, warmup=0.05, senders=1)
    assert production.lag.count == 10
    assert production.lag.hdr.get_max_value() >= 180_000  # us: tick 9 starts >= 270 ms, due at 90 ms
    assert production.send_errors == 0
    assert len(production.sent) == 10
    stamps = [json.loads(call[0]["MessageBody"])["t"] for call in client.calls]
    assert [s - stamps[0] for s in stamps] == pytest.approx([k * 0.01 for k in range(10)], abs=1e-6)
    assert sorted(s.scheduled for s in production.sent.values()) == stamps
    assert sum(s.warmup for s in production.sent.values()) == 5  # scheduled before 0.05 s
    assert production.last_ack >= 0.3  # ten 30 ms sends one after another
    assert production.achieved_rate <= 10 / 0.3


async def test_producer_counts_failed_sends_and_failed_entries_and_goes_on() -> None:
    """A send that raises loses its tick's messages, an entry SQS reports failed is counted; the other
    ticks are still sent, each acknowledged message recorded once."""
    ticks = schedule(60.0, 0.1, tick_hz=20.0)  # 6 messages in 2 ticks of 3
    client = FakeSQS(delay=0.0, fail_calls=frozenset({1}), failed_ids=1)
    production = await produce(client, "url", ticks, seconds=0.1, warmup=0.0, senders=2)
    assert production.scheduled_messages == 6
    assert production.send_errors == 3 + 1
    assert sorted(production.sent) == ["m0-1", "m0-2"]


def test_histogram_percentiles_come_from_the_hdr_within_its_precision() -> None:
    """1..1,000 ms recorded once each: p50/p90/p99/p99.9/max within 0.1 % (3 significant digits); the encoded
    text decodes to the same histogram; negative and over-an-hour values are clamped and counted."""
    hist = Histogram()
    for ms in range(1, 1001):
        hist.record(ms / 1000)
    summary = hist.summary()
    assert summary["count"] == 1000
    expected = {50.0: 500, 90.0: 900, 99.0: 990, 99.9: 999}
    for pct, ms in expected.items():
        assert summary[percentile_key(pct)] == pytest.approx(ms, rel=1e-3)
    assert summary["max_ms"] == pytest.approx(1000, rel=1e-3)
    assert "negative" not in summary
    decoded = HdrHistogram.decode(summary["hdr"])
    assert decoded.get_total_count() == 1000
    assert decoded.get_value_at_percentile(99.0) == hist.hdr.get_value_at_percentile(99.0)
    assert percentile_key(99.9) == "p99_9_ms"

    clamped = Histogram()
    clamped.record(-0.002)
    clamped.record(2 * 3600.0)
    clamped.record(0.0000001)
    summary = clamped.summary()
    assert summary["count"] == 3
    assert summary["negative"] == 1
    assert summary["most_negative_ms"] == -2.0
    assert summary["above_range"] == 1
    assert clamped.hdr.get_min_value() == 1
    assert clamped.hdr.get_max_value() >= HIGHEST_US
    assert Histogram().summary() == {"count": 0}


def test_figures_join_the_schedule_the_handler_and_the_proxy_per_message() -> None:
    """Each figure is the difference of the right two times per message; warm-up messages are checked but not
    measured; end to end needs a SentTimestamp; what was never handled or deleted is counted."""
    sent = {
        "w": Sent(scheduled=99.0, warmup=True),
        "a": Sent(scheduled=100.0, warmup=False),
        "b": Sent(scheduled=100.5, warmup=False),
        "c": Sent(scheduled=101.0, warmup=False),
    }
    lines = ["0.5 w", "0.010000 a", "0.020000 b", "0.030000 b", "0.1 unknown", "garbage"]
    handled, repeats = handler_starts(lines, sent)
    assert repeats == 1
    assert handled == pytest.approx({"w": 99.5, "a": 100.01, "b": 100.52})
    received = {
        "w": Received(99.4, 99.001),
        "a": Received(100.008, 100.002),
        "b": Received(100.519, None),
    }
    deleted = {"w": 99.6, "a": 100.05}
    outcome = figures(sent, handled, received, deleted)
    assert (outcome.measured, outcome.warmup) == (3, 1)
    assert (outcome.handled, outcome.deleted) == (3, 2)
    assert (outcome.missing_handled, outcome.missing_deleted) == (1, 2)
    assert outcome.no_sent_timestamp == 1
    ms = {name: outcome.histograms[name].hdr for name in FIGURES}
    assert ms["end_to_end"].get_total_count() == 1
    assert ms["end_to_end"].get_max_value() == pytest.approx(48_000, rel=1e-3)  # 100.05 - 100.002
    assert ms["scheduled_to_deleted"].get_max_value() == pytest.approx(50_000, rel=1e-3)
    assert ms["scheduled_to_handler"].get_total_count() == 2
    assert ms["scheduled_to_handler"].get_min_value() == pytest.approx(10_000, rel=1e-3)
    assert ms["scheduled_to_handler"].get_max_value() == pytest.approx(20_000, rel=1e-3)
    assert ms["receive_to_handler"].get_min_value() == pytest.approx(1_000, rel=1e-3)  # b: 100.52 - 100.519
    assert ms["receive_to_handler"].get_max_value() == pytest.approx(2_000, rel=1e-3)  # a: 100.01 - 100.008


def test_response_reader_splits_whole_answers_however_the_bytes_arrive() -> None:
    """Content-Length, chunked and gzip answers, fed one byte at a time, come out whole and in order; a 100
    Continue is passed over; an answer framed by the connection's end is refused."""
    one = b'{"a": 1}'
    zipped = gzip.compress(b'{"b": 2}')
    stream = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
        % (len(one), one)
        + b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"c\r\n5\r\n": 3}\r\n0\r\n\r\n'
        + b"HTTP/1.1 400 Bad\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
        % (len(zipped), zipped)
    )
    reader = ResponseReader()
    answers = [answer for i in range(len(stream)) for answer in reader.feed(stream[i : i + 1])]
    assert answers == [(100, b""), (200, one), (200, b'{"c": 3}'), (400, b'{"b": 2}')]
    assert reader.buffer == b""
    with pytest.raises(ValueError, match="Content-Length"):
        ResponseReader().feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{}")


def _answer(action: str, request: dict[str, Any]) -> bytes:
    """A fake SQS's JSON answer (the delete answer chunked)."""
    if action == "ReceiveMessage":
        messages = [
            {
                "MessageId": "m1",
                "ReceiptHandle": "r1",
                "Body": "{}",
                "Attributes": {"SentTimestamp": "1700000000123"},
            },
            {"MessageId": "m2", "ReceiptHandle": "r2", "Body": "{}"},
        ]
        body = json.dumps({"Messages": messages}).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    ids = [e["Id"] for e in request["Entries"]]
    body = json.dumps({"Successful": [{"Id": ids[0]}], "Failed": [{"Id": i} for i in ids[1:]]}).encode()
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


def _request(action: str, doc: dict[str, Any]) -> bytes:
    body = json.dumps(doc).encode()
    head = f"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: AmazonSQS.{action}\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


async def test_timing_proxy_times_each_first_receive_and_acknowledged_delete() -> None:
    """Through the proxy, on one kept-alive connection: a receive of two messages, then a batch delete of both
    that SQS acknowledges for one; the proxy records both receives (one SentTimestamp), only the acknowledged
    delete, and counts the requests by action."""

    async def server(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            buffer = b""
            for _ in range(2):
                while b"\r\n\r\n" not in buffer:
                    buffer += await stream.receive()
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(buffer) < length:
                    buffer += await stream.receive()
                body, buffer = buffer[:length], buffer[length:]
                action = head.split(b"AmazonSQS.")[1].split(b"\r\n")[0].decode()
                await stream.send(_answer(action, json.loads(body)))

    with anyio.fail_after(10):
        async with (
            await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(listener.serve, server)
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            proxy = TimingProxy(f"http://127.0.0.1:{port}")
            proxy_port = await tg.start(proxy.serve)
            async with await anyio.connect_tcp("127.0.0.1", proxy_port) as client:
                await client.send(_request("ReceiveMessage", {"QueueUrl": "q"}))
                answer = b""
                while b'"m2"' not in answer:
                    answer += await client.receive()
                entries = [{"Id": "0", "ReceiptHandle": "r1"}, {"Id": "1", "ReceiptHandle": "r2"}]
                await client.send(_request("DeleteMessageBatch", {"QueueUrl": "q", "Entries": entries}))
                while not answer.endswith(b"0\r\n\r\n"):
                    answer += await client.receive()
            tg.cancel_scope.cancel()
    assert set(proxy.received) == {"m1", "m2"}
    assert proxy.received["m1"].sent_timestamp == pytest.approx(1_700_000_000.123)
    assert proxy.received["m2"].sent_timestamp is None
    assert set(proxy.deleted) == {"m1"}
    assert proxy.deleted["m1"] >= proxy.received["m1"].at
    assert proxy.snapshot() == {"ReceiveMessage": 1, "DeleteMessageBatch": 1}
    assert proxy.unreadable == 0


def test_capacity_option_takes_one_figure_or_one_per_consumer() -> None:
    """--capacity 900 applies to every consumer, raw=1200 to that one only; unknown names and non-positive
    figures are refused."""
    assert parse_capacities("900", ["raw", "worker"]) == {"raw": 900.0, "worker": 900.0}
    assert parse_capacities("raw=1200", ["raw", "worker"]) == {"raw": 1200.0}
    assert parse_capacities(None, ["raw"]) == {}
    with pytest.raises(ValueError, match="not one of"):
        parse_capacities("celery=5", ["raw"])
    with pytest.raises(ValueError, match="positive"):
        parse_capacities("raw=0", ["raw"])


@pytest.mark.localstack
@pytest.mark.slow
@pytest.mark.timeout(90)
def test_open_loop_against_the_raw_loop_handles_and_deletes_every_message(
    aws_env: dict[str, str], localstack_endpoint: str, tmp_path: Path
) -> None:
    """`python -m bench.openloop` at 40 msg/s for 3 s (+1 s warm-up) against the raw loop: every scheduled
    message is sent, handled once and deleted, every figure has one value per measured message, and the JSON
    carries the lag, the histograms' encoded form, the git SHA and the emulator version."""
    output = tmp_path / "openloop.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.openloop",
            "--endpoint",
            localstack_endpoint,
            "--consumers",
            "raw",
            "--capacity",
            "80",
            "--levels",
            "0.5",
            "--seconds",
            "3",
            "--warmup-seconds",
            "1",
            "--wait",
            "1",
            "--settle-seconds",
            "20",
            "--output",
            str(output),
        ],
        cwd=ROOT,
        env=aws_env,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(output.read_text())
    assert len(results["git"]["sha"]) == 40
    assert results["emulator_version"].startswith("LocalStack "), results["emulator_version"]
    assert results["capacity"] == []  # given, not measured
    [run] = results["runs"]
    assert (run["consumer"], run["level"], run["capacity_from"]) == ("raw", 0.5, "given")
    assert run["scheduled"] == run["sent"] == 160
    assert run["send_errors"] == 0
    assert (run["handled"], run["deleted"]) == (160, 160)
    assert (run["missing_handled"], run["missing_deleted"], run["handled_twice"]) == (0, 0, 0)
    assert (run["measured"], run["warmup_messages"]) == (120, 40)
    assert run["schedule_lag"]["count"] == run["ticks"] == 160
    assert run["omitted"] == {}
    assert run["unreadable_answers"] == 0
    for figure in FIGURES:
        row = run["latency"][figure]
        assert row["count"] == 120, (figure, row)
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["p99_9_ms"] <= row["max_ms"], (figure, row)
        assert HdrHistogram.decode(row["hdr"]).get_total_count() == 120
        assert "negative" not in row, (figure, row)
    assert run["requests_per_1k"]["DeleteMessageBatch"] > 0
    assert "scheduled_to_deleted" in done.stdout

"""Canary rollouts and blue/green fleets end to end on LocalStack: promote, rollback, split, fleet, switch."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from tests import canary_handlers
from tests.canary_handlers import CALLS, fails_on_v2
from tests.conftest import unique
from tests.helpers import (
    WorkerProcess,
    depth,
    drain,
    http_get,
    http_get_async,
    running_worker,
    send_bodies,
    wait_for,
)
from worker.engine.rollout_log import RolloutState
from worker.engine.rollout_plan import route
from worker.timestamps import parse_iso

pytestmark = [pytest.mark.localstack, pytest.mark.timeout(120)]

#: Slack allowed on top of one evaluation interval between a breach and the rollback (S3 round trips of a
#: round on a loaded 2-core machine; the measured delay is printed).
ROLLBACK_SLACK_SECONDS = 0.75


async def _bucket(aws: Any) -> str:
    name = unique("canary")
    await (await aws("s3")).create_bucket(Bucket=name)
    return name


def _canary(bucket: str, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "handler": "tests.canary_handlers:v2",
        "version": "v2",
        "state": f"s3://{bucket}/rollouts",
        "evaluation_interval_seconds": 0.5,
    }
    values.update(extra)
    return values


def _env(aws_env: Mapping[str, str], settings: Mapping[str, Any]) -> dict[str, str]:
    """The WORKER_* environment of ``settings`` (nested dicts as WORKER_GROUP__FIELD) over ``aws_env``."""
    env = dict(aws_env)
    for key, value in settings.items():
        if isinstance(value, dict):
            for field, inner in value.items():
                env[f"WORKER_{key.upper()}__{field.upper()}"] = str(inner)
        else:
            env[f"WORKER_{key.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), aws_env.get("PYTHONPATH", "")]))
    return env


def _cli(env: Mapping[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *argv],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


async def _cli_async(env: Mapping[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(lambda: _cli(env, *argv))


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` whose labels include ``labels`` in a Prometheus text body."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_:]+)\{(.*)\} (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


def _calls_since(start: int) -> list[canary_handlers.Call]:
    return CALLS[start:]


async def test_promote_path_sends_everything_to_the_candidate(
    sqs: Any, aws: Any, queues: Any, aws_env: dict[str, str]
) -> None:
    """Fast steps (50 % for 2 s): both versions run, then it is promoted and only v2 runs; metrics agree."""
    queue, bucket = await queues(), await _bucket(aws)
    canary = _canary(bucket, steps="50:2", min_samples=5)
    settings = {"handler": "tests.canary_handlers:v1", "handler_version": "v1", "canary": canary}
    start = len(CALLS)
    async with running_worker(queue, **settings) as worker:
        router = worker.rollouts.router
        assert router is not None
        assert router.weight == 50
        await send_bodies(sqs, queue["url"], [{"key": f"a{i}"} for i in range(40)])
        await wait_for(lambda: router.state is RolloutState.PROMOTED, timeout=30, what="promoted")
        before = collections.Counter(call.version for call in _calls_since(start))
        assert before["v1"] > 0, before
        assert before["v2"] >= 5, before
        assert router.weight == 100
        await wait_for(lambda: len({c.key for c in _calls_since(start)}) >= 40, what="first 40 done")
        mark = len(CALLS)
        await send_bodies(sqs, queue["url"], [{"key": f"b{i}"} for i in range(20)])
        await wait_for(lambda: len(CALLS) - mark >= 20, what="20 more calls")
        after = _calls_since(mark)
        assert {call.version for call in after} == {"v2"}
        assert {c.key for c in after} == {f"b{i}" for i in range(20)}
        status, body = await http_get_async(worker.http_port, "/metrics")
        assert status == 200
        name = queue["url"].rsplit("/", 1)[-1]
        assert _sample(body, "worker_canary_weight", queue=name) == 100
        assert _sample(body, "worker_canary_state", queue=name, state="promoted") == 1
        assert _sample(body, "worker_canary_state", queue=name, state="progressing") == 0
        assert _sample(body, "worker_canary_transitions_total", queue=name, to="promoted") == 1
        env = _env(aws_env, {"queue_url": queue["url"], **settings})
        result = await _cli_async(env, "canary", "status", "--json")
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert (view["state"], view["weight"], view["step"]) == ("promoted", 100, 1)
    assert view["versions"] == {"baseline": "v1", "candidate": "v2"}
    assert view["counts"]["v2"]["calls"] >= 5
    assert view["counts"]["v2"]["failures"] == 0


async def test_rollback_when_the_candidate_fails_half(
    sqs: Any, aws: Any, queues: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """v2 fails 50 %: rolled back within one interval of the breach, record delivered, no DLQ, all on v1."""
    queue, bucket = await queues(), await _bucket(aws)
    rollbacks = (await sqs.create_queue(QueueName=unique("rollbacks")))["QueueUrl"]
    interval = 0.5
    canary = _canary(
        bucket,
        handler="tests.canary_handlers:v2_half",
        steps="50:3600",
        max_error_ratio=0.1,
        min_samples=10,
        evaluation_interval_seconds=interval,
        on_rollback=rollbacks,
    )
    keys = [f"k{i}" for i in range(60)]
    start = len(CALLS)
    async with running_worker(
        queue, handler="tests.canary_handlers:v1", handler_version="v1", canary=canary
    ) as worker:
        router = worker.rollouts.router
        assert router is not None
        assert router.weight == 50
        await send_bodies(sqs, queue["url"], [{"key": key} for key in keys])
        rolled_back_seen = await wait_for(
            lambda: time.time() if router.state is RolloutState.ROLLED_BACK else None,
            timeout=30,
            interval=0.01,
            what="rolled back",
        )
        assert router.weight == 0
        # Every message finally succeeds: the ones that failed on v2 come back after the backoff, on v1.
        await wait_for(
            lambda: {c.key for c in _calls_since(start) if c.ok} == set(keys),
            timeout=30,
            what="every key succeeded",
        )
        processed = worker.metrics.processed
        dead = sum(
            sample.value
            for family in processed.collect()
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels["outcome"] == "dead_lettered"
        )
    calls = _calls_since(start)
    candidate = [call for call in calls if call.version == "v2"]
    failures = [call for call in candidate if not call.ok]
    assert failures
    assert all(fails_on_v2(call.key) for call in failures)
    # The breach: the candidate call after which its counts first satisfy the gate (>= 10 calls, ratio > 0.1).
    breach_at = None
    for number, _ in enumerate(candidate, start=1):
        failed = sum(1 for call in candidate[:number] if not call.ok)
        if number >= 10 and failed / number > 0.1:
            breach_at = candidate[number - 1].at
            break
    assert breach_at is not None
    records = await drain(sqs, rollbacks, expect=1, timeout=10)
    assert len(records) >= 1
    record = json.loads(records[0]["Body"])
    assert record["type"] == "CanaryRolledBack"
    assert record["gate"] == "max_error_ratio"
    assert record["versions"] == {"candidate": "v2", "baseline": "v1"}
    assert record["threshold"] == 0.1
    assert record["observed"] > 0.1
    numbers = record["numbers"]["candidate"]
    assert numbers["calls"] >= 10
    assert numbers["failures"] / numbers["calls"] == record["observed"]
    stamp = parse_iso(record["timestamp"])
    assert stamp is not None
    rolled_back_at = stamp.timestamp()
    delay, seen = rolled_back_at - breach_at, rolled_back_seen - breach_at
    with capsys.disabled():
        print(
            f"\n[canary] breach -> rollback event {delay:.3f} s, -> router at weight 0 {seen:.3f} s "
            f"(interval {interval} s; {len(candidate)} candidate calls, {len(failures)} failed)"
        )
    assert delay <= interval + ROLLBACK_SLACK_SECONDS, delay
    assert seen <= interval + ROLLBACK_SLACK_SECONDS, seen
    assert dead == 0
    assert await depth(sqs, queue["dlq_url"]) == 0
    assert await depth(sqs, queue["url"]) == 0
    last = {call.key: call for call in calls}
    assert all(last[key].ok for key in keys)
    assert all(last[call.key].version == "v1" for call in failures)


async def test_split_matches_the_weight(
    sqs: Any, aws: Any, queues: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fixed weight of 30 over 2,000 messages: the share that ran on v2 is within 4 points of 30."""
    queue, bucket = await queues(), await _bucket(aws)
    canary = _canary(bucket, steps="30:3600", min_samples=1_000_000)
    total = 2000
    start = len(CALLS)
    async with running_worker(
        queue, handler="tests.canary_handlers:v1", handler_version="v1", canary=canary, concurrency=100
    ) as worker:
        assert worker.rollouts.router is not None
        assert worker.rollouts.router.weight == 30
        await send_bodies(sqs, queue["url"], [{"key": f"s{i}"} for i in range(total)])
        await wait_for(lambda: len(CALLS) - start >= total, timeout=90, what="2,000 calls")
        stats = worker.rollouts.router.stats()
    calls = _calls_since(start)
    assert len(calls) == total
    assert len({call.key for call in calls}) == total
    share = 100 * sum(1 for call in calls if call.version == "v2") / total
    assert stats["v2"].calls + stats["v1"].calls == total
    with capsys.disabled():
        print(f"\n[canary] split at weight 30 over {total} messages: {share:.2f} % on v2")
    # SQS draws the message ids, so the share is a binomial draw: sd 1.02 points over 2,000. The issue's
    # 3 points (2.9 sd) would fail about 1 run in 300 by chance; 4 points (3.9 sd) about 1 in 10,000.
    # Routing itself is exact (the next test), and tests/test_rollout.py checks route() over 10,000 seeded
    # ids within 2 points.
    assert abs(share - 30) <= 4, share


async def test_split_follows_the_hash_of_the_message_id(sqs: Any, aws: Any, queues: Any) -> None:
    """Each message runs on the version its original id's hash picks (route), not on a random draw."""
    queue, bucket = await queues(), await _bucket(aws)
    canary = _canary(bucket, steps="30:3600", min_samples=1_000_000)
    seen: dict[str, str] = {}
    async with running_worker(queue, handler="tests.canary_handlers:v1", handler_version="v1", canary=canary):
        ids = []
        for start in range(0, 100, 10):
            entries = [{"Id": str(i), "MessageBody": json.dumps({"key": f"h{start + i}"})} for i in range(10)]
            answer = await sqs.send_message_batch(QueueUrl=queue["url"], Entries=entries)
            ids += [(f"h{start + int(ok['Id'])}", ok["MessageId"]) for ok in answer["Successful"]]
        mark = len(CALLS)
        await wait_for(lambda: len({c.key for c in CALLS[mark - 100 :] if c.key.startswith("h")}) >= 100)
        seen = {call.key: call.version for call in CALLS if call.key.startswith("h")}
    expected = {key: ("v2" if route(message_id, 30) else "v1") for key, message_id in ids}
    assert len(expected) == 100
    assert seen == expected
    assert 0 < sum(1 for version in expected.values() if version == "v2") < 100


async def test_two_processes_share_one_rollout_and_roll_back_together(
    sqs: Any, aws: Any, queues: Any, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """Two worker processes join one rollout (both publish counts) and both report rolled_back on /metrics."""
    queue, bucket = await queues(), await _bucket(aws)
    canary = _canary(
        bucket, handler="tests.canary_handlers:v2_half", steps="50:3600", max_error_ratio=0.1, min_samples=10
    )
    settings: dict[str, Any] = {
        "queue_url": queue["url"],
        "dlq_url": queue["dlq_url"],
        "handler": "tests.canary_handlers:v1",
        "handler_version": "v1",
        "concurrency": 5,
    }
    settings.update({f"canary__{key}": value for key, value in canary.items()})
    workers = [WorkerProcess(aws_env, tmp_path, **settings).start() for _ in range(2)]
    name = queue["url"].rsplit("/", 1)[-1]
    try:
        for proc in workers:
            await proc.wait_ready()
        await send_bodies(sqs, queue["url"], [{"key": f"p{i}"} for i in range(80)])

        def rolled_back(proc: WorkerProcess) -> bool:
            body = http_get(proc.port, "/metrics")[1]
            return _sample(body, "worker_canary_state", queue=name, state="rolled_back") == 1

        for proc in workers:
            await wait_for(lambda proc=proc: rolled_back(proc), timeout=40, what="both rolled back")
            body = http_get(proc.port, "/metrics")[1]
            assert _sample(body, "worker_canary_weight", queue=name) == 0
        await wait_for(
            lambda: _zero(depth(sqs, queue["url"])), timeout=30, what="queue drained after the rollback"
        )
        env = _env(aws_env, {**settings, "canary": {}})
        result = await _cli_async(env, "canary", "status", "--json")
    finally:
        for proc in workers:
            proc.kill()
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert view["state"] == "rolled_back"
    assert view["weight"] == 0
    assert len(view["replicas"]) == 2  # both joined the one rollout and published their counts
    assert view["counts"]["v2"]["failures"] > 0
    assert await depth(sqs, queue["dlq_url"]) == 0


async def _zero(count: Any) -> bool:
    return await count == 0


def _journal_counts(paths: list[Path]) -> dict[str, collections.Counter[str]]:
    """Per key, how many times each colour finished it (``done <colour> <key>`` lines)."""
    done: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().split("\n")[:-1]:
            event, _, rest = line.partition(" ")
            color, _, key = rest.partition(" ")
            if event == "done":
                done[key][color] += 1
    return done


async def test_blue_green_switch_under_load_loses_nothing(
    sqs: Any, aws: Any, queues: Any, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """Switching blue -> green while a producer sends: every message done exactly once, none by both."""
    queue, bucket = await queues(), await _bucket(aws)
    flag = f"s3://{bucket}/fleet/active.json"
    journals = {color: tmp_path / f"{color}.journal" for color in ("blue", "green")}
    procs = {}
    for color in ("blue", "green"):
        env = {**aws_env, "TEST_JOURNAL": str(journals[color])}
        procs[color] = WorkerProcess(
            env,
            tmp_path,
            queue_url=queue["url"],
            dlq_url=queue["dlq_url"],
            handler="tests.canary_handlers:colored",
            color=color,
            color_state=flag,
            concurrency=10,
        ).start()
    sent: list[str] = []
    try:
        for proc in procs.values():
            await proc.wait_ready()
        status, body = http_get(procs["green"].port, "/readyz")
        assert status == 200, body
        assert json.loads(body)["standby"] is True, body
        assert json.loads(http_get(procs["blue"].port, "/readyz")[1])["standby"] is False
        switch_env = _env(aws_env, {"color_state": flag})
        stop = anyio.Event()

        async def produce() -> None:
            number = 0
            while not stop.is_set():
                batch = [f"m{number + i}" for i in range(10)]
                await send_bodies(sqs, queue["url"], [{"key": key} for key in batch])
                sent.extend(batch)
                number += 10
                await anyio.sleep(0.1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            await wait_for(lambda: len(_journal_counts([journals["blue"]])) >= 30, what="blue working")
            switched = await _cli_async(
                switch_env, "switch", "--to", "green", "--timeout", "60", "--interval", "0.5"
            )
            await wait_for(lambda: len(_journal_counts([journals["green"]])) >= 30, what="green working")
            stop.set()
        assert switched.returncode == 0, switched.stdout + switched.stderr
        assert "blue has drained" in switched.stdout
        await wait_for(
            lambda: len(_journal_counts(list(journals.values()))) >= len(sent),
            timeout=45,
            what="every sent message done",
        )
        status, body = http_get(procs["blue"].port, "/readyz")
        assert status == 200, body
        assert json.loads(body)["standby"] is True, body
        result = await _cli_async(switch_env, "switch", "--status", "--json")
    finally:
        for proc in procs.values():
            proc.kill()
    done = _journal_counts(list(journals.values()))
    assert set(done) == set(sent)  # 0 lost (and nothing that was not sent)
    twice = {key: counts for key, counts in done.items() if sum(counts.values()) != 1}
    assert not twice, f"processed more than once (or by both colours): {dict(list(twice.items())[:5])}"
    by_color = collections.Counter(color for counts in done.values() for color in counts)
    assert by_color["blue"] > 0, by_color
    assert by_color["green"] > 0, by_color
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert view["active"] == "green"
    assert view["fleets"]["green"]["active"] is True
    assert view["fleets"]["green"]["live"] == 1
    assert view["fleets"]["blue"]["active"] is False
    assert view["fleets"]["blue"]["live"] == 1
    assert await depth(sqs, queue["url"]) == 0

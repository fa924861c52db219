"""The rollout and blue/green stores on LocalStack's S3, and the `worker canary` / `worker switch` commands.

Two stores stand for two replicas (each its own S3 client). The commands run in-process: `worker canary`
through ``worker.cli.main`` in a thread (it runs its own event loop), `worker switch`'s waits through the same
code with a counter on the heartbeat reads, so a test can tell the command kept waiting.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest

from tests.conftest import unique
from tests.helpers import wait_for
from worker.cli import main
from worker.engine.color_store import ColorStore, Flag, FlagChangedError, Heartbeat, open_color_store
from worker.engine.rollout_log import Event, RolloutState, fold
from worker.engine.rollout_plan import Step, rollout_id
from worker.engine.rollout_stats import VersionStats
from worker.engine.rollout_store import (
    ConditionFailedError,
    RolloutLocation,
    RolloutStore,
    S3Json,
    Stored,
    StoreError,
    open_rollout_store,
    open_s3_json,
    replica_name,
)
from worker.ops import switch as switch_command

pytestmark = pytest.mark.localstack

STEPS = (Step(10, 60.0), Step(50, 60.0))
BUCKETS = ((0.1, 5), (1.0, 9), (float("inf"), 10))


@pytest.fixture
async def bucket(aws: Callable[[str], Any]) -> AsyncIterator[str]:
    """A fresh S3 bucket, emptied and removed after the test."""
    s3 = await aws("s3")
    name = unique("rollouts")
    await s3.create_bucket(Bucket=name)
    yield name
    with contextlib.suppress(Exception):  # best-effort cleanup of a throwaway bucket
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=name):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                await s3.delete_objects(Bucket=name, Delete={"Objects": keys})
        await s3.delete_bucket(Bucket=name)


@contextlib.asynccontextmanager
async def two_replicas(
    location: RolloutLocation, endpoint: str
) -> AsyncIterator[tuple[RolloutStore, RolloutStore]]:
    """Two stores of one rollout, each with its own S3 client, as two replicas have."""
    async with (
        open_rollout_store(location, endpoint_url=endpoint) as first,
        open_rollout_store(location, endpoint_url=endpoint) as second,
    ):
        yield first, second


def _count_gets(store: RolloutStore) -> list[str]:
    """Record every GetObject key ``store`` asks for."""
    asked: list[str] = []
    inner = store.objects.get

    async def get(key: str) -> Any:
        asked.append(key)
        return await inner(key)

    store.objects.get = get  # type: ignore[method-assign]
    return asked


async def test_two_replicas_appending_at_once_lose_nothing_and_fold_alike(
    bucket: str, localstack_endpoint: str
) -> None:
    """100 events from 2 concurrent writers all land; both replicas fold the same state; reads are cached."""
    location = RolloutLocation(bucket, "canary/orders", "r1")
    async with two_replicas(location, localstack_endpoint) as (first, second):

        async def write(store: RolloutStore, replica: str) -> None:
            await store.append(Event("r1", "start", time.time(), replica))
            for _ in range(49):
                await store.append(Event("r1", "advance", time.time(), replica, 1))

        async with anyio.create_task_group() as tg:
            tg.start_soon(write, first, "replica-a")
            tg.start_soon(write, second, "replica-b")

        asked = _count_gets(first)
        seen_first, seen_second = await first.read_events(), await second.read_events()
        assert len(seen_first) == len(seen_second) == 100
        assert sorted(e.order() for e in seen_first) == sorted(e.order() for e in seen_second)
        assert {e.replica for e in seen_first} == {"replica-a", "replica-b"}
        state = fold(seen_first, "r1", STEPS)
        assert state == fold(seen_second, "r1", STEPS) == fold(reversed(seen_second), "r1", STEPS)
        assert (state.state, state.step, state.weight) == (RolloutState.PROGRESSING, 1, 50)
        assert len(asked) == 50, "read more than the other replica's events"
        assert all("-replica-b-" in key for key in asked), "re-read its own events"
        assert len(await first.read_events()) == 100
        assert len(asked) == 50, "read known events again"

        await second.append(Event("r1", "promote", time.time(), "replica-b", len(STEPS)))
        assert len(await first.read_events()) == 101
        assert len(asked) == 51, f"read {len(asked) - 50} objects for one new event"
        assert (await first.rollout(STEPS)).state is RolloutState.PROMOTED


async def test_a_rollback_written_while_others_advance_always_wins(
    bucket: str, localstack_endpoint: str
) -> None:
    """A rollback appended amid concurrent advances and a later promote leaves the rollout rolled back."""
    location = RolloutLocation(bucket, "", "r2")
    async with two_replicas(location, localstack_endpoint) as (first, second):
        await first.append(Event("r2", "start", time.time(), "a"))
        rolled_back = anyio.Event()

        async def advance() -> None:
            for step in (1, 1, 1, 1, 1):
                await first.append(Event("r2", "advance", time.time(), "a", step))
            await rolled_back.wait()
            await first.append(Event("r2", "promote", time.time(), "a", len(STEPS)))

        async def roll_back() -> None:
            detail = {"gate": "max_error_ratio", "observed": 0.5, "threshold": 0.1}
            await second.append(Event("r2", "rollback", time.time(), "b", 0, detail))
            rolled_back.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(advance)
            tg.start_soon(roll_back)

        for store in (first, second):
            state = await store.rollout(STEPS)
            assert (state.state, state.weight) == (RolloutState.ROLLED_BACK, 0)
            assert state.rollback is not None
            assert state.rollback.replica == "b"
            assert state.rollback.detail["gate"] == "max_error_ratio"


async def test_counts_merge_across_replicas(bucket: str, localstack_endpoint: str) -> None:
    """Each replica overwrites only its own counts; the fleet's are their sum; a stray object is skipped."""
    location = RolloutLocation(bucket, "p", "r3")
    async with two_replicas(location, localstack_endpoint) as (first, second):
        await first.publish("a", {"v1": VersionStats(5, 1, BUCKETS)}, now=time.time())
        await first.publish(
            "a", {"v1": VersionStats(10, 2, BUCKETS), "v2": VersionStats(4, 4, BUCKETS)}, now=time.time()
        )
        await second.publish("b", {"v1": VersionStats(10, 0, BUCKETS)}, now=time.time())
        await second.objects.put(f"{location.counts}junk.json", {"not": "counts"})

        merged = await first.read_counts()
        assert merged["v1"] == VersionStats(20, 2, ((0.1, 10), (1.0, 18), (float("inf"), 20)))
        assert merged["v2"] == VersionStats(4, 4, BUCKETS)
        assert set(await second.read_replica_counts()) == {"a", "b"}
        with pytest.raises(ValueError, match="replica name"):
            await first.publish("a/b", {}, now=time.time())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_store_is_one_error_type_and_conditional_writes_hold(
    bucket: str, localstack_endpoint: str
) -> None:
    """A closed port and a missing bucket raise StoreError; LocalStack honours IfNoneMatch and IfMatch."""
    location = RolloutLocation(bucket, "p", "r4")
    dead = f"http://127.0.0.1:{_closed_port()}"
    async with open_rollout_store(location, endpoint_url=dead, call_timeout=1.0) as store:
        # Each call is timed alone: creating the client (loading the S3 model) is CPU work that a loaded
        # machine stretches, and not what the call timeout bounds.
        started = time.monotonic()
        with pytest.raises(StoreError, match="cannot list"):
            await store.read_events()
        listed = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(StoreError, match="cannot write"):
            await store.append(Event("r4", "start", time.time(), "a"))
        written = time.monotonic() - started
    assert max(listed, written) < 3, f"calls to a closed port took {listed:.1f} s and {written:.1f} s"
    missing = RolloutLocation(unique("missing"), "p", "r4")
    async with open_rollout_store(missing, endpoint_url=localstack_endpoint) as store:
        with pytest.raises(StoreError, match="NoSuchBucket"):
            await store.read_counts()

    async with open_s3_json(bucket, endpoint_url=localstack_endpoint) as objects:
        etag = await objects.put("once", {"n": 1}, if_none_match=True)
        with pytest.raises(ConditionFailedError):
            await objects.put("once", {"n": 2}, if_none_match=True)
        newer = await objects.put("once", {"n": 3}, if_match=etag)
        with pytest.raises(ConditionFailedError):
            await objects.put("once", {"n": 4}, if_match=etag)
        stored = await objects.get("once")
        assert stored is not None
        assert (stored.data, stored.etag) == ({"n": 3}, newer)


# --- worker canary ---


@pytest.fixture
def canary_env(bucket: str, monkeypatch: pytest.MonkeyPatch) -> RolloutLocation:
    """`worker run`'s settings with a canary whose store is the test's bucket; the rollout they name."""
    values = {
        "WORKER_QUEUE_URL": "http://127.0.0.1:9/000000000000/orders",
        "WORKER_HANDLER": "tests.handlers:scripted",
        "WORKER_HANDLER_VERSION": "v1",
        "WORKER_CANARY__HANDLER": "tests.handlers:scripted",
        "WORKER_CANARY__VERSION": "v2",
        "WORKER_CANARY__STEPS": "10:60,50:60",
        "WORKER_CANARY__STATE": f"s3://{bucket}/canary",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    rollout = rollout_id("tests.handlers:scripted", "v2", "v1", STEPS, scope=values["WORKER_QUEUE_URL"])
    return RolloutLocation(bucket, "canary", rollout)


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``worker ARGV`` in a thread (it runs its own event loop): exit code, stdout, stderr."""
    capsys.readouterr()
    try:
        code = await anyio.to_thread.run_sync(main, list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


async def test_canary_status_promote_and_rollback(
    canary_env: RolloutLocation, localstack_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """status reads what replicas wrote; promote and rollback append events; a rollback is final."""
    code, out, _ = await cli(capsys, "canary", "status", "--json")
    view = json.loads(out)
    assert code == 0
    assert view["rollout"] == canary_env.rollout
    assert (view["state"], view["weight"], view["step"], view["started_at"]) == ("progressing", 0, 0, None)
    assert view["versions"] == {"baseline": "v1", "candidate": "v2"}

    async with open_rollout_store(canary_env, endpoint_url=localstack_endpoint) as replica:
        await replica.append(Event(canary_env.rollout, "start", time.time(), "replica-a"))
        await replica.publish(
            "replica-a",
            {"v1": VersionStats(90, 1, BUCKETS), "v2": VersionStats(10, 1, BUCKETS)},
            now=time.time(),
        )
        await replica.publish("replica-b", {"v1": VersionStats(10, 0, BUCKETS)}, now=time.time())

        code, out, _ = await cli(capsys, "canary", "status", "--json")
        view = json.loads(out)
        assert (view["state"], view["weight"], view["step"]) == ("progressing", 10, 0)
        assert view["counts"]["v1"]["calls"] == 100
        assert view["counts"]["v2"]["failures"] == 1
        assert set(view["replicas"]) == {"replica-a", "replica-b"}
        assert view["decision"] == {"kind": "hold", "reason": "min samples"}
        code, out, _ = await cli(capsys, "canary", "status")
        assert code == 0
        assert "weight    10 % to v2 (candidate), 90 % to v1 (baseline)" in out

        code, out, _ = await cli(capsys, "canary", "promote")
        assert code == 0
        assert "promoted, weight 100" in out
        assert (await replica.rollout(STEPS)).state is RolloutState.PROMOTED

        code, out, _ = await cli(capsys, "canary", "rollback", "--reason", "latency on v2")
        assert code == 0
        assert "rolled_back, weight 0" in out
        state = await replica.rollout(STEPS)
        assert state.state is RolloutState.ROLLED_BACK
        assert state.rollback is not None
        detail = state.rollback.detail
        assert (detail["gate"], detail["reason"]) == ("manual", "latency on v2")
        assert detail["candidate"]["calls"] == 10  # type: ignore[index]

    code, out, _ = await cli(capsys, "canary", "promote")
    assert code == 1
    assert "a rollback is final" in out
    code, out, _ = await cli(capsys, "canary", "rollback")
    assert code == 0
    assert "already rolled back" in out
    code, out, _ = await cli(capsys, "canary", "status", "--json")
    assert json.loads(out)["rollback"]["gate"] == "manual"


async def test_canary_command_errors(
    canary_env: RolloutLocation, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unreachable store exits 1, a missing canary or a bad action 2, each with one line."""
    monkeypatch.setenv("WORKER_CANARY__STATE", f"s3://{unique('missing')}/canary")
    code, _, err = await cli(capsys, "canary", "status")
    assert code == 1
    assert "the rollout store cannot be reached" in err
    assert "NoSuchBucket" in err
    monkeypatch.delenv("WORKER_CANARY__HANDLER")
    code, _, err = await cli(capsys, "canary", "status")
    assert code == 2
    assert "no canary rollout configured" in err
    code, _, err = await cli(capsys, "canary", "widen")
    assert code == 2
    assert "invalid choice" in err


# --- blue/green ---


@pytest.fixture
async def colors(bucket: str, localstack_endpoint: str) -> AsyncIterator[ColorStore]:
    """The flag ``s3://bucket/deploy/active`` and its heartbeats."""
    async with open_color_store(f"s3://{bucket}/deploy/active", endpoint_url=localstack_endpoint) as store:
        yield store


def beat(
    color: str, replica: str, state: str, *, flag: str = "", in_flight: int = 0, **counts: int
) -> Heartbeat:
    """A heartbeat written now."""
    return Heartbeat(color, replica, time.time(), state, in_flight, flag=flag, **counts)  # type: ignore[arg-type]


class Denied(S3Json):
    """S3 as a caller without s3:ListBucket on the key sees it: every GetObject is 403 AccessDenied."""

    async def get(self, key: str) -> Stored | None:
        """403, whether the key exists or not."""
        raise StoreError(f"cannot read {self.uri(key)} (AccessDenied)", "AccessDenied")


async def test_color_store_flag_history_and_heartbeats(colors: ColorStore, aws: Callable[[str], Any]) -> None:
    """blue until the flag exists; conditional switches; one history object per switch; both fleets' beats."""
    first = await colors.read_active()
    assert (first.active, first.exists) == ("blue", False)
    denied = ColorStore(Denied(colors.objects.client, colors.objects.bucket), colors.key)
    assert (await denied.read_active()) == first, "a 403 on a flag that is not listed means no flag"
    green = await colors.set_active("green", by="ops", reason="release 7", now=time.time(), expect=first)
    with pytest.raises(StoreError, match="AccessDenied"):
        await denied.read_active()
    assert (await colors.read_active()) == green
    assert green.previous == "blue"
    with pytest.raises(FlagChangedError):
        await colors.set_active("blue", by="other", reason="", now=time.time(), expect=first)
    with pytest.raises(FlagChangedError):
        await colors.set_active(
            "blue", by="other", reason="", now=time.time(), expect=Flag("blue", etag='"stale"')
        )
    assert [flag.active for flag in await colors.history()] == ["green"]

    s3 = await aws("s3")
    await s3.put_object(Bucket=colors.objects.bucket, Key=colors.key, Body=b"BLUE\n")
    assert (await colors.read_active()).active == "blue"

    await colors.publish_heartbeat(beat("blue", "b-1", "active", in_flight=3, processed=10, failed=1))
    await colors.publish_heartbeat(beat("green", "g-1", "standby"))
    await colors.publish_heartbeat(beat("green", "g-1", "standby", processed=5))
    beats = await colors.read_heartbeats()
    assert [(b.color, b.replica, b.state, b.processed) for b in beats] == [
        ("blue", "b-1", "active", 10),
        ("green", "g-1", "standby", 5),
    ]
    assert [b.replica for b in await colors.read_heartbeats("green")] == ["g-1"]


def _count_heartbeat_reads(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every ColorStore.read_heartbeats call from now on (the command's too) appends its time."""
    reads: list[float] = []
    inner = ColorStore.read_heartbeats

    async def counted(self: ColorStore, color: Any = None) -> list[Heartbeat]:
        reads.append(time.monotonic())
        return await inner(self, color)

    monkeypatch.setattr(ColorStore, "read_heartbeats", counted)
    return reads


async def test_switch_refuses_a_target_without_live_replicas(
    colors: ColorStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No fresh green heartbeat: exit 1, the flag untouched; bad usage and a missing flag exit 2."""
    code, _, err = await cli(capsys, "switch", "--to", "green")
    assert code == 2
    assert "WORKER_COLOR_STATE" in err
    monkeypatch.setenv("WORKER_COLOR_STATE", colors.uri)
    stale = Heartbeat("green", "g-old", time.time() - 120, "standby")
    await colors.publish_heartbeat(stale)
    code, out, _ = await cli(capsys, "switch", "--to", "green")
    assert code == 1
    assert "refused: no live green replica" in out
    assert not (await colors.read_active()).exists
    for argv in (
        ["--to", "green", "--auto-rollback"],
        ["--status", "--bake", "5"],
        ["--to", "green", "--json"],
    ):
        code, _, err = await cli(capsys, "switch", *argv)
        assert code == 2, argv
        assert "usage:" in err, argv
    code, out, _ = await cli(capsys, "switch", "--status", "--json")
    view = json.loads(out)
    assert code == 0
    assert view["active"] == "blue"
    assert view["flag"]["exists"] is False
    assert view["fleets"]["green"]["live"] == 0
    assert view["fleets"]["green"]["replicas"][0]["replica"] == "g-old"


async def test_switch_flips_the_flag_and_waits_until_the_old_colour_drained(
    colors: ColorStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`worker switch --to green` returns once every live blue replica saw the flag: standby, 0 in flight."""
    monkeypatch.setenv("WORKER_COLOR_STATE", colors.uri)
    await colors.publish_heartbeat(beat("green", "g-1", "standby"))
    await colors.publish_heartbeat(beat("blue", "b-1", "active", in_flight=4))
    await colors.publish_heartbeat(beat("blue", "b-2", "active", in_flight=1))
    reads = _count_heartbeat_reads(monkeypatch)
    result: dict[str, tuple[int, str, str]] = {}

    async def run() -> None:
        result["switch"] = await cli(
            capsys, "switch", "--to", "green", "--interval", "0.1", "--timeout", "20"
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        flag = await wait_for(lambda: _active(colors, "green"), timeout=10, what="the flag to say green")
        await colors.publish_heartbeat(beat("blue", "b-1", "standby", flag=flag.id))
        await colors.publish_heartbeat(beat("blue", "b-2", "draining", flag=flag.id, in_flight=1))
        before = len(reads)
        await wait_for(lambda: len(reads) >= before + 3, timeout=10, what="three more heartbeat reads")
        assert "switch" not in result, "returned while b-2 still had a message in flight"
        await colors.publish_heartbeat(beat("blue", "b-2", "standby", flag=flag.id))
        await wait_for(lambda: "switch" in result, timeout=10, what="the switch to return")
    code, out, _ = result["switch"]
    assert code == 0, out
    assert "blue has drained" in out
    code, out, _ = await cli(capsys, "switch", "--to", "green", "--interval", "0.1", "--timeout", "5")
    assert code == 0, out
    assert "green is already active" in out
    assert "blue has drained" in out
    assert flag.previous == "blue"
    assert (await colors.read_active()).id == flag.id


async def _active(colors: ColorStore, color: str) -> Flag | None:
    flag = await colors.read_active()
    return flag if flag.active == color else None


async def test_switch_bake_breach_switches_back(colors: ColorStore) -> None:
    """During the bake green fails 10 of 20 calls after the switch (not counting before it): blue is back."""
    await colors.publish_heartbeat(beat("green", "g-1", "standby", processed=100, failed=90))
    await colors.publish_heartbeat(beat("blue", "b-1", "active"))
    options = switch_command.Options(
        "green", bake=30, auto_rollback=True, min_samples=10, max_error_ratio=0.1, interval=0.1, timeout=20
    )
    said: list[str] = []
    result: dict[str, int] = {}

    async def run() -> None:
        result["code"] = await switch_command.switch(colors, options, say=said.append)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        green = await wait_for(lambda: _active(colors, "green"), timeout=10, what="the flag to say green")
        await colors.publish_heartbeat(beat("blue", "b-1", "standby", flag=green.id))
        await wait_for(
            lambda: any(line.startswith("baking green") for line in said), timeout=10, what="the bake"
        )
        await colors.publish_heartbeat(
            beat("green", "g-1", "active", flag=green.id, processed=105, failed=90)
        )
        await colors.publish_heartbeat(beat("green", "g-2", "active", flag=green.id, processed=15, failed=10))
        blue = await wait_for(lambda: _active(colors, "blue"), timeout=10, what="the switch back")
        await colors.publish_heartbeat(
            beat("green", "g-1", "standby", flag=blue.id, processed=105, failed=90)
        )
        await colors.publish_heartbeat(beat("green", "g-2", "standby", flag=blue.id, processed=15, failed=10))
        await wait_for(lambda: "code" in result, timeout=10, what="the switch to return")
    assert result["code"] == 1
    assert blue.reason.startswith("auto-rollback: error ratio 0.5 (10 of 20)"), blue.reason
    assert [flag.active for flag in await colors.history()] == ["green", "blue"]
    assert any(
        line == "green has drained: no live green replica is active or has messages in flight"
        for line in said
    )


def test_replica_names_are_unique_and_safe() -> None:
    """Two processes on one host get different names, usable in an object key."""
    first, second = replica_name("pod/a b"), replica_name("pod/a b")
    assert first != second
    assert first.startswith("pod-a-b-")

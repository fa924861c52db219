"""kill -9 under load, again and again: nothing lost, duplicates bounded, the DLQ holds exactly the poison.

`make test` runs 3 trials; `make chaos` runs 20 (CHAOS_TRIALS) and writes the figures (CHAOS_REPORT).

The random choices of a trial (which messages are poison or transient, after how many handler starts the
worker is killed) come from one seed: ``CHAOS_SEED`` when set, else a fresh one. The seed is printed, written
into every trial's figures in the report and named in every failure, with the command that replays the
trial: ``CHAOS_SEED=<seed> CHAOS_TRIAL=<n>`` runs that one trial again with the same choices (not the same
timing).
"""

from __future__ import annotations

import collections
import json
import os
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import QueueFactory, unique
from tests.helpers import WorkerProcess, depth, drain, read_journal, send_bodies, wait_for
from worker.deadletter.record import read_failure
from worker.engine.message import parse_sqs_attributes

TRIALS = int(os.environ.get("CHAOS_TRIALS", "3"))
MESSAGES = int(os.environ.get("CHAOS_MESSAGES", "2000"))
CONCURRENCY = 50


def chaos_seed(environ: Mapping[str, str] = os.environ) -> int:
    """The seed of this run: ``CHAOS_SEED`` (an integer) when set, else a fresh random one."""
    value = environ.get("CHAOS_SEED", "").strip()
    if not value:
        return random.SystemRandom().randrange(2**32)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"CHAOS_SEED must be an integer, not {value!r}") from None


def chaos_trials(environ: Mapping[str, str] = os.environ) -> list[int]:
    """The trials to run: ``CHAOS_TRIAL`` alone (replaying one), else the first CHAOS_TRIALS."""
    one = environ.get("CHAOS_TRIAL", "").strip()
    return [int(one)] if one else list(range(TRIALS))


def replay_hint(seed: int, trial: int) -> str:
    """How to run one trial again with the same random choices."""
    return f"replay with CHAOS_SEED={seed} CHAOS_TRIAL={trial}"


@dataclass(frozen=True)
class Plan:
    """The random choices of one trial: what each message does, and when the worker is killed."""

    seed: int
    trial: int
    kinds: tuple[str, ...]  # per message: "ok", "transient" or "poison"
    kill_after_starts: int

    @classmethod
    def of(cls, seed: int, trial: int, messages: int = MESSAGES) -> Plan:
        """Trial ``trial`` of run ``seed``: the same arguments always give the same plan."""
        rng = random.Random(f"chaos:{seed}:{trial}")
        kinds: list[str] = []
        for _ in range(messages):
            roll = rng.random()  # 5 % poison, 10 % transient (fail the first delivery), 85 % ok
            kinds.append("poison" if roll < 0.05 else "transient" if roll < 0.15 else "ok")
        return cls(seed, trial, tuple(kinds), rng.randint(messages // 10, messages // 2))


@contextmanager
def replayable(seed: int, trial: int) -> Iterator[None]:
    """Name the seed and the replay command in whatever fails inside (assertion messages included)."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n[chaos trial {trial}: {replay_hint(seed, trial)}]") from exc
    except Exception as exc:
        exc.add_note(f"[chaos trial {trial}: {replay_hint(seed, trial)}]")
        raise


async def _load(sqs: Any, url: str, plan: Plan) -> tuple[set[str], set[str]]:
    """Send the plan's messages; return (good, poison) keys."""
    good: set[str] = set()
    poison: set[str] = set()
    docs: list[dict[str, Any]] = []
    for kind in plan.kinds:
        key = unique("c")
        if kind == "poison":
            doc: dict[str, Any] = {"key": key, "do": "permanent"}
            poison.add(key)
        elif kind == "transient":
            doc = {"key": key, "do": "fail_until", "n": 2}
            good.add(key)
        else:
            doc = {"key": key, "sleep": 0.02}
            good.add(key)
        docs.append(doc)
    await send_bodies(sqs, url, docs)
    return good, poison


@pytest.mark.localstack
@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_kill_9_trials_lose_nothing(
    sqs: Any, queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """Each trial: load, SIGKILL at a seeded point, restart: 0 lost, duplicates <= in flight, DLQ = poison."""
    seed = chaos_seed()
    trials = chaos_trials()
    print(f"chaos: CHAOS_SEED={seed}, trials {trials}, {MESSAGES} messages each")  # shown with a failure
    figures: list[dict[str, Any]] = []
    try:
        for trial in trials:
            plan = Plan.of(seed, trial)
            try:
                with replayable(seed, trial):
                    figures.append(await _trial(plan, sqs, queues, aws_env, tmp_path))
            except BaseException as exc:
                figures.append(
                    {
                        "trial": trial,
                        "seed": seed,
                        "messages": MESSAGES,
                        "killed_after_starts": plan.kill_after_starts,
                        "failed": str(exc),
                    }
                )
                raise
    finally:
        report = os.environ.get("CHAOS_REPORT")
        if report:
            await anyio.Path(report).parent.mkdir(parents=True, exist_ok=True)
            await anyio.Path(report).write_text(json.dumps(figures, indent=2))


async def _trial(
    plan: Plan, sqs: Any, queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path
) -> dict[str, Any]:
    trial = plan.trial  # a failure here comes out with the seed (replayable)
    q = await queues(visibility=3)
    # One journal per process: the killed one may leave a torn last line (see read_journal).
    journals = (tmp_path / f"journal-{trial}-killed", tmp_path / f"journal-{trial}-restarted")
    env = {**aws_env, "TEST_JOURNAL": str(journals[0])}
    settings = {
        "queue_url": q["url"],
        "dlq_url": q["dlq_url"],
        "concurrency": CONCURRENCY,
        "visibility_timeout_seconds": 3,
        "max_attempts": 6,
    }
    good, poison = await _load(sqs, q["url"], plan)
    first = WorkerProcess(env, tmp_path, **settings).start()
    target = plan.kill_after_starts
    try:
        await first.wait_ready()
        await wait_for(
            lambda: sum(read_journal(*journals)["start"].values()) >= target, timeout=120, what="load"
        )
    finally:
        killed_at = time.monotonic()
        first.kill()
    done_at_kill = sum(read_journal(*journals)["done"].values())
    second = WorkerProcess({**env, "TEST_JOURNAL": str(journals[1])}, tmp_path, **settings).start()
    try:
        await second.wait_ready()
        await wait_for(
            lambda: sum(read_journal(*journals)["done"].values()) > done_at_kill, timeout=60, what="resumed"
        )
        recovery = time.monotonic() - killed_at
        await wait_for(
            lambda: set(read_journal(*journals)["done"]) >= good, timeout=180, what="all good keys done"
        )
        await wait_for(lambda: _drained(sqs, q["url"]), timeout=60, what="source drained")
    finally:
        second.kill()
    done = read_journal(*journals)["done"]
    # Read the whole DLQ: a copy sent twice (killed between the DLQ send and the delete) is a duplicate,
    # and must not stand in for a missing poison message.
    entries = await drain(sqs, q["dlq_url"], expect=len(poison), timeout=30)
    while await depth(sqs, q["dlq_url"]):
        entries += await drain(sqs, q["dlq_url"], expect=1, timeout=10)
    dead: collections.Counter[str] = collections.Counter()
    for entry in entries:
        record = read_failure(parse_sqs_attributes(entry.get("MessageAttributes")))
        assert record is not None, "a DLQ entry without its failure record"
        dead[json.loads(entry["Body"])["key"]] += 1
    lost = len(good - set(done)) + len(poison - set(dead))
    duplicates = sum(n - 1 for n in done.values()) + sum(n - 1 for n in dead.values())
    assert lost == 0, f"{lost} lost"
    assert set(done) == good, "a poison message succeeded, or an unknown key appeared"
    assert set(dead) == poison, "the DLQ does not hold exactly the poison"
    assert duplicates <= CONCURRENCY, f"{duplicates} duplicates, more than {CONCURRENCY} in flight"
    return {
        "trial": trial,
        "seed": plan.seed,
        "messages": MESSAGES,
        "killed_after_starts": target,
        "lost": lost,
        "duplicates": duplicates,
        "recovery_s": round(recovery, 2),
    }


async def _drained(sqs: Any, url: str) -> bool:
    return await depth(sqs, url) == 0


def test_a_seed_replays_the_same_trials() -> None:
    """The same seed and trial give the same load and kill point; another seed or trial gives others."""
    plan = Plan.of(1234, 2, 2000)
    assert Plan.of(1234, 2, 2000) == plan
    assert Plan.of(1234, 3, 2000) != plan
    assert Plan.of(1235, 2, 2000) != plan
    poison = plan.kinds.count("poison") / 2000
    transient = plan.kinds.count("transient") / 2000
    assert 0.02 < poison < 0.08, poison
    assert 0.06 < transient < 0.14, transient
    assert 200 <= plan.kill_after_starts <= 1000


def test_the_seed_is_taken_from_chaos_seed_or_drawn() -> None:
    """CHAOS_SEED sets the seed (and CHAOS_TRIAL one trial); without it, each run draws a new one."""
    assert chaos_seed({"CHAOS_SEED": " 987654321 "}) == 987654321
    assert chaos_trials({"CHAOS_SEED": "1", "CHAOS_TRIAL": "7"}) == [7]
    assert chaos_trials({}) == list(range(TRIALS))
    assert len({chaos_seed({}) for _ in range(5)}) > 1
    with pytest.raises(ValueError, match="CHAOS_SEED must be an integer"):
        chaos_seed({"CHAOS_SEED": "abc"})


def test_a_failing_trial_names_its_seed() -> None:
    """A failed assertion in a trial comes out with the seed and the replay command; other errors too."""
    with pytest.raises(AssertionError) as failed, replayable(42, 3):
        raise AssertionError("3 lost")
    assert "3 lost" in str(failed.value)
    assert "CHAOS_SEED=42 CHAOS_TRIAL=3" in str(failed.value)
    with pytest.raises(TimeoutError) as timed_out, replayable(42, 3):
        raise TimeoutError("LocalStack")
    assert any("CHAOS_SEED=42 CHAOS_TRIAL=3" in note for note in timed_out.value.__notes__)

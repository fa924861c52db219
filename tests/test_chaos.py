"""kill -9 under load, again and again: nothing lost, duplicates bounded, the DLQ holds exactly the poison.

`make test` runs 3 trials of 2,000 messages; `make chaos` runs 20 of 5,000 (CHAOS_TRIALS, CHAOS_MESSAGES) and
writes the figures into the JSON report (CHAOS_REPORT, see tests/chaos_report.py).

A trial kills the worker once or twice (the restarted one too), each time in start-up, under load or in the
drain after SIGTERM; the duplicates and handler restarts must stay within what was in flight at the kills.

The random choices of a trial (which messages are poison or transient, when and how the workers are
killed) come from one seed: ``CHAOS_SEED`` when set, else a fresh one. The seed is printed, written
into every trial's figures in the report and named in every failure, with the command that replays the
trial: ``CHAOS_SEED=<seed> CHAOS_TRIAL=<n>`` runs that one trial again with the same choices (not the same
timing).
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests import chaos_report
from tests.conftest import QueueFactory, unique
from tests.helpers import WorkerProcess, depth, drain, http_get_async, read_journal, send_bodies, wait_for
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


#: Shares of the run a kill lands in: start-up (before /readyz), the drain after SIGTERM, else under load.
STARTUP_SHARE, DRAINING_SHARE = 0.1, 0.1
#: Share of trials with two kills (the restarted worker is killed too) instead of one.
TWO_KILLS_SHARE = 0.3


@dataclass(frozen=True)
class Kill:
    """One SIGKILL of a trial: in which phase, and when within it."""

    phase: str  # "startup", "running" or "draining"
    after_starts: int  # running, draining: handler starts (all processes) before the kill / the SIGTERM
    delay: float  # startup: seconds after launch; draining: seconds after SIGTERM; running: 0


@dataclass(frozen=True)
class Plan:
    """The random choices of one trial: what each message does, and when the workers are killed."""

    seed: int
    trial: int
    kinds: tuple[str, ...]  # per message: "ok", "transient" or "poison"
    kills: tuple[Kill, ...]

    @classmethod
    def of(cls, seed: int, trial: int, messages: int = MESSAGES) -> Plan:
        """Trial ``trial`` of run ``seed``: the same arguments always give the same plan.

        Each kill falls uniformly over the run: a share in start-up (a random moment of the first 1.5 s after
        launch), a share in the drain (SIGTERM after a random number of handler starts, SIGKILL a random
        0-2 s later), the rest under load after a number of handler starts drawn uniformly over the messages.
        """
        rng = random.Random(f"chaos:{seed}:{trial}")
        kinds: list[str] = []
        for _ in range(messages):
            roll = rng.random()  # 5 % poison, 10 % transient (fail the first delivery), 85 % ok
            kinds.append("poison" if roll < 0.05 else "transient" if roll < 0.15 else "ok")
        count = 2 if rng.random() < TWO_KILLS_SHARE else 1
        points = sorted(rng.randint(0, messages - 1) for _ in range(count))
        kills: list[Kill] = []
        for starts in points:
            roll = rng.random()
            if roll < STARTUP_SHARE:
                kills.append(Kill("startup", 0, round(rng.uniform(0.0, 1.5), 3)))
            elif roll < STARTUP_SHARE + DRAINING_SHARE:
                kills.append(Kill("draining", starts, round(rng.uniform(0.0, 2.0), 3)))
            else:
                kills.append(Kill("running", starts, 0.0))
        return cls(seed, trial, tuple(kinds), tuple(kills))


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


async def _load(sqs: Any, url: str, plan: Plan) -> dict[str, str]:
    """Send the plan's messages; return {key: kind}."""
    kinds: dict[str, str] = {}
    docs: list[dict[str, Any]] = []
    for kind in plan.kinds:
        key = unique("c")
        if kind == "poison":
            doc: dict[str, Any] = {"key": key, "do": "permanent"}
        elif kind == "transient":
            doc = {"key": key, "do": "fail_until", "n": 2}
        else:
            doc = {"key": key, "sleep": 0.02}
        kinds[key] = kind
        docs.append(doc)
    await send_bodies(sqs, url, docs)
    return kinds


@pytest.mark.localstack
@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_kill_9_trials_lose_nothing(
    sqs: Any, queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """Each trial: load, SIGKILL at seeded points, restart: 0 lost, duplicates and restarts <= in flight."""
    seed = chaos_seed()
    trials = chaos_trials()
    print(f"chaos: CHAOS_SEED={seed}, trials {trials}, {MESSAGES} messages each")  # shown with a failure
    with chaos_report.scenario("kill_9", seed=seed, messages_per_trial=MESSAGES) as figures:
        figures["trials"] = runs = []
        for trial in trials:
            plan = Plan.of(seed, trial)
            try:
                with replayable(seed, trial):
                    runs.append(await _trial(plan, sqs, queues, aws_env, tmp_path))
            except BaseException as exc:
                runs.append({"trial": trial, "kills": [k.__dict__ for k in plan.kills], "failed": str(exc)})
                raise
        figures.update(_totals(runs))


def _totals(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums and ranges over the trials (the figures docs/RELIABILITY.md quotes)."""
    return {
        "messages": sum(r["messages"] for r in runs),
        "kills": sum(len(r["kills"]) for r in runs),
        "lost": sum(r["lost"] for r in runs),
        "duplicates": sum(r["duplicates"] for r in runs),
        "restarts": sum(r["restarts"] for r in runs),
        "in_flight_bound": sum(r["in_flight_bound"] for r in runs),
        "max_duplicates_in_a_trial": max((r["duplicates"] for r in runs), default=0),
        "recovery_s": [min(r["recovery_s"] for r in runs), max(r["recovery_s"] for r in runs)]
        if runs
        else None,
    }


async def _in_flight(worker: WorkerProcess) -> int | None:
    """``worker_messages_in_flight`` of a running worker, or None when it does not answer (yet)."""
    status, text = await http_get_async(worker.port, "/metrics")
    if status != 200:
        return None
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("worker_messages_in_flight{")
    ]
    return int(sum(values)) if values else 0


def _starts(journal: Path) -> int:
    return sum(read_journal(journal)["start"].values())


async def _kill(worker: WorkerProcess, kill: Kill, journals: list[Path]) -> dict[str, Any]:
    """Drive ``worker`` to the kill point and SIGKILL it; returns what was in flight at the kill.

    The bound on what the kill can make run twice: the in-flight gauge just before the kill, plus the
    handler starts the process journaled between that scrape and the kill (the scrape and the kill are
    not one instant). When the gauge does not answer (a kill in start-up), every start of the process.
    """
    own = journals[-1]
    if kill.phase == "startup":
        await anyio.sleep(kill.delay)  # the seeded kill moment itself, not a wait for a condition
    else:
        await worker.wait_ready()
        await wait_for(
            lambda: sum(read_journal(*journals)["start"].values()) >= kill.after_starts,
            timeout=180,
            what=f"{kill.after_starts} handler starts",
        )
        if kill.phase == "draining":
            worker.signal(signal.SIGTERM)
            await anyio.sleep(kill.delay)  # the seeded moment within the drain
    before = _starts(own)
    gauge = await _in_flight(worker) if worker.proc.poll() is None else 0
    exited = worker.proc.poll() is not None  # a drain can end before its seeded kill
    worker.kill()
    after = _starts(own)
    bound = after if gauge is None else gauge + (after - before)
    return {**kill.__dict__, "in_flight": gauge, "starts_meanwhile": after - before, "bound": bound,
            "exited_before_kill": exited}  # fmt: skip


async def _trial(
    plan: Plan, sqs: Any, queues: QueueFactory, aws_env: dict[str, str], tmp_path: Path
) -> dict[str, Any]:
    trial = plan.trial  # a failure here comes out with the seed (replayable)
    q = await queues(visibility=3)
    settings = {
        "queue_url": q["url"],
        "dlq_url": q["dlq_url"],
        "concurrency": CONCURRENCY,
        "visibility_timeout_seconds": 3,
        "max_attempts": 6,
    }
    kinds = await _load(sqs, q["url"], plan)
    good = {k for k, kind in kinds.items() if kind != "poison"}
    poison = set(kinds) - good
    # One journal per process: a killed one may leave a torn last line (see read_journal).
    journals: list[Path] = []
    kills: list[dict[str, Any]] = []

    def spawn() -> WorkerProcess:
        journals.append(tmp_path / f"journal-{trial}-{len(journals)}")
        return WorkerProcess({**aws_env, "TEST_JOURNAL": str(journals[-1])}, tmp_path, **settings).start()

    for kill in plan.kills:
        kills.append(await _kill(spawn(), kill, journals))
    killed_at = time.monotonic()
    done_at_kill = sum(read_journal(*journals)["done"].values())
    last = spawn()
    try:
        await last.wait_ready()
        await wait_for(
            lambda: sum(read_journal(*journals)["done"].values()) > done_at_kill, timeout=60, what="resumed"
        )
        recovery = time.monotonic() - killed_at
        await wait_for(
            lambda: set(read_journal(*journals)["done"]) >= good, timeout=300, what="all good keys done"
        )
        await wait_for(lambda: _drained(sqs, q["url"]), timeout=60, what="source drained")
    finally:
        last.kill()
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
    # Restarts: an ok message (one start, no failure by design) started by a killed process that did not
    # finish it there; it ran again in a later process.
    restarts = 0
    for journal in journals[:-1]:
        seen = read_journal(journal)
        restarts += sum(1 for k in seen["start"] if kinds.get(k) == "ok" and k not in seen["done"])
    bound = sum(k["bound"] for k in kills)
    assert lost == 0, f"{lost} lost"
    assert set(done) == good, "a poison message succeeded, or an unknown key appeared"
    assert set(dead) == poison, "the DLQ does not hold exactly the poison"
    assert duplicates <= bound, (
        f"{duplicates} duplicates, more than the {bound} in flight at the kills {kills}"
    )
    assert restarts <= bound, f"{restarts} handler restarts, more than the {bound} in flight at the kills"
    return {
        "trial": trial,
        "seed": plan.seed,
        "messages": len(kinds),
        "kills": kills,
        "in_flight_bound": bound,
        "lost": lost,
        "duplicates": duplicates,
        "restarts": restarts,
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
    assert 1 <= len(plan.kills) <= 2
    assert all(0 <= k.after_starts < 2000 for k in plan.kills)


def test_kills_fall_over_the_whole_run() -> None:
    """Over many trials, kills land in start-up, under load and in the drain, some trials twice."""
    plans = [Plan.of(99, trial, 1000) for trial in range(300)]
    phases = collections.Counter(k.phase for p in plans for k in p.kills)
    assert phases["startup"] > 20, phases
    assert phases["draining"] > 20, phases
    assert phases["running"] > 200, phases
    assert 50 < sum(len(p.kills) == 2 for p in plans) < 150
    starts = [k.after_starts for p in plans for k in p.kills if k.phase == "running"]
    assert min(starts) < 100  # spread over the whole load, not its middle
    assert max(starts) > 900


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

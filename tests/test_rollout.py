"""The canary rollout's pure core: plans, the event log's fold, fleet counts, the gates, routing."""

from __future__ import annotations

import hashlib
import json
import math
import random
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.engine.rollout_gates import (
    HOLD_BAKING,
    HOLD_MIN_SAMPLES,
    HOLD_NOT_STARTED,
    HOLD_TERMINAL,
    Advance,
    Gates,
    Hold,
    Promote,
    Rollback,
    event_for,
    judge,
    manual_rollback,
)
from worker.engine.rollout_log import Event, Rollout, RolloutState, fold, start_event
from worker.engine.rollout_plan import (
    CODEDEPLOY_CONFIGS,
    MAX_STEPS,
    Step,
    codedeploy_steps,
    parse_steps,
    plan,
    rollout_id,
    route,
)
from worker.engine.rollout_stats import NO_STATS, VersionStats

PROPS = settings(max_examples=100, deadline=None)
RID = "0123456789abcdef"
OTHER = "fedcba9876543210"
STEPS = (Step(10, 60.0), Step(50, 120.0))
#: A longer plan for the fold's properties (advances can skip and overtake each other).
LONG = (Step(5, 1.0), Step(10, 1.0), Step(25, 1.0), Step(50, 1.0))
INF = math.inf
#: A histogram whose p99 is 0.95 s: 50 calls <= 0.1 s, 40 more <= 0.5 s, the last 10 <= 1 s.
HIST = ((0.1, 50), (0.5, 90), (1.0, 100), (INF, 100))


def ev(
    kind: str, at: float, step: int = 0, replica: str = "a", rollout: str = RID, **detail: object
) -> Event:
    """A log event with few words."""
    return Event(rollout, kind, at, replica, step, detail)  # type: ignore[arg-type]


def stats(calls: int, failures: int, buckets: tuple[tuple[float, int], ...] = ()) -> VersionStats:
    """Counts of one version."""
    return VersionStats(calls, failures, buckets)


def gates(
    ratio: float | None = None,
    vs_baseline: float | None = None,
    p99: float | None = None,
    min_samples: int = 20,
) -> Gates:
    """Gates with every one off unless given."""
    return Gates(ratio, vs_baseline, p99, min_samples)


# --- plans ------------------------------------------------------------------------------------------------


def test_codedeploy_configurations_have_codedeploys_meaning() -> None:
    """The 9 Lambda configurations: canaries 10 %, the rest N min later; linears 10 % more every N min."""
    assert set(CODEDEPLOY_CONFIGS) == {
        "Canary10Percent5Minutes",
        "Canary10Percent10Minutes",
        "Canary10Percent15Minutes",
        "Canary10Percent30Minutes",
        "Linear10PercentEvery1Minute",
        "Linear10PercentEvery2Minutes",
        "Linear10PercentEvery3Minutes",
        "Linear10PercentEvery10Minutes",
        "AllAtOnce",
    }
    for minutes in (5, 10, 15, 30):
        assert CODEDEPLOY_CONFIGS[f"Canary10Percent{minutes}Minutes"] == (Step(10, minutes * 60.0),)
    for name, minutes in (("1Minute", 1), ("2Minutes", 2), ("3Minutes", 3), ("10Minutes", 10)):
        steps = CODEDEPLOY_CONFIGS[f"Linear10PercentEvery{name}"]
        assert [step.percent for step in steps] == [10, 20, 30, 40, 50, 60, 70, 80, 90]
        assert {step.bake_seconds for step in steps} == {minutes * 60.0}
    assert CODEDEPLOY_CONFIGS["AllAtOnce"] == (Step(100, 0.0),)
    assert codedeploy_steps("CodeDeployDefault.LambdaCanary10Percent5Minutes") == (Step(10, 300.0),)
    with pytest.raises(ValueError, match=r"unknown deployment configuration 'Canary5Percent'.*AllAtOnce"):
        codedeploy_steps("Canary5Percent")


def test_parse_steps_reads_percent_bake_pairs() -> None:
    """`10:300,50:300` is two steps (100 % implied, not listed); spaces and fractional bakes are fine."""
    assert parse_steps("10:300,50:300") == (Step(10, 300.0), Step(50, 300.0))
    assert parse_steps(" 1 : 0.5 , 99:1e3 ") == (Step(1, 0.5), Step(99, 1000.0))
    assert len(parse_steps(",".join(f"{p}:1" for p in range(1, MAX_STEPS + 1)))) == MAX_STEPS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no steps"),
        ("  ", "no steps"),
        ("10", r"step 1 \('10'\) must be percent:bake-seconds"),
        ("10:5,", r"step 2 \(''\) must be percent:bake-seconds"),
        ("0:5", "whole number 1..99"),
        ("100:5", "100 % is implied"),
        ("-5:5", "whole number 1..99"),
        ("ten:5", "whole number 1..99"),
        ("10.5:5", "whole number 1..99"),
        ("\u0661\u0660:5", "whole number 1..99"),
        ("10:0", "bake must be a number of seconds > 0"),
        ("10:-1", "bake must be a number of seconds > 0"),
        ("10:nan", "bake must be a number of seconds > 0"),
        ("10:inf", "bake must be a number of seconds > 0"),
        ("10:abc", "bake must be a number of seconds > 0"),
        ("10:5,10:5", r"step 2 \('10:5'\): percents must increase \(the step before is 10\)"),
        ("50:5,10:5", "percents must increase"),
        (",".join(f"{p}:1" for p in range(1, MAX_STEPS + 2)), "21 steps; at most 20"),
    ],
)
def test_parse_steps_rejects_bad_text_naming_the_step(text: str, message: str) -> None:
    """Each malformed steps text raises ValueError whose message says which step and what is wrong."""
    with pytest.raises(ValueError, match=message):
        parse_steps(text)


def test_plan_takes_exactly_one_source() -> None:
    """plan() reads a configuration name or a steps text, and refuses both or neither."""
    assert plan("Canary10Percent10Minutes", None) == (Step(10, 600.0),)
    assert plan(None, "20:30") == (Step(20, 30.0),)
    for config, steps in ((None, None), ("AllAtOnce", "20:30")):
        with pytest.raises(ValueError, match="exactly one"):
            plan(config, steps)


def test_step_bounds() -> None:
    """A step's percent is 1..100 and its bake finite and >= 0."""
    for percent, bake in ((0, 1.0), (101, 1.0), (10, -1.0), (10, INF), (10, math.nan)):
        with pytest.raises(ValueError, match="a step's"):
            Step(percent, bake)


def test_rollout_id_is_stable_and_tells_settings_apart() -> None:
    """Same settings, same id (16 hex digits); another handler, version, step or scope, another id."""
    base = rollout_id("app:v2", "v2", "v1", STEPS)
    assert base == rollout_id("app:v2", "v2", "v1", (Step(10, 60), Step(50, 120)))
    assert len(base) == 16
    assert int(base, 16) >= 0
    others = {
        rollout_id("app:v3", "v2", "v1", STEPS),
        rollout_id("app:v2", "v3", "v1", STEPS),
        rollout_id("app:v2", "v2", "v0", STEPS),
        rollout_id("app:v2", "v2", "v1", STEPS[:1]),
        rollout_id("app:v2", "v2", "v1", (Step(10, 61.0), Step(50, 120.0))),
        rollout_id("app:v2", "v2", "v1", STEPS, scope="https://sqs/1/orders"),
    }
    assert base not in others
    assert len(others) == 6


# --- events -----------------------------------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z0-9._:@+=-]{1,20}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
any_events = st.builds(
    Event,
    rollout=names,
    kind=st.sampled_from(["start", "advance", "promote", "rollback"]),
    at=st.floats(0, 1e10, exclude_max=True),
    replica=names,
    step=st.integers(0, 50),
    detail=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)


@PROPS
@given(event=any_events)
def test_event_json_round_trip(event: Event) -> None:
    """to_json then from_json gives the same event (floats exactly), as one compact JSON object."""
    text = event.to_json()
    assert Event.from_json(text) == event
    assert Event.from_json(text.encode()) == event
    assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "not json",
        '{"rollout":"r","kind":"start","at":1,"replica":"a","step":0,"detail":{"x":NaN}}',
        '{"rollout":"r","kind":"start","at":NaN,"replica":"a"}',
        '{"rollout":"r","kind":"start","at":1,"replica":"a","detail":[]}',
        '{"rollout":"r","kind":"begin","at":1,"replica":"a"}',
        '{"rollout":"r","kind":"start","at":"1","replica":"a"}',
        '{"rollout":"r","kind":"start","at":true,"replica":"a"}',
        '{"rollout":"r","kind":"advance","at":1,"replica":"a","step":1.5}',
        '{"rollout":"r","kind":"advance","at":1,"replica":"a","step":-1}',
        '{"rollout":"r","kind":"start","at":-1,"replica":"a"}',
        '{"rollout":"r","kind":"start","at":1e10,"replica":"a"}',
        '{"rollout":"r","kind":"start","at":1,"replica":"a/b"}',
        '{"rollout":"","kind":"start","at":1,"replica":"a"}',
        '{"kind":"start","at":1,"replica":"a"}',
        b'{"rollout":"r","kind":"start","at":1,"replica":"\xff"}',
    ],
)
def test_event_from_json_refuses_anything_else(text: str | bytes) -> None:
    """A malformed or foreign object raises ValueError (the store skips it), never another exception."""
    with pytest.raises(ValueError, match=r"event|rollout|replica|step|time"):
        Event.from_json(text)


def test_event_from_json_ignores_unknown_fields_and_defaults_step_and_detail() -> None:
    """A later writer's extra fields are ignored; step and detail default to 0 and {}."""
    event = Event.from_json('{"rollout":"r","kind":"start","at":5,"replica":"a","v":2}')
    assert event == Event("r", "start", 5.0, "a")


@PROPS
@given(
    first=st.integers(0, 5 * 10**15),  # microseconds, to the year 2128
    gap=st.integers(1, 10**9),
    replicas=st.tuples(names, names),
    nonces=st.tuples(names, names),
)
def test_keys_sort_by_time(first: int, gap: int, replicas: tuple[str, str], nonces: tuple[str, str]) -> None:
    """An event written a microsecond or more later has a key that sorts after, whoever wrote it."""
    early = Event(RID, "advance", first / 1e6, replicas[0], 1)
    late = Event(RID, "start", (first + gap) / 1e6, replicas[1])
    assert early.key(nonces[0]) < late.key(nonces[1])


def test_key_names_time_writer_kind_step_and_nonce() -> None:
    """The key is time-replica-kind-step-nonce; a nonce or replica that breaks an object name is refused."""
    event = Event(RID, "advance", 1_700_000_000.25, "pod-1:7", 2)
    assert event.key("5b2c") == "1700000000.250000-pod-1:7-advance-2-5b2c"
    assert event.key("a") != event.key("b")
    assert Event(RID, "start", 5.0, "a").key("n") == "0000000005.000000-a-start-0-n"  # padded: sorts as text
    with pytest.raises(ValueError, match="nonce"):
        event.key("a/b")
    with pytest.raises(ValueError, match="replica"):
        Event(RID, "start", 1.0, "a b")
    with pytest.raises(ValueError, match="kind"):
        Event(RID, "begin", 1.0, "a")  # type: ignore[arg-type]


# --- fold -------------------------------------------------------------------------------------------------


def test_fold_without_events_is_not_started() -> None:
    """No event: progressing at step 0, weight 0 (nobody starts a rollout the store does not hold)."""
    assert fold([], RID, STEPS) == Rollout(RID, RolloutState.PROGRESSING, 0, None, 0, None, None)


def test_fold_start_advance_promote() -> None:
    """Start: the first step's weight; advance: the highest step, from its earliest entry; promote: 100."""
    log = [ev("start", 20.0, replica="b"), ev("start", 10.0), ev("start", 15.0, replica="c")]
    started = fold(log, RID, STEPS)
    assert (started.state, started.weight, started.step) == (RolloutState.PROGRESSING, 10, 0)
    assert (started.started_at, started.step_started_at) == (10.0, 10.0)
    log += [ev("advance", 80.0, 1, "b"), ev("advance", 75.0, 1, "a")]
    advanced = fold(log, RID, STEPS)
    assert (advanced.step, advanced.weight, advanced.step_started_at, advanced.started_at) == (
        1,
        50,
        75.0,
        10.0,
    )
    log += [ev("promote", 300.0, 2), ev("promote", 290.0, 2, "b")]
    promoted = fold(log, RID, STEPS)
    assert (promoted.state, promoted.weight, promoted.step) == (RolloutState.PROMOTED, 100, 2)
    assert (promoted.step_started_at, promoted.rollback) == (290.0, None)


def test_fold_highest_step_wins_whatever_was_written_later() -> None:
    """Advances to 1, 3 and 2 (a late writer): step 3 with its earliest entry time and weight."""
    log = [ev("start", 0.0), ev("advance", 10.0, 1), ev("advance", 30.0, 3, "b"), ev("advance", 40.0, 2, "c")]
    log.append(ev("advance", 35.0, 3, "c"))
    rollout = fold(log, RID, LONG)
    assert (rollout.step, rollout.step_started_at, rollout.weight) == (3, 30.0, 50)


def test_fold_rollback_wins_and_keeps_the_earliest() -> None:
    """Any rollback: rolled back, weight 0, even after a promote; the earliest rollback is reported."""
    log = [
        ev("start", 1.0),
        ev("promote", 50.0, 2),
        ev("rollback", 70.0, replica="b", gate="manual"),
        ev("rollback", 60.0, gate="max_error_ratio"),
    ]
    rolled = fold(log, RID, STEPS)
    assert (rolled.state, rolled.weight, rolled.step) == (RolloutState.ROLLED_BACK, 0, 2)
    assert rolled.rollback == log[3]


def test_fold_ignores_other_rollouts_and_advances_outside_the_plan() -> None:
    """Events of another rollout id, and advances to a step the plan lacks, change nothing."""
    log = [
        ev("start", 1.0),
        ev("rollback", 2.0, rollout=OTHER),
        ev("promote", 2.0, rollout=OTHER),
        ev("advance", 3.0, 2),
        ev("advance", 3.0, 0),
    ]
    rollout = fold(log, RID, STEPS)
    assert (rollout.state, rollout.step, rollout.weight, rollout.step_started_at) == (
        RolloutState.PROGRESSING,
        0,
        10,
        1.0,
    )
    assert fold(log, OTHER, STEPS).state is RolloutState.ROLLED_BACK


def test_fold_an_advance_proves_a_start() -> None:
    """An advance without a start event (its write lost) still means started: the advance's time stands in."""
    rollout = fold([ev("advance", 40.0, 1)], RID, STEPS)
    assert (rollout.started_at, rollout.step_started_at, rollout.weight) == (40.0, 40.0, 50)
    with pytest.raises(ValueError, match="at least one step"):
        fold([], RID, ())


#: A log of one rollout with another's events mixed in; times from a small set so ties happen.
log_events = st.builds(
    Event,
    rollout=st.sampled_from([RID, RID, RID, OTHER]),
    kind=st.sampled_from(["start", "advance", "advance", "promote", "rollback"]),
    at=st.integers(0, 6).map(float),
    replica=st.sampled_from(["a", "b", "c"]),
    step=st.integers(0, 5),
    detail=st.dictionaries(st.sampled_from(["gate", "reason"]), st.sampled_from(["x", "y"]), max_size=2),
)
logs = st.lists(log_events, max_size=12)


@PROPS
@given(events=logs, data=st.data())
def test_fold_is_order_independent_and_idempotent(events: list[Event], data: st.DataObject) -> None:
    """Any permutation of the log, or the log read twice, folds to the same Rollout (ties included)."""
    shuffled = data.draw(st.permutations(events))
    assert fold(shuffled, RID, LONG) == fold(events, RID, LONG)
    assert fold(events + shuffled, RID, LONG) == fold(events, RID, LONG)


@PROPS
@given(events=logs, at=st.integers(0, 6).map(float), where=st.integers(0, 12))
def test_rollback_is_absorbing(events: list[Event], at: float, where: int) -> None:
    """Whatever else the log holds, one rollback event of the rollout makes it rolled back at weight 0."""
    log = [*events[:where], ev("rollback", at, replica="z"), *events[where:]]
    rollout = fold(log, RID, LONG)
    assert (rollout.state, rollout.weight) == (RolloutState.ROLLED_BACK, 0)
    assert rollout.rollback is not None
    assert rollout.rollback.at <= at


@PROPS
@given(before=logs, after=logs)
def test_appending_never_moves_a_rollout_back(before: list[Event], after: list[Event]) -> None:
    """More events never lower the step, never undo a start, and never leave a terminal state."""
    old, new = fold(before, RID, LONG), fold(before + after, RID, LONG)
    assert new.step >= old.step
    assert old.started_at is None or new.started_at is not None
    if old.state is RolloutState.ROLLED_BACK:
        assert new.state is RolloutState.ROLLED_BACK
    if old.state is RolloutState.PROMOTED:
        assert new.state in (RolloutState.PROMOTED, RolloutState.ROLLED_BACK)


# --- counts -----------------------------------------------------------------------------------------------


def test_version_stats_validation() -> None:
    """Failures within calls, bounds strictly increasing, counts cumulative."""
    for calls, failures, buckets in (
        (1, 2, ()),
        (-1, 0, ()),
        (1, 0, ((1.0, 1), (1.0, 1))),
        (1, 0, ((2.0, 1), (1.0, 1))),
        (1, 0, ((1.0, 2), (INF, 1))),
        (1, 0, ((math.nan, 1),)),
        (1, 0, ((1.0, -1),)),
    ):
        with pytest.raises(ValueError, match=r"failures|bucket"):
            VersionStats(calls, failures, buckets)


def test_p99_is_prometheus_histogram_quantile() -> None:
    """Linear interpolation in the rank's bucket, from 0 in the first; the +Inf bucket gives the top bound."""
    assert stats(100, 0, HIST).p99() == pytest.approx(0.95)
    assert stats(100, 0, HIST).quantile(0.5) == pytest.approx(0.1)
    assert stats(100, 0, HIST).quantile(0.25) == pytest.approx(0.05)
    assert stats(10, 0, ((0.1, 0), (0.5, 5), (INF, 10))).p99() == 0.5  # the rank is past every finite bound
    assert stats(1, 0, ((0.0, 1), (INF, 1))).p99() == 0.0
    assert stats(1, 0, ((0.1, 0), (INF, 1))).quantile(0) == 0.0
    assert NO_STATS.p99() is None
    assert stats(5, 0, ((0.1, 0), (INF, 0))).p99() is None  # no observations
    assert stats(5, 0, ((INF, 5),)).p99() is None  # one bucket
    assert stats(5, 0, ((0.1, 2), (1.0, 5))).p99() is None  # no +Inf bucket: Prometheus says NaN
    with pytest.raises(ValueError, match="quantile"):
        stats(100, 0, HIST).quantile(1.5)


def test_merged_adds_counts_and_histograms() -> None:
    """Same bounds add bucket by bucket; a bound one side lacks takes that side's count below it."""
    a = stats(100, 4, HIST)
    b = stats(10, 1, ((0.1, 2), (0.5, 8), (1.0, 10), (INF, 10)))
    assert a.merged(b) == stats(110, 5, ((0.1, 52), (0.5, 98), (1.0, 110), (INF, 110)))
    assert a.merged(b) == b.merged(a)
    assert a.merged(NO_STATS) == a == NO_STATS.merged(a)
    c = stats(3, 0, ((0.25, 1), (INF, 3)))
    assert a.merged(c).buckets == ((0.1, 50), (0.25, 51), (0.5, 91), (1.0, 101), (INF, 103))
    assert a.merged(c).error_ratio == pytest.approx(4 / 103)
    assert NO_STATS.error_ratio == 0.0


def test_stats_dict_round_trip_and_refusals() -> None:
    """to_dict is JSON-safe (+Inf as a string), from_dict reads it back; malformed counts raise ValueError."""
    data = stats(100, 4, HIST).to_dict()
    text = json.dumps(data, allow_nan=False)
    assert VersionStats.from_dict(json.loads(text)) == stats(100, 4, HIST)
    for bad in (
        {"calls": 1},
        {"calls": True, "failures": 0},
        {"calls": 1, "failures": 0, "buckets": [[1.0]]},
        {"calls": 1, "failures": 0, "buckets": [["inf", 1]]},
        {"calls": 1, "failures": 0, "buckets": [[1.0, 0.5]]},
        {"calls": 1, "failures": 0, "buckets": {"1.0": 1}},
        {"calls": 1, "failures": 2},
    ):
        with pytest.raises(ValueError, match=r"counts|buckets|failures"):
            VersionStats.from_dict(bad)


# --- judge ------------------------------------------------------------------------------------------------


def progressing(step: int = 0, since: float = 100.0, steps: tuple[Step, ...] = STEPS) -> Rollout:
    """A started rollout at ``step`` that entered it at ``since``."""
    return Rollout(RID, RolloutState.PROGRESSING, step, since, steps[step].percent, 100.0, None)


def test_judge_holds_terminal_and_unstarted_rollouts() -> None:
    """Promoted, rolled back and not-yet-started rollouts hold, whatever the numbers."""
    awful = stats(1000, 1000)
    for state in (RolloutState.PROMOTED, RolloutState.ROLLED_BACK):
        done = Rollout(RID, state, 2, 1.0, 0, 1.0, None)
        assert judge(done, STEPS, awful, NO_STATS, gates(0.1), 1e9) == Hold(HOLD_TERMINAL)
    fresh = fold([], RID, STEPS)
    assert judge(fresh, STEPS, awful, NO_STATS, gates(0.1), 1e9) == Hold(HOLD_NOT_STARTED)


def test_judge_waits_for_min_samples() -> None:
    """Below min_samples nothing is judged or widened, even all failures long after the bake; at it, it is."""
    assert judge(progressing(), STEPS, stats(19, 19), NO_STATS, gates(0.1), 1e9) == Hold(HOLD_MIN_SAMPLES)
    decision = judge(progressing(), STEPS, stats(20, 19), NO_STATS, gates(0.1), 101.0)
    assert isinstance(decision, Rollback)
    assert judge(progressing(), STEPS, stats(20, 0), NO_STATS, gates(0.1), 1e9) == Advance(1)


def test_absolute_error_gate_boundary() -> None:
    """max_error_ratio 0.1: 2 failures in 20 hold, 3 in 20 roll back at once (mid-bake), numbers reported."""
    assert judge(progressing(), STEPS, stats(20, 2), NO_STATS, gates(0.1), 101.0) == Hold(HOLD_BAKING)
    decision = judge(progressing(), STEPS, stats(20, 3), stats(40, 1), gates(0.1), 101.0)
    assert isinstance(decision, Rollback)
    assert (decision.gate, decision.observed, decision.threshold) == ("max_error_ratio", 0.15, 0.1)
    detail = decision.event_detail()
    assert detail["candidate"] == {"calls": 20, "failures": 3, "error_ratio": 0.15, "p99_seconds": None}
    assert detail["baseline"] == {"calls": 40, "failures": 1, "error_ratio": 0.025, "p99_seconds": None}
    assert "0.15 above 0.1" in str(detail["reason"])
    assert (detail["gate"], detail["observed"], detail["threshold"]) == ("max_error_ratio", 0.15, 0.1)
    zero = judge(progressing(), STEPS, stats(20, 1), NO_STATS, gates(0.0), 101.0)
    assert isinstance(zero, Rollback)  # 0: any failure breaches


def test_relative_error_gate_floors_a_clean_baseline() -> None:
    """vs_baseline 2 with a 0-failure baseline: the floor 1/min_samples (0.05) makes 0.1 the limit, not 0."""
    clean = stats(500, 0)
    assert judge(progressing(), STEPS, stats(20, 2), clean, gates(vs_baseline=2.0), 101.0) == Hold(
        HOLD_BAKING
    )
    decision = judge(progressing(), STEPS, stats(20, 3), clean, gates(vs_baseline=2.0), 101.0)
    assert isinstance(decision, Rollback)
    assert decision.gate == "max_error_ratio_vs_baseline"
    assert (decision.observed, decision.threshold) == (pytest.approx(3.0), 2.0)
    assert "floored at 0.05" in str(decision.detail["reason"])


def test_relative_error_gate_follows_a_failing_baseline() -> None:
    """A baseline failing 10 %: 2 x allows the candidate 20 %, and 21 % breaches."""
    baseline = stats(1000, 100)
    assert judge(progressing(), STEPS, stats(100, 20), baseline, gates(vs_baseline=2.0), 101.0) == Hold(
        HOLD_BAKING
    )
    decision = judge(progressing(), STEPS, stats(100, 21), baseline, gates(vs_baseline=2.0), 101.0)
    assert isinstance(decision, Rollback)
    assert decision.observed == pytest.approx(2.1)


def test_p99_gate_boundary_and_when_it_is_judged() -> None:
    """max_p99_ratio 2: p99 1.9 s vs 0.95 s holds, more breaches; no baseline p99 or samples: not judged."""
    baseline = stats(100, 0, HIST)  # p99 0.95 s
    at_limit = stats(100, 0, ((0.1, 50), (1.0, 90), (2.0, 100), (INF, 100)))  # p99 1.9 s
    above = stats(100, 0, ((0.1, 50), (1.0, 90), (3.0, 100), (INF, 100)))  # p99 2.8 s
    assert at_limit.p99() == pytest.approx(1.9)
    assert judge(progressing(), STEPS, at_limit, baseline, gates(p99=2.0), 101.0) == Hold(HOLD_BAKING)
    decision = judge(progressing(), STEPS, above, baseline, gates(p99=2.0), 101.0)
    assert isinstance(decision, Rollback)
    assert (decision.gate, decision.threshold) == ("max_p99_ratio", 2.0)
    assert decision.observed == pytest.approx(2.8 / 0.95)
    no_histogram = stats(100, 0)
    few = stats(19, 0, ((0.1, 10), (0.5, 18), (1.0, 19), (INF, 19)))
    for unjudged in (no_histogram, few, NO_STATS):
        assert judge(progressing(), STEPS, above, unjudged, gates(p99=2.0), 101.0) == Hold(HOLD_BAKING)


def test_gates_set_to_none_are_off() -> None:
    """With every gate off, a candidate failing every call still advances once baked."""
    assert judge(progressing(), STEPS, stats(50, 50, HIST), stats(50, 0, HIST), gates(), 160.0) == Advance(1)


def test_gates_are_judged_in_a_fixed_order() -> None:
    """When several gates breach, the absolute error gate is the one reported."""
    both = gates(0.1, vs_baseline=1.5, p99=1.1)
    decision = judge(progressing(), STEPS, stats(100, 50, HIST), stats(100, 0, HIST), both, 101.0)
    assert isinstance(decision, Rollback)
    assert decision.gate == "max_error_ratio"


def test_bake_then_advance_then_promote() -> None:
    """A step advances exactly when its bake has elapsed; the last one promotes."""
    healthy, g = stats(50, 0), gates(0.1)
    assert judge(progressing(0, 100.0), STEPS, healthy, NO_STATS, g, 159.9) == Hold(HOLD_BAKING)
    assert judge(progressing(0, 100.0), STEPS, healthy, NO_STATS, g, 160.0) == Advance(1)
    assert judge(progressing(1, 200.0), STEPS, healthy, NO_STATS, g, 319.0) == Hold(HOLD_BAKING)
    assert judge(progressing(1, 200.0), STEPS, healthy, NO_STATS, g, 320.0) == Promote()


def test_all_at_once_is_full_weight_promoted_after_min_samples() -> None:
    """AllAtOnce: weight 100 at once; promoted once min_samples calls pass the gates, else rolled back."""
    steps = CODEDEPLOY_CONFIGS["AllAtOnce"]
    rollout = fold([ev("start", 5.0)], RID, steps)
    assert (rollout.weight, rollout.step) == (100, 0)
    assert judge(rollout, steps, stats(19, 0), NO_STATS, gates(0.1), 5.0) == Hold(HOLD_MIN_SAMPLES)
    assert judge(rollout, steps, stats(20, 0), NO_STATS, gates(0.1), 5.0) == Promote()
    assert isinstance(judge(rollout, steps, stats(20, 5), NO_STATS, gates(0.1), 5.0), Rollback)


def test_gates_validation() -> None:
    """Ratios in range and finite, min_samples at least 1."""
    for bad in (
        (1.5, None, None, 1),
        (-0.1, None, None, 1),
        (None, 0.0, None, 1),
        (None, None, INF, 1),
        (None, None, None, 0),
    ):
        with pytest.raises(ValueError, match="must be"):
            Gates(*bad)


def test_a_rollout_runs_to_promotion_and_another_is_rolled_back() -> None:
    """Two replicas folding one log and writing what judge decides promote together, or roll back mid-bake."""
    log: list[Event] = [start_event(RID, "a", 0.0)]
    g, baseline = gates(0.1), stats(200, 2)
    promoted_at = None
    for now in range(0, 400, 10):
        rollout = fold(log, RID, STEPS)  # both replicas read the log, then both write what they decided
        for replica in ("a", "b"):
            event = event_for(judge(rollout, STEPS, stats(40, 1), baseline, g, now), RID, STEPS, replica, now)
            if event is not None:
                log.append(event)
        if fold(log, RID, STEPS).state is RolloutState.PROMOTED:
            promoted_at = now
            break
    assert promoted_at == 180  # 60 s at 10 %, then 120 s at 50 %
    assert [e.kind for e in log] == [
        "start",
        "advance",
        "advance",
        "promote",
        "promote",
    ]  # both replicas wrote

    log = [start_event(RID, "a", 0.0)]
    seen = fold(log, RID, STEPS)
    for replica in ("b", "a"):  # both breach mid-bake at once; the tie goes to the same event everywhere
        event = event_for(judge(seen, STEPS, stats(40, 10), baseline, g, 30.0), RID, STEPS, replica, 30.0)
        assert event is not None
        log.append(event)
    rolled = fold(log, RID, STEPS)
    assert (rolled.state, rolled.weight) == (RolloutState.ROLLED_BACK, 0)
    assert rolled.rollback is not None
    assert (rolled.rollback.replica, rolled.rollback.detail["gate"]) == ("a", "max_error_ratio")
    assert event_for(Hold(HOLD_BAKING), RID, STEPS, "a", 1.0) is None


def test_manual_rollback_event() -> None:
    """`worker canary rollback --reason` writes a rollback with gate manual and the reason."""
    event = event_for(manual_rollback("bad deploy"), RID, STEPS, "ops", 9.0)
    assert event is not None
    assert (event.kind, dict(event.detail)) == (
        "rollback",
        {"gate": "manual", "observed": 0.0, "threshold": 0.0, "reason": "bad deploy"},
    )


# --- route ------------------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None, derandomize=True)
@given(weight=st.integers(1, 99), seed=st.integers(0, 2**32))
def test_route_split_matches_the_weight(weight: int, seed: int) -> None:
    """Over 10,000 random message ids the candidate's share is within 2 points of the weight."""
    rng = random.Random(seed)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(10_000)]
    share = 100 * sum(route(message_id, weight) for message_id in ids) / len(ids)
    assert abs(share - weight) <= 2


def test_route_is_the_documented_hash() -> None:
    """bucket = first 8 bytes of sha256(id), big-endian, mod 100; candidate exactly when bucket < weight."""
    rng = random.Random(16)
    for _ in range(500):
        message_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        bucket = int.from_bytes(hashlib.sha256(message_id.encode()).digest()[:8], "big") % 100
        assert route(message_id, bucket) is False
        assert route(message_id, bucket + 1) is True


@PROPS
@given(message_id=st.text(max_size=100), low=st.integers(-5, 105), high=st.integers(-5, 105))
def test_route_is_stable_and_widening_only_adds(message_id: str, low: int, high: int) -> None:
    """The same id routes the same way; a message on the candidate stays there when the weight grows."""
    low, high = min(low, high), max(low, high)
    assert route(message_id, low) == route(message_id, low)
    if route(message_id, low):
        assert route(message_id, high)
    assert route(message_id, 0) is False
    assert route(message_id, 100) is True

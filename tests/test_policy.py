"""The retry decision table in worker.engine.policy: unit cases and hypothesis properties."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.engine.policy import (
    CAP_MARGIN_SECONDS,
    TERMINAL,
    Ack,
    Attempt,
    Condition,
    DeadLetter,
    Decision,
    HandlerResult,
    RetryAfter,
    RetryConfig,
    RetryNow,
    attempts_made,
    backoff_ceiling,
    backoff_delay,
    decide,
    visibility_cap,
)
from worker.limits import SQS_VISIBILITY_CAP_SECONDS

PROPS = settings(max_examples=200, deadline=None)
DEFAULT = RetryConfig()
TRANSIENT = (HandlerResult.ERROR, HandlerResult.TIMEOUT, HandlerResult.RETRY_LATER)

configs = st.builds(
    RetryConfig,
    max_attempts=st.integers(1, 40),
    immediate_retries=st.integers(0, 6),
    backoff_base_seconds=st.floats(0.1, 100.0),
    backoff_max_seconds=st.floats(100.0, 43_200.0),
)
jitters = st.floats(0.0, 1.0, exclude_max=True)
elapsed = st.floats(0.0, 50_000.0)


# --- defaults and simple rows -------------------------------------------------------------------------


def test_defaults_match_documented_settings() -> None:
    """RetryConfig defaults: 5 attempts, 1 immediate retry, backoff base 2 s, max 300 s."""
    config = RetryConfig()
    assert (config.max_attempts, config.immediate_retries) == (5, 1)
    assert (config.backoff_base_seconds, config.backoff_max_seconds) == (2.0, 300.0)


@given(config=configs, receive_count=st.integers(1, 10_000), done=st.integers(0, 10), jitter=jitters)
@PROPS
def test_success_always_acks(config: RetryConfig, receive_count: int, done: int, jitter: float) -> None:
    """SUCCESS acks whatever the receive count, immediate retries done or attempts used."""
    attempt = Attempt(HandlerResult.SUCCESS, receive_count, immediate_retries_done=done, jitter=jitter)
    assert decide(attempt, config) == Ack()


@pytest.mark.parametrize(
    ("outcome", "condition"),
    [
        (HandlerResult.PERMANENT, Condition.PERMANENT_ERROR),
        (HandlerResult.DECODE, Condition.DECODE_ERROR),
        (HandlerResult.SCHEMA, Condition.SCHEMA_ERROR),
    ],
)
def test_terminal_outcomes_dead_letter_on_first_try(outcome: HandlerResult, condition: Condition) -> None:
    """PermanentError/DecodeError/SchemaError dead-letter at once, with their own condition."""
    assert decide(Attempt(outcome, 1), DEFAULT) == DeadLetter(condition)
    assert condition.value == outcome.value


@given(
    outcome=st.sampled_from(sorted(TERMINAL)),
    config=configs,
    receive_count=st.integers(1, 50),
    done=st.integers(0, 5),
)
@PROPS
def test_terminal_outcomes_never_retry(
    outcome: HandlerResult, config: RetryConfig, receive_count: int, done: int
) -> None:
    """A terminal outcome dead-letters with its condition even when attempts are left."""
    decision = decide(Attempt(outcome, receive_count, immediate_retries_done=done), config)
    assert decision == DeadLetter(Condition(outcome.value))


# --- immediate retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", [HandlerResult.ERROR, HandlerResult.TIMEOUT])
def test_first_failure_on_first_delivery_retries_immediately(outcome: HandlerResult) -> None:
    """With the default config, the first transient failure of delivery 1 is retried in process."""
    assert decide(Attempt(outcome, 1, immediate_retries_done=0), DEFAULT) == RetryNow()


def test_immediate_retries_stop_at_configured_count() -> None:
    """After immediate_retries in-process retries the message goes back to the queue with a delay."""
    config = RetryConfig(max_attempts=10, immediate_retries=3)
    for done in range(3):
        assert decide(Attempt(HandlerResult.ERROR, 1, immediate_retries_done=done), config) == RetryNow()
    assert isinstance(decide(Attempt(HandlerResult.ERROR, 1, immediate_retries_done=3), config), RetryAfter)


def test_no_immediate_retries_when_configured_zero() -> None:
    """immediate_retries=0 sends the first failure straight to a delayed retry."""
    config = RetryConfig(immediate_retries=0)
    assert isinstance(decide(Attempt(HandlerResult.ERROR, 1), config), RetryAfter)


@given(
    config=configs,
    outcome=st.sampled_from(TRANSIENT),
    receive_count=st.integers(2, 10_000),
    jitter=jitters,
)
@PROPS
def test_no_immediate_retry_after_first_delivery(
    config: RetryConfig, outcome: HandlerResult, receive_count: int, jitter: float
) -> None:
    """Deliveries after the first never get an in-process retry."""
    decision = decide(Attempt(outcome, receive_count, jitter=jitter), config)
    assert not isinstance(decision, RetryNow)


@given(
    config=configs,
    delay=st.none() | st.floats(0.0, 1e6),
    receive_count=st.integers(1, 100),
    done=st.integers(0, 6),
)
@PROPS
def test_retry_later_never_retries_immediately(
    config: RetryConfig, delay: float | None, receive_count: int, done: int
) -> None:
    """RetryLater (with or without a delay) never gets an in-process retry, even on delivery 1."""
    decision = decide(
        Attempt(
            HandlerResult.RETRY_LATER, receive_count, immediate_retries_done=done, retry_later_delay=delay
        ),
        config,
    )
    assert isinstance(decision, RetryAfter | DeadLetter)


# --- attempts, hand-backs, exhaustion --------------------------------------------------------------------


def test_attempts_made_counts_immediate_retries() -> None:
    """attempts_made: delivery 1 counts in-process retries done; later ones assume all were used."""
    config = RetryConfig(immediate_retries=2)
    assert attempts_made(1, 0, config) == 1
    assert attempts_made(1, 2, config) == 3
    assert attempts_made(2, 0, config) == 4  # 1 + 2 immediate on delivery 1, then this one
    assert attempts_made(5, 0, config) == 7


@pytest.mark.parametrize("outcome", [HandlerResult.ERROR, HandlerResult.RETRY_LATER])
def test_exhausted_attempts_dead_letter_retries_exhausted(outcome: HandlerResult) -> None:
    """The max_attempts-th failed invocation dead-letters with RetriesExhausted."""
    # default: delivery 1 runs twice (1 immediate retry), deliveries 2, 3, 4 once each -> 5 attempts
    assert attempts_made(4, 0, DEFAULT) == 5
    assert decide(Attempt(outcome, 4, retry_later_delay=10), DEFAULT) == DeadLetter(
        Condition.RETRIES_EXHAUSTED
    )
    assert isinstance(decide(Attempt(outcome, 3, retry_later_delay=10), DEFAULT), RetryAfter)


def test_exhausted_attempts_after_timeout_dead_letter_timeout() -> None:
    """When the last failed invocation timed out, the exhausted message's condition is Timeout."""
    assert decide(Attempt(HandlerResult.TIMEOUT, 4), DEFAULT) == DeadLetter(Condition.TIMEOUT)


def test_max_attempts_one_dead_letters_first_failure() -> None:
    """max_attempts=1: the first failure dead-letters, no immediate retry even though one is configured."""
    config = RetryConfig(max_attempts=1, immediate_retries=1)
    assert decide(Attempt(HandlerResult.ERROR, 1), config) == DeadLetter(Condition.RETRIES_EXHAUSTED)
    assert decide(Attempt(HandlerResult.TIMEOUT, 1), config) == DeadLetter(Condition.TIMEOUT)


def test_immediate_retries_bounded_by_max_attempts() -> None:
    """In-process retries stop when they would exceed max_attempts."""
    config = RetryConfig(max_attempts=3, immediate_retries=10)
    assert decide(Attempt(HandlerResult.ERROR, 1, immediate_retries_done=1), config) == RetryNow()
    assert decide(Attempt(HandlerResult.ERROR, 1, immediate_retries_done=2), config) == DeadLetter(
        Condition.RETRIES_EXHAUSTED
    )


@given(
    config=configs,
    outcome=st.sampled_from(TRANSIENT),
    receive_count=st.integers(1, 200),
    done=st.integers(0, 6),
)
@PROPS
def test_transient_dead_letters_exactly_when_attempts_used(
    config: RetryConfig, outcome: HandlerResult, receive_count: int, done: int
) -> None:
    """A transient failure dead-letters iff attempts_made >= max_attempts, Timeout iff it timed out."""
    if receive_count > 1:
        done = 0  # in-process retries only happen on delivery 1
    decision = decide(
        Attempt(outcome, receive_count, immediate_retries_done=done, retry_later_delay=1.0), config
    )
    if attempts_made(receive_count, done, config) >= config.max_attempts:
        expected = Condition.TIMEOUT if outcome is HandlerResult.TIMEOUT else Condition.RETRIES_EXHAUSTED
        assert decision == DeadLetter(expected)
    else:
        assert isinstance(decision, RetryAfter | RetryNow)


def test_hand_backs_are_not_deliveries() -> None:
    """Receives handed back unprocessed are subtracted: receive count 3 with 2 hand-backs is a first run."""
    config = RetryConfig(immediate_retries=2)
    assert attempts_made(3, 0, config, handed_back=2) == 1
    assert attempts_made(3, 1, config, handed_back=2) == 2
    assert attempts_made(5, 0, config, handed_back=2) == attempts_made(3, 0, config)
    assert attempts_made(2, 0, config, handed_back=9) == 1  # never below one delivery


def test_first_run_after_hand_backs_gets_its_immediate_retries() -> None:
    """A message handed back twice before it ever ran is on its first delivery: it retries in process."""
    config = RetryConfig(max_attempts=3, immediate_retries=1)
    assert decide(Attempt(HandlerResult.ERROR, 3, handed_back=2), config) == RetryNow()
    # The same receive count without known hand-backs: the attempts may be spent, so it dead-letters.
    assert decide(Attempt(HandlerResult.ERROR, 3), config) == DeadLetter(Condition.RETRIES_EXHAUSTED)


def test_backoff_grows_with_deliveries_not_hand_backs() -> None:
    """The delayed retry's ceiling follows deliveries that ran the handler, not receives."""
    config = RetryConfig(
        max_attempts=10, immediate_retries=0, backoff_base_seconds=2, backoff_max_seconds=300
    )
    with_hand_backs = decide(Attempt(HandlerResult.ERROR, 6, handed_back=4, jitter=0.9999), config)
    assert with_hand_backs == RetryAfter(backoff_delay(2, 0.9999, config))
    assert with_hand_backs == RetryAfter(3)  # ceiling 4 s (delivery 2), not 64 s (receive 6)


@given(
    config=configs,
    outcome=st.sampled_from(TRANSIENT),
    receive_count=st.integers(1, 200),
    handed_back=st.integers(0, 200),
)
@PROPS
def test_hand_backs_only_ever_add_attempts(
    config: RetryConfig, outcome: HandlerResult, receive_count: int, handed_back: int
) -> None:
    """Knowing of hand-backs never dead-letters a message that would otherwise have been retried."""
    without = decide(Attempt(outcome, receive_count, retry_later_delay=1.0), config)
    with_known = decide(
        Attempt(outcome, receive_count, retry_later_delay=1.0, handed_back=handed_back), config
    )
    if not isinstance(without, DeadLetter):
        assert not isinstance(with_known, DeadLetter)
    made = attempts_made(receive_count, 0, config, handed_back)
    assert (made >= config.max_attempts) == isinstance(with_known, DeadLetter)


# --- backoff and the visibility cap ---------------------------------------------------------------------


def test_backoff_ceiling_doubles_up_to_max() -> None:
    """Ceiling of the k-th delayed retry is min(MAX, BASE * 2^(k-1))."""
    config = RetryConfig(backoff_base_seconds=2.0, backoff_max_seconds=300.0)
    assert [backoff_ceiling(k, config) for k in range(1, 10)] == [2, 4, 8, 16, 32, 64, 128, 256, 300]


@pytest.mark.parametrize("k", [1023, 1024, 1025, 5000, 10**6, 10**30])
def test_backoff_ceiling_huge_retry_number_no_overflow(k: int) -> None:
    """Huge retry numbers give the max ceiling instead of OverflowError, and a bounded delay."""
    assert backoff_ceiling(k, DEFAULT) == DEFAULT.backoff_max_seconds
    assert 1 <= backoff_delay(k, 0.999, DEFAULT) <= 300


@given(config=configs, k=st.integers(-5, 10**9), jitter=jitters)
@PROPS
def test_backoff_delay_is_full_jitter_within_ceiling(config: RetryConfig, k: int, jitter: float) -> None:
    """Delay is a whole number of seconds in [1, max(1, min(MAX, BASE*2^(k-1)))], from the jitter draw."""
    delay = backoff_delay(k, jitter, config)
    exponent = max(0, k - 1)
    # base >= 0.1 and max <= 43200: from 2^60 on the ceiling is MAX (and 2.0 ** 1100 would overflow here)
    ceiling = (
        config.backoff_max_seconds
        if exponent > 60
        else min(config.backoff_max_seconds, config.backoff_base_seconds * 2.0**exponent)
    )
    assert isinstance(delay, int)
    assert 1 <= delay <= max(1, math.floor(ceiling))
    assert delay == max(1, math.floor(jitter * ceiling))


def test_backoff_delay_floor_is_one_second() -> None:
    """A zero jitter draw (or a sub-second ceiling) still gives a 1 s delay, never 0."""
    assert backoff_delay(1, 0.0, DEFAULT) == 1
    assert backoff_delay(1, 0.9, RetryConfig(backoff_base_seconds=0.5)) == 1


def test_backoff_delay_spans_the_range() -> None:
    """Jitter covers the whole [1, ceiling] span: low draws give small delays, high draws near ceiling."""
    config = RetryConfig(backoff_base_seconds=10.0, backoff_max_seconds=1000.0)
    assert backoff_delay(3, 0.0, config) == 1  # ceiling 40
    assert backoff_delay(3, 0.5, config) == 20
    assert backoff_delay(3, 0.9999, config) == 39


@given(config=configs, receive_count=st.integers(1, 60), jitter=jitters, since=elapsed)
@PROPS
def test_delayed_retry_uses_backoff_of_receive_count(
    config: RetryConfig, receive_count: int, jitter: float, since: float
) -> None:
    """A delayed retry after delivery k waits backoff_delay(k, jitter), capped by the visibility cap."""
    config = RetryConfig(
        max_attempts=10_000,
        immediate_retries=0,
        backoff_base_seconds=config.backoff_base_seconds,
        backoff_max_seconds=config.backoff_max_seconds,
    )
    decision = decide(
        Attempt(HandlerResult.ERROR, receive_count, jitter=jitter, seconds_since_receive=since), config
    )
    expected = min(backoff_delay(receive_count, jitter, config), visibility_cap(since))
    assert decision == RetryAfter(expected)


def test_visibility_cap_values() -> None:
    """The cap is 43200 - 5 - seconds since receive, floored, never negative."""
    assert visibility_cap(0) == SQS_VISIBILITY_CAP_SECONDS - CAP_MARGIN_SECONDS == 43_195
    assert visibility_cap(100.5) == 43_094
    assert visibility_cap(43_195) == 0
    assert visibility_cap(43_199.9) == 0
    assert visibility_cap(1e9) == 0


@pytest.mark.parametrize(("asked", "expected"), [(0.0, 0), (0.2, 1), (7.0, 7), (7.01, 8), (600, 600)])
def test_retry_later_delay_is_honoured_rounded_up(asked: float, expected: int) -> None:
    """RetryLater(delay) gives back the message for ceil(delay) seconds, ignoring the backoff."""
    decision = decide(Attempt(HandlerResult.RETRY_LATER, 1, retry_later_delay=asked, jitter=0.99), DEFAULT)
    assert decision == RetryAfter(expected)


@pytest.mark.parametrize("asked", [50_000.0, 1e300, math.inf])
def test_retry_later_delay_capped_by_visibility_cap(asked: float) -> None:
    """A RetryLater delay beyond the 12 h cap (even infinity) is cut to the cap, no OverflowError."""
    decision = decide(
        Attempt(HandlerResult.RETRY_LATER, 2, retry_later_delay=asked, seconds_since_receive=1000), DEFAULT
    )
    assert decision == RetryAfter(visibility_cap(1000))


def test_retry_later_nan_delay_falls_back_to_backoff() -> None:
    """RetryLater(nan) is treated like RetryLater() (backoff), not a ValueError."""
    attempt = Attempt(HandlerResult.RETRY_LATER, 2, retry_later_delay=math.nan, jitter=0.5)
    assert decide(attempt, DEFAULT) == RetryAfter(backoff_delay(2, 0.5, DEFAULT))


def test_retry_later_without_delay_uses_backoff() -> None:
    """RetryLater() with no delay waits the normal jittered backoff of the receive count."""
    attempt = Attempt(HandlerResult.RETRY_LATER, 3, jitter=0.75)
    assert decide(attempt, DEFAULT) == RetryAfter(backoff_delay(3, 0.75, DEFAULT))


@given(
    config=configs,
    outcome=st.sampled_from(TRANSIENT),
    receive_count=st.integers(1, 100),
    done=st.integers(0, 6),
    delay=st.none() | st.floats(0.0, 1e12) | st.just(math.inf),
    jitter=jitters,
    since=elapsed,
)
@PROPS
def test_every_retry_after_respects_visibility_cap(
    config: RetryConfig,
    outcome: HandlerResult,
    receive_count: int,
    done: int,
    delay: float | None,
    jitter: float,
    since: float,
) -> None:
    """Every RetryAfter is a whole, non-negative number of seconds within the visibility cap."""
    attempt = Attempt(
        outcome,
        receive_count,
        immediate_retries_done=done,
        retry_later_delay=delay,
        seconds_since_receive=since,
        jitter=jitter,
    )
    decision = decide(attempt, config)
    if isinstance(decision, RetryAfter):
        assert isinstance(decision.seconds, int)
        assert 0 <= decision.seconds <= visibility_cap(since)
        assert decision.seconds <= max(SQS_VISIBILITY_CAP_SECONDS - CAP_MARGIN_SECONDS - since, 0)


# --- a whole message life -------------------------------------------------------------------------------


@dataclass
class Life:
    """How a simulated message's life ended."""

    invocations: int
    final: Decision
    deliveries: int
    last_outcome: HandlerResult


def simulate(
    config: RetryConfig,
    outcomes: list[HandlerResult],
    lost: set[int],
    jitter: float,
    handed_back: frozenset[int] = frozenset(),
) -> Life:
    """Drive a message through receives 1, 2, ... as the processor does; outcomes cycle, never SUCCESS.

    Receives in ``lost`` run no handler and the worker does not know it (another process's hand-back, a
    crash): the receive count still grows. Receives in ``handed_back`` run no handler either, but this
    worker gave them back itself and counts them.
    """
    invocations = 0
    receive_count = 0
    known = 0
    while True:
        receive_count += 1
        assert receive_count < 10_000, "message never reached a final decision"
        if receive_count in handed_back:
            known += 1
            continue
        if receive_count in lost:
            continue
        done = 0
        while True:
            outcome = outcomes[invocations % len(outcomes)]
            invocations += 1
            decision = decide(
                Attempt(
                    outcome,
                    receive_count,
                    immediate_retries_done=done,
                    retry_later_delay=3.0,
                    jitter=jitter,
                    handed_back=known,
                ),
                config,
            )
            if isinstance(decision, RetryNow):
                done += 1
                continue
            break
        if isinstance(decision, RetryAfter):
            continue
        return Life(invocations, decision, receive_count, outcome)


@given(
    config=configs,
    outcomes=st.lists(st.sampled_from(TRANSIENT), min_size=1, max_size=8),
    lost=st.sets(st.integers(1, 60), max_size=5),
    jitter=jitters,
)
@PROPS
def test_simulated_life_bounded_and_dead_lettered(
    config: RetryConfig, outcomes: list[HandlerResult], lost: set[int], jitter: float
) -> None:
    """An always-failing message runs at least once and at most max_attempts times, then is dead-lettered."""
    life = simulate(config, outcomes, lost, jitter)
    assert 1 <= life.invocations <= config.max_attempts
    assert isinstance(life.final, DeadLetter)
    timed_out = life.last_outcome is HandlerResult.TIMEOUT
    assert life.final.condition is (Condition.TIMEOUT if timed_out else Condition.RETRIES_EXHAUSTED)


@given(config=configs, jitter=jitters)
@PROPS
def test_simulated_life_uses_every_attempt_when_plain_errors(config: RetryConfig, jitter: float) -> None:
    """With plain errors and no lost deliveries, the handler runs exactly max_attempts times."""
    life = simulate(config, [HandlerResult.ERROR], set(), jitter)
    assert life.invocations == config.max_attempts
    assert life.final == DeadLetter(Condition.RETRIES_EXHAUSTED)


@given(config=configs, jitter=jitters)
@PROPS
def test_simulated_life_always_timing_out_ends_with_timeout(config: RetryConfig, jitter: float) -> None:
    """A handler that always times out uses every attempt and is dead-lettered with Timeout."""
    life = simulate(config, [HandlerResult.TIMEOUT], set(), jitter)
    assert life.invocations == config.max_attempts
    assert life.final == DeadLetter(Condition.TIMEOUT)


@given(
    config=configs,
    handed_back=st.frozensets(st.integers(1, 60), max_size=10),
    jitter=jitters,
)
@PROPS
def test_simulated_life_hand_backs_cost_no_attempt(
    config: RetryConfig, handed_back: frozenset[int], jitter: float
) -> None:
    """Receives this worker handed back cost nothing: the handler still runs exactly max_attempts times."""
    life = simulate(config, [HandlerResult.ERROR], set(), jitter, handed_back)
    assert life.invocations == config.max_attempts
    assert life.final == DeadLetter(Condition.RETRIES_EXHAUSTED)


@given(config=configs, lost=st.integers(1, 500), jitter=jitters)
@PROPS
def test_simulated_life_unknown_hand_backs_never_skip_the_final_attempt(
    config: RetryConfig, lost: int, jitter: float
) -> None:
    """However many unknown hand-backs came first (other workers stopping), the handler runs first."""
    life = simulate(config, [HandlerResult.ERROR], set(range(1, lost + 1)), jitter)
    assert life.invocations >= 1
    assert life.deliveries == lost + 1 + max(0, config.max_attempts - (lost + 1 + config.immediate_retries))
    assert life.final == DeadLetter(Condition.RETRIES_EXHAUSTED)


def test_simulated_default_life_shape() -> None:
    """Default config: delivery 1 runs twice, deliveries 2-4 once: 5 runs over 4 deliveries."""
    life = simulate(DEFAULT, [HandlerResult.ERROR], set(), 0.5)
    assert (life.invocations, life.deliveries) == (5, 4)


# --- the age cap (WORKER_MAX_MESSAGE_AGE_SECONDS) --------------------------------------------------------

CAPPED = RetryConfig(max_message_age_seconds=60.0)
ages = st.one_of(st.none(), st.floats(0.0, 2_000_000.0))
caps = st.one_of(st.none(), st.floats(0.001, 1_209_600.0))


def test_age_cap_is_off_by_default() -> None:
    """Without a cap, however old the message, a failed attempt is retried as before."""
    assert RetryConfig().max_message_age_seconds is None
    old = Attempt(HandlerResult.ERROR, 2, message_age_seconds=10**9)
    assert isinstance(decide(old, DEFAULT), RetryAfter)


@pytest.mark.parametrize("outcome", TRANSIENT)
@pytest.mark.parametrize("receive_count", [1, 2])
def test_failed_attempt_at_the_cap_dead_letters_max_age_exceeded(
    outcome: HandlerResult, receive_count: int
) -> None:
    """At or past the cap, a transient failure is MaxAgeExceeded: no immediate or delayed retry."""
    for age in (60.0, 61.0, 10**7):
        attempt = Attempt(outcome, receive_count, retry_later_delay=5.0, message_age_seconds=age)
        assert decide(attempt, CAPPED) == DeadLetter(Condition.MAX_AGE_EXCEEDED)
    assert Condition.MAX_AGE_EXCEEDED.value == "MaxAgeExceeded"


@pytest.mark.parametrize("outcome", TRANSIENT)
def test_below_the_cap_or_unknown_age_retries(outcome: HandlerResult) -> None:
    """Below the cap, or with no known age (no SentTimestamp), the decision is the uncapped one."""
    for age in (None, 0.0, 59.999):
        attempt = Attempt(outcome, 1, retry_later_delay=5.0, message_age_seconds=age)
        assert decide(attempt, CAPPED) == decide(attempt, DEFAULT)
        assert not isinstance(decide(attempt, CAPPED), DeadLetter)


def test_success_and_terminal_outcomes_ignore_the_cap() -> None:
    """Past the cap a success still acks, and a terminal error keeps its own condition."""
    assert decide(Attempt(HandlerResult.SUCCESS, 3, message_age_seconds=600.0), CAPPED) == Ack()
    for outcome, condition in [
        (HandlerResult.PERMANENT, Condition.PERMANENT_ERROR),
        (HandlerResult.DECODE, Condition.DECODE_ERROR),
        (HandlerResult.SCHEMA, Condition.SCHEMA_ERROR),
    ]:
        assert decide(Attempt(outcome, 1, message_age_seconds=600.0), CAPPED) == DeadLetter(condition)


def test_exhausted_attempts_take_precedence_over_the_cap() -> None:
    """Attempts exhausted and age exceeded together: RetriesExhausted (Timeout after a timeout) wins."""
    config = RetryConfig(max_attempts=2, max_message_age_seconds=60.0)
    assert decide(Attempt(HandlerResult.ERROR, 2, message_age_seconds=99.0), config) == DeadLetter(
        Condition.RETRIES_EXHAUSTED
    )
    assert decide(Attempt(HandlerResult.TIMEOUT, 2, message_age_seconds=99.0), config) == DeadLetter(
        Condition.TIMEOUT
    )


@given(
    config=configs,
    cap=caps,
    age=ages,
    outcome=st.sampled_from(sorted(HandlerResult)),
    receive_count=st.integers(1, 60),
    done=st.integers(0, 6),
    handed_back=st.integers(0, 5),
    delay=st.one_of(st.none(), st.floats(0.0, 50_000.0)),
    jitter=jitters,
    since=elapsed,
)
@PROPS
def test_the_cap_only_turns_retries_into_max_age_exceeded(
    config: RetryConfig,
    cap: float | None,
    age: float | None,
    outcome: HandlerResult,
    receive_count: int,
    done: int,
    handed_back: int,
    delay: float | None,
    jitter: float,
    since: float,
) -> None:
    """With a cap, the decision is the uncapped one, except that a retry at age >= cap is MaxAgeExceeded."""
    capped = replace(config, max_message_age_seconds=cap)
    attempt = Attempt(
        outcome,
        receive_count,
        immediate_retries_done=done,
        retry_later_delay=delay,
        seconds_since_receive=since,
        jitter=jitter,
        handed_back=handed_back,
        message_age_seconds=age,
    )
    uncapped = decide(attempt, config)
    decision = decide(attempt, capped)
    over = cap is not None and age is not None and age >= cap
    if over and isinstance(uncapped, RetryNow | RetryAfter):
        assert decision == DeadLetter(Condition.MAX_AGE_EXCEEDED)
    else:
        assert decision == uncapped


@given(config=configs, cap=st.floats(0.001, 10_000.0), step=st.floats(0.0, 5_000.0), jitter=jitters)
@PROPS
def test_simulated_aging_life_runs_at_least_once_and_ends_in_the_dlq(
    config: RetryConfig, cap: float, step: float, jitter: float
) -> None:
    """A failing message aging ``step`` s per delivery runs 1..max_attempts times, then is dead-lettered."""
    capped = replace(config, max_message_age_seconds=cap)
    invocations, receive_count = 0, 0
    while True:
        receive_count += 1
        age = step * (receive_count - 1)
        done = 0
        while True:
            invocations += 1
            decision = decide(
                Attempt(HandlerResult.ERROR, receive_count, done, None, 0.0, jitter, 0, age), capped
            )
            if not isinstance(decision, RetryNow):
                break
            done += 1
        if isinstance(decision, DeadLetter):
            break
        assert isinstance(decision, RetryAfter)
    assert 1 <= invocations <= config.max_attempts
    exhausted = attempts_made(receive_count, done, capped) >= config.max_attempts
    expected = Condition.RETRIES_EXHAUSTED if exhausted else Condition.MAX_AGE_EXCEEDED
    assert decision.condition is expected
    if not exhausted:
        assert age >= cap  # dead-lettered by age only once the cap is reached


def test_message_already_past_the_cap_still_runs_once() -> None:
    """A message that arrives past its cap is not dead-lettered unrun: its first failure decides."""
    # The policy decides only after an invocation: the processor calls decide() once the handler ran.
    first = decide(
        Attempt(HandlerResult.RETRY_LATER, 1, retry_later_delay=1.0, message_age_seconds=1e6), CAPPED
    )
    assert first == DeadLetter(Condition.MAX_AGE_EXCEEDED)
    assert attempts_made(1, 0, CAPPED) == 1

"""The circuit breakers' pure core (worker.engine.breaker): unit cases, a reference model and properties."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from worker import DependencyDown
from worker.engine.breaker import (
    DEFAULT_DEPENDENCY,
    PROBE_RETRY_SECONDS,
    Admission,
    BreakerConfig,
    Breakers,
    Denied,
    State,
    Transition,
)
from worker.engine.breaker_window import WINDOW_BUCKETS, Window
from worker.errors import WorkerError

PROPS = settings(max_examples=200, deadline=None)
CONFIG = BreakerConfig(
    failure_ratio=0.5, min_calls=4, window_seconds=60.0, open_seconds=10.0, half_open_calls=2
)


def admitted(result: Admission | Denied) -> Admission:
    """``result`` as an Admission (fails the test when it is a denial)."""
    assert isinstance(result, Admission), result
    return result


def trip(breakers: Breakers, dependency: str, now: float, calls: int | None = None) -> list[Transition]:
    """Fail ``calls`` (default min_calls) messages on ``dependency`` at ``now``; the transitions caused."""
    transitions: list[Transition] = []
    for _ in range(calls or breakers.config.min_calls):
        admission = admitted(breakers.admit([dependency], now))
        transitions += breakers.failed(admission, dependency, now)
    return transitions


# --- errors and configuration ---------------------------------------------------------------------------


def test_dependency_down_names_its_dependency() -> None:
    """DependencyDown keeps the dependency's name and reason, is a WorkerError, and refuses an empty name."""
    error = DependencyDown("payments-api", reason="503")
    assert (error.dependency, error.reason, str(error)) == (
        "payments-api",
        "503",
        "payments-api is down: 503",
    )
    assert isinstance(error, WorkerError)
    assert str(DependencyDown("db")) == "db is down"
    with pytest.raises(ValueError, match="name"):
        DependencyDown("")


@pytest.mark.parametrize(
    "changes",
    [
        {"failure_ratio": 0.0},
        {"failure_ratio": 1.5},
        {"min_calls": 0},
        {"half_open_calls": 0},
        {"window_seconds": 0.0},
        {"open_seconds": float("inf")},
    ],
)
def test_config_refuses_out_of_range_values(changes: dict[str, float]) -> None:
    """BreakerConfig refuses what the settings refuse, so the core never runs with a nonsense config."""
    values: dict[str, float] = {
        "failure_ratio": 0.5,
        "min_calls": 1,
        "window_seconds": 1.0,
        "open_seconds": 1.0,
        "half_open_calls": 1,
    }
    with pytest.raises(ValueError, match="must be"):
        BreakerConfig(**{**values, **changes})  # type: ignore[arg-type]


# --- unit cases -----------------------------------------------------------------------------------------


def test_closed_breaker_opens_at_the_ratio_and_reports_the_numbers() -> None:
    """Two successes then failures: the breaker opens on the failure that makes 4 calls at ratio 0.5."""
    breakers = Breakers(CONFIG)
    for _ in range(2):
        assert breakers.succeeded(admitted(breakers.admit(None, 0.0)), 0.0) == []
    first = admitted(breakers.admit(None, 1.0))
    assert breakers.failed(first, DEFAULT_DEPENDENCY, 1.0) == []  # 3 calls: below min_calls
    second = admitted(breakers.admit(None, 2.0))
    assert breakers.failed(second, DEFAULT_DEPENDENCY, 2.0) == [
        Transition("handler", State.CLOSED, State.OPEN, 2.0, 4, 2, 0.5, "failure_ratio")
    ]
    assert breakers.states(2.0) == {"handler": State.OPEN}
    assert breakers.admit(None, 5.0) == Denied("handler", 7.0)
    assert breakers.paused_for(5.0) == 7.0
    assert breakers.open_details(5.0) == [
        {"dependency": "handler", "state": "open", "retry_in_seconds": 7.0, "failures": 2, "calls": 4}
    ]


def test_half_open_probes_close_after_successes() -> None:
    """After open_seconds: half-open, two probes at most, both succeed -> closed with an empty window."""
    breakers = Breakers(CONFIG)
    trip(breakers, "db", 0.0)
    assert breakers.tick(9.9) == []
    assert breakers.tick(10.0) == [
        Transition("db", State.OPEN, State.HALF_OPEN, 10.0, 0, 0, 0.0, "open_elapsed")
    ]
    assert breakers.paused_for(10.0) is None
    probes = [admitted(breakers.admit(["db"], 11.0)) for _ in range(2)]
    assert all(probe.probes == ("db",) for probe in probes)
    assert breakers.admit(["db"], 11.0) == Denied("db", PROBE_RETRY_SECONDS)
    assert admitted(breakers.admit(["other"], 11.0)).probes == ()  # not covered by db's breaker
    assert breakers.succeeded(probes[0], 12.0) == []
    assert breakers.admit(["db"], 12.0) == Denied("db", PROBE_RETRY_SECONDS)  # a success keeps its permit
    assert breakers.succeeded(probes[1], 13.0) == [
        Transition("db", State.HALF_OPEN, State.CLOSED, 13.0, 2, 0, 0.0, "probes_succeeded")
    ]
    assert breakers.states(13.0)["db"] is State.CLOSED
    assert breakers.open_details(13.0) == []
    # The window was emptied: three failures (below min_calls) do not open it again.
    assert trip(breakers, "db", 14.0, calls=3) == []


def test_probe_failure_reopens_and_stale_permits_are_ignored() -> None:
    """A failed probe re-opens for open_seconds; the other probe's late outcome changes nothing."""
    breakers = Breakers(CONFIG)
    trip(breakers, "db", 0.0)
    first, second = (admitted(breakers.admit(["db"], 10.0)) for _ in range(2))
    assert breakers.failed(first, "db", 11.0) == [  # admit() moved it to half-open; reported here
        Transition("db", State.OPEN, State.HALF_OPEN, 10.0, 0, 0, 0.0, "open_elapsed"),
        Transition("db", State.HALF_OPEN, State.OPEN, 11.0, 1, 1, 1.0, "probe_failed"),
    ]
    assert breakers.admit(["db"], 20.5) == Denied("db", 0.5)  # re-opened at 11 for 10 s
    breakers.released(second)  # from the previous half-open period: no permit to give back
    assert breakers.tick(21.0)[0].after is State.HALF_OPEN
    assert breakers.succeeded(second, 21.0) == []  # not a probe of this period: counts for nothing
    probes = [admitted(breakers.admit(["db"], 21.0)) for _ in range(2)]
    assert isinstance(breakers.admit(["db"], 21.0), Denied)  # still exactly two permits
    assert breakers.succeeded(probes[0], 22.0) == []
    assert breakers.states(22.0)["db"] is State.HALF_OPEN  # one success of two: the stale one did not count
    assert [t.reason for t in breakers.succeeded(probes[1], 22.0)] == ["probes_succeeded"]


def test_released_and_neutral_probes_give_their_permits_back() -> None:
    """A hand-back (released) or a failure on another dependency gives the probe permit back."""
    breakers = Breakers(CONFIG)
    trip(breakers, "db", 0.0)
    breakers.tick(10.0)
    first, second = (admitted(breakers.admit(["db"], 10.0)) for _ in range(2))
    breakers.released(first)
    third = admitted(breakers.admit(["db"], 10.0))
    assert breakers.failed(second, "cache", 10.0) == []  # cache is down, db's probe is neutral
    fourth = admitted(breakers.admit(["db"], 10.0))
    assert isinstance(breakers.admit(["db"], 10.0), Denied)
    assert breakers.succeeded(third, 11.0) == []
    assert [t.after for t in breakers.succeeded(fourth, 11.0)] == [State.CLOSED]
    assert breakers.states(11.0) == {"cache": State.CLOSED, "db": State.CLOSED, "handler": State.CLOSED}


def test_routes_hold_back_only_what_the_open_breaker_covers() -> None:
    """With routes, an open db breaker denies db's messages only; without one (None) it denies them all."""
    breakers = Breakers(CONFIG)
    trip(breakers, "db", 0.0)
    assert breakers.admit(["db", "cache"], 1.0) == Denied("db", 9.0)
    assert breakers.admit(None, 1.0) == Denied("db", 9.0)
    assert admitted(breakers.admit(["cache"], 1.0)).dependencies == ("cache", "handler")
    assert admitted(breakers.admit("cache", 1.0)).dependencies == (
        "cache",
        "handler",
    )  # one name, not letters
    assert admitted(breakers.admit([], 1.0)).dependencies == ("handler",)
    with pytest.raises(ValueError, match="non-empty string"):
        breakers.admit(["db", ""], 1.0)
    with pytest.raises(ValueError, match="probe epoch"):
        Admission(("db",), ("db",))  # only admit() makes admissions that hold probes


def test_the_default_breaker_covers_every_message() -> None:
    """Unnamed failures open the `handler` breaker, which denies routed and unrouted messages alike."""
    breakers = Breakers(CONFIG)
    trip(breakers, DEFAULT_DEPENDENCY, 0.0)
    assert breakers.admit(["db"], 1.0) == Denied("handler", 9.0)
    assert breakers.admit(None, 1.0) == Denied("handler", 9.0)


def test_a_denial_names_the_breaker_that_frees_last_and_takes_no_permit() -> None:
    """Two non-closed breakers: the denial names the longer wait, and the half-open one keeps its permits."""
    breakers = Breakers(CONFIG)
    trip(breakers, "cache", 0.0)
    trip(breakers, "db", 5.0)
    breakers.tick(10.0)  # cache half-open, db open until 15
    for _ in range(5):  # cache could take a probe, db cannot: nothing taken
        assert breakers.admit(["cache", "db"], 10.0) == Denied("db", 5.0)
    probes = [admitted(breakers.admit(["cache"], 10.0)) for _ in range(2)]
    assert [probe.probes for probe in probes] == [("cache",), ("cache",)]
    # cache is out of permits (retry in 1 s), db opens in 5 s: the denial names db, whose wait is longer.
    assert breakers.admit(["cache", "db"], 10.0) == Denied("db", 5.0)
    assert breakers.admit(["cache"], 10.0) == Denied("cache", PROBE_RETRY_SECONDS)
    assert breakers.paused_for(10.0) == 5.0


def test_an_uncovered_dependency_still_counts_and_open_outcomes_are_ignored() -> None:
    """A failure names a dependency the admission did not cover: it counts; outcomes on an OPEN one do not."""
    breakers = Breakers(CONFIG)
    transitions: list[Transition] = []
    admissions = [admitted(breakers.admit(["cache"], 0.0)) for _ in range(6)]
    for admission in admissions[:4]:
        transitions += breakers.failed(admission, "payments", 1.0)
    assert [(t.dependency, t.after) for t in transitions] == [("payments", State.OPEN)]
    assert breakers.failed(admissions[4], "payments", 2.0) == []  # already open: not re-opened, not extended
    assert breakers.succeeded(admissions[5], 2.0) == []
    assert breakers.admit(None, 2.0) == Denied("payments", 9.0)


def test_old_calls_leave_the_window() -> None:
    """Failures older than the window do not add up with new ones."""
    breakers = Breakers(CONFIG)
    assert trip(breakers, "db", 0.0, calls=3) == []
    assert trip(breakers, "db", 60.0, calls=3) == []  # the first three are 60 s old: out
    assert [t.calls for t in trip(breakers, "db", 61.0, calls=1)] == [4]


def test_late_transitions_from_admit_are_reported_once_by_the_next_call() -> None:
    """admit() moves an elapsed OPEN breaker to HALF_OPEN; the next tick/outcome reports it, once."""
    breakers = Breakers(CONFIG)
    trip(breakers, "db", 0.0)
    probe = admitted(breakers.admit(["db"], 30.0))
    assert breakers.states(30.0)["db"] is State.HALF_OPEN
    reported = breakers.succeeded(probe, 31.0)
    assert [(t.reason, t.at) for t in reported] == [("open_elapsed", 10.0)]
    assert breakers.tick(31.0) == []


def test_quiet_only_while_every_breaker_is_closed_and_every_change_was_reported() -> None:
    """`quiet` (the gate's no-clock path) is False from a breaker's opening until its close is reported."""
    breakers = Breakers(CONFIG)
    assert breakers.quiet
    assert breakers.admit(None, 0.0) is breakers.unrouted_admission
    assert [t.after for t in trip(breakers, "db", 0.0)] == [State.OPEN]
    assert not breakers.quiet
    probes = [admitted(breakers.admit(["db"], 10.0)) for _ in range(CONFIG.half_open_calls)]
    assert not breakers.quiet  # half-open now, and that change is not reported yet
    reported = [t for probe in probes for t in breakers.succeeded(probe, 11.0)]
    assert [t.after for t in reported] == [State.HALF_OPEN, State.CLOSED]
    assert breakers.quiet
    assert breakers.unrouted_admission.dependencies == ("db", DEFAULT_DEPENDENCY)


def test_window_counts_calls_in_the_newest_bucket_and_prunes_when_a_new_one_opens() -> None:
    """Calls in the newest bucket add to it; the first call of a later bucket drops the buckets aged out."""
    window = Window(60.0)  # 1 s buckets
    for now in (0.0, 0.5, 0.9):
        window.add(now, failed=now == 0.5)
    assert (len(window), window.calls, window.failures) == (1, 3, 1)
    window.add(59.5, failed=False)  # bucket 59: bucket 0 is still in the window
    assert (len(window), window.calls) == (2, 4)
    window.add(60.0, failed=True)  # bucket 60: bucket 0 leaves
    assert (len(window), window.calls, window.failures) == (2, 2, 1)
    window.add(30.0, failed=False)  # out of order: joins the newest bucket, prunes nothing
    assert (len(window), window.calls, window.failures) == (2, 3, 1)


def test_window_memory_is_bounded_at_5000_messages_per_second() -> None:
    """30 s at 5,000 msg/s (150,000 calls) keeps at most WINDOW_BUCKETS buckets per breaker."""
    config = BreakerConfig(
        failure_ratio=0.5, min_calls=20, window_seconds=30.0, open_seconds=30.0, half_open_calls=3
    )
    breakers = Breakers(config)
    started = time.perf_counter()
    for i in range(150_000):
        now = i / 5_000
        admission = admitted(breakers.admit(["db"], now))
        if i % 10:
            breakers.succeeded(admission, now)
        else:
            breakers.failed(admission, "db", now)
    elapsed = time.perf_counter() - started
    windows = [breaker.window for breaker in breakers._breakers.values()]
    assert [len(window) <= WINDOW_BUCKETS for window in windows] == [True, True]
    assert (windows[0].calls, windows[0].failures) == (150_000, 15_000)  # 30 s: every call still counts
    assert breakers.states(30.0) == {"db": State.CLOSED, "handler": State.CLOSED}
    assert elapsed < 20, f"{elapsed:.1f} s for 150,000 messages"


# --- a reference model: exact timestamps instead of buckets ---------------------------------------------

NAMES = ("handler", "a", "b")
#: Window lengths whose bucket width (window / 60) is a power of two: times that are multiples of it are
#: exact, and then the bucketed window holds exactly the calls younger than window_seconds.
WINDOWS = (15.0, 30.0, 60.0, 120.0)


@dataclass
class ModelBreaker:
    """The reference breaker: the window as a plain list of (time, failed)."""

    state: State = State.CLOSED
    calls: list[tuple[float, bool]] = field(default_factory=list)
    opened_until: float = 0.0
    epoch: int = 0
    probes_out: int = 0
    successes: int = 0
    failures: int = 0


class BreakerMachine(RuleBasedStateMachine):
    """Random admissions, outcomes, releases and clock steps, checked against the model after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.width = 1.0
        self.model: dict[str, ModelBreaker] = {}
        self.config = CONFIG
        self.breakers = Breakers(CONFIG)
        self.running: list[tuple[Admission, dict[str, int]]] = []  # admissions and their probes' epochs
        self.seen: list[Transition] = []
        self.expected: list[Transition] = []

    @initialize(
        ratio=st.sampled_from((0.25, 0.5, 0.75, 1.0)),
        min_calls=st.integers(1, 6),
        window=st.sampled_from(WINDOWS),
        open_steps=st.integers(1, 12),
        half_open_calls=st.integers(1, 3),
    )
    def configure(
        self, ratio: float, min_calls: int, window: float, open_steps: int, half_open_calls: int
    ) -> None:
        """A random configuration; open_seconds a whole number of clock steps, so ties happen."""
        self.width = window / WINDOW_BUCKETS
        self.config = BreakerConfig(ratio, min_calls, window, open_steps * self.width, half_open_calls)
        self.breakers = Breakers(self.config)
        self.now = (
            1_000 * window
        )  # far from zero: bucket indexes are large numbers, as with a monotonic clock

    # model helpers

    def _get(self, name: str) -> ModelBreaker:
        return self.model.setdefault(name, ModelBreaker())

    def _note(self, name: str, before: State, at: float, calls: int, failures: int, reason: str) -> None:
        after = self.model[name].state
        ratio = failures / calls if calls else 0.0
        self.expected.append(Transition(name, before, after, at, calls, failures, ratio, reason))

    def _advance(self) -> None:
        for name, breaker in self.model.items():
            if breaker.state is State.OPEN and self.now >= breaker.opened_until:
                breaker.state, breaker.epoch = State.HALF_OPEN, breaker.epoch + 1
                breaker.probes_out = breaker.successes = breaker.failures = 0
                self._note(name, State.OPEN, breaker.opened_until, 0, 0, "open_elapsed")

    def _window(self, breaker: ModelBreaker) -> tuple[int, int]:
        live = [failed for at, failed in breaker.calls if self.now - at < self.config.window_seconds]
        return len(live), sum(live)

    def _open(self, name: str, before: State, calls: int, failures: int, reason: str) -> None:
        breaker = self.model[name]
        breaker.state, breaker.opened_until, breaker.calls = (
            State.OPEN,
            self.now + self.config.open_seconds,
            [],
        )
        self._note(name, before, self.now, calls, failures, reason)

    def _held(self, epochs: dict[str, int]) -> set[str]:
        return {
            n
            for n, e in epochs.items()
            if self.model[n].state is State.HALF_OPEN and self.model[n].epoch == e
        }

    def _settle(self, got: list[Transition]) -> None:
        assert got == self.expected, (got, self.expected)
        self.seen += got
        self.expected = []

    # rules

    @rule(steps=st.integers(0, 3) | st.integers(4, 60), tick=st.booleans())
    def wait(self, steps: int, tick: bool) -> None:
        """The clock moves on by whole buckets (0: several calls at one instant); then maybe a tick().

        tick() reports the elapsed open periods (and anything admit() moved but did not report).
        """
        self.now += steps * self.width
        if tick:
            self._advance()
            self._settle(self.breakers.tick(self.now))

    @rule(route=st.none() | st.lists(st.sampled_from(("a", "b")), max_size=2), copies=st.integers(1, 4))
    def admit(self, route: list[str] | None, copies: int) -> None:
        """``copies`` messages with one route arrive at once."""
        for _ in range(copies):
            self._admit(route)

    def _admit(self, route: list[str] | None) -> None:
        """admit() agrees with the model: which breaker denies, for how long, which permits are taken."""
        self._advance()
        covered = sorted({"handler", *self.model} if route is None else {"handler", *route})
        waits = []
        for name in covered:
            breaker = self.model.get(name)
            if breaker is None or breaker.state is State.CLOSED:
                continue
            if breaker.state is State.OPEN:
                waits.append((breaker.opened_until - self.now, name))
            elif breaker.probes_out + breaker.successes >= self.config.half_open_calls:
                waits.append((min(PROBE_RETRY_SECONDS, self.config.open_seconds), name))
        result = self.breakers.admit(route, self.now)
        if waits:
            longest = max(wait for wait, _ in waits)
            assert isinstance(result, Denied)
            assert (result.retry_in, result.dependency) in [(w, n) for w, n in waits if w == longest]
            assert result.retry_in > 0  # OPEN denies only until open_seconds elapsed
            return
        assert isinstance(result, Admission), result
        assert result.dependencies == tuple(covered)
        probes = [n for n in covered if n in self.model and self.model[n].state is State.HALF_OPEN]
        assert result.probes == tuple(probes)
        for name in probes:
            self.model[name].probes_out += 1
        self.running.append((result, {name: self.model[name].epoch for name in probes}))

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def succeed(self, data: st.DataObject) -> None:
        """One running message succeeds."""
        self._succeed(data.draw(st.integers(0, len(self.running) - 1)))

    @precondition(lambda self: self.running)
    @rule()
    def succeed_all(self) -> None:
        """Every running message succeeds, oldest first (half-open breakers get all their probes back)."""
        while self.running:
            self._succeed(0)

    def _succeed(self, index: int) -> None:
        """A success: a window entry on closed breakers, a counted probe on half-open ones."""
        admission, epochs = self.running.pop(index)
        self._advance()
        held = self._held(epochs)
        for name in admission.dependencies:
            breaker = self._get(name)
            if breaker.state is State.CLOSED:
                breaker.calls.append((self.now, False))
            elif breaker.state is State.HALF_OPEN and name in held:
                breaker.probes_out -= 1
                breaker.successes += 1
                if breaker.successes >= self.config.half_open_calls:
                    breaker.state, breaker.calls = State.CLOSED, []
                    successes, breaker.probes_out, breaker.successes, breaker.failures = (
                        breaker.successes,
                        0,
                        0,
                        0,
                    )
                    self._note(name, State.HALF_OPEN, self.now, successes, 0, "probes_succeeded")
        self._settle(self.breakers.succeeded(admission, self.now))

    @precondition(lambda self: self.running)
    @rule(data=st.data(), dependency=st.sampled_from(("handler", "a", "b", "c")), copies=st.integers(1, 3))
    def fail(self, data: st.DataObject, dependency: str, copies: int) -> None:
        """Up to ``copies`` running messages fail on ``dependency``."""
        for _ in range(min(copies, len(self.running))):
            self._fail(data.draw(st.integers(0, len(self.running) - 1)), dependency)

    def _fail(self, index: int, dependency: str) -> None:
        """A failure: opens exactly when the exact window reaches min_calls and the ratio; re-opens probes."""
        admission, epochs = self.running.pop(index)
        self._advance()
        held = self._held(epochs)
        breaker = self._get(dependency)
        if breaker.state is State.CLOSED:
            breaker.calls.append((self.now, True))
            calls, failures = self._window(breaker)
            if calls >= self.config.min_calls and failures / calls >= self.config.failure_ratio:
                self._open(dependency, State.CLOSED, calls, failures, "failure_ratio")
        elif breaker.state is State.HALF_OPEN:
            breaker.probes_out -= dependency in held
            breaker.failures += 1
            self._open(
                dependency,
                State.HALF_OPEN,
                breaker.successes + breaker.failures,
                breaker.failures,
                "probe_failed",
            )
        for name in held - {dependency}:
            self.model[name].probes_out -= 1
        self._settle(self.breakers.failed(admission, dependency, self.now))

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        """A hand-back: the probe permits of the current half-open periods go back."""
        admission, epochs = self.running.pop(data.draw(st.integers(0, len(self.running) - 1)))
        for name in self._held(epochs):
            self.model[name].probes_out -= 1
        self.breakers.released(admission)

    # invariants

    @invariant()
    def states_agree(self) -> None:
        """Every breaker's state is the model's, and open_details lists exactly the non-closed ones."""
        self._advance()
        assert self.breakers.states(self.now) == {n: b.state for n, b in sorted(self.model.items())}
        details = self.breakers.open_details(self.now)
        assert [d["dependency"] for d in details] == sorted(
            n for n, b in self.model.items() if b.state is not State.CLOSED
        )
        waits = [b.opened_until - self.now for b in self.model.values() if b.state is State.OPEN]
        assert self.breakers.paused_for(self.now) == (min(waits) if waits else None)

    @invariant()
    def probes_never_exceed_the_permits(self) -> None:
        """Probes of one half-open period still running never outnumber half_open_calls."""
        for name, breaker in self.model.items():
            if breaker.state is State.HALF_OPEN:
                running = sum(1 for _, epochs in self.running if epochs.get(name) == breaker.epoch)
                assert running == breaker.probes_out <= self.config.half_open_calls

    @invariant()
    def transitions_chain(self) -> None:
        """Per dependency, transitions (reported, then pending) chain from CLOSED to its state, once each."""
        last: dict[str, State] = {}
        for transition in self.seen + self.expected:
            assert transition.before is last.get(transition.dependency, State.CLOSED)
            assert transition.before is not transition.after
            last[transition.dependency] = transition.after
        for name, breaker in self.model.items():
            assert last.get(name, State.CLOSED) is breaker.state


TestBreakerModel = BreakerMachine.TestCase
TestBreakerModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


# --- properties in closed form --------------------------------------------------------------------------

configs = st.builds(
    BreakerConfig,
    failure_ratio=st.sampled_from((0.1, 0.25, 0.5, 0.75, 1.0)),
    min_calls=st.integers(1, 30),
    window_seconds=st.sampled_from(WINDOWS),
    open_seconds=st.floats(0.5, 600.0),
    half_open_calls=st.integers(1, 5),
)


@given(config=configs, outcomes=st.lists(st.booleans(), max_size=80))
@PROPS
def test_opens_exactly_when_min_calls_and_the_ratio_are_reached(
    config: BreakerConfig, outcomes: list[bool]
) -> None:
    """Calls within one window: never open below min_calls; open on the first failure that reaches both."""
    breakers = Breakers(config)
    failures = 0
    for calls, failed in enumerate(outcomes, start=1):
        admission = admitted(breakers.admit(["db"], 5.0))
        if not failed:
            assert breakers.succeeded(admission, 5.0) == []
            continue
        failures += 1
        transitions = breakers.failed(admission, "db", 5.0)
        should_open = calls >= config.min_calls and failures / calls >= config.failure_ratio
        assert [t.reason for t in transitions] == (["failure_ratio"] if should_open else [])
        if should_open:
            assert (transitions[0].calls, transitions[0].failures) == (calls, failures)
            return
    assert breakers.states(5.0).get("db", State.CLOSED) is State.CLOSED


@given(config=configs, start=st.floats(0.0, 1e6), probe=st.floats(0.0, 1.0, exclude_max=True))
@PROPS
def test_open_denies_until_open_seconds_elapsed(config: BreakerConfig, start: float, probe: float) -> None:
    """An open breaker denies every call before open_seconds, with the exact wait, and lets a probe after."""
    breakers = Breakers(config)
    while breakers.states(start).get("db") is not State.OPEN:
        breakers.failed(admitted(breakers.admit(["db"], start)), "db", start)
    until = start + config.open_seconds
    now = start + probe * config.open_seconds
    if now < until:
        denied = breakers.admit(["db"], now)
        assert isinstance(denied, Denied)
        assert denied.retry_in == until - now > 0
    assert admitted(breakers.admit(["db"], until)).probes == ("db",)


@given(config=configs, releases=st.integers(0, 10))
@PROPS
def test_half_open_admits_at_most_its_probes_and_released_permits_return(
    config: BreakerConfig, releases: int
) -> None:
    """Half-open: exactly half_open_calls probes, then denials; each release lets exactly one more in."""
    breakers = Breakers(config)
    trip(breakers, "db", 0.0, calls=config.min_calls)
    now = config.open_seconds
    assert [t.reason for t in breakers.tick(now)] == ["open_elapsed"]
    held = [admitted(breakers.admit(["db"], now)) for _ in range(config.half_open_calls)]
    assert isinstance(breakers.admit(["db"], now), Denied)
    for _ in range(releases):
        breakers.released(held.pop())
        held.append(admitted(breakers.admit(["db"], now)))
        assert isinstance(breakers.admit(["db"], now), Denied)
    closes = [t for probe in held for t in breakers.succeeded(probe, now)]
    assert [(t.reason, t.after) for t in closes] == [("probes_succeeded", State.CLOSED)]

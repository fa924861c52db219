"""The soak's leak arithmetic (tests/soak_math.py) on synthetic samples: in `make test`, under a second."""

from __future__ import annotations

import random

import pytest

from tests.soak_math import (
    LEAK_BUDGET_BYTES_PER_MESSAGE,
    fit_line,
    growth,
    leak_verdict,
    second_half,
)

MIB = 1 << 20


def test_fit_line_is_exact_on_a_line() -> None:
    """Points on a line: its slope and intercept, no residual, no uncertainty."""
    xs = [0.0, 10.0, 20.0, 30.0]
    fit = fit_line(xs, [5 + 2 * x for x in xs])
    assert fit.slope == pytest.approx(2)
    assert fit.intercept == pytest.approx(5)
    assert fit.residual_std == pytest.approx(0, abs=1e-9)
    assert fit.slope_stderr == pytest.approx(0, abs=1e-9)
    assert fit.points == 4


def test_fit_line_standard_error_matches_the_textbook_formula() -> None:
    """Residuals +1, -1, -1, +1 around a line: sigma = sqrt(4 / 2), stderr = sigma / sqrt(Sxx)."""
    xs = [0.0, 1.0, 2.0, 3.0]
    fit = fit_line(xs, [1.0, -1.0, -1.0, 1.0])  # symmetric: slope 0, intercept 0
    assert fit.slope == pytest.approx(0)
    assert fit.residual_std == pytest.approx(2**0.5)
    assert fit.slope_stderr == pytest.approx(2**0.5 / 5**0.5)  # Sxx = 2.25 + 0.25 + 0.25 + 2.25


@pytest.mark.parametrize(
    ("xs", "ys", "match"),
    [
        ([0.0, 1.0], [0.0, 1.0], "at least 3"),
        ([1.0, 1.0, 1.0], [0.0, 1.0, 2.0], "no slope"),
        ([1.0], [], "xs"),
    ],
)
def test_fit_line_refuses_what_has_no_slope(xs: list[float], ys: list[float], match: str) -> None:
    """Too few points, one x, or mismatched lengths: a ValueError, not a made-up slope."""
    with pytest.raises(ValueError, match=match):
        fit_line(xs, ys)


def test_second_half_keeps_the_samples_past_the_middle_of_the_span() -> None:
    """The warm-up half is dropped by time, not by count."""
    assert second_half([0, 10, 20, 30, 40], [1, 2, 3, 4, 5]) == ([20, 30, 40], [3, 4, 5])
    assert second_half([], []) == ([], [])


def _soak(leak_per_message: float, noise: float, *, rate: float = 50, seconds: int = 1800) -> list[float]:
    """RSS every 10 s: 80 MiB, a warm-up ramp in the first half, a leak, gaussian noise (seeded)."""
    rng = random.Random(7)
    return [
        80 * MIB + min(t, seconds / 4) * 4000 + leak_per_message * rate * t + rng.gauss(0, noise)
        for t in range(0, seconds + 1, 10)
    ]


def test_a_30_minute_soak_sees_a_leak_of_the_budget_and_clears_a_flat_run() -> None:
    """1800 s at 50 msg/s, 256 KiB noise: 150 B/message is caught, no leak is cleared, both conclusive."""
    times = [float(t) for t in range(0, 1801, 10)]
    leaky = leak_verdict(times, _soak(LEAK_BUDGET_BYTES_PER_MESSAGE * 1.5, 256 * 1024), 50)
    flat = leak_verdict(times, _soak(0, 256 * 1024), 50)
    assert leaky.leaking
    assert leaky.bytes_per_message == pytest.approx(150, abs=3 * leaky.fit.slope_stderr / 50)
    assert not flat.leaking
    assert abs(flat.bytes_per_message) <= flat.detectable_bytes_per_message  # noise stays within 3 sigma
    assert flat.conclusive
    assert leaky.conclusive
    # 91 points, half of them fitted: the slope's stderr is sigma / sqrt(Sxx), about 256 KiB / 1400 s.
    assert 2 < flat.detectable_bytes_per_message < 20, flat.detectable_bytes_per_message


def test_a_short_noisy_run_is_inconclusive_rather_than_clean() -> None:
    """120 s with 4 MiB of noise cannot see 100 B/message: the verdict says so."""
    times = [float(t) for t in range(0, 121, 10)]
    verdict = leak_verdict(times, _soak(0, 4 * MIB, seconds=120), 50)
    assert not verdict.conclusive
    assert verdict.detectable_bytes_per_message > LEAK_BUDGET_BYTES_PER_MESSAGE


def test_detectable_leak_scales_with_the_message_rate() -> None:
    """The same RSS noise spread over twice the messages resolves half the bytes per message."""
    times = [float(t) for t in range(0, 1801, 10)]
    rss = _soak(0, 256 * 1024)
    slow, fast = leak_verdict(times, rss, 25), leak_verdict(times, rss, 50)
    assert slow.detectable_bytes_per_message == pytest.approx(2 * fast.detectable_bytes_per_message)
    with pytest.raises(ValueError, match="positive"):
        leak_verdict(times, rss, 0)


def test_growth_compares_the_peaks_of_the_two_halves() -> None:
    """A pool filled early does not grow; a count rising through the run does."""
    times = [0.0, 10.0, 20.0, 30.0]
    assert growth(times, [10, 40, 38, 40]) == 0
    assert growth(times, [10, 20, 30, 40]) == 20
    with pytest.raises(ValueError, match="both halves"):
        growth([0.0], [1])

"""The lag trend and catch-up forecast of each projection (`live.lag_trend`): a pure function of
its recent lag samples."""

import pytest

from cqrs_core.app.live import LagPoint, lag_trend


def points(lags: list[int], rate: float = 1200.0, every: float = 1.0) -> list[LagPoint]:
    return [LagPoint(i * every, lag, rate) for i, lag in enumerate(lags)]


def test_falling_lag_forecasts_when_it_reaches_zero_at_the_rate_it_falls():
    # 300 events fewer behind each second: 12,000 left → 40 s, while 1,200 events/s are applied.
    trend = lag_trend(points([13_200, 12_900, 12_600, 12_300, 12_000]))
    assert trend.direction == "falling"
    assert trend.slope == pytest.approx(-300)
    assert trend.catch_up_seconds == pytest.approx(40)
    assert trend.sentence == "lag falling · catching up in ~40 s at 1,200 events/s"


def test_the_forecast_uses_the_current_lag_when_it_is_fresher_than_the_samples():
    trend = lag_trend(points([13_200, 12_900, 12_600, 12_300, 12_000]), lag_events=3_000)
    assert trend.catch_up_seconds == pytest.approx(10)
    assert trend.lag_events == 3_000


def test_rising_lag_is_not_catching_up():
    trend = lag_trend(points([100, 400, 700, 1_000]))
    assert trend.direction == "rising"
    assert trend.catch_up_seconds is None
    assert trend.sentence == "not catching up: lag rising (1,200 events/s applied)"


def test_flat_lag_reads_flat_despite_batches_sawing_it():
    trend = lag_trend(points([5_000, 5_100, 4_950, 5_050, 5_000]))
    assert trend.direction == "flat"
    assert trend.catch_up_seconds is None
    assert trend.sentence.startswith("not catching up: lag flat")


def test_no_samples_or_one_says_so():
    assert lag_trend([]).direction == "unknown"
    assert lag_trend([]).sentence == "trend: not enough lag samples yet"
    assert lag_trend(points([500])).direction == "unknown"
    assert lag_trend(points([500])).catch_up_seconds is None


def test_zero_apply_rate_never_forecasts_a_catch_up():
    # The lag reads as falling (the head moved back after a reset, say) but nothing is applied.
    trend = lag_trend(points([1_000, 800, 600], rate=0.0))
    assert trend.catch_up_seconds is None
    assert trend.sentence == "not catching up: nothing applied recently"


def test_caught_up_says_so_with_the_direction():
    trend = lag_trend(points([0, 0, 0, 0]))
    assert trend.direction == "flat"
    assert trend.sentence == "caught up · lag flat"


def test_a_slow_steady_fall_of_a_large_lag_is_falling_not_flat():
    trend = lag_trend(points([60_300, 60_200, 60_100, 60_000], rate=500))
    assert trend.direction == "falling"
    assert trend.sentence == "lag falling · catching up in ~10 min at 500 events/s"


def test_a_change_within_the_scatter_of_the_samples_is_flat():
    trend = lag_trend(points([36_000, 36_400, 35_700, 36_300, 35_800, 36_200]))
    assert trend.direction == "flat"


def test_long_forecasts_read_in_hours():
    # 10,000 events fewer per hour: 90,000 left → 9 h.
    trend = lag_trend([LagPoint(0, 100_000, 5.0), LagPoint(3_600, 90_000, 5.0)])
    assert trend.sentence == "lag falling · catching up in ~9 h at 5 events/s"

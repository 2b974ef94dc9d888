"""Interval energy into 15-minute UTC buckets, and offline period totals spread over them."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proto_schemas.quality import Quality
from services.aggregation.hourly import HOUR_MS, QUARTER_MS, hourly_contributions, quarter_contributions
from services.aggregation.offline import spread_periods

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE = 60_000
DAY_MS = 24 * HOUR_MS
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None)


def close(a: float, b: float, scale: float = 1.0) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9 * max(1.0, scale))


def test_an_interval_inside_a_quarter_stays_whole() -> None:
    result = quarter_contributions([1], [T0 + MINUTE], [T0 + 15 * MINUTE], [2.5], [Quality.GOOD])
    assert result == {(1, T0): (2.5, int(Quality.GOOD))}


def test_an_interval_ending_on_a_boundary_belongs_to_the_quarter_it_ends() -> None:
    # (T0 + 14 min, T0 + 15 min] is in the first quarter; (T0 + 15 min, T0 + 16 min] in the second.
    result = quarter_contributions(
        [1, 1], [T0 + 14 * MINUTE, T0 + 15 * MINUTE], [T0 + 15 * MINUTE, T0 + 16 * MINUTE], [1.0, 2.0], [0, 0]
    )
    assert result == {(1, T0): (1.0, 0), (1, T0 + QUARTER_MS): (2.0, 0)}


def test_an_hour_reading_is_spread_evenly_over_its_four_quarters_with_its_quality() -> None:
    result = quarter_contributions([7], [T0], [T0 + HOUR_MS], [4.0], [Quality.ESTIMATED])
    assert result == {(7, T0 + k * QUARTER_MS): (1.0, int(Quality.ESTIMATED)) for k in range(4)}


def test_a_late_correction_cancels_the_interval_it_replaces() -> None:
    # The old interval negated plus the two that replace it, as normalisation sends a late reading.
    result = quarter_contributions(
        [1, 1, 1],
        [T0, T0, T0 + 20 * MINUTE],
        [T0 + 40 * MINUTE, T0 + 20 * MINUTE, T0 + 40 * MINUTE],
        [-4.0, 3.0, 1.0],
        [Quality.GOOD, Quality.GOOD, Quality.GOOD],
    )
    by_quarter = {quarter: value for (_, quarter), (value, _) in result.items()}
    assert close(by_quarter[T0], -1.5 + 15 / 20 * 3.0)
    assert close(by_quarter[T0 + QUARTER_MS], -1.5 + 5 / 20 * 3.0 + 10 / 20 * 1.0)
    assert close(by_quarter[T0 + 2 * QUARTER_MS], -1.0 + 10 / 20 * 1.0)
    assert close(sum(by_quarter.values()), 0.0)


@st.composite
def interval_columns(draw: st.DrawFn) -> tuple[list[int], list[int], list[int], list[float], list[int]]:
    n = draw(st.integers(0, 30))
    points = draw(st.lists(st.integers(1, 4), min_size=n, max_size=n))
    starts = draw(st.lists(st.integers(T0, T0 + 30 * 24 * HOUR_MS), min_size=n, max_size=n))
    lengths = draw(st.lists(st.integers(1, 3 * 24 * HOUR_MS), min_size=n, max_size=n))
    energy = draw(st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=n, max_size=n))
    quality = draw(
        st.lists(st.sampled_from([int(q) for q in Quality if q != Quality.MISSING]), min_size=n, max_size=n)
    )
    return points, starts, [s + d for s, d in zip(starts, lengths, strict=True)], energy, quality


@PROPERTY_SETTINGS
@given(interval_columns())
def test_quarters_conserve_each_points_energy_and_keep_the_worst_quality(
    columns: tuple[list[int], list[int], list[int], list[float], list[int]],
) -> None:
    points, starts, ends, energy, quality = columns
    result = quarter_contributions(points, starts, ends, energy, quality)
    scale = max((abs(e) for e in energy), default=1.0) * max(1, len(energy))
    for point in set(points):
        own = math.fsum(e for p, e in zip(points, energy, strict=True) if p == point)
        got = math.fsum(value for (p, _), (value, _) in result.items() if p == point)
        assert close(got, own, scale)
    for (point, quarter), (_, code) in result.items():
        assert quarter % QUARTER_MS == 0
        # The quality is the worst of the intervals overlapping the quarter (start, end] by the same rule.
        overlapping = [
            q
            for p, s, e, q in zip(points, starts, ends, quality, strict=True)
            if p == point and s < quarter + QUARTER_MS and e > quarter
        ]
        assert code == max(overlapping)


@PROPERTY_SETTINGS
@given(interval_columns())
def test_quarters_add_up_to_the_hours_they_make(
    columns: tuple[list[int], list[int], list[int], list[float], list[int]],
) -> None:
    quarters = quarter_contributions(*columns)
    hours = hourly_contributions(*columns)
    folded: dict[tuple[int, int], list[float]] = {}
    for (point, quarter), (value, _) in quarters.items():
        folded.setdefault((point, quarter - quarter % HOUR_MS), []).append(value)
    scale = max((abs(e) for e in columns[3]), default=1.0) * max(1, len(columns[3]))
    assert folded.keys() == hours.keys()
    for key, values in folded.items():
        assert close(math.fsum(values), hours[key][0], scale)


def test_offline_totals_are_spread_evenly_over_the_quarters_of_their_period() -> None:
    spread = spread_periods([(T0, T0 + DAY_MS, 96.0)])
    assert spread == {T0 + k * QUARTER_MS: 1.0 for k in range(96)}


def test_overlapping_offline_periods_add_up_and_empty_ones_are_ignored() -> None:
    spread = spread_periods([(T0, T0 + HOUR_MS, 4.0), (T0 + 30 * MINUTE, T0 + HOUR_MS, 1.0), (T0, T0, 5.0)])
    assert spread == {T0: 1.0, T0 + QUARTER_MS: 1.0, T0 + 2 * QUARTER_MS: 1.5, T0 + 3 * QUARTER_MS: 1.5}


@PROPERTY_SETTINGS
@given(
    st.lists(
        st.tuples(st.integers(T0, T0 + 400 * DAY_MS), st.integers(1, 40 * DAY_MS), st.floats(0, 1e7)),
        max_size=5,
    )
)
def test_offline_spreading_conserves_every_total(periods: list[tuple[int, int, float]]) -> None:
    spread = spread_periods((start, start + length, value) for start, length, value in periods)
    total = math.fsum(value for _, _, value in periods)
    assert close(math.fsum(spread.values()), total, max(1.0, total))
    assert all(quarter % QUARTER_MS == 0 for quarter in spread)


def test_unknown_quality_codes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown quality"):
        quarter_contributions([1], [T0], [T0 + 1], [1.0], [42])

"""Cumulative readings → interval energy → hourly contributions."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proto_schemas.quality import Quality
from services.aggregation.hourly import HOUR_MS, hourly_contributions, split_interval
from services.normalisation.energy import (
    EnergyInterval,
    interval_energy,
    rollover_maximum,
    sort_and_dedupe,
)

MINUTE = 60_000
T0 = 1_774_742_400_000  # 2026-03-29T00:00:00Z, an hour boundary

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


def close(a: float, b: float, scale: float = 1.0) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9 * max(1.0, scale))


# --- interval_energy -------------------------------------------------------------------------------------


def test_first_reading_without_previous_only_sets_baseline() -> None:
    assert interval_energy(None, [(T0, 100.0)]) == []


def test_no_readings_give_no_intervals() -> None:
    assert interval_energy((T0, 1.0), []) == []


def test_consecutive_readings_give_differences_with_good_quality() -> None:
    readings = [(T0, 10.0), (T0 + 5 * MINUTE, 12.5), (T0 + 10 * MINUTE, 12.5)]
    assert interval_energy(None, readings) == [
        EnergyInterval(T0, T0 + 5 * MINUTE, 2.5, Quality.GOOD),
        EnergyInterval(T0 + 5 * MINUTE, T0 + 10 * MINUTE, 0.0, Quality.GOOD),
    ]


def test_previous_reading_continues_the_series_across_batches() -> None:
    intervals = interval_energy((T0, 10.0), [(T0 + MINUTE, 11.0)])
    assert intervals == [EnergyInterval(T0, T0 + MINUTE, 1.0, Quality.GOOD)]


def test_long_gap_is_counted_but_estimated() -> None:
    intervals = interval_energy((T0, 10.0), [(T0 + 16 * MINUTE, 30.0)])
    assert intervals == [EnergyInterval(T0, T0 + 16 * MINUTE, 20.0, Quality.ESTIMATED)]


def test_gap_of_exactly_max_gap_is_still_good() -> None:
    intervals = interval_energy((T0, 10.0), [(T0 + 15 * MINUTE, 30.0)])
    assert intervals[0].quality is Quality.GOOD


def test_max_gap_is_configurable() -> None:
    intervals = interval_energy((T0, 10.0), [(T0 + 2 * MINUTE, 11.0)], max_gap_ms=MINUTE)
    assert intervals[0].quality is Quality.ESTIMATED


def test_rollover_keeps_energy_across_wrap() -> None:
    intervals = interval_energy((T0, 65_530.0), [(T0 + MINUTE, 10.0)])
    assert intervals == [EnergyInterval(T0, T0 + MINUTE, 16.0, Quality.ROLLOVER)]


def test_decimal_register_rollover_uses_power_of_ten() -> None:
    intervals = interval_energy((T0, 99_999.5), [(T0 + MINUTE, 0.5)])
    assert intervals[0].quality is Quality.ROLLOVER
    assert intervals[0].energy == pytest.approx(1.0)


def test_32_bit_register_rollover() -> None:
    intervals = interval_energy((T0, float(2**32 - 100)), [(T0 + MINUTE, 50.0)])
    assert intervals[0].quality is Quality.ROLLOVER
    assert intervals[0].energy == pytest.approx(150.0)


def test_drop_far_from_any_register_top_is_a_reset_counted_from_zero() -> None:
    intervals = interval_energy((T0, 5_000.0), [(T0 + MINUTE, 3.0)])
    assert intervals == [EnergyInterval(T0, T0 + MINUTE, 3.0, Quality.RESET)]


def test_drop_to_a_value_far_from_zero_is_a_reset() -> None:
    # Near the top of 10**5 before, but not near zero after: a replacement meter, not a wrap.
    intervals = interval_energy((T0, 99_000.0), [(T0 + MINUTE, 50_000.0)])
    assert intervals == [EnergyInterval(T0, T0 + MINUTE, 50_000.0, Quality.RESET)]


def test_drop_after_long_gap_reports_the_worse_quality() -> None:
    reset = interval_energy((T0, 5_000.0), [(T0 + HOUR_MS, 3.0)])
    rollover = interval_energy((T0, 65_530.0), [(T0 + HOUR_MS, 10.0)])
    assert reset[0].quality is Quality.RESET
    assert rollover[0].quality is Quality.ROLLOVER


def test_series_continues_normally_after_a_reset() -> None:
    readings = [(T0 + MINUTE, 3.0), (T0 + 2 * MINUTE, 4.0)]
    intervals = interval_energy((T0, 5_000.0), readings)
    assert [(i.energy, i.quality) for i in intervals] == [(3.0, Quality.RESET), (1.0, Quality.GOOD)]


def test_rollover_maximum_prefers_the_smallest_plausible_register() -> None:
    assert rollover_maximum(9_950.0, 20.0) == 10**4
    assert rollover_maximum(65_000.0, 20.0) == 2**16
    assert rollover_maximum(99_950.0, 20.0) == 10**5
    assert rollover_maximum(50_000.0, 20.0) is None


@pytest.mark.parametrize(
    "previous, readings",
    [
        ((T0, 1.0), [(T0, 2.0)]),
        ((T0, 1.0), [(T0 - MINUTE, 2.0)]),
        (None, [(T0 + MINUTE, 1.0), (T0, 2.0)]),
        (None, [(T0, 1.0), (T0, 2.0)]),
    ],
)
def test_unordered_or_duplicate_timestamps_are_rejected(
    previous: tuple[int, float] | None, readings: list[tuple[int, float]]
) -> None:
    with pytest.raises(ValueError, match="ascending"):
        interval_energy(previous, readings)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        interval_energy((T0, 1.0), [(T0 + MINUTE, bad)])
    with pytest.raises(ValueError, match="finite"):
        interval_energy((T0, bad), [(T0 + MINUTE, 1.0)])


def test_non_positive_max_gap_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_gap_ms"):
        interval_energy(None, [], max_gap_ms=0)


# --- sort_and_dedupe -------------------------------------------------------------------------------------


def test_sort_and_dedupe_orders_by_timestamp_and_keeps_first_duplicate() -> None:
    raw = [(T0 + 2, 3.0), (T0, 1.0), (T0 + 2, 99.0), (T0 + 1, 2.0), (T0, 42.0)]
    assert sort_and_dedupe(raw) == [(T0, 1.0), (T0 + 1, 2.0), (T0 + 2, 3.0)]


def test_sort_and_dedupe_of_nothing_is_nothing() -> None:
    assert sort_and_dedupe([]) == []


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0, 1e6)), max_size=60))
def test_sort_and_dedupe_output_is_accepted_by_interval_energy(raw: list[tuple[int, float]]) -> None:
    cleaned = sort_and_dedupe(raw)
    assert [ts for ts, _ in cleaned] == sorted({ts for ts, _ in raw})
    first_seen: dict[int, float] = {}
    for ts, value in raw:
        first_seen.setdefault(ts, value)
    assert cleaned == sorted(first_seen.items())
    assert len(interval_energy(None, cleaned)) == max(0, len(cleaned) - 1)


# --- split_interval --------------------------------------------------------------------------------------


def test_interval_inside_one_hour_goes_to_that_hour() -> None:
    assert split_interval(T0 + MINUTE, T0 + 2 * MINUTE, 5.0) == [(T0, 5.0)]


def test_reading_on_the_hour_closes_the_previous_hour() -> None:
    # 10:59 → 11:00 belongs to the 10:00 bucket.
    ten, eleven = T0 + 10 * HOUR_MS, T0 + 11 * HOUR_MS
    assert split_interval(eleven - MINUTE, eleven, 1.0) == [(ten, 1.0)]


def test_interval_starting_on_the_hour_belongs_to_the_hour_it_starts() -> None:
    eleven = T0 + 11 * HOUR_MS
    assert split_interval(eleven, eleven + MINUTE, 1.0) == [(eleven, 1.0)]


def test_split_is_proportional_to_time() -> None:
    parts = split_interval(T0 + 30 * MINUTE, T0 + 2 * HOUR_MS + 30 * MINUTE, 8.0)
    assert [bucket for bucket, _ in parts] == [T0, T0 + HOUR_MS, T0 + 2 * HOUR_MS]
    assert [part for _, part in parts] == pytest.approx([2.0, 4.0, 2.0])


def test_split_into_whole_hours_ending_on_boundary() -> None:
    parts = split_interval(T0, T0 + 2 * HOUR_MS, 3.0)
    assert parts == [(T0, 1.5), (T0 + HOUR_MS, 1.5)]


def test_split_with_custom_bucket_size() -> None:
    quarter = 15 * MINUTE
    parts = split_interval(T0, T0 + 30 * MINUTE, 2.0, bucket_ms=quarter)
    assert parts == [(T0, 1.0), (T0 + quarter, 1.0)]


def test_split_before_the_epoch_uses_floor_buckets() -> None:
    assert split_interval(-HOUR_MS - MINUTE, -HOUR_MS + MINUTE, 2.0) == [(-2 * HOUR_MS, 1.0), (-HOUR_MS, 1.0)]


@pytest.mark.parametrize("start, end", [(T0, T0), (T0 + 1, T0)])
def test_split_rejects_empty_or_reversed_interval(start: int, end: int) -> None:
    with pytest.raises(ValueError):
        split_interval(start, end, 1.0)


def test_split_rejects_non_positive_bucket() -> None:
    with pytest.raises(ValueError):
        split_interval(T0, T0 + 1, 1.0, bucket_ms=0)


@PROPERTY_SETTINGS
@given(
    start=st.integers(-10 * HOUR_MS, 10**13),
    length=st.integers(1, 30 * 24 * HOUR_MS),
    energy=st.floats(-1e9, 1e9, allow_nan=False),
)
def test_split_conserves_energy(start: int, length: int, energy: float) -> None:
    end = start + length
    parts = split_interval(start, end, energy)
    assert close(math.fsum(part for _, part in parts), energy, abs(energy))
    buckets = [bucket for bucket, _ in parts]
    assert buckets == list(range(buckets[0], buckets[-1] + 1, HOUR_MS))
    assert buckets[0] <= start < buckets[0] + HOUR_MS
    assert buckets[-1] < end <= buckets[-1] + HOUR_MS
    for bucket, part in parts[:-1]:
        overlap = min(end, bucket + HOUR_MS) - max(start, bucket)
        assert overlap > 0
        assert close(part, energy * overlap / length, abs(energy))


# --- hourly_contributions --------------------------------------------------------------------------------


def test_hourly_contributions_sum_per_point_and_hour_with_worst_quality() -> None:
    result = hourly_contributions(
        point_ids=[1, 1, 2, 1],
        start_ms=[T0, T0 + 30 * MINUTE, T0, T0 + 50 * MINUTE],
        end_ms=[T0 + 30 * MINUTE, T0 + 50 * MINUTE, T0 + 10 * MINUTE, T0 + 70 * MINUTE],
        energy=[1.0, 2.0, 5.0, 2.0],
        quality=[Quality.GOOD, Quality.GOOD, Quality.RESET, Quality.ESTIMATED],
    )
    assert result.keys() == {(1, T0), (1, T0 + HOUR_MS), (2, T0)}
    assert result[(1, T0)] == (pytest.approx(4.0), int(Quality.ESTIMATED))
    assert result[(1, T0 + HOUR_MS)] == (pytest.approx(1.0), int(Quality.ESTIMATED))
    assert result[(2, T0)] == (5.0, int(Quality.RESET))


def test_hourly_contributions_of_nothing_is_empty() -> None:
    assert hourly_contributions([], [], [], [], []) == {}


def test_hourly_contributions_reject_columns_of_different_length() -> None:
    with pytest.raises(ValueError, match="equal length"):
        hourly_contributions([1], [T0], [T0 + 1], [1.0, 2.0], [0])


def test_hourly_contributions_reject_unknown_quality_codes() -> None:
    with pytest.raises(ValueError):
        hourly_contributions([1], [T0], [T0 + 1], [1.0], [99])


# --- properties over whole series ------------------------------------------------------------------------


@st.composite
def monotone_series(draw: st.DrawFn) -> list[tuple[int, float]]:
    start = draw(st.integers(0, 10**13))
    steps = draw(st.lists(st.integers(1, 3 * HOUR_MS), min_size=1, max_size=40))
    increments = draw(st.lists(st.floats(0, 1e4), min_size=len(steps), max_size=len(steps)))
    value = draw(st.floats(0, 1e6))
    series = [(start, value)]
    for step, increment in zip(steps, increments, strict=True):
        start += step
        value += increment
        series.append((start, value))
    return series


@PROPERTY_SETTINGS
@given(monotone_series())
def test_monotone_series_energy_equals_last_minus_first(series: list[tuple[int, float]]) -> None:
    intervals = interval_energy(None, series)
    assert len(intervals) == len(series) - 1
    assert all(i.quality in (Quality.GOOD, Quality.ESTIMATED) for i in intervals)
    total = math.fsum(i.energy for i in intervals)
    assert close(total, series[-1][1] - series[0][1], series[-1][1])
    # Intervals tile the time range without gaps or overlaps.
    assert [(i.start_ms, i.end_ms) for i in intervals] == list(
        zip([ts for ts, _ in series[:-1]], [ts for ts, _ in series[1:]], strict=True)
    )


@PROPERTY_SETTINGS
@given(
    st.lists(st.tuples(st.integers(0, 10**7), st.floats(0, 2.0**33)), min_size=2, max_size=40),
)
def test_non_negative_registers_never_give_negative_energy(raw: list[tuple[int, float]]) -> None:
    for interval in interval_energy(None, sort_and_dedupe(raw)):
        assert interval.energy >= 0


@PROPERTY_SETTINGS
@given(st.lists(monotone_series(), min_size=1, max_size=4))
def test_hourly_contributions_conserve_interval_energy(all_series: list[list[tuple[int, float]]]) -> None:
    point_ids: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    energies: list[float] = []
    qualities: list[int] = []
    for point_id, series in enumerate(all_series):
        for interval in interval_energy(None, series):
            point_ids.append(point_id)
            starts.append(interval.start_ms)
            ends.append(interval.end_ms)
            energies.append(interval.energy)
            qualities.append(int(interval.quality))
    result = hourly_contributions(point_ids, starts, ends, energies, qualities)
    scale = max((abs(e) for e in energies), default=1.0) * max(1, len(energies))
    assert close(math.fsum(value for value, _ in result.values()), math.fsum(energies), scale)
    for point_id in set(point_ids):
        own = math.fsum(e for p, e in zip(point_ids, energies, strict=True) if p == point_id)
        got = math.fsum(value for (p, _), (value, _) in result.items() if p == point_id)
        assert close(got, own, scale)
    for (_, hour), (_, code) in result.items():
        assert hour % HOUR_MS == 0
        assert code in {int(q) for q in Quality}

"""Cumulative readings → interval energy → hourly contributions."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proto_schemas.quality import Quality
from services.aggregation.hourly import HOUR_MS, hourly_contributions, split_interval
from services.normalisation.energy import (
    Changes,
    EnergyInterval,
    Register,
    interval_energy,
    late_bounds,
    point_changes,
    register_from_address,
    rollover_maximum,
    select_window,
    series_intervals,
    settle,
    sort_and_dedupe,
    spike_reason,
    step_energy,
    wrap_energy,
)
from tests.unit.normalisation_sim import SimulatedPoint

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


def test_drop_to_a_value_far_from_zero_is_a_replaced_meter_counted_as_zero() -> None:
    # Near the top of 10**5 before, but not near zero after: a replacement meter, not a wrap nor a reset.
    intervals = interval_energy((T0, 99_000.0), [(T0 + MINUTE, 50_000.0)])
    assert intervals == [EnergyInterval(T0, T0 + MINUTE, 0.0, Quality.RESET)]


def test_a_register_going_back_a_little_counts_zero_not_its_whole_value() -> None:
    intervals = interval_energy((T0, 1_000.0), [(T0 + MINUTE, 999.5), (T0 + 2 * MINUTE, 1_001.0)])
    assert intervals == [
        EnergyInterval(T0, T0 + MINUTE, 0.0, Quality.RESET),
        EnergyInterval(T0 + MINUTE, T0 + 2 * MINUTE, 1.5, Quality.GOOD),
    ]


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


# --- registers from the point's address ------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, ratio, expected",
    [
        ({"data_format": "uint16"}, 1.0, Register(0.0, 65_536.0)),
        ({"data_format": "uint32"}, 1.0, Register(0.0, 4_294_967_296.0)),
        ({"data_format": "uint64"}, 1.0, Register(0.0, 2.0**64)),
        ({"data_format": "int32"}, 1.0, Register(-2_147_483_648.0, 2_147_483_648.0)),
        ({"data_format": "int16"}, 1.0, Register(-32_768.0, 32_768.0)),
        ({"format": "UINT16"}, 1.0, Register(0.0, 65_536.0)),  # the registry's alias, any case
        ({"data_format": "uint16"}, 0.5, Register(0.0, 32_768.0)),  # in the point's unit
        ({"data_format": "uint32", "max_value": 100_000}, 0.1, Register(0.0, 10_000.0)),  # max_value wins
        ({"max_value": 99_999.9 + 0.1}, 1.0, Register(0.0, 100_000.0)),
    ],
)
def test_register_comes_from_the_address(
    address: dict[str, object], ratio: float, expected: Register
) -> None:
    register = register_from_address(address, ratio)
    assert register is not None
    assert (register.bottom, register.top) == pytest.approx((expected.bottom, expected.top), rel=1e-15)


@pytest.mark.parametrize(
    "address, ratio",
    [
        (None, 1.0),
        ({}, 1.0),
        ({"data_format": "float32"}, 1.0),  # floats do not wrap
        ({"data_format": "double"}, 1.0),
        ({"data_format": 16}, 1.0),
        ({"max_value": 0}, 1.0),
        ({"max_value": -5}, 1.0),
        ({"max_value": True}, 1.0),
        ({"max_value": "65536"}, 1.0),
        ({"max_value": math.inf}, 1.0),
        ({"data_format": "uint16"}, 0.0),
        ({"data_format": "uint16"}, -1.0),
        ({"data_format": "uint16"}, math.nan),
    ],
)
def test_register_unknown_when_the_address_does_not_say(
    address: dict[str, object] | None, ratio: float
) -> None:
    assert register_from_address(address, ratio) is None


def test_a_declared_register_is_the_only_one_considered() -> None:
    uint32 = Register(0.0, 2.0**32)
    # The guess would take 10**5 for this drop; a declared uint32 does not wrap there: a reset to zero.
    assert wrap_energy(99_999.5, 0.5) == pytest.approx(1.0)
    assert wrap_energy(99_999.5, 0.5, uint32) is None
    assert step_energy(99_999.5, 0.5, uint32) == (0.5, Quality.RESET)  # 0.5 <= 10 % of 99 999.5: a reset
    # And a declared register wraps where no guess would: uint16 read with a ratio of 0.5 tops at 32 768.
    half = register_from_address({"data_format": "uint16"}, 0.5)
    assert step_energy(32_760.0, 4.0) == (4.0, Quality.RESET)  # guessed: a reset, 8 units lost
    assert step_energy(32_760.0, 4.0, half) == (12.0, Quality.ROLLOVER)


def test_signed_register_wraps_from_its_top_to_its_bottom() -> None:
    int32 = Register(-(2.0**31), 2.0**31)
    assert step_energy(2_147_483_600.0, -2_147_483_548.0, int32) == (148.0, Quality.ROLLOVER)
    assert wrap_energy(1_000.0, -5.0, int32) is None


# --- reset and replaced meter ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "previous, current, expected",
    [
        (10.0, 12.5, (2.5, Quality.GOOD)),
        (10.0, 10.0, (0.0, Quality.GOOD)),
        (5_000.0, 0.0, (0.0, Quality.RESET)),  # reset to exactly zero
        (5_000.0, 500.0, (500.0, Quality.RESET)),  # 10 % of the previous value: still near zero
        (5_000.0, 500.5, (0.0, Quality.RESET)),  # just above: a replaced meter
        (5_000.0, -3.0, (0.0, Quality.RESET)),  # a negative register is no reset to zero
        (-10.0, -20.0, (0.0, Quality.RESET)),
    ],
)
def test_step_energy(previous: float, current: float, expected: tuple[float, Quality]) -> None:
    assert step_energy(previous, current) == expected


@PROPERTY_SETTINGS
@given(st.floats(-1e12, 1e12), st.floats(-1e12, 1e12))
def test_step_energy_is_never_negative(previous: float, current: float) -> None:
    energy, quality = step_energy(previous, current)
    assert energy >= 0
    if current >= previous:
        assert (energy, quality) == (current - previous, Quality.GOOD)
    else:
        assert quality in (Quality.RESET, Quality.ROLLOVER)


# --- series with reading qualities -----------------------------------------------------------------------


def test_series_intervals_take_the_worse_quality_of_their_readings() -> None:
    readings = [(T0 + MINUTE, 11.0, int(Quality.SUSPECT)), (T0 + 2 * MINUTE, 12.0, int(Quality.GOOD))]
    assert series_intervals((T0, 10.0, int(Quality.GOOD)), readings) == [
        EnergyInterval(T0, T0 + MINUTE, 1.0, Quality.SUSPECT),
        EnergyInterval(T0 + MINUTE, T0 + 2 * MINUTE, 1.0, Quality.SUSPECT),
    ]


# --- late readings ---------------------------------------------------------------------------------------


def r(minutes: int, value: float) -> tuple[int, float, int]:
    return (T0 + minutes * MINUTE, value, int(Quality.GOOD))


def test_late_bounds() -> None:
    assert late_bounds(None, [r(1, 1.0)]) is None
    assert late_bounds(r(10, 1.0), [r(11, 1.0), r(12, 1.0)]) is None
    assert late_bounds(r(10, 1.0), [r(3, 1.0), r(5, 1.0), r(12, 1.0)]) == (T0 + 3 * MINUTE, T0 + 5 * MINUTE)


def test_select_window_reaches_one_reading_beyond_the_late_ones_each_side() -> None:
    stored = [r(m, float(m)) for m in (0, 10, 13, 15, 20, 30)]
    assert select_window(stored, T0 + 13 * MINUTE, T0 + 15 * MINUTE) == [
        r(10, 10.0),
        r(13, 13.0),
        r(15, 15.0),
        r(20, 20.0),
    ]
    assert select_window(stored, T0, T0) == [r(0, 0.0), r(10, 10.0)]  # nothing older: starts at the late one
    assert select_window(stored, T0 + 30 * MINUTE, T0 + 30 * MINUTE) == [r(20, 20.0), r(30, 30.0)]


def test_in_order_readings_only_add() -> None:
    changes = point_changes(r(0, 10.0), [r(5, 11.0), r(10, 13.0)])
    assert changes == Changes(
        [],
        [
            EnergyInterval(T0, T0 + 5 * MINUTE, 1.0, Quality.GOOD),
            EnergyInterval(T0 + 5 * MINUTE, T0 + 10 * MINUTE, 2.0, Quality.GOOD),
        ],
    )


def test_a_late_reading_splits_only_the_interval_it_falls_in() -> None:
    # Stored 0, 10, 20, 30 minutes; a reading at 15 arrives after the one at 30, with one at 40.
    window = [r(10, 20.0), r(15, 21.0), r(20, 30.0)]
    changes = point_changes(r(30, 40.0), [r(15, 21.0), r(40, 41.0)], window)
    assert changes.removed == [EnergyInterval(T0 + 10 * MINUTE, T0 + 20 * MINUTE, 10.0, Quality.GOOD)]
    assert changes.added == [
        EnergyInterval(T0 + 10 * MINUTE, T0 + 15 * MINUTE, 1.0, Quality.GOOD),
        EnergyInterval(T0 + 15 * MINUTE, T0 + 20 * MINUTE, 9.0, Quality.GOOD),
        EnergyInterval(T0 + 30 * MINUTE, T0 + 40 * MINUTE, 1.0, Quality.GOOD),
    ]


def test_a_reading_older_than_all_others_adds_an_interval_and_removes_none() -> None:
    changes = point_changes(r(30, 40.0), [r(0, 5.0)], [r(0, 5.0), r(10, 20.0)])
    assert changes == Changes([], [EnergyInterval(T0, T0 + 10 * MINUTE, 15.0, Quality.GOOD)])


# --- spikes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "minutes, energy, limit, spike",
    [
        (60, 50.0, 50.0, False),  # exactly the limit
        (60, 50.5, 50.0, True),
        (15, 50.0, 50.0, False),  # a short interval may carry an hour's worth (coarse registers)
        (15, 50.5, 50.0, True),
        (180, 150.0, 50.0, False),  # a long one the limit for each hour
        (180, 150.5, 50.0, True),
        (60, 1e9, None, False),  # no limit: no spike
        (60, 1e9, 0.0, False),  # a limit of 0 (or below) bounds nothing
    ],
)
def test_spike_reason(minutes: int, energy: float, limit: float | None, spike: bool) -> None:
    interval = EnergyInterval(T0, T0 + minutes * MINUTE, energy, Quality.GOOD)
    reason = spike_reason(interval, limit)
    assert (reason is not None) is spike
    if reason:
        assert f"{energy:g}" in reason and f"at most {limit:g} per hour" in reason


def test_settle_holds_spikes_as_zero_suspect_and_withdraws_what_was_sent() -> None:
    a = EnergyInterval(T0, T0 + HOUR_MS, 10.0, Quality.GOOD)
    b = EnergyInterval(T0 + HOUR_MS, T0 + 2 * HOUR_MS, 900.0, Quality.GOOD)
    c = EnergyInterval(T0 + 2 * HOUR_MS, T0 + 3 * HOUR_MS, 700.0, Quality.ESTIMATED)
    d = EnergyInterval(T0 + 3 * HOUR_MS, T0 + 4 * HOUR_MS, 800.0, Quality.GOOD)
    outcome = settle(Changes([a, c, d], [b]), {c.key: (700.0, "held"), d.key: (800.0, "confirmed")}, 100.0)
    assert outcome.send == [
        EnergyInterval(T0, T0 + HOUR_MS, -10.0, Quality.GOOD),  # sent as is: negated
        # c was held (sent as 0): nothing to cancel
        EnergyInterval(T0 + 3 * HOUR_MS, T0 + 4 * HOUR_MS, -800.0, Quality.MANUAL),  # confirmed: withdrawn
        EnergyInterval(T0 + HOUR_MS, T0 + 2 * HOUR_MS, 0.0, Quality.SUSPECT),  # b held
    ]
    assert [(iv, reason.startswith("energy 900 over 1 h")) for iv, reason in outcome.hold] == [(b, True)]


# --- any arrival order (the consumer's algorithm, simulated) ---------------------------------------------


@st.composite
def arrivals(draw: st.DrawFn, series: list[tuple[int, float]]) -> list[list[tuple[int, float]]]:
    """The readings of a series in some order, cut into batches, some batches delivered again."""
    order = draw(st.permutations(series))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(order) - 1)), max_size=len(order))))
    batches = [order[i:j] for i, j in zip([0, *cuts], [*cuts, len(order)], strict=True) if order[i:j]]
    replays = draw(st.lists(st.sampled_from(batches), max_size=3))
    positions = draw(st.lists(st.integers(0, len(batches)), min_size=len(replays), max_size=len(replays)))
    for replay, position in zip(replays, positions, strict=True):
        batches.insert(position, replay)
    return batches


@PROPERTY_SETTINGS
@given(st.data())
def test_any_arrival_order_sends_the_energy_of_the_series(data: st.DataObject) -> None:
    series = data.draw(monotone_series())
    point = SimulatedPoint()
    for batch in data.draw(arrivals(series)):
        point.deliver(batch)
    # Withdrawals cancel exactly: what is left is the series' own intervals, whatever the order.
    in_order = {
        iv.key: iv.energy
        for iv in series_intervals(None, [(ts, v, 0) for ts, v in series], max_gap_ms=point.max_gap_ms)
    }
    assert point.net() == {key: energy for key, energy in in_order.items() if energy != 0.0}
    total = math.fsum(iv.energy for iv in point.sent)
    assert close(total, series[-1][1] - series[0][1], series[-1][1])


@PROPERTY_SETTINGS
@given(st.data())
def test_any_arrival_order_sends_the_same_intervals_for_registers_that_drop(data: st.DataObject) -> None:
    # Resets, rollovers and replaced meters included: the sum is then whatever the series' own intervals say.
    times = data.draw(st.lists(st.integers(0, 10 * HOUR_MS), min_size=2, max_size=30, unique=True))
    values = data.draw(
        st.lists(
            st.sampled_from([0.0, 1.0, 7.5, 500.0, 65_530.0, 65_535.0, 99_999.9]),
            min_size=len(times),
            max_size=len(times),
        )
    )
    series = sorted(zip(times, values, strict=True))
    point = SimulatedPoint()
    for batch in data.draw(arrivals(series)):
        point.deliver(batch)
    in_order = series_intervals(None, [(ts, v, 0) for ts, v in series], max_gap_ms=point.max_gap_ms)
    assert point.net() == {iv.key: iv.energy for iv in in_order if iv.energy != 0.0}


@PROPERTY_SETTINGS
@given(st.data())
def test_held_spikes_are_never_lost_in_any_arrival_order(data: st.DataObject) -> None:
    series = data.draw(monotone_series())
    point = SimulatedPoint(max_per_hour=data.draw(st.floats(1.0, 1e4)))
    for batch in data.draw(arrivals(series)):
        point.deliver(batch)
        if data.draw(st.booleans()):
            point.confirm_all()  # someone confirms what is held so far
    expected = series[-1][1] - series[0][1]
    # Sent plus held adds up to the series' energy at every moment; once all is confirmed, sent alone does.
    assert close(math.fsum(iv.energy for iv in point.sent) + point.pending(), expected, series[-1][1])
    point.confirm_all()
    assert close(math.fsum(iv.energy for iv in point.sent), expected, series[-1][1])
    assert all(iv.energy == 0.0 for iv in point.sent if iv.quality is Quality.SUSPECT)

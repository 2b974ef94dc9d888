"""Local-civil-time report buckets over UTC hourly energy."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proto_schemas.quality import Quality
from services.reporting.periods import (
    PERIOD_TYPES,
    Bucket,
    PeriodType,
    aggregate,
    bucket_starts,
    format_local,
    resolve_local,
)

AMS = ZoneInfo("Europe/Amsterdam")
HOUR = timedelta(hours=1)

ZONES = [
    "UTC",
    "Europe/Amsterdam",
    "America/New_York",
    "America/Santiago",  # springs forward at midnight: local midnight does not exist that day
    "America/St_Johns",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",  # 30-minute DST shift
    "Pacific/Chatham",
    "Pacific/Apia",
    "Africa/Casablanca",
]

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


def utc_hours(start: datetime, end: datetime) -> list[datetime]:
    """UTC hour starts covering [start, end), widened to whole hours."""
    hour = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    hours = []
    while hour < end:
        hours.append(hour)
        hour += HOUR
    return hours


def day_range(tz: ZoneInfo, first: date, days: int) -> tuple[datetime, datetime]:
    start = datetime(first.year, first.month, first.day)
    return start, start + timedelta(days=days)


# --- bucket_starts ---------------------------------------------------------------------------------------


def test_spring_forward_day_has_23_hours() -> None:
    starts = bucket_starts(datetime(2026, 3, 29), datetime(2026, 3, 30), AMS, "hourly")
    assert len(starts) == 23
    assert [format_local(s) for s in starts[:3]] == [
        "2026-03-29T00:00:00+01:00",
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",
    ]
    # Same-zone datetime subtraction uses wall time, so measure elapsed time in UTC.
    instants = [s.astimezone(UTC) for s in starts]
    assert all(b - a == HOUR for a, b in pairwise(instants))


def test_fall_back_day_has_25_hours() -> None:
    starts = bucket_starts(datetime(2026, 10, 25), datetime(2026, 10, 26), AMS, "hourly")
    assert len(starts) == 25
    labels = [format_local(s) for s in starts]
    assert labels[2:4] == ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00"]
    assert labels[-1] == "2026-10-25T23:00:00+01:00"
    assert len({s.astimezone(UTC) for s in starts}) == 25


def test_daily_buckets_start_at_local_midnight_across_dst() -> None:
    starts = bucket_starts(datetime(2026, 3, 28), datetime(2026, 3, 31), AMS, "daily")
    assert [format_local(s) for s in starts] == [
        "2026-03-28T00:00:00+01:00",
        "2026-03-29T00:00:00+01:00",
        "2026-03-30T00:00:00+02:00",
    ]


def test_month_buckets_follow_local_midnight() -> None:
    starts = bucket_starts(datetime(2026, 1, 1), datetime(2027, 1, 1), AMS, "monthly")
    assert len(starts) == 12
    assert all(s.day == 1 and (s.hour, s.minute) == (0, 0) for s in starts)
    assert format_local(starts[2]) == "2026-03-01T00:00:00+01:00"
    assert format_local(starts[3]) == "2026-04-01T00:00:00+02:00"
    assert format_local(starts[11]) == "2026-12-01T00:00:00+01:00"


def test_weekly_buckets_start_on_monday_local_midnight() -> None:
    # 2026-03-25 is a Wednesday; the week containing it starts on Monday 2026-03-23.
    starts = bucket_starts(datetime(2026, 3, 25), datetime(2026, 4, 7), AMS, "weekly")
    assert [format_local(s) for s in starts] == [
        "2026-03-23T00:00:00+01:00",
        "2026-03-30T00:00:00+02:00",
        "2026-04-06T00:00:00+02:00",
    ]


def test_yearly_buckets_start_on_january_first() -> None:
    starts = bucket_starts(datetime(2025, 6, 1), datetime(2027, 1, 1), AMS, "yearly")
    assert [format_local(s) for s in starts] == ["2025-01-01T00:00:00+01:00", "2026-01-01T00:00:00+01:00"]


def test_first_bucket_is_the_one_containing_the_start() -> None:
    starts = bucket_starts(datetime(2026, 5, 10, 15, 30), datetime(2026, 5, 11, 0, 1), AMS, "daily")
    assert [s.date() for s in starts] == [date(2026, 5, 10), date(2026, 5, 11)]
    hourly = bucket_starts(datetime(2026, 5, 10, 15, 30), datetime(2026, 5, 10, 17, 0), AMS, "hourly")
    assert [s.hour for s in hourly] == [15, 16]


def test_end_is_exclusive() -> None:
    starts = bucket_starts(datetime(2026, 5, 1), datetime(2026, 6, 1), AMS, "monthly")
    assert len(starts) == 1


def test_empty_range_has_no_buckets() -> None:
    assert bucket_starts(datetime(2026, 5, 1), datetime(2026, 5, 1), AMS, "daily") == []


def test_range_inside_a_dst_gap_is_empty() -> None:
    assert bucket_starts(datetime(2026, 3, 29, 2, 10), datetime(2026, 3, 29, 2, 50), AMS, "hourly") == []


def test_reversed_range_is_rejected() -> None:
    with pytest.raises(ValueError):
        bucket_starts(datetime(2026, 5, 2), datetime(2026, 5, 1), AMS, "daily")


def test_aware_bounds_are_rejected() -> None:
    with pytest.raises(ValueError):
        bucket_starts(datetime(2026, 5, 1, tzinfo=AMS), datetime(2026, 5, 2), AMS, "daily")


def test_unknown_period_is_rejected() -> None:
    with pytest.raises(ValueError, match="period"):
        bucket_starts(datetime(2026, 5, 1), datetime(2026, 5, 2), AMS, "fortnightly")  # type: ignore[arg-type]


def test_day_that_does_not_exist_has_no_bucket() -> None:
    # Samoa skipped 2011-12-30 when it moved across the date line.
    starts = bucket_starts(datetime(2011, 12, 29), datetime(2012, 1, 1), ZoneInfo("Pacific/Apia"), "daily")
    assert [format_local(s) for s in starts] == ["2011-12-29T00:00:00-10:00", "2011-12-31T00:00:00+14:00"]


def test_day_whose_midnight_does_not_exist_starts_when_clocks_jump() -> None:
    # Santiago springs forward at 24:00 → 01:00 on the night of 2025-09-06.
    tz = ZoneInfo("America/Santiago")
    starts = bucket_starts(datetime(2025, 9, 6), datetime(2025, 9, 9), tz, "daily")
    assert [format_local(s) for s in starts] == [
        "2025-09-06T00:00:00-04:00",
        "2025-09-07T01:00:00-03:00",
        "2025-09-08T00:00:00-03:00",
    ]


# --- resolve_local ---------------------------------------------------------------------------------------


def test_ambiguous_time_resolves_to_first_occurrence() -> None:
    assert resolve_local(datetime(2026, 10, 25, 2, 30), AMS) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


def test_nonexistent_time_resolves_to_the_moment_clocks_jump() -> None:
    jump = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert resolve_local(datetime(2026, 3, 29, 2, 0), AMS) == jump
    assert resolve_local(datetime(2026, 3, 29, 2, 59, 59, 999_999), AMS) == jump


def test_existing_time_resolves_exactly() -> None:
    assert resolve_local(datetime(2026, 7, 1, 12, 0, 0, 500), AMS) == datetime(
        2026, 7, 1, 10, 0, 0, 500, tzinfo=UTC
    )


@PROPERTY_SETTINGS
@given(
    zone=st.sampled_from(ZONES),
    a=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2035, 1, 1)),
    delta=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=3)),
)
def test_resolution_is_monotonic_and_round_trips_existing_times(
    zone: str, a: datetime, delta: timedelta
) -> None:
    tz = ZoneInfo(zone)
    ra, rb = resolve_local(a, tz), resolve_local(a + delta, tz)
    assert ra <= rb
    wall = ra.astimezone(tz).replace(tzinfo=None)
    assert wall >= a  # never earlier than asked for
    if wall != a:  # only inside a gap: then nothing before `ra` shows a wall time >= a
        assert (ra - timedelta(seconds=1)).astimezone(tz).replace(tzinfo=None) < a


# --- aggregate -------------------------------------------------------------------------------------------


def test_spring_forward_day_sums_23_hours() -> None:
    start, end = day_range(AMS, date(2026, 3, 29), 1)
    hours = utc_hours(datetime(2026, 3, 28, 20, tzinfo=UTC), datetime(2026, 3, 30, 4, tzinfo=UTC))
    buckets = aggregate(((h, 1.0, 0) for h in hours), start, end, AMS, "daily")
    assert buckets == [
        Bucket(start=datetime(2026, 3, 29, tzinfo=AMS), value=23.0, quality=Quality.GOOD, hours=23)
    ]


def test_fall_back_day_sums_25_hours() -> None:
    start, end = day_range(AMS, date(2026, 10, 25), 1)
    hours = utc_hours(datetime(2026, 10, 24, 20, tzinfo=UTC), datetime(2026, 10, 26, 4, tzinfo=UTC))
    buckets = aggregate(((h, 1.0, 0) for h in hours), start, end, AMS, "daily")
    assert [(b.value, b.hours) for b in buckets] == [(25.0, 25)]


def test_fall_back_hourly_report_keeps_both_repeated_hours() -> None:
    start, end = day_range(AMS, date(2026, 10, 25), 1)
    hours = utc_hours(datetime(2026, 10, 24, 22, tzinfo=UTC), datetime(2026, 10, 25, 23, tzinfo=UTC))
    buckets = aggregate(((h, float(i), 0) for i, h in enumerate(hours)), start, end, AMS, "hourly")
    assert len(buckets) == 25
    assert [b.value for b in buckets] == [float(i) for i in range(25)]
    assert [format_local(b.start) for b in buckets[2:4]] == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
    ]


def test_empty_buckets_are_missing_with_zero_value() -> None:
    start, end = day_range(AMS, date(2026, 5, 1), 3)
    only = datetime(2026, 5, 2, 10, tzinfo=UTC)
    buckets = aggregate([(only, 4.0, int(Quality.GOOD))], start, end, AMS, "daily")
    assert [(b.value, b.quality, b.hours) for b in buckets] == [
        (0.0, Quality.MISSING, 0),
        (4.0, Quality.GOOD, 1),
        (0.0, Quality.MISSING, 0),
    ]


def test_bucket_quality_is_the_worst_input_quality() -> None:
    start, end = day_range(AMS, date(2026, 5, 1), 1)
    rows = [
        (datetime(2026, 5, 1, 1, tzinfo=UTC), 1.0, int(Quality.GOOD)),
        (datetime(2026, 5, 1, 2, tzinfo=UTC), 1.0, int(Quality.ESTIMATED)),
        (datetime(2026, 5, 1, 3, tzinfo=UTC), 1.0, int(Quality.MANUAL)),
    ]
    (bucket,) = aggregate(rows, start, end, AMS, "daily")
    assert bucket.quality is Quality.ESTIMATED
    assert bucket.value == 3.0


def test_inputs_outside_the_range_are_ignored() -> None:
    start, end = datetime(2026, 5, 1, 12), datetime(2026, 5, 2)
    rows = [
        (datetime(2026, 5, 1, 9, tzinfo=UTC), 100.0, 0),  # 11:00 local: before start
        (datetime(2026, 5, 1, 10, tzinfo=UTC), 1.0, 0),  # 12:00 local: first included hour
        (datetime(2026, 5, 1, 21, tzinfo=UTC), 2.0, 0),  # 23:00 local: last included hour
        (datetime(2026, 5, 1, 22, tzinfo=UTC), 100.0, 0),  # midnight local: end is exclusive
    ]
    (bucket,) = aggregate(rows, start, end, AMS, "daily")
    assert format_local(bucket.start) == "2026-05-01T00:00:00+02:00"
    assert (bucket.value, bucket.hours) == (3.0, 2)


def test_inputs_in_any_zone_are_compared_as_instants() -> None:
    start, end = day_range(AMS, date(2026, 10, 25), 1)
    second_two_oclock = datetime(2026, 10, 25, 2, fold=1, tzinfo=AMS)  # 01:00 UTC
    first_two_oclock = datetime(2026, 10, 25, 2, fold=0, tzinfo=AMS)  # 00:00 UTC
    buckets = aggregate([(second_two_oclock, 1.0, 0), (first_two_oclock, 2.0, 0)], start, end, AMS, "hourly")
    assert [b.value for b in buckets[2:4]] == [2.0, 1.0]


def test_naive_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        aggregate([(datetime(2026, 5, 1), 1.0, 0)], datetime(2026, 5, 1), datetime(2026, 5, 2), AMS, "daily")


def test_unknown_quality_code_is_rejected() -> None:
    with pytest.raises(ValueError):
        aggregate(
            [(datetime(2026, 5, 1, 1, tzinfo=UTC), 1.0, 42)],
            datetime(2026, 5, 1),
            datetime(2026, 5, 2),
            AMS,
            "daily",
        )


# --- format_local ----------------------------------------------------------------------------------------


def test_format_local_has_offset_and_seconds_precision() -> None:
    dt = datetime(2026, 3, 29, 3, 0, 0, 123_456, tzinfo=AMS)
    assert format_local(dt) == "2026-03-29T03:00:00+02:00"
    assert format_local(datetime(2026, 1, 1, 5, 30, tzinfo=ZoneInfo("Asia/Kolkata"))) == (
        "2026-01-01T05:30:00+05:30"
    )


def test_format_local_rejects_naive() -> None:
    with pytest.raises(ValueError):
        format_local(datetime(2026, 1, 1))


# --- properties ------------------------------------------------------------------------------------------


@st.composite
def report_request(draw: st.DrawFn) -> tuple[ZoneInfo, date, int]:
    zone = ZoneInfo(draw(st.sampled_from(ZONES)))
    first = draw(st.dates(min_value=date(2010, 1, 1), max_value=date(2032, 12, 1)))
    days = draw(st.integers(1, 40))
    return zone, first, days


@PROPERTY_SETTINGS
@given(request=report_request(), data=st.data())
def test_daily_buckets_sum_to_hourly_inputs_in_range(
    request: tuple[ZoneInfo, date, int], data: st.DataObject
) -> None:
    tz, first, days = request
    start, end = day_range(tz, first, days)
    last = first + timedelta(days=days)
    # Hourly rows from a day before to a day after the range.
    hours = utc_hours(
        datetime(first.year, first.month, first.day, tzinfo=UTC) - timedelta(days=1),
        datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1),
    )
    values = data.draw(st.lists(st.floats(0, 1e4), min_size=len(hours), max_size=len(hours)))
    codes = data.draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 5]), min_size=len(hours), max_size=len(hours)))
    rows = list(zip(hours, values, codes, strict=True))

    buckets = aggregate(rows, start, end, tz, "daily")

    # Independent oracle: an hour is in range when its local calendar date is.
    in_range = [(h, v, c) for h, v, c in rows if first <= h.astimezone(tz).date() < last]
    assert math.isclose(
        math.fsum(b.value for b in buckets), math.fsum(v for _, v, _ in in_range), rel_tol=1e-9, abs_tol=1e-6
    )
    # Every hour lands in exactly one bucket: the one for its local date.
    assert sum(b.hours for b in buckets) == len(in_range)
    by_date: dict[date, list[tuple[datetime, float, int]]] = {}
    for row in in_range:
        by_date.setdefault(row[0].astimezone(tz).date(), []).append(row)
    for bucket in buckets:
        mine = by_date.get(bucket.start.date(), [])
        assert bucket.hours == len(mine)
        assert math.isclose(bucket.value, math.fsum(v for _, v, _ in mine), rel_tol=1e-9, abs_tol=1e-6)
        expected_quality = Quality.worst(*(c for _, _, c in mine)) if mine else Quality.MISSING
        assert bucket.quality is expected_quality
    # Buckets are ordered local midnights (or the first instant of a day whose midnight is skipped).
    assert [b.start for b in buckets] == sorted(b.start for b in buckets)
    for bucket in buckets:
        assert bucket.start.tzinfo is tz
        assert first <= bucket.start.date() < last
        # Step back in real time (UTC): same-zone arithmetic would be wall-clock arithmetic.
        before = (bucket.start.astimezone(UTC) - timedelta(seconds=1)).astimezone(tz)
        assert before.date() < bucket.start.date()


@PROPERTY_SETTINGS
@given(request=report_request(), period=st.sampled_from(PERIOD_TYPES))
def test_buckets_tile_the_range_without_gaps(request: tuple[ZoneInfo, date, int], period: PeriodType) -> None:
    tz, first, days = request
    start, end = day_range(tz, first, min(days, 10) if period == "hourly" else days)
    starts = [s.astimezone(UTC) for s in bucket_starts(start, end, tz, period)]
    start_utc, end_utc = resolve_local(start, tz), resolve_local(end, tz)
    assert starts, "a non-empty range has at least one bucket"
    assert starts[0] <= start_utc < (starts[1] if len(starts) > 1 else end_utc + HOUR)
    assert starts[-1] < end_utc
    assert all(a < b for a, b in pairwise(starts))
    if period == "hourly":
        assert all(b - a == HOUR for a, b in pairwise(starts))
        assert len(starts) == math.ceil((end_utc - start_utc) / HOUR)
    if period == "daily":
        assert len(starts) == (end - start).days - _skipped_days(tz, first, (end - start).days)


def _skipped_days(tz: ZoneInfo, first: date, days: int) -> int:
    """Days in the range with no instant at all (only Pacific/Apia 2011-12-30 in the zones above)."""
    skipped = 0
    for offset in range(days):
        day = first + timedelta(days=offset)
        midnight = resolve_local(datetime(day.year, day.month, day.day), tz)
        if midnight.astimezone(tz).date() != day:
            skipped += 1
    return skipped

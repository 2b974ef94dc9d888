"""Which local day a stored quarter belongs to, and which quarters make up a local day, in any zone."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, available_timezones

from hypothesis import given, settings
from hypothesis import strategies as st

from services.aggregation.localtime import (
    QUARTER,
    QUARTER_MS,
    day_bounds,
    local_date,
    month_start,
    next_month,
    zone,
)
from services.reporting.api.meterenergy import rollup_for
from services.reporting.periods import aggregate, bucket_ranges

PROPERTY_SETTINGS = settings(max_examples=400, deadline=None)

# Awkward zones first (hypothesis shrinks towards them): 45- and 30-minute offsets, a 30-minute DST shift,
# midnight skipped or repeated, a whole day skipped; then every zone this machine knows.
SPECIAL = [
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "Asia/Kolkata",
    "Australia/Adelaide",
    "Australia/Lord_Howe",
    "America/St_Johns",
    "America/Santiago",
    "Asia/Beirut",
    "Pacific/Apia",
    "Europe/Brussels",
]
ZONES = SPECIAL + sorted(available_timezones() - set(SPECIAL))

FIRST_MS = int(datetime(1990, 1, 1, tzinfo=UTC).timestamp() * 1000)
LAST_MS = int(datetime(2040, 1, 1, tzinfo=UTC).timestamp() * 1000)
quarters = st.integers(FIRST_MS // QUARTER_MS, LAST_MS // QUARTER_MS).map(lambda k: k * QUARTER_MS)
dates = st.dates(date(1990, 1, 2), date(2039, 12, 30))


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@PROPERTY_SETTINGS
@given(quarters, st.sampled_from(ZONES))
def test_a_quarter_lies_wholly_inside_the_local_day_it_starts_on(quarter: int, name: str) -> None:
    tz = ZoneInfo(name)
    day = local_date(quarter, tz)
    start, end = day_bounds(day, tz)
    assert ms(start) <= quarter and quarter + QUARTER_MS <= ms(end)
    # ...and only that day: the neighbours do not claim it.
    for neighbour in (day - timedelta(days=1), day + timedelta(days=1)):
        other_start, other_end = day_bounds(neighbour, tz)
        assert not ms(other_start) <= quarter < ms(other_end)


@PROPERTY_SETTINGS
@given(dates, st.sampled_from(ZONES))
def test_local_days_are_whole_quarters_that_tile_time(day: date, name: str) -> None:
    tz = ZoneInfo(name)
    start, end = day_bounds(day, tz)
    assert ms(start) % QUARTER_MS == 0 and ms(end) % QUARTER_MS == 0
    assert day_bounds(day + timedelta(days=1), tz)[0] == end
    # Every quarter of the day maps back to it (a skipped day has none).
    moment = start
    while moment < end:
        assert local_date(ms(moment), tz) == day
        moment += QUARTER
    assert timedelta(0) <= end - start <= timedelta(hours=26)


@PROPERTY_SETTINGS
@given(dates, st.sampled_from(ZONES))
def test_stored_days_are_exactly_the_report_days(day: date, name: str) -> None:
    """The rollup task and the report resolve local midnights identically, so they always agree."""
    tz = ZoneInfo(name)
    wall = datetime(day.year, day.month, day.day)
    ranges = bucket_ranges(wall, wall + timedelta(days=1), tz, "daily")
    start, end = day_bounds(day, tz)
    if start == end:
        assert ranges == []
    else:
        assert [(utc_from, utc_to) for _, utc_from, utc_to in ranges] == [(start, end)]


def test_kathmandu_and_chatham_days_start_on_their_odd_quarters() -> None:
    kathmandu, chatham = ZoneInfo("Asia/Kathmandu"), ZoneInfo("Pacific/Chatham")
    assert day_bounds(date(2026, 3, 10), kathmandu) == (
        datetime(2026, 3, 9, 18, 15, tzinfo=UTC),
        datetime(2026, 3, 10, 18, 15, tzinfo=UTC),
    )
    # Chatham is +13:45 in January (DST), +12:45 in July.
    assert day_bounds(date(2026, 1, 15), chatham)[0] == datetime(2026, 1, 14, 10, 15, tzinfo=UTC)
    assert day_bounds(date(2026, 7, 15), chatham)[0] == datetime(2026, 7, 14, 11, 15, tzinfo=UTC)
    assert local_date(ms(datetime(2026, 3, 9, 18, 0, tzinfo=UTC)), kathmandu) == date(2026, 3, 9)
    assert local_date(ms(datetime(2026, 3, 9, 18, 15, tzinfo=UTC)), kathmandu) == date(2026, 3, 10)


def test_dst_days_have_23_and_25_hours() -> None:
    brussels = ZoneInfo("Europe/Brussels")
    spring, autumn = day_bounds(date(2026, 3, 29), brussels), day_bounds(date(2026, 10, 25), brussels)
    assert spring[1] - spring[0] == timedelta(hours=23)
    assert autumn[1] - autumn[0] == timedelta(hours=25)


def test_a_day_a_zone_skipped_has_no_quarters() -> None:
    start, end = day_bounds(date(2011, 12, 30), ZoneInfo("Pacific/Apia"))
    assert start == end


def test_months_and_unknown_zones() -> None:
    assert month_start(date(2026, 2, 17)) == date(2026, 2, 1)
    assert next_month(date(2026, 12, 1)) == date(2027, 1, 1)
    assert zone("No/Such_Zone") == ZoneInfo("UTC")
    assert zone(None) == ZoneInfo("UTC")


# --- reports summed over UTC ranges agree with reports rolled up from the rows themselves -----------------


@PROPERTY_SETTINGS
@given(
    st.sampled_from([*SPECIAL, "UTC", "America/New_York"]),
    st.sampled_from(["hourly", "daily", "weekly", "monthly", "yearly"]),
    st.datetimes(datetime(2025, 1, 1), datetime(2027, 1, 1)).map(
        lambda d: d.replace(second=0, microsecond=0)
    ),
    st.integers(1, 24 * 70),
    st.lists(st.tuples(st.integers(0, 4 * 24 * 80), st.floats(-100, 100), st.integers(0, 5)), max_size=60),
)
def test_summing_each_buckets_range_gives_what_aggregate_gives(
    name: str,
    period: str,
    start: datetime,
    hours: int,
    rows: list[tuple[int, float, int]],
) -> None:
    tz = ZoneInfo(name)
    end = start + timedelta(hours=hours)
    base = datetime(2024, 12, 25, tzinfo=UTC)
    items = {base + k * QUARTER: (energy, code) for k, energy, code in rows}
    expected = aggregate(
        [(at, energy, code) for at, (energy, code) in items.items()],
        start,
        end,
        tz,
        period,  # type: ignore[arg-type]
    )
    ranges = bucket_ranges(start, end, tz, period)  # type: ignore[arg-type]
    assert [local for local, _, _ in ranges] == [bucket.start for bucket in expected]
    for (_, utc_from, utc_to), bucket in zip(ranges, expected, strict=True):
        inside = [(energy, code) for at, (energy, code) in items.items() if utc_from <= at < utc_to]
        assert len(inside) == bucket.hours
        assert abs(sum(e for e, _ in inside) - bucket.value) < 1e-6


def test_reports_use_a_stored_rollup_only_when_its_periods_tile_the_range() -> None:
    assert rollup_for(datetime(2026, 1, 1), datetime(2027, 1, 1), "yearly") == "yearly"
    assert rollup_for(datetime(2026, 3, 1), datetime(2027, 1, 1), "yearly") == "monthly"
    assert rollup_for(datetime(2026, 3, 5), datetime(2026, 9, 1), "monthly") == "daily"
    assert rollup_for(datetime(2026, 3, 5), datetime(2026, 4, 5), "weekly") == "daily"
    assert rollup_for(datetime(2026, 3, 5, 6), datetime(2026, 3, 9), "daily") is None
    assert rollup_for(datetime(2026, 3, 5), datetime(2026, 3, 6), "hourly") is None

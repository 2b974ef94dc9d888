"""The Data API's pure parts: periods at their resolution in local time, and the KPI definitions."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.normalisation.dataapi_internal import _spread
from services.reporting.dataapi import kpis
from services.reporting.dataapi_periods import day_slots, period_slots

AMSTERDAM = ZoneInfo("Europe/Amsterdam")


def test_a_day_has_288_five_minute_slots_276_when_clocks_go_forward_and_300_when_they_go_back() -> None:
    assert len(day_slots(date(2026, 3, 28), AMSTERDAM)) == 288
    assert len(day_slots(date(2026, 3, 29), AMSTERDAM)) == 276
    assert len(day_slots(date(2026, 10, 25), AMSTERDAM)) == 300
    assert len(day_slots(date(2026, 3, 29), ZoneInfo("Asia/Kathmandu"))) == 288
    autumn = day_slots(date(2026, 10, 25), AMSTERDAM)
    assert [s[0].isoformat() for s in autumn[35:38]] == [
        "2026-10-25T02:55:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T02:05:00+01:00",
    ]


def test_kpis_follow_their_definitions() -> None:
    result = kpis({"production": 40.0, "grid_import": 30.0, "grid_export": 10.0}, 4.0)
    assert result == {
        "consumption": 60.0,
        "self_consumption_rate": 0.75,
        "autarky_rate": 0.5,
        "specific_yield_kwh_per_kwp": 10.0,
    }
    assert kpis({"grid_import": 5.0}, None) == {
        "consumption": None,
        "self_consumption_rate": None,
        "autarky_rate": None,
        "specific_yield_kwh_per_kwp": None,
    }


def test_month_year_and_total_have_local_days_months_and_years() -> None:
    february = period_slots("month", date(2028, 2, 10), AMSTERDAM)
    assert len(february) == 29 and february[0][0].isoformat() == "2028-02-01T00:00:00+01:00"
    year = period_slots("year", date(2026, 7, 1), AMSTERDAM)
    assert [s[0].month for s in year] == list(range(1, 13))
    assert year[3][0].isoformat() == "2026-04-01T00:00:00+02:00"
    total = period_slots("total", date(2026, 7, 1), ZoneInfo("Asia/Kathmandu"), 2024)
    assert [s[0].isoformat() for s in total] == [
        "2024-01-01T00:00:00+05:45",
        "2025-01-01T00:00:00+05:45",
        "2026-01-01T00:00:00+05:45",
    ]


ZONES = ("Europe/Amsterdam", "America/New_York", "Asia/Kathmandu", "Australia/Lord_Howe", "UTC")


@given(st.dates(min_value=date(1971, 1, 1), max_value=date(2199, 12, 31)), st.sampled_from(ZONES))
def test_a_days_slots_tile_the_local_day_in_five_minute_steps(day: date, zone: str) -> None:
    tz = ZoneInfo(zone)
    slots = day_slots(day, tz)
    start = datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)
    assert slots[0][1] == start and slots[0][0].date() == day
    assert all(b[1] == a[2] for a, b in pairwise(slots))
    assert all(s[2] - s[1] == timedelta(minutes=5) for s in slots[:-1])
    hours = (slots[-1][2] - slots[0][1]) / timedelta(hours=1)
    assert len(slots) == round(hours * 12) and 22.5 <= hours <= 25


@given(st.dates(min_value=date(1971, 1, 1), max_value=date(2199, 12, 31)), st.sampled_from(ZONES))
def test_a_month_has_its_local_days_and_a_year_its_twelve_months(day: date, zone: str) -> None:
    tz = ZoneInfo(zone)
    month = period_slots("month", day, tz)
    assert len(month) == calendar.monthrange(day.year, day.month)[1]
    assert [s[0].day for s in month] == list(range(1, len(month) + 1))
    assert all(s[0].hour == 0 or s[0].hour == 1 for s in month)  # local midnight (01:00 if skipped)
    assert len(period_slots("year", day, tz)) == 12


@given(
    st.lists(
        st.tuples(st.integers(1, 7_200_000), st.floats(0, 1000, allow_nan=False)), min_size=1, max_size=40
    )
)
def test_five_minute_slots_add_up_to_the_energy_of_the_readings(steps: list[tuple[int, float]]) -> None:
    intervals, begin = [], 1_774_738_800_000  # 2026-03-28T23:00:00Z
    for gap, energy in steps:
        intervals.append((begin, begin + gap, energy, 0))
        begin += gap
    slots = _spread(intervals, 0, 2**62)
    assert sum(e for e, _ in slots.values()) == pytest.approx(sum(e for _, e in steps), rel=1e-9, abs=1e-6)
    assert all(slot % 300_000 == 0 for slot in slots)

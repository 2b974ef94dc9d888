"""The Data API's periods and their resolution (seed 004): day -> 5 minutes, month -> days, year -> months,
total -> years, always in the installation's own time zone.

A `day` is the local calendar day, so it has 288 five-minute slots, 276 on the day clocks go forward and 300
on the day they go back (slots are real five-minute spans; the repeated hour appears twice with different
offsets). A month has its local days, a year its twelve local months, `total` every year from the first
with data to the year of `date`. Pure functions only: no I/O, no clock.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Literal, get_args
from zoneinfo import ZoneInfo

from services.reporting.periods import bucket_ranges, resolve_local

Period = Literal["day", "month", "year", "total"]
PERIODS: tuple[str, ...] = get_args(Period)
RESOLUTION: dict[str, str] = {"day": "5min", "month": "day", "year": "month", "total": "year"}
FIRST_YEAR = 1970
LAST_YEAR = 2200
SLOT = timedelta(minutes=5)

# (local start, UTC from, UTC to) of one value
Slot = tuple[datetime, datetime, datetime]


def day_slots(day: date, tz: ZoneInfo) -> list[Slot]:
    """The five-minute slots of a local calendar day."""
    start = resolve_local(datetime(day.year, day.month, day.day), tz)
    following = day + timedelta(days=1)
    end = resolve_local(datetime(following.year, following.month, following.day), tz)
    slots: list[Slot] = []
    moment = start
    while moment < end:
        slots.append((moment.astimezone(tz), moment, min(moment + SLOT, end)))
        moment += SLOT
    return slots


def period_range(period: Period, day: date, first_year: int | None = None) -> tuple[datetime, datetime]:
    """The local wall-clock range [start, end) a period around `day` covers (`total`: from `first_year`)."""
    if period == "day":
        start = datetime(day.year, day.month, day.day)
        return start, start + timedelta(days=1)
    if period == "month":
        start = datetime(day.year, day.month, 1)
        return start, datetime(day.year + (day.month == 12), day.month % 12 + 1, 1)
    if period == "year":
        return datetime(day.year, 1, 1), datetime(day.year + 1, 1, 1)
    return datetime(first_year or day.year, 1, 1), datetime(day.year + 1, 1, 1)


def period_slots(period: Period, day: date, tz: ZoneInfo, first_year: int | None = None) -> list[Slot]:
    """The values a period has, at its resolution, in the zone `tz`."""
    if period == "day":
        return day_slots(day, tz)
    start, end = period_range(period, day, first_year)
    bucket = {"month": "daily", "year": "monthly", "total": "yearly"}[period]
    return bucket_ranges(start, end, tz, bucket)  # type: ignore[arg-type]


def utc_bounds(
    period: Period, day: date, tz: ZoneInfo, first_year: int | None = None
) -> tuple[datetime, datetime]:
    """The instants [from, to) a period covers."""
    start, end = period_range(period, day, first_year)
    return resolve_local(start, tz).astimezone(UTC), resolve_local(end, tz).astimezone(UTC)

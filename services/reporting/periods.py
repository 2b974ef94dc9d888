"""Local-civil-time report buckets (hour, day, week, month, year) over energy stored in UTC buckets.

Energy is stored per 15-minute UTC bucket (and was per UTC hour); people ask for "March" or "yesterday" in
their own time zone. This module maps a wall-clock range typed by a user onto real instants, gives each local
bucket's UTC range (``bucket_ranges``, to sum stored quarters in) and rolls stored rows up into local buckets
(``aggregate``). Every local midnight and hour boundary falls on a quarter in zones in use today (offsets
are multiples of 15 minutes, e.g. Asia/Kathmandu +05:45), so sums of quarters are exact.

Resolving wall-clock times (``start_local``, ``end_local`` and every calendar boundary):

* Ambiguous times (the repeated hour when clocks go back) resolve to their FIRST occurrence (fold=0), so a
  range starting at 02:30 on a fall-back day starts before the repeat and a range ending at 03:00 includes
  both copies of the repeated hour.
* Nonexistent times (skipped when clocks go forward) resolve to the moment the clocks jump, i.e. the first
  instant whose wall clock reads at or after the requested time. For a boundary that coincides with the
  start of the gap (e.g. midnight in zones that spring forward at 00:00) this is exactly what fold=0 gives;
  for a time inside the gap it differs from fold=0 (which would move 02:30 to 03:30 and make resolution
  non-monotonic, so that 02:30 would land after 03:00).
* A calendar bucket whose start and end resolve to the same instant (a day skipped entirely, as in
  Pacific/Apia on 2011-12-30) is dropped.

An hourly input row belongs to the bucket containing its start instant; rows whose start is outside the
resolved range [start, end) are ignored.

Pure functions only: no I/O, no clock.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args
from zoneinfo import ZoneInfo

from proto_schemas.quality import Quality

PeriodType = Literal["hourly", "daily", "weekly", "monthly", "yearly"]
PERIOD_TYPES: tuple[str, ...] = get_args(PeriodType)

_HOUR = timedelta(hours=1)
_SECOND = timedelta(seconds=1)


@dataclass(slots=True)
class Bucket:
    """One row of a report: a local period, its energy, its worst quality and how many stored rows fed it
    (hours or quarters, whichever the input was)."""

    start: datetime
    value: float
    quality: Quality
    hours: int


def _wall(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None, fold=0)


def resolve_local(wall: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant a user means by a wall-clock time, so that ranges map onto stored UTC hours.

    Ambiguous times give their first occurrence; nonexistent times give the moment the clocks jump past
    them (see the module docstring for why this is preferred over plain fold=0 inside a gap).
    """
    if wall.tzinfo is not None:
        raise ValueError(f"expected a naive local datetime, got {wall.isoformat()}")
    wall = wall.replace(fold=0)
    candidate = wall.replace(tzinfo=tz).astimezone(UTC)
    if _wall(candidate, tz) == wall:
        return candidate
    # Inside a gap: fold=0 and fold=1 bracket the transition. Search the first whole second whose wall clock
    # reads at or after `wall` (tz transitions happen on whole seconds).
    other = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    lo, hi = min(candidate, other), max(candidate, other)
    lo = lo.replace(microsecond=0)  # wall(lo) < wall
    if hi.microsecond:
        hi = hi.replace(microsecond=0) + _SECOND  # wall(hi) >= wall
    while hi - lo > _SECOND:
        mid = lo + timedelta(seconds=(hi - lo) // _SECOND // 2)
        if _wall(mid, tz) >= wall:
            hi = mid
        else:
            lo = mid
    return hi


def _period_floor(wall: datetime, period: PeriodType) -> datetime:
    day = datetime(wall.year, wall.month, wall.day)
    if period == "hourly":
        return day.replace(hour=wall.hour)
    if period == "daily":
        return day
    if period == "weekly":
        return day - timedelta(days=day.weekday())
    if period == "monthly":
        return day.replace(day=1)
    if period == "yearly":
        return day.replace(month=1, day=1)
    raise ValueError(f"unknown period {period!r}; expected one of {PERIOD_TYPES}")


def _next_wall(wall: datetime, period: PeriodType) -> datetime:
    if period == "daily":
        return wall + timedelta(days=1)
    if period == "weekly":
        return wall + timedelta(days=7)
    if period == "monthly":
        return datetime(wall.year + 1, 1, 1) if wall.month == 12 else datetime(wall.year, wall.month + 1, 1)
    if period == "yearly":
        return datetime(wall.year + 1, 1, 1)
    raise ValueError(f"unknown calendar period {period!r}")


def _boundaries(first_wall: datetime, tz: ZoneInfo, period: PeriodType) -> Iterator[datetime]:
    """Successive UTC bucket boundaries, starting with the one at or before the range start."""
    if period == "hourly":
        instant = resolve_local(first_wall, tz)
        while True:
            yield instant
            instant += _HOUR
    wall = first_wall
    while True:
        yield resolve_local(wall, tz)
        wall = _next_wall(wall, period)


def _utc_range(start_local: datetime, end_local: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    if start_local.tzinfo is not None or end_local.tzinfo is not None:
        raise ValueError("start_local and end_local must be naive wall-clock datetimes")
    if end_local < start_local:
        raise ValueError(f"end_local {end_local.isoformat()} is before start_local {start_local.isoformat()}")
    return resolve_local(start_local, tz), resolve_local(end_local, tz)


def _bucket_starts_utc(
    start_local: datetime, end_local: datetime, tz: ZoneInfo, period: PeriodType
) -> tuple[list[datetime], datetime, datetime]:
    start_utc, end_utc = _utc_range(start_local, end_local, tz)
    starts: list[datetime] = []
    if start_utc >= end_utc:
        return starts, start_utc, end_utc
    boundaries = _boundaries(_period_floor(start_local, period), tz, period)
    begin = next(boundaries)
    for finish in boundaries:
        if begin >= end_utc:
            break
        if finish > begin and finish > start_utc:
            starts.append(begin)
        begin = max(begin, finish)
    return starts, start_utc, end_utc


def bucket_starts(
    start_local: datetime, end_local: datetime, tz: ZoneInfo, period: PeriodType
) -> list[datetime]:
    """The local buckets a report over [start_local, end_local) has rows for, in order.

    Both bounds are naive wall-clock times in ``tz`` because that is what a person types. Calendar buckets
    (daily, weekly from Monday, monthly, yearly) start at local midnight, so they are 23 or 25 hours long
    around DST changes; hourly buckets are real elapsed hours from the wall-clock hour containing the start,
    so a repeated hour appears twice (with different offsets) and a skipped one not at all. The first bucket
    may start before ``start_local`` (the day containing it); the range is empty when both bounds resolve to
    the same instant. Raises ValueError for aware bounds or ``end_local < start_local``.
    """
    starts, _, _ = _bucket_starts_utc(start_local, end_local, tz, period)
    return [start.astimezone(tz) for start in starts]


def bucket_ranges(
    start_local: datetime, end_local: datetime, tz: ZoneInfo, period: PeriodType
) -> list[tuple[datetime, datetime, datetime]]:
    """Each bucket of a report over [start_local, end_local) as (local start, UTC from, UTC to).

    The buckets are those of ``bucket_starts``; each range is the part of the bucket inside the resolved
    report range, so that summing what starts in [from, to) gives exactly what ``aggregate`` puts in the
    bucket.
    """
    starts, start_utc, end_utc = _bucket_starts_utc(start_local, end_local, tz, period)
    ends = [*starts[1:], end_utc]
    return [
        (begin.astimezone(tz), max(begin, start_utc), min(finish, end_utc))
        for begin, finish in zip(starts, ends, strict=True)
    ]


def aggregate(
    hourly: Iterable[tuple[datetime, float, int]],
    start_local: datetime,
    end_local: datetime,
    tz: ZoneInfo,
    period: PeriodType,
) -> list[Bucket]:
    """Roll UTC hourly energy up into the local buckets of a report, including the empty ones.

    Reports must show gaps rather than hide them, so every bucket in range is returned: empty ones with
    value 0.0 and quality MISSING, the others with the sum of their inputs and the worst input quality.
    Items are (aware hour start, energy, quality code); an item counts towards the bucket containing its
    start instant, and items starting outside the resolved [start, end) are ignored.
    """
    starts, start_utc, end_utc = _bucket_starts_utc(start_local, end_local, tz, period)
    values = [0.0] * len(starts)
    worst = [int(Quality.GOOD)] * len(starts)
    hours = [0] * len(starts)
    for hour_start, energy, code in hourly:
        if hour_start.tzinfo is None or hour_start.utcoffset() is None:
            raise ValueError(f"hourly input must be timezone-aware, got {hour_start.isoformat()}")
        instant = hour_start.astimezone(UTC)  # compare in UTC: same-zone comparisons ignore fold
        if not (start_utc <= instant < end_utc):
            continue
        index = bisect_right(starts, instant) - 1
        values[index] += energy
        worst[index] = max(worst[index], int(Quality(code)))
        hours[index] += 1
    return [
        Bucket(
            start=start.astimezone(tz),
            value=values[i] if hours[i] else 0.0,
            quality=Quality(worst[i]) if hours[i] else Quality.MISSING,
            hours=hours[i],
        )
        for i, start in enumerate(starts)
    ]


def format_local(dt: datetime) -> str:
    """Render a bucket start for the API so that clients never have to guess the offset."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"format_local needs an aware datetime, got {dt.isoformat()}")
    return dt.isoformat(timespec="seconds")

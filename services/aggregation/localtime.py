"""Which local day, month and year a stored quarter belongs to, and which quarters make up a local day.

Energy is stored per 15-minute UTC bucket. A meter's daily, monthly and yearly rollups are in the local civil
time of its space (an IANA zone). Local midnights fall on quarter boundaries in every zone in use today (all
offsets and DST shifts are multiples of 15 minutes), so:

* a quarter belongs to the local day on which it starts (``local_date``), and lies wholly inside it;
* a local day is the half-open UTC range [its midnight, the next day's midnight) (``day_bounds``), both
  resolved exactly as reports resolve them (services/reporting/periods.py ``resolve_local``: a nonexistent
  midnight is the moment the clocks jump, an ambiguous one its first occurrence), so stored rollups and
  reports computed from quarters always agree, on 23- and 25-hour days too;
* a local month is a run of whole local days, a local year a run of whole local months, so monthly rollups
  are sums of daily ones and yearly rollups sums of monthly ones.

Pure functions only: no I/O, no clock.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.reporting.periods import resolve_local

log = logging.getLogger(__name__)

QUARTER = timedelta(minutes=15)
QUARTER_MS = 900_000
_DAY = timedelta(days=1)


@lru_cache(maxsize=1024)
def zone(name: str | None) -> ZoneInfo:
    """The zone of that name; UTC (logged) for an empty or unknown name, so a typo never stops rollups."""
    if not name:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("unknown time zone; using UTC", extra={"fields": {"timezone": name}})
        return ZoneInfo("UTC")


def local_date(instant_ms: int, tz: ZoneInfo) -> date:
    """The local calendar date of an instant (epoch milliseconds) in ``tz``."""
    return datetime.fromtimestamp(instant_ms / 1000, UTC).astimezone(tz).date()


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The UTC instant the local day starts (see the module docstring for gaps and repeats)."""
    return resolve_local(datetime(day.year, day.month, day.day), tz).astimezone(UTC)


def day_bounds(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """UTC [start, end) of a local day; empty (start == end) for a day a zone skipped entirely."""
    return local_midnight(day, tz), local_midnight(day + _DAY, tz)


def month_start(day: date) -> date:
    return day.replace(day=1)


def next_month(first: date) -> date:
    return date(first.year + 1, 1, 1) if first.month == 12 else date(first.year, first.month + 1, 1)


def year_start(day: date) -> date:
    return date(day.year, 1, 1)


def days(first: date, last: date) -> list[date]:
    """Every date from ``first`` to ``last``, both included."""
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]

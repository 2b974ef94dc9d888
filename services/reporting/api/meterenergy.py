"""`GET /reports/meterenergy`: a meter's energy by hour, day, week, month or year, in local time (MyEMS shape)."""

from __future__ import annotations

from bisect import bisect_right
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query

from libs.service import ProblemError, ServiceContext, bad_request, get_context, not_found
from proto_schemas.quality import Quality
from services.reporting.periods import PERIOD_TYPES, Bucket, bucket_ranges, format_local, resolve_local

router = APIRouter(tags=["reports"])

MAX_SPAN = {"hourly": timedelta(days=93), "daily": timedelta(days=3700)}
DEFAULT_MAX_SPAN = timedelta(days=36600)


def _parse_local(value: str | None, field_name: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise bad_request(field_name, "must be a local date and time, YYYY-MM-DDTHH:MM:SS") from exc
    # MyEMS passes local wall-clock times; an explicit offset is converted to the meter's zone later.
    return parsed


def _period_range(
    start: datetime | None, end: datetime | None, names: tuple[str, str], tz: ZoneInfo, periodtype: str
) -> tuple[datetime, datetime]:
    if start is None or end is None:
        missing = names[0] if start is None else names[1]
        raise bad_request(missing, f"{missing} is required")
    start = start.astimezone(tz).replace(tzinfo=None) if start.tzinfo else start
    end = end.astimezone(tz).replace(tzinfo=None) if end.tzinfo else end
    if end <= start:
        raise bad_request(names[1], f"{names[1]} must be after {names[0]}")
    for name, moment in zip(names, (start, end), strict=True):
        if not 1970 <= moment.year <= 2200:
            raise bad_request(name, "reports cover the years 1970 to 2200")
    if end - start > MAX_SPAN.get(periodtype, DEFAULT_MAX_SPAN):
        raise bad_request(
            names[1],
            f"a {periodtype} report spans at most {MAX_SPAN.get(periodtype, DEFAULT_MAX_SPAN).days} days",
        )
    return start, end


def _section(buckets: list[Bucket], kgce: float, kgco2e: float) -> dict[str, Any]:
    total = sum(b.value for b in buckets)
    return {
        "total_in_category": total,
        "total_in_kgce": total * kgce,
        "total_in_kgco2e": total * kgco2e,
        "timestamps": [format_local(b.start) for b in buckets],
        "values": [b.value for b in buckets],
        "qualities": [b.quality.label for b in buckets],
        "quality": Quality.worst(*(b.quality for b in buckets)).label if buckets else Quality.MISSING.label,
    }


# Stored rollups a report may use, coarsest first, for each period type (a week is whole days).
_ROLLUPS: dict[str, tuple[str, ...]] = {
    "daily": ("daily",),
    "weekly": ("daily",),
    "monthly": ("monthly", "daily"),
    "yearly": ("yearly", "monthly", "daily"),
}


def _aligned(moment: datetime, rollup: str) -> bool:
    """Whether a local wall-clock time starts a day, a month or a year."""
    if moment.time() != time(0):
        return False
    if rollup == "monthly":
        return moment.day == 1
    if rollup == "yearly":
        return moment.day == 1 and moment.month == 1
    return True


def rollup_for(start: datetime, end: datetime, periodtype: str) -> str | None:
    """The coarsest stored rollup whose periods tile both the report's buckets and its range, if any."""
    for rollup in _ROLLUPS.get(periodtype, ()):
        if _aligned(start, rollup) and _aligned(end, rollup):
            return rollup
    return None


async def _sums(
    ctx: ServiceContext, meter_id: int, ranges: list[tuple[datetime, datetime]]
) -> list[dict[str, Any]]:
    response = await ctx.call(
        "aggregation",
        "POST",
        f"/internal/meters/{meter_id}/sums",
        json={"ranges": [[a.isoformat(), b.isoformat()] for a, b in ranges]},
    )
    if response.status_code != 200:
        raise ProblemError(502, "Upstream error", "the aggregation service did not answer")
    return list(response.json())


async def _stored(
    ctx: ServiceContext, meter_id: int, rollup: str, start: date, end: date
) -> dict[str, Any] | None:
    response = await ctx.call(
        "aggregation",
        "GET",
        f"/internal/meters/{meter_id}/{rollup}",
        params={"start": start.isoformat(), "end": end.isoformat()},
    )
    if response.status_code == 404:
        return None  # an aggregation without stored rollups: compute from quarters
    if response.status_code != 200:
        raise ProblemError(502, "Upstream error", "the aggregation service did not answer")
    return dict(response.json())


def _fill(bucket: Bucket, energy: float, quality: int | None, count: int) -> None:
    if count:
        bucket.value += energy
        bucket.quality = Quality(max(int(bucket.quality), int(quality or 0)))
        bucket.hours += count


async def _period(
    ctx: ServiceContext, meter_id: int, start: datetime, end: datetime, tz: ZoneInfo, periodtype: str
) -> list[Bucket]:
    """The report's buckets: from stored daily/monthly/yearly rollups where they are current and tile the
    range, otherwise summed from the stored quarters (always exact, in any zone)."""
    ranges = bucket_ranges(start, end, tz, periodtype)  # type: ignore[arg-type]
    buckets = [Bucket(start=local, value=0.0, quality=Quality.GOOD, hours=0) for local, _, _ in ranges]
    from_quarters = set(range(len(ranges)))
    rollup = rollup_for(start, end, periodtype)
    if rollup is not None and ranges:
        stored = await _stored(ctx, meter_id, rollup, start.date(), end.date())
        if stored is not None and stored["timezone"] == tz.key and not stored["rebuilding"]:
            starts = [utc_from for _, utc_from, _ in ranges]

            def index_of(day: str) -> int:
                instant = resolve_local(datetime.fromisoformat(day), tz).astimezone(UTC)
                return bisect_right(starts, instant) - 1

            from_quarters = {index_of(day) for day in stored["stale"]}
            for row in stored["rows"]:
                index = index_of(row["date"])
                if 0 <= index < len(buckets) and index not in from_quarters:
                    _fill(buckets[index], row["energy"], row["quality"], row["quarters"])
    wanted = sorted(i for i in from_quarters if 0 <= i < len(ranges))
    if wanted:
        sums = await _sums(ctx, meter_id, [(ranges[i][1], ranges[i][2]) for i in wanted])
        for index, found in zip(wanted, sums, strict=True):
            _fill(buckets[index], found["energy"], found["quality"], found["quarters"])
    for bucket in buckets:
        if not bucket.hours:
            bucket.value, bucket.quality = 0.0, Quality.MISSING
    return buckets


@router.get("/reports/meterenergy")
async def meter_energy(
    meterid: int | None = Query(None, ge=1, description="The meter (or give meteruuid)"),
    meteruuid: str | None = Query(None),
    periodtype: str = Query("daily", description="hourly, daily, weekly, monthly or yearly"),
    reportingperiodstartdatetime: str | None = Query(None, description="Local time, YYYY-MM-DDTHH:MM:SS"),
    reportingperiodenddatetime: str | None = Query(None, description="Local time, exclusive"),
    baseperiodstartdatetime: str | None = Query(None),
    baseperiodenddatetime: str | None = Query(None),
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """Energy of one meter per bucket of local civil time (its space's time zone), with each bucket's quality.

    A 23-hour day sums 23 hours; a bucket without any data is 0 with quality `missing`.
    """
    if periodtype not in PERIOD_TYPES:
        raise bad_request("periodtype", f"periodtype must be one of {', '.join(PERIOD_TYPES)}")
    if meterid is None and not meteruuid:
        raise bad_request("meterid", "meterid or meteruuid is required")
    if meterid is None:
        response = await ctx.call("registry", "GET", "/meters")
        matches = [m for m in response.json() if m["uuid"] == meteruuid]
        if not matches:
            raise not_found("meter", meteruuid)
        meterid = int(matches[0]["id"])
    response = await ctx.call("registry", "GET", f"/internal/meters/{meterid}/context")
    if response.status_code == 404:
        raise not_found("meter", meterid)
    if response.status_code != 200:
        raise ProblemError(502, "Upstream error", "the registry did not answer")
    meter = response.json()
    tz = ZoneInfo(meter["timezone"])

    start, end = _period_range(
        _parse_local(reportingperiodstartdatetime, "reportingperiodstartdatetime"),
        _parse_local(reportingperiodenddatetime, "reportingperiodenddatetime"),
        ("reportingperiodstartdatetime", "reportingperiodenddatetime"),
        tz,
        periodtype,
    )
    reporting = await _period(ctx, meterid, start, end, tz, periodtype)
    result: dict[str, Any] = {
        "meter": {
            "id": meter["id"],
            "name": meter["name"],
            "uuid": meter["uuid"],
            "cost_center_id": None,
            "energy_category_id": None,
            "energy_category_name": meter["category"],
            "unit_of_measure": meter["unit_of_measure"],
            "kgce": meter["kgce"],
            "kgco2e": meter["kgco2e"],
            "timezone": meter["timezone"],
        },
        "reporting_period": _section(reporting, meter["kgce"], meter["kgco2e"]),
        "base_period": _section([], meter["kgce"], meter["kgco2e"]),
        "parameters": {"names": [], "timestamps": [], "values": []},
    }
    base_start = _parse_local(baseperiodstartdatetime, "baseperiodstartdatetime")
    base_end = _parse_local(baseperiodenddatetime, "baseperiodenddatetime")
    if base_start is not None or base_end is not None:
        bstart, bend = _period_range(
            base_start, base_end, ("baseperiodstartdatetime", "baseperiodenddatetime"), tz, periodtype
        )
        base = await _period(ctx, meterid, bstart, bend, tz, periodtype)
        result["base_period"] = _section(base, meter["kgce"], meter["kgco2e"])
    base_total = result["base_period"]["total_in_category"]
    reporting_total = result["reporting_period"]["total_in_category"]
    result["reporting_period"]["increment_rate"] = (
        (reporting_total - base_total) / base_total if base_total else None
    )
    return result

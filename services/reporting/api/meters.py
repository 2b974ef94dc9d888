"""Meter reports beyond energy, cost and carbon: trend, batch, realtime and submeters balance (MyEMS)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query

from libs.service import ProblemError, ServiceContext, bad_request, get_context
from proto_schemas.quality import Quality
from services.reporting.api.meterenergy import meter_section
from services.reporting.export import Block, Sheet
from services.reporting.framework import (
    MAX_ID,
    ReportQuery,
    Subject,
    bounded,
    collect,
    increment_rate,
    instants,
    load_subject,
    local_period_label,
    point_trends,
    report_query,
    resolve_periods,
    respond,
    series_of,
    subject_key,
)
from services.reporting.periods import format_local

router = APIRouter(tags=["reports"])
REALTIME_HOURS = 24


def _meter_info(subject: Subject) -> dict[str, Any]:
    category = subject.categories.get(int(subject.raw["energy_category_id"]), {})
    return {
        **subject.describe(),
        "energy_category_id": subject.raw["energy_category_id"],
        "energy_category_name": category.get("name"),
        "unit_of_measure": category.get("unit_of_measure"),
    }


@router.get("/reports/metertrend", response_model=None)
async def meter_trend(
    meterid: int | None = Query(None, ge=1, le=MAX_ID, description="The meter (or give meteruuid)"),
    meteruuid: str | None = Query(None, max_length=64),
    query: ReportQuery = Depends(report_query),
    ctx: ServiceContext = Depends(get_context),
) -> Any:
    """The values of the meter's points over the reporting period (normalised readings, after ratio)."""
    subject = await load_subject(ctx, "meter", subject_key(meterid, meteruuid, "meter"))
    periods = resolve_periods(query, subject.tz)
    start, end = instants(periods.reporting, subject.tz)
    trends = await point_trends(ctx, subject.points, start, end, subject.tz)
    result = {"meter": _meter_info(subject), "reporting_period": trends}
    sheet = Sheet("metertrend", subject.name, local_period_label(*periods.reporting), query.language)
    for name, stamps, values in zip(trends["names"], trends["timestamps"], trends["values"], strict=True):
        sheet.blocks.append(
            Block(name, ["Datetime", name], [[t, v] for t, v in zip(stamps, values, strict=True)])
        )
    return respond("metertrend", query, result, sheet)


@router.get("/reports/meterbatch", response_model=None)
async def meter_batch(
    spaceid: int | None = Query(None, ge=1, le=MAX_ID, description="The space whose meters are listed"),
    query: ReportQuery = Depends(report_query),
    ctx: ServiceContext = Depends(get_context),
) -> Any:
    """Every meter of a space (and of the spaces below it) with its energy over the reporting period."""
    if spaceid is None:
        raise bad_request("spaceid", "spaceid is required")
    space = await load_subject(ctx, "space", str(spaceid))
    periods = resolve_periods(query, space.tz)
    meters = sorted((m for m in space.meters if m["kind"] == "meter"), key=lambda m: int(m["id"]))

    async def total(meter: dict[str, Any]) -> float:
        table = await collect(ctx, space, *periods.reporting, periods.periodtype, leaves=[meter])
        return sum(sum(cell.energy for cell in cells) for cells in table.series.values())

    totals = await bounded([lambda m=m: total(m) for m in meters])  # type: ignore[misc]
    listed = []
    for meter, value in zip(meters, totals, strict=True):
        category = space.categories.get(int(meter["energy_category_id"]), {})
        listed.append(
            {
                "id": meter["id"],
                "name": meter["name"],
                "uuid": meter["uuid"],
                "energy_category_id": meter["energy_category_id"],
                "energy_category_name": category.get("name"),
                "unit_of_measure": category.get("unit_of_measure"),
                "total_in_category": value,
                "total_in_kgce": value * float(category.get("kgce") or 0),
                "total_in_kgco2e": value * float(category.get("kgco2e") or 0),
            }
        )
    result = {"space": space.describe(), "meters": listed}
    sheet = Sheet("meterbatch", space.name, local_period_label(*periods.reporting), query.language)
    rows = [
        [m["name"], m["energy_category_name"], m["unit_of_measure"], m["total_in_category"]] for m in listed
    ]
    sheet.blocks.append(Block("Meters", ["Meter", "Energy category", "Unit", "Energy"], rows))
    return respond("meterbatch", query, result, sheet)


@router.get("/reports/meterrealtime", response_model=None)
async def meter_realtime(
    meterid: int | None = Query(None, ge=1, le=MAX_ID, description="The meter (or give meteruuid)"),
    meteruuid: str | None = Query(None, max_length=64),
    quickmode: bool = Query(False, description="true: no point values and no Excel file"),
    format: str = Query("json", max_length=8, description="json, xlsx or csv"),
    ctx: ServiceContext = Depends(get_context),
) -> Any:
    """The meter's energy per quarter hour over the last 24 hours, and its points' latest values."""
    query = report_query(quickmode=quickmode, format=format, periodtype="hourly", reportingperiodstartdatetime=None,
                         reportingperiodenddatetime=None, baseperiodstartdatetime=None, baseperiodenddatetime=None,
                         language="en")  # fmt: skip
    subject = await load_subject(ctx, "meter", subject_key(meterid, meteruuid, "meter"))
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    end -= timedelta(minutes=end.minute % 15)
    start = end - timedelta(hours=REALTIME_HOURS)
    response = await ctx.call(
        "aggregation",
        "GET",
        f"/internal/meters/{subject.id}/quarters",
        params={"start": start.isoformat(), "end": end.isoformat()},
    )
    if response.status_code != 200:
        raise ProblemError(502, "Upstream error", "the aggregation service did not answer")
    rows = {row["quarter"]: row for row in response.json()}
    stamps, values, qualities = [], [], []
    moment = start
    while moment < end:
        row = rows.get(moment.isoformat())
        stamps.append(format_local(moment.astimezone(subject.tz)))
        values.append(row["energy"] if row else None)
        qualities.append(Quality(row["quality"]).label if row else "missing")
        moment += timedelta(minutes=15)
    info = _meter_info(subject)
    result: dict[str, Any] = {
        "meter": info,
        "energy_value": {"name": info["energy_category_name"], "timestamps": stamps, "values": values,
                         "qualities": qualities},
    }  # fmt: skip
    if not quickmode:
        result["parameters"] = await point_trends(ctx, subject.points, start, end, subject.tz)
    sheet = Sheet("meterrealtime", subject.name, f"{stamps[0]} to {format_local(end.astimezone(subject.tz))}")
    unit = info["unit_of_measure"] or ""
    sheet.blocks.append(
        Block(f"Energy per quarter hour ({unit})", ["Datetime", f"{info['energy_category_name']} ({unit})"],
              [[t, v] for t, v in zip(stamps, values, strict=True)], chart=True)
    )  # fmt: skip
    return respond("meterrealtime", query, result, sheet)


@router.get("/reports/metersubmetersbalance", response_model=None)
async def meter_submeters_balance(
    meterid: int | None = Query(None, ge=1, le=MAX_ID, description="The master meter (or give meteruuid)"),
    meteruuid: str | None = Query(None, max_length=64),
    query: ReportQuery = Depends(report_query),
    ctx: ServiceContext = Depends(get_context),
) -> Any:
    """The master meter's energy minus the sum of its submeters' (meters whose master_meter_id is it), per
    bucket: what the submeters do not account for."""
    subject = await load_subject(ctx, "meter", subject_key(meterid, meteruuid, "meter"))
    periods = resolve_periods(query, subject.tz)
    submeters = [{**m, "kind": "meter"} for m in subject.raw.get("submeters", [])]
    category = subject.categories.get(int(subject.raw["energy_category_id"]), {})
    kgce, kgco2e = float(category.get("kgce") or 0), float(category.get("kgco2e") or 0)

    async def section(start: datetime, end: datetime) -> tuple[dict[str, Any], list[datetime], list[Any]]:
        master = series_of(await collect(ctx, subject, start, end, periods.periodtype), subject)[0]
        table = await collect(ctx, subject, start, end, periods.periodtype, leaves=submeters)
        subs = [0.0] * len(table.starts)
        for cells in table.series.values():
            for i, cell in enumerate(cells):
                subs[i] += cell.energy
        differences = [m - s for m, s in zip(master.energy, subs, strict=True)]
        master_total, subs_total = sum(master.energy), sum(subs)
        body = meter_section(master, table.starts, kgce, kgco2e)
        body.update(
            {
                "master_meter_consumption_in_category": master_total,
                "submeters_consumption_in_category": subs_total,
                "difference_in_category": master_total - subs_total,
                "percentage_difference": (master_total - subs_total) / master_total if master_total else None,
                "submeters_values": subs,
                "differences_values": differences,
            }
        )
        return body, table.starts, [master, subs, differences]

    reporting, starts, (master, subs, differences) = await section(*periods.reporting)
    result: dict[str, Any] = {
        "meter": _meter_info(subject),
        "submeters": [{"id": m["id"], "name": m["name"], "uuid": m["uuid"]} for m in submeters],
        "reporting_period": reporting,
        "base_period": meter_section(None, [], kgce, kgco2e),
    }
    if periods.base is not None:
        result["base_period"], _, _ = await section(*periods.base)
    result["reporting_period"]["increment_rate"] = increment_rate(
        reporting["difference_in_category"], result["base_period"].get("difference_in_category")
    )
    sheet = Sheet(
        "metersubmetersbalance", subject.name, local_period_label(*periods.reporting), query.language
    )
    rows: list[list[Any]] = [
        [format_local(s), master.energy[i], subs[i], differences[i]] for i, s in enumerate(starts)
    ]
    rows.append(["Subtotal", sum(master.energy), sum(subs), sum(differences)])
    sheet.blocks.append(
        Block("Balance", ["Datetime", "Master meter", "Submeters", "Difference"], rows, chart=bool(starts))
    )
    return respond("metersubmetersbalance", query, result, sheet)

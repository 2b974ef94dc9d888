"""`GET /reports/meterenergy`, `/metercost`, `/metercarbon`: one meter per local bucket (MyEMS shape).

A meter's energy by hour, day, week, month or year in its space's local time, compared with a base period;
cost where aggregation prices it, carbon as energy times the category's kgCO2e factor.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from libs.service import ServiceContext, get_context
from services.reporting.export import Sheet
from services.reporting.framework import (
    MAX_ID,
    Measure,
    ReportQuery,
    Series,
    Subject,
    Table,
    collect,
    cost_table,
    increment_rate,
    instants,
    load_subject,
    local_period_label,
    point_trends,
    report_query,
    resolve_periods,
    respond,
    rollup_for,
    series_blocks,
    series_of,
    subject_key,
)
from services.reporting.periods import format_local

__all__ = ["meter_report", "meter_section", "rollup_for", "router"]

router = APIRouter(tags=["reports"])


def meter_section(
    series: Series | None, starts: list[datetime], kgce: float, kgco2e: float
) -> dict[str, Any]:
    """A single-meter section: its total, kgce and kgCO2e, and per bucket the value and quality."""
    if series is None:
        return {
            "total_in_category": 0.0,
            "total_in_kgce": 0.0,
            "total_in_kgco2e": 0.0,
            "timestamps": [],
            "values": [],
            "qualities": [],
            "quality": "missing",
        }
    energy = sum(series.energy)
    qualities = series.qualities
    return {
        "total_in_category": series.subtotal,
        "total_in_kgce": energy * kgce,
        "total_in_kgco2e": energy * kgco2e,
        "timestamps": [format_local(s) for s in starts],
        "values": series.values,
        "qualities": qualities,
        "quality": max(qualities, key=lambda q: _SEVERITY[q]) if qualities else "missing",
    }


_SEVERITY = {"good": 0, "manual": 1, "estimated": 2, "reset": 3, "rollover": 4, "suspect": 5, "missing": 6}


async def _table(
    ctx: ServiceContext, subject: Subject, start: datetime, end: datetime, periodtype: str, measure: Measure
) -> Table:
    if measure == "cost":
        return await cost_table(ctx, subject, start, end, periodtype)
    return await collect(ctx, subject, start, end, periodtype)


async def meter_report(
    ctx: ServiceContext, report: str, measure: Measure, key: str, query: ReportQuery
) -> dict[str, Any] | Response:
    """The meterenergy / metercost / metercarbon report of one meter."""
    subject = await load_subject(ctx, "meter", key)
    periods = resolve_periods(query, subject.tz)
    category = subject.categories.get(int(subject.raw["energy_category_id"]), {})
    kgce, kgco2e = float(category.get("kgce") or 0), float(category.get("kgco2e") or 0)

    async def section(start: datetime, end: datetime) -> tuple[dict[str, Any], Series | None, list[datetime]]:
        table = await _table(ctx, subject, start, end, periods.periodtype, measure)
        found = series_of(table, subject, measure)
        series = found[0] if found else None
        return meter_section(series, table.starts, kgce, kgco2e), series, table.starts

    reporting, r_series, r_starts = await section(*periods.reporting)
    result: dict[str, Any] = {
        "meter": {
            **subject.describe(),
            "energy_category_id": subject.raw["energy_category_id"],
            "energy_category_name": category.get("name"),
            "unit_of_measure": category.get("unit_of_measure"),
            "kgce": kgce,
            "kgco2e": kgco2e,
        },
        "reporting_period": reporting,
        "base_period": meter_section(None, [], kgce, kgco2e),
    }
    b_series: Series | None = None
    b_starts: list[datetime] = []
    if periods.base is not None:
        result["base_period"], b_series, b_starts = await section(*periods.base)
    result["reporting_period"]["increment_rate"] = increment_rate(
        result["reporting_period"]["total_in_category"], result["base_period"]["total_in_category"]
    )
    if not query.quickmode:
        start, end = instants(periods.reporting, subject.tz)
        result["parameters"] = await point_trends(ctx, subject.points, start, end, subject.tz)
    unit = r_series.unit if r_series else (category.get("unit_of_measure") or "")
    sheet = Sheet(report, subject.name, local_period_label(*periods.reporting), query.language)
    if r_series is not None:
        sheet.blocks += series_blocks(f"Reporting period ({unit})", [r_series], r_starts)
    if b_series is not None:
        sheet.blocks += series_blocks(f"Base period ({unit})", [b_series], b_starts)
    return respond(report, query, result, sheet)


_DOCS = {
    "meterenergy": (
        "energy",
        "Energy of one meter per bucket of local civil time, with each bucket's quality.",
    ),
    "metercost": ("cost", "Cost of one meter per local bucket (null where aggregation prices nothing yet)."),
    "metercarbon": ("carbon", "Carbon dioxide emission of one meter per local bucket (energy x kgCO2e)."),
}


def _route(report: str, measure: Measure, summary: str) -> None:
    async def handler(
        meterid: int | None = Query(None, ge=1, le=MAX_ID, description="The meter (or give meteruuid)"),
        meteruuid: str | None = Query(None, max_length=64),
        query: ReportQuery = Depends(report_query),
        ctx: ServiceContext = Depends(get_context),
    ) -> Any:
        return await meter_report(ctx, report, measure, subject_key(meterid, meteruuid, "meter"), query)

    handler.__doc__ = (
        f"{summary}\n\nA 23-hour day sums 23 hours; a bucket without any data is 0 with quality `missing`."
    )
    router.add_api_route(f"/reports/{report}", handler, methods=["GET"], name=report, response_model=None)


for _name, (_measure, _summary) in _DOCS.items():
    _route(_name, _measure, _summary)  # type: ignore[arg-type]

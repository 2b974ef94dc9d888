"""`GET /reports/dashboard`: the caller's spaces, each with its energy this year against last year (MyEMS)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query

from libs.service import ProblemError, ServiceContext, get_context
from services.reporting.export import Block, Sheet
from services.reporting.framework import (
    ReportQuery,
    collect,
    load_subject,
    report_query,
    resolve_periods,
    respond,
    series_of,
    series_section,
    shared_scope,
    today_local,
)

router = APIRouter(tags=["reports"])
MAX_SPACES = 50  # top-level spaces summarised in one dashboard


@router.get("/reports/dashboard", response_model=None)
async def dashboard(
    useruuid: str | None = Query(
        None, max_length=64, description="Accepted for MyEMS clients; the caller's own spaces are shown"
    ),
    query: ReportQuery = Depends(report_query),
    ctx: ServiceContext = Depends(get_context),
) -> Any:
    """Each top-level space the caller may see (at most 50; for an owner or guest, the root space of each
    installation that shares its reports with them), with its energy per category over the reporting
    period (default: this local year by month) against the base period (default: last year)."""
    if query.reporting_start or query.reporting_end:
        resolve_periods(query, ZoneInfo("UTC"))  # checked once, whatever spaces there are
    scope = await shared_scope(ctx)
    if scope is not None:  # an owner or guest: the root spaces of the installations sharing their reports
        roots = [{"id": ident} for ident in scope["roots"]][:MAX_SPACES]
    else:
        response = await ctx.call("registry", "GET", "/spaces/tree")
        if response.status_code != 200:
            raise ProblemError(502, "Upstream error", "the registry did not answer")
        roots = list(response.json())[:MAX_SPACES]
    spaces: list[dict[str, Any]] = []
    sheet = Sheet("dashboard", "spaces", "", query.language)
    for root in roots:
        subject = await load_subject(ctx, "space", str(root["id"]))
        this_year = today_local(subject.tz).year
        defaults = ReportQuery(
            query.periodtype if query.reporting_start else "monthly",
            query.reporting_start or datetime(this_year, 1, 1).isoformat(),
            query.reporting_end or datetime(this_year + 1, 1, 1).isoformat(),
            query.base_start
            or (None if query.reporting_start else datetime(this_year - 1, 1, 1).isoformat()),
            query.base_end or (None if query.reporting_start else datetime(this_year, 1, 1).isoformat()),
            query.quickmode,
            query.language,
            query.format,
        )
        periods = resolve_periods(defaults, subject.tz)
        reporting = await collect(ctx, subject, *periods.reporting, periods.periodtype)
        r_series = series_of(reporting, subject)
        b_series = []
        if periods.base is not None:
            b_series = series_of(await collect(ctx, subject, *periods.base, periods.periodtype), subject)
        spaces.append(
            {
                "space": subject.describe(),
                "reporting_period": series_section(r_series, reporting.starts, subject, base=b_series),
                "base_period": {
                    "names": [s.name for s in b_series],
                    "units": [s.unit for s in b_series],
                    "subtotals": [s.subtotal for s in b_series],
                },
            }
        )
        base_totals = {s.category_id: s.subtotal for s in b_series}
        sheet.blocks.append(
            Block(
                subject.name,
                ["Energy category", "Unit", "Reporting period", "Base period"],
                [[s.name, s.unit, s.subtotal, base_totals.get(s.category_id)] for s in r_series],
            )
        )
    return respond("dashboard", query, {"spaces": spaces}, sheet)

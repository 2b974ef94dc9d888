"""Reports of spaces, equipment, combined equipment, tenants, stores, shopfloors, virtual and offline meters.

One builder serves them all, parameterised by the subject's kind and the report's kind:

* ``energycategory`` (``energy`` for tenants, stores, shopfloors, virtual and offline meters): energy per
  category; ``energyitem``: per energy item; ``cost``; ``carbon`` (kgCO2e);
* ``load``: average load (energy / elapsed hours) and maximum load (largest hourly energy) per bucket;
* ``statistics``: mean, median, minimum, maximum, sample standard deviation and variance of the buckets;
* ``efficiency`` (equipment): output energy / input energy per bucket, per pair of categories;
* ``batch`` (equipment): every equipment of a space with its reporting-period subtotals;
* ``bill`` (tenants): energy and cost per category over the reporting period, the amount due.
"""

from __future__ import annotations

import statistics
from bisect import bisect_right
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from libs.service import ProblemError, ServiceContext, bad_request, get_context, not_found
from services.reporting.api.meterenergy import meter_section
from services.reporting.export import Block, Sheet
from services.reporting.framework import (
    MAX_ID,
    Grouping,
    Measure,
    Periods,
    ReportQuery,
    Series,
    Subject,
    Table,
    collect,
    cost_table,
    increment_rate,
    input_leaves,
    instants,
    load_subject,
    local_period_label,
    point_trends,
    report_query,
    resolve_periods,
    respond,
    series_blocks,
    series_of,
    series_section,
    shared_scope,
    subject_key,
    within,
)
from services.reporting.periods import bucket_ranges, format_local

router = APIRouter(tags=["reports"])

# The key MyEMS gives the subject in a report's result.
SUBJECT_FIELD = {
    "space": "space",
    "equipment": "equipment",
    "combinedequipment": "combined_equipment",
    "tenant": "tenant",
    "store": "store",
    "shopfloor": "shopfloor",
    "virtualmeter": "virtual_meter",
    "offlinemeter": "offline_meter",
}
_STANDARD = ("energycategory", "energyitem", "cost", "carbon", "load", "statistics")
REPORTS: dict[str, tuple[str, ...]] = {
    "space": _STANDARD,
    "equipment": (*_STANDARD, "efficiency"),
    "combinedequipment": (*_STANDARD, "efficiency"),
    "tenant": ("energy", "cost", "bill"),
    "store": ("energy", "cost"),
    "shopfloor": ("energy", "cost"),
    "virtualmeter": ("energy", "cost"),
    "offlinemeter": ("energy", "cost"),
}
_SINGLE = ("virtualmeter", "offlinemeter")  # one category each: the meter-like result shape
_MEASURE: dict[str, Measure] = {"cost": "cost", "carbon": "carbon"}


async def _series(
    ctx: ServiceContext, subject: Subject, start: datetime, end: datetime, periods: Periods, report: str
) -> tuple[list[Series], list[datetime]]:
    measure = _MEASURE.get(report, "energy")
    if measure == "cost":
        table = await cost_table(ctx, subject, start, end, periods.periodtype)
    else:
        table = await collect(ctx, subject, start, end, periods.periodtype)
    grouping: Grouping = "item" if report == "energyitem" else "category"
    return series_of(table, subject, measure, grouping), table.starts


def _empty_section() -> dict[str, Any]:
    return {"names": [], "units": [], "subtotals": [], "timestamps": [], "values": [], "qualities": []}


async def _series_report(
    ctx: ServiceContext, subject: Subject, periods: Periods, report: str, sheet: Sheet
) -> dict[str, Any]:
    r_series, r_starts = await _series(ctx, subject, *periods.reporting, periods, report)
    b_series: list[Series] | None = None
    if periods.base is not None:
        b_series, b_starts = await _series(ctx, subject, *periods.base, periods, report)
    if subject.kind in _SINGLE:
        category = subject.categories.get(int(subject.raw["energy_category_id"]), {})
        kgce, kgco2e = float(category.get("kgce") or 0), float(category.get("kgco2e") or 0)
        reporting = meter_section(r_series[0] if r_series else None, r_starts, kgce, kgco2e)
        base = meter_section(b_series[0] if b_series else None, b_starts if b_series else [], kgce, kgco2e)
        reporting["increment_rate"] = increment_rate(
            reporting["total_in_category"], base["total_in_category"]
        )
        out = {"reporting_period": reporting, "base_period": base}
    else:
        out = {
            "reporting_period": series_section(r_series, r_starts, subject, base=b_series or []),
            "base_period": series_section(b_series, b_starts, subject)
            if b_series is not None
            else _empty_section(),
        }
    sheet.blocks += series_blocks("Reporting period", r_series, r_starts)
    if b_series is not None:
        sheet.blocks += series_blocks("Base period", b_series, b_starts)
    return out


def _hours(start: datetime, end: datetime) -> float:
    return (end - start) / timedelta(hours=1)


async def _load_section(
    ctx: ServiceContext, subject: Subject, start: datetime, end: datetime, periods: Periods
) -> tuple[dict[str, Any], list[Block]]:
    """Average and maximum load per bucket from the subject's hourly energy."""
    ranges = bucket_ranges(start, end, subject.tz, periods.periodtype)
    hourly: Table = await collect(ctx, subject, start, end, "hourly")
    froms = [utc_from for _, utc_from, _ in ranges]
    names, units, averages, maximums, sub_averages, sub_maximums = [], [], [], [], [], []
    for series in series_of(hourly, subject, "energy"):
        energy = [0.0] * len(ranges)
        peak: list[float | None] = [None] * len(ranges)
        for hour_start, value, count in zip(hourly.starts, series.energy, series.counts, strict=True):
            index = bisect_right(froms, hour_start.astimezone(UTC)) - 1
            if index < 0 or not count:
                continue
            energy[index] += value
            peak[index] = value if peak[index] is None else max(peak[index] or 0.0, value)
        elapsed = [_hours(a, b) for _, a, b in ranges]
        avg = [e / h if h else None for e, h in zip(energy, elapsed, strict=True)]
        total_hours = sum(elapsed)
        found = [p for p in peak if p is not None]
        names.append(series.name)
        units.append(f"{series.unit}/h")
        sub_averages.append(avg)
        sub_maximums.append(peak)
        averages.append(sum(energy) / total_hours if total_hours else None)
        maximums.append(max(found) if found else None)
    timestamps = [format_local(local) for local, _, _ in ranges]
    section = {
        "names": names,
        "units": units,
        "averages": averages,
        "maximums": maximums,
        "timestamps": [timestamps for _ in names],
        "sub_averages": sub_averages,
        "sub_maximums": sub_maximums,
    }
    header = ["Datetime"]
    for name, unit in zip(names, units, strict=True):
        header += [f"{name} average ({unit})", f"{name} maximum ({unit})"]
    rows: list[list[Any]] = []
    for i, stamp in enumerate(timestamps):
        row: list[Any] = [stamp]
        for a, m in zip(sub_averages, sub_maximums, strict=True):
            row += [a[i], m[i]]
        rows.append(row)
    return section, [Block("Load", header, rows, chart=bool(names) and bool(rows))]


async def _load_report(
    ctx: ServiceContext, subject: Subject, periods: Periods, sheet: Sheet
) -> dict[str, Any]:
    reporting, blocks = await _load_section(ctx, subject, *periods.reporting, periods)
    sheet.blocks += blocks
    out = {"reporting_period": reporting, "base_period": _empty_section()}
    if periods.base is not None:
        base, _ = await _load_section(ctx, subject, *periods.base, periods)
        out["base_period"] = base
        by_name = dict(zip(base["names"], zip(base["averages"], base["maximums"], strict=True), strict=True))
        reporting["increment_rates_of_averages"] = [
            increment_rate(a, by_name.get(n, (None, None))[0])
            for n, a in zip(reporting["names"], reporting["averages"], strict=True)
        ]
        reporting["increment_rates_of_maximums"] = [
            increment_rate(m, by_name.get(n, (None, None))[1])
            for n, m in zip(reporting["names"], reporting["maximums"], strict=True)
        ]
    return out


def describe_values(values: list[float]) -> dict[str, float | None]:
    """Mean, median, minimum, maximum, sample standard deviation and variance (None without values;
    stdev and variance 0 for a single value)."""
    if not values:
        return dict.fromkeys(("mean", "median", "minimum", "maximum", "stdev", "variance"))
    many = len(values) > 1
    return {
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "minimum": min(values),
        "maximum": max(values),
        "stdev": statistics.stdev(values) if many else 0.0,
        "variance": statistics.variance(values) if many else 0.0,
    }


async def _statistics_report(
    ctx: ServiceContext, subject: Subject, periods: Periods, sheet: Sheet
) -> dict[str, Any]:
    out = await _series_report(ctx, subject, periods, "energycategory", sheet)
    for name in ("reporting_period", "base_period"):
        section = out[name]
        described = [
            describe_values(
                [v for v, q in zip(values, qualities, strict=True) if q != "missing" and v is not None]
            )
            for values, qualities in zip(section["values"], section["qualities"], strict=True)
        ]
        for stat in ("mean", "median", "minimum", "maximum", "stdev", "variance"):
            section[f"{stat}s" if stat != "variance" else "variances"] = [d[stat] for d in described]
        if name == "reporting_period":
            header = [
                "Statistic",
                *[f"{n} ({u})" for n, u in zip(section["names"], section["units"], strict=True)],
            ]
            rows = [
                [stat, *[d[stat] for d in described]]
                for stat in ("mean", "median", "minimum", "maximum", "stdev", "variance")
            ]
            sheet.blocks.insert(0, Block("Statistics", header, rows))
    return out


async def _efficiency_report(
    ctx: ServiceContext, subject: Subject, periods: Periods, sheet: Sheet
) -> dict[str, Any]:
    """Output / input per bucket for each pair of an output category and an input category."""
    inputs = input_leaves(subject)
    outputs = [m for m in subject.meters if m.get("is_output")]

    async def section(start: datetime, end: datetime) -> tuple[dict[str, Any], list[datetime], list[Series]]:
        ins = series_of(await collect(ctx, subject, start, end, periods.periodtype, leaves=inputs), subject)
        table = await collect(ctx, subject, start, end, periods.periodtype, leaves=outputs)
        outs = series_of(table, subject)
        pairs: list[Series] = []
        cumulations: list[float | None] = []
        for o in outs:
            for i in ins:
                values = [ov / iv if iv else None for ov, iv in zip(o.energy, i.energy, strict=True)]
                pairs.append(
                    Series(
                        f"{o.name}/{i.name}",
                        f"{o.unit}/{i.unit}",
                        values,
                        o.qualities,
                        o.category_id,
                        None,
                        [],
                        o.counts,
                    )
                )
                total_in = sum(i.energy)
                cumulations.append(sum(o.energy) / total_in if total_in else None)
        stamps = [format_local(s) for s in table.starts]
        return (
            {
                "names": [p.name for p in pairs],
                "units": [p.unit for p in pairs],
                "cumulations": cumulations,
                "timestamps": [stamps for _ in pairs],
                "values": [p.values for p in pairs],
            },
            table.starts,
            pairs,
        )

    reporting, starts, pairs = await section(*periods.reporting)
    out = {"reporting_period": reporting, "base_period": _empty_section()}
    if periods.base is not None:
        out["base_period"], _, _ = await section(*periods.base)
        base = dict(zip(out["base_period"]["names"], out["base_period"]["cumulations"], strict=True))
        reporting["increment_rates"] = [
            increment_rate(c, base.get(n))
            for n, c in zip(reporting["names"], reporting["cumulations"], strict=True)
        ]
    header = ["Datetime", *[f"{p.name} ({p.unit})" for p in pairs]]
    rows: list[list[Any]] = [[format_local(s), *[p.values[k] for p in pairs]] for k, s in enumerate(starts)]
    rows.append(["Cumulation", *reporting["cumulations"]])
    sheet.blocks.append(Block("Efficiency", header, rows, chart=bool(pairs) and bool(starts)))
    return out


async def _bill_report(
    ctx: ServiceContext, subject: Subject, periods: Periods, sheet: Sheet
) -> dict[str, Any]:
    """A tenant's bill: energy and cost per category over the reporting period, and the amount due."""
    energy, _ = await _series(ctx, subject, *periods.reporting, periods, "energy")
    cost, _ = await _series(ctx, subject, *periods.reporting, periods, "cost")
    costs = {(s.category_id, s.item_id): s.subtotal for s in cost}
    subtotal_costs = [costs.get((s.category_id, s.item_id)) for s in energy]
    priced = [c for c in subtotal_costs if c is not None]
    details = await ctx.call("registry", "GET", f"/tenants/{subject.id}")
    tenant = details.json() if details.status_code == 200 else {}
    reporting = {
        "names": [s.name for s in energy],
        "energy_category_ids": [s.category_id for s in energy],
        "units": [s.unit for s in energy],
        "subtotals_input": [s.subtotal for s in energy],
        "subtotals_cost": subtotal_costs,
        "total_cost": sum(priced) if len(priced) == len(subtotal_costs) else None,
        "currency_unit": "EUR",
    }
    rows: list[list[Any]] = [
        [s.name, s.unit, s.subtotal, c] for s, c in zip(energy, subtotal_costs, strict=True)
    ]
    rows.append(["Total", "", None, reporting["total_cost"]])
    sheet.blocks.append(Block("Bill", ["Energy category", "Unit", "Energy", "Cost (EUR)"], rows))
    return {
        "reporting_period": reporting,
        "lease": {
            k: tenant.get(k)
            for k in (
                "lease_number",
                "lease_start_datetime",
                "lease_end_datetime",
                "area",
                "buildings",
                "floors",
                "rooms",
            )
        },
    }


async def subject_report(
    ctx: ServiceContext, kind: str, report: str, key: str, query: ReportQuery
) -> dict[str, Any] | Response:
    """Any report of any subject kind: shared parameters, result envelope and exports."""
    subject = await load_subject(ctx, kind, key)
    periods = resolve_periods(query, subject.tz)
    name = f"{kind}{report}"
    sheet = Sheet(name, subject.name, local_period_label(*periods.reporting), query.language)
    builders: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "load": lambda: _load_report(ctx, subject, periods, sheet),
        "statistics": lambda: _statistics_report(ctx, subject, periods, sheet),
        "efficiency": lambda: _efficiency_report(ctx, subject, periods, sheet),
        "bill": lambda: _bill_report(ctx, subject, periods, sheet),
    }
    build = builders.get(report, lambda: _series_report(ctx, subject, periods, report, sheet))
    body = await build()
    result: dict[str, Any] = {SUBJECT_FIELD[kind]: subject.describe(), **body}
    if not query.quickmode:
        start, end = instants(periods.reporting, subject.tz)
        result["parameters"] = await point_trends(ctx, subject.points, start, end, subject.tz)
    return respond(name, query, result, sheet)


def _register(kind: str, report: str) -> None:
    async def handler(
        ident: int | None = Query(None, alias=f"{kind}id", ge=1, le=MAX_ID, description=f"The {kind}"),
        uuid: str | None = Query(
            None, alias=f"{kind}uuid", max_length=64, description=f"Or the {kind}'s uuid"
        ),
        query: ReportQuery = Depends(report_query),
        ctx: ServiceContext = Depends(get_context),
    ) -> Any:
        return await subject_report(ctx, kind, report, subject_key(ident, uuid, kind), query)

    handler.__doc__ = f"The {report} report of a {kind} (MyEMS `{kind}{report}`), in the {kind}'s local time."
    router.add_api_route(
        f"/reports/{kind}{report}", handler, methods=["GET"], name=f"{kind}{report}", response_model=None
    )


for _kind, _reports in REPORTS.items():
    for _report in _reports:
        _register(_kind, _report)


# -- batch reports: every subject of a kind in a space -------------------------------------------------


async def _space_members(ctx: ServiceContext, space_id: int, kind: str) -> list[dict[str, Any]]:
    collection = {"equipment": "equipments", "combinedequipment": "combinedequipments"}[kind]
    space = await ctx.call("registry", "GET", f"/spaces/{space_id}")
    if space.status_code == 404 or not within(await shared_scope(ctx), "space", space_id):
        raise not_found("space", space_id)
    response = await ctx.call("registry", "GET", f"/spaces/{space_id}/{collection}")
    if response.status_code != 200:
        raise ProblemError(502, "Upstream error", "the registry did not answer")
    return list(response.json())


async def batch_report(
    ctx: ServiceContext, kind: str, space_id: int, query: ReportQuery
) -> dict[str, Any] | Response:
    """Each subject of ``kind`` bound to the space, with its energy per category over the reporting period."""
    members = await _space_members(ctx, space_id, kind)
    rows: list[dict[str, Any]] = []
    categories: dict[int, dict[str, Any]] = {}
    period_label = ""
    for member in members:
        subject = await load_subject(ctx, kind, str(member["id"]))
        periods = resolve_periods(query, subject.tz)
        period_label = local_period_label(*periods.reporting)
        table = await collect(ctx, subject, *periods.reporting, periods.periodtype)
        subtotals = {s.category_id: s.subtotal for s in series_of(table, subject)}
        for category in subtotals:
            if category is not None:
                categories[category] = subject.categories[category]
        rows.append({**subject.describe(), "subtotals": subtotals})
    order = sorted(categories)
    if not members:
        resolve_periods(query, ZoneInfo("UTC"))  # the parameters are still checked
    listed = [
        {
            **{k: v for k, v in row.items() if k != "subtotals"},
            "values": [row["subtotals"].get(c, 0.0) for c in order],
        }
        for row in rows
    ]
    result: dict[str, Any] = {
        f"{kind}s" if kind == "equipment" else "combined_equipments": listed,
        "energycategories": [
            {"id": c, "name": categories[c]["name"], "unit_of_measure": categories[c]["unit_of_measure"]}
            for c in order
        ],
    }
    header = ["Name", *[f"{categories[c]['name']} ({categories[c]['unit_of_measure']})" for c in order]]
    sheet = Sheet(f"{kind}batch", f"space {space_id}", period_label, query.language)
    sheet.blocks.append(
        Block(
            "Batch", header, [[r["name"], *r["values"]] for r in listed], chart=bool(listed) and bool(order)
        )
    )
    return respond(f"{kind}batch", query, result, sheet)


def _register_batch(kind: str) -> None:
    async def handler(
        spaceid: int | None = Query(None, ge=1, le=MAX_ID, description="The space whose members are listed"),
        query: ReportQuery = Depends(report_query),
        ctx: ServiceContext = Depends(get_context),
    ) -> Any:
        if spaceid is None:
            raise bad_request("spaceid", "spaceid is required")
        return await batch_report(ctx, kind, spaceid, query)

    handler.__doc__ = f"Every {kind} of a space with its energy per category over the reporting period."
    router.add_api_route(
        f"/reports/{kind}batch", handler, methods=["GET"], name=f"{kind}batch", response_model=None
    )


for _kind in ("equipment", "combinedequipment"):
    _register_batch(_kind)

"""The report framework: parameters, subjects, bucketed energy, MyEMS result sections and exports.

Every report (``GET /reports/<name>``) is the same few steps:

1. parse the MyEMS parameters (``ReportQuery``: period type, reporting and base periods in local wall-clock
   time, ``quickmode``, ``language``, ``format``) and find the subject (``load_subject``: ``{kind}id`` or
   ``{kind}uuid``, looked up in the registry as the caller may see it, so another provider's subject is a 404);
2. read its energy per local bucket (``collect``): stored rollups from aggregation where they are current and
   tile the period, finer data where they are stale, in the subject's time zone;
3. shape MyEMS sections (``series_section``, ``increment_rate``) and a ``Sheet`` (the same numbers as tables);
4. answer JSON (with ``excel_bytes_base64`` unless ``quickmode``), or the file itself for ``format=xlsx|csv``
   (``respond``).

Data sources, in order of preference:

* meters: the aggregation service's meter routes (stored daily/monthly/yearly rollups, stale periods and
  partial days summed from quarters, exact in every zone);
* other subjects: ``GET /internal/subjects/{kind}/{id}/{rollup}`` on aggregation (rows per period, energy
  category and item), with stale periods read at ``hourly``;
* where aggregation has no subject rollups (404), the subject's meters, offline and virtual meters are read
  one by one and added up (input meters only; output meters of equipment are for efficiency reports).
"""

from __future__ import annotations

import asyncio
import re
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Query
from fastapi.responses import Response

from libs.service import (
    Principal,
    ProblemError,
    ServiceContext,
    bad_request,
    current_principal_header,
    not_found,
)
from proto_schemas.quality import Quality
from services.reporting.export import Block, Sheet, to_csv, to_xlsx, xlsx_base64
from services.reporting.periods import PERIOD_TYPES, PeriodType, bucket_ranges, format_local, resolve_local

KINDS = (
    "meter",
    "virtualmeter",
    "offlinemeter",
    "space",
    "equipment",
    "combinedequipment",
    "tenant",
    "store",
    "shopfloor",
)
MAX_ID = 2**63 - 1
LANGUAGES = ("en", "de", "fr", "nl", "es", "zh_CN")
FORMATS = ("json", "xlsx", "csv")
CURRENCY = "EUR"
MAX_SPAN = {"hourly": timedelta(days=93), "daily": timedelta(days=3700)}
DEFAULT_MAX_SPAN = timedelta(days=36600)
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_PARALLEL = 8  # sibling calls in flight at once when a subject is read meter by meter


# -- parameters ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportQuery:
    """The MyEMS report parameters, as typed (periods are resolved once the subject's zone is known)."""

    periodtype: str
    reporting_start: str | None
    reporting_end: str | None
    base_start: str | None
    base_end: str | None
    quickmode: bool
    language: str
    format: str


def report_query(
    periodtype: str = Query("daily", description="hourly, daily, weekly, monthly or yearly", max_length=16),
    reportingperiodstartdatetime: str | None = Query(
        None, description="Local wall-clock time, YYYY-MM-DDTHH:MM:SS (an offset is converted)", max_length=40
    ),
    reportingperiodenddatetime: str | None = Query(None, description="Local time, exclusive", max_length=40),
    baseperiodstartdatetime: str | None = Query(None, description="Comparison period start", max_length=40),
    baseperiodenddatetime: str | None = Query(None, description="Comparison period end", max_length=40),
    quickmode: bool = Query(False, description="true: no parameters (point trends) and no Excel file"),
    language: str = Query("en", description="Language of the Excel and CSV labels", max_length=16),
    format: str = Query("json", description="json, xlsx (the Excel file) or csv", max_length=8),
) -> ReportQuery:
    """FastAPI dependency: the standard report parameters, checked for form."""
    if periodtype not in PERIOD_TYPES:
        raise bad_request("periodtype", f"periodtype must be one of {', '.join(PERIOD_TYPES)}")
    if language not in LANGUAGES:
        raise bad_request("language", f"language must be one of {', '.join(LANGUAGES)}")
    if format not in FORMATS:
        raise bad_request("format", f"format must be one of {', '.join(FORMATS)}")
    # Malformed times are the caller's error whatever the subject: answer 400 before looking it up.
    for name, value in (
        ("reportingperiodstartdatetime", reportingperiodstartdatetime),
        ("reportingperiodenddatetime", reportingperiodenddatetime),
        ("baseperiodstartdatetime", baseperiodstartdatetime),
        ("baseperiodenddatetime", baseperiodenddatetime),
    ):
        parse_local(value, name)
    return ReportQuery(
        periodtype,
        reportingperiodstartdatetime,
        reportingperiodenddatetime,
        baseperiodstartdatetime,
        baseperiodenddatetime,
        quickmode,
        language,
        format,
    )


def parse_local(value: str | None, field_name: str) -> datetime | None:
    """A wall-clock time as typed (naive), or aware when the caller gave an offset; None when absent."""
    if value is None or value == "":
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise bad_request(field_name, "must be a local date and time, YYYY-MM-DDTHH:MM:SS") from exc


def period_range(
    start: datetime | None, end: datetime | None, names: tuple[str, str], tz: ZoneInfo, periodtype: str
) -> tuple[datetime, datetime]:
    """A checked [start, end) in naive local wall-clock time of ``tz`` (offsets converted)."""
    if start is None or end is None:
        missing = names[0] if start is None else names[1]
        raise bad_request(missing, f"{missing} is required")
    for name, moment in zip(names, (start, end), strict=True):
        if moment.tzinfo is not None:
            try:
                moment.astimezone(tz)
            except (OverflowError, ValueError) as exc:
                raise bad_request(name, "reports cover the years 1970 to 2200") from exc
    start = start.astimezone(tz).replace(tzinfo=None) if start.tzinfo else start
    end = end.astimezone(tz).replace(tzinfo=None) if end.tzinfo else end
    if end <= start:
        raise bad_request(names[1], f"{names[1]} must be after {names[0]}")
    for name, moment in zip(names, (start, end), strict=True):
        if not 1970 <= moment.year <= 2200:
            raise bad_request(name, "reports cover the years 1970 to 2200")
    limit = MAX_SPAN.get(periodtype, DEFAULT_MAX_SPAN)
    if end - start > limit:
        raise bad_request(names[1], f"a {periodtype} report spans at most {limit.days} days")
    return start, end


@dataclass(frozen=True)
class Periods:
    """The resolved periods of a report in its subject's zone."""

    periodtype: PeriodType
    tz: ZoneInfo
    reporting: tuple[datetime, datetime]
    base: tuple[datetime, datetime] | None


def resolve_periods(query: ReportQuery, tz: ZoneInfo, *, require_reporting: bool = True) -> Periods:
    """The reporting period (required) and the base period (optional, both ends or neither)."""
    reporting = period_range(
        parse_local(query.reporting_start, "reportingperiodstartdatetime"),
        parse_local(query.reporting_end, "reportingperiodenddatetime"),
        ("reportingperiodstartdatetime", "reportingperiodenddatetime"),
        tz,
        query.periodtype,
    )
    base_start = parse_local(query.base_start, "baseperiodstartdatetime")
    base_end = parse_local(query.base_end, "baseperiodenddatetime")
    base = None
    if base_start is not None or base_end is not None:
        base = period_range(
            base_start, base_end, ("baseperiodstartdatetime", "baseperiodenddatetime"), tz, query.periodtype
        )
    return Periods(query.periodtype, tz, reporting, base)  # type: ignore[arg-type]


def subject_key(ident: int | None, uuid: str | None, kind: str) -> str:
    """The registry key of a subject from ``{kind}id`` or ``{kind}uuid`` (one is required)."""
    if ident is not None:
        return str(ident)
    if uuid:
        if not _UUID.match(uuid):
            raise bad_request(f"{kind}uuid", f"{kind}uuid must be a UUID")
        return uuid.lower()
    raise bad_request(f"{kind}id", f"{kind}id or {kind}uuid is required")


# -- subjects ------------------------------------------------------------------------------------------


@dataclass
class Subject:
    """What a report needs to know about its subject (from the registry's read model)."""

    kind: str
    id: int
    name: str
    uuid: str
    tz: ZoneInfo
    raw: dict[str, Any]
    categories: dict[int, dict[str, Any]]
    items: dict[int, dict[str, Any]]

    @property
    def meters(self) -> list[dict[str, Any]]:
        """Its meters, offline and virtual meters (``kind``, ``id``, ``energy_category_id``, ``is_output``…)."""
        return list(self.raw.get("meters", []))

    @property
    def points(self) -> list[dict[str, Any]]:
        return list(self.raw.get("points", []))

    def category_ids(self) -> list[int]:
        """The categories its input meters measure (a meter's own category for a meter)."""
        found = {int(m["energy_category_id"]) for m in self.meters if not m.get("is_output")}
        if self.raw.get("energy_category_id") is not None:
            found.add(int(self.raw["energy_category_id"]))
        return sorted(found)

    def factor(self, category_id: int, name: str) -> float:
        return float(self.categories.get(category_id, {}).get(name) or 0.0)

    def describe(self) -> dict[str, Any]:
        """The subject as MyEMS puts it at the top of a report."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "uuid": self.uuid,
            "cost_center_id": self.raw.get("cost_center_id"),
            "timezone": self.tz.key,
        }
        if self.raw.get("area") is not None:
            out["area"] = self.raw["area"]
        return out


SHARED_READERS = ("owner", "guest")  # roles that read only the reports their installations share


async def shared_scope(ctx: ServiceContext) -> dict[str, Any] | None:
    """For an owner or guest: the root spaces and subjects (by kind) of the installations they own or that
    share reports with them (seed 000 "share reports"), and those of the installations that do not
    (``withheld``). None for staff, who see every subject of their provider."""
    principal = Principal.from_header(current_principal_header.get())
    if principal is None or principal.role not in SHARED_READERS:
        return None
    scope = await _get(ctx, "registry", "/internal/reportscope")
    if scope is None:
        raise ProblemError(502, "Upstream error", "the registry did not answer")
    return dict(scope)


def within(scope: dict[str, Any] | None, kind: str, ident: int) -> bool:
    """Whether an owner or guest may read a subject's reports (staff always): True when an installation of
    theirs shares it; 403 when it is in one of theirs that does not; False (a 404) when it is not theirs."""
    if scope is None or ident in scope["subjects"].get(kind, []):
        return True
    if ident in scope["withheld"].get(kind, []):
        raise ProblemError(
            403, "Forbidden", f"this installation does not share its reports with you ({kind})"
        )
    return False


async def load_subject(ctx: ServiceContext, kind: str, key: str) -> Subject:
    """The subject by id or uuid as the caller may see it; 404 when it does not exist or is not theirs (for
    owners and guests: not in an installation of theirs that shares its reports, see ``shared_scope``)."""
    scope = await shared_scope(ctx)
    response = await ctx.call("registry", "GET", f"/internal/reportsubjects/{kind}/{key}")
    if response.status_code == 404:
        raise not_found(kind, key)
    if response.status_code != 200:
        raise ProblemError(502, "Upstream error", "the registry did not answer")
    raw = dict(response.json())
    if not within(scope, kind, int(raw["id"])):
        raise not_found(kind, key)
    try:
        tz = ZoneInfo(raw["timezone"])
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo("UTC")
    return Subject(
        kind=kind,
        id=int(raw["id"]),
        name=raw["name"],
        uuid=raw["uuid"],
        tz=tz,
        raw=raw,
        categories={int(c["id"]): c for c in raw.get("energy_categories", [])},
        items={int(i["id"]): i for i in raw.get("energy_items", [])},
    )


# -- energy per bucket ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Cell:
    """One bucket of one series: energy, cost (None when not priced), worst quality, rows that fed it."""

    energy: float = 0.0
    cost: float | None = 0.0
    quality: int = int(Quality.GOOD)
    count: int = 0

    def add(self, energy: float, cost: float | None, quality: int | None, count: int) -> None:
        if count <= 0:
            return
        self.energy += energy
        self.cost = None if cost is None or self.cost is None else self.cost + cost
        self.quality = max(self.quality, int(quality or 0))
        self.count += count

    @property
    def quality_label(self) -> str:
        return Quality(self.quality).label if self.count else Quality.MISSING.label


SeriesKey = tuple[int, int | None]  # (energy_category_id, energy_item_id)


@dataclass
class Table:
    """A subject's energy over a period: the local bucket starts and, per (category, item), one cell each."""

    starts: list[datetime]
    series: dict[SeriesKey, list[Cell]] = field(default_factory=dict)

    def cells(self, key: SeriesKey) -> list[Cell]:
        if key not in self.series:
            self.series[key] = [Cell() for _ in self.starts]
        return self.series[key]


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


class _Locator:
    """Which bucket of a report an instant or a local date falls in."""

    def __init__(self, ranges: Sequence[tuple[datetime, datetime, datetime]], tz: ZoneInfo) -> None:
        self.froms = [utc_from for _, utc_from, _ in ranges]
        self.tos = [utc_to for _, _, utc_to in ranges]
        self.tz = tz

    def instant(self, moment: datetime) -> int:
        index = bisect_right(self.froms, moment) - 1
        return index if 0 <= index < len(self.froms) and moment < self.tos[index] else -1

    def local_date(self, day: str) -> int:
        return self.instant(resolve_local(datetime.fromisoformat(day[:10]), self.tz).astimezone(UTC))


async def _get(ctx: ServiceContext, service: str, path: str, **kwargs: Any) -> Any | None:
    """A sibling's JSON answer, None on 404 (not there, or not served yet); 502 otherwise."""
    response = await ctx.call(service, kwargs.pop("method", "GET"), path, **kwargs)
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise ProblemError(502, "Upstream error", f"the {service} service did not answer")
    return response.json()


async def _meter_cells(
    ctx: ServiceContext,
    meter_id: int,
    start: datetime,
    end: datetime,
    tz: ZoneInfo,
    ranges: list[tuple[datetime, datetime, datetime]],
    periodtype: str,
) -> list[Cell]:
    """A meter's buckets: stored daily/monthly/yearly rollups where current and tiling the range, else sums
    of the stored quarters (exact in every zone)."""
    cells = [Cell() for _ in ranges]
    from_quarters = set(range(len(ranges)))
    rollup = rollup_for(start, end, periodtype)
    if rollup is not None and ranges:
        stored = await _get(
            ctx,
            "aggregation",
            f"/internal/meters/{meter_id}/{rollup}",
            params={"start": start.date().isoformat(), "end": end.date().isoformat()},
        )
        if stored is not None and stored["timezone"] == tz.key and not stored["rebuilding"]:
            where = _Locator(ranges, tz)
            from_quarters = {where.local_date(day) for day in stored["stale"]}
            for row in stored["rows"]:
                index = where.local_date(row["date"])
                if index >= 0 and index not in from_quarters:
                    cells[index].add(row["energy"], 0.0, row["quality"], row["quarters"])
    wanted = sorted(i for i in from_quarters if 0 <= i < len(ranges))
    if wanted:
        sums = await _get(
            ctx,
            "aggregation",
            f"/internal/meters/{meter_id}/sums",
            method="POST",
            json={"ranges": [[ranges[i][1].isoformat(), ranges[i][2].isoformat()] for i in wanted]},
        )
        for index, found in zip(wanted, sums or [], strict=False):
            cells[index].add(found["energy"], 0.0, found["quality"], found["quarters"])
    return cells


async def _quarter_cells(
    ctx: ServiceContext, path: str, ranges: list[tuple[datetime, datetime, datetime]], tz: ZoneInfo
) -> list[Cell]:
    """Buckets of a virtual or offline meter, summed from its stored quarters."""
    cells = [Cell() for _ in ranges]
    if not ranges:
        return cells
    rows = await _get(
        ctx,
        "aggregation",
        path,
        params={"start": ranges[0][1].isoformat(), "end": ranges[-1][2].isoformat()},
    )
    where = _Locator(ranges, tz)
    for row in rows or []:
        index = where.instant(datetime.fromisoformat(row["quarter"]))
        if index >= 0:
            cells[index].add(row["energy"], 0.0, row["quality"], 1)
    return cells


async def bounded(calls: Iterable[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run the calls concurrently, a few at a time (siblings are shared by every request)."""
    gate = asyncio.Semaphore(_PARALLEL)

    async def run(call: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(run(call) for call in calls)))


async def _leaf_table(
    ctx: ServiceContext,
    leaves: list[dict[str, Any]],
    start: datetime,
    end: datetime,
    tz: ZoneInfo,
    periodtype: str,
    ranges: list[tuple[datetime, datetime, datetime]],
) -> Table:
    """A subject read meter by meter (the fallback where aggregation keeps no subject rollups)."""
    table = Table([local for local, _, _ in ranges])
    paths = {
        "virtualmeter": "/internal/virtualmeters/{}/quarters",
        "offlinemeter": "/internal/offlinemeters/{}/quarters",
    }

    def reader(leaf: dict[str, Any]) -> Callable[[], Awaitable[list[Cell]]]:
        if leaf["kind"] == "meter":
            return lambda: _meter_cells(ctx, int(leaf["id"]), start, end, tz, ranges, periodtype)
        return lambda: _quarter_cells(ctx, paths[leaf["kind"]].format(leaf["id"]), ranges, tz)

    results = await bounded(reader(leaf) for leaf in leaves)
    for leaf, cells in zip(leaves, results, strict=True):
        key = (int(leaf["energy_category_id"]), leaf.get("energy_item_id"))
        target = table.cells(key)
        for index, cell in enumerate(cells):
            target[index].add(cell.energy, None, cell.quality, cell.count)
    return table


def _add_rows(
    table: Table, rows: Iterable[dict[str, Any]], index_of: Callable[[str], int], skip: set[int]
) -> None:
    for row in rows:
        index = index_of(row["start"])
        if index < 0 or index in skip:
            continue
        key = (int(row["energy_category_id"]), row.get("energy_item_id"))
        count = int(row.get("hours") or 0) or 1
        table.cells(key)[index].add(float(row["energy"]), row.get("cost"), row.get("quality"), count)


async def _subject_table(
    ctx: ServiceContext,
    subject: Subject,
    start: datetime,
    end: datetime,
    ranges: list[tuple[datetime, datetime, datetime]],
    periodtype: str,
) -> Table | None:
    """A subject's buckets from aggregation's subject rollups; None when aggregation does not serve them."""
    tz = subject.tz
    table = Table([local for local, _, _ in ranges])
    if not ranges:
        return table
    base = f"/internal/subjects/{subject.kind}/{subject.id}"
    where = _Locator(ranges, tz)
    hourly_for = set(range(len(ranges)))
    rollup = rollup_for(start, end, periodtype)
    if rollup is not None:
        stored = await _get(
            ctx,
            "aggregation",
            f"{base}/{rollup}",
            params={"start": start.date().isoformat(), "end": end.date().isoformat()},
        )
        if stored is None:
            return None
        if stored.get("timezone") == tz.key and not stored.get("rebuilding"):
            hourly_for = {where.local_date(day) for day in stored.get("stale", [])}
            _add_rows(table, stored.get("rows", []), where.local_date, hourly_for)
    wanted = sorted(i for i in hourly_for if i >= 0)
    if wanted:
        hourly = await _get(
            ctx,
            "aggregation",
            f"{base}/hourly",
            params={"start": ranges[wanted[0]][1].isoformat(), "end": ranges[wanted[-1]][2].isoformat()},
        )
        if hourly is None:
            return None
        others = set(range(len(ranges))) - set(wanted)
        _add_rows(table, hourly.get("rows", []), lambda s: where.instant(datetime.fromisoformat(s)), others)
    return table


def input_leaves(subject: Subject) -> list[dict[str, Any]]:
    return [m for m in subject.meters if not m.get("is_output")]


async def collect(
    ctx: ServiceContext,
    subject: Subject,
    start: datetime,
    end: datetime,
    periodtype: str,
    *,
    leaves: list[dict[str, Any]] | None = None,
) -> Table:
    """The subject's energy (and cost, where aggregation prices it) per local bucket of [start, end).

    Every bucket of every series is present; a bucket without data has count 0 (quality ``missing``).
    ``leaves`` reads the given meters instead of the subject (efficiency reports split inputs and outputs).
    """
    tz = subject.tz
    ranges = bucket_ranges(start, end, tz, periodtype)  # type: ignore[arg-type]
    if leaves is not None:
        table = await _leaf_table(ctx, leaves, start, end, tz, periodtype, ranges)
    elif subject.kind == "meter":
        cells = await _meter_cells(ctx, subject.id, start, end, tz, ranges, periodtype)
        table = Table([local for local, _, _ in ranges], {(subject.category_ids()[0], None): cells})
        for cell in cells:
            cell.cost = None  # meters are priced by aggregation's subject rollups (see cost_table)
    else:
        found = await _subject_table(ctx, subject, start, end, ranges, periodtype)
        table = (
            found
            if found is not None
            else await _leaf_table(ctx, input_leaves(subject), start, end, tz, periodtype, ranges)
        )
    for category in subject.category_ids() if leaves is None else []:
        if not any(key[0] == category for key in table.series):
            table.cells((category, None))
    return table


async def cost_table(
    ctx: ServiceContext, subject: Subject, start: datetime, end: datetime, periodtype: str
) -> Table:
    """Energy and cost per bucket: from aggregation's subject rollups (cost null where it prices nothing)."""
    ranges = bucket_ranges(start, end, subject.tz, periodtype)  # type: ignore[arg-type]
    found = await _subject_table(ctx, subject, start, end, ranges, periodtype)
    if found is None:
        table = await collect(ctx, subject, start, end, periodtype)
        for cells in table.series.values():
            for cell in cells:
                cell.cost = None
        return table
    for category in subject.category_ids():
        if not any(key[0] == category for key in found.series):
            found.cells((category, None))
    return found


# -- shaping -------------------------------------------------------------------------------------------

Measure = Literal["energy", "cost", "carbon", "kgce"]
Grouping = Literal["category", "item"]


@dataclass
class Series:
    """One named column of a report: its bucket values (None where unknown), qualities and unit."""

    name: str
    unit: str
    values: list[float | None]
    qualities: list[str]
    category_id: int | None = None
    item_id: int | None = None
    energy: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    @property
    def subtotal(self) -> float | None:
        if any(v is None for v, c in zip(self.values, self.counts, strict=True) if c):
            return None
        return sum(v or 0.0 for v in self.values)


def _value(cell: Cell, measure: Measure, kgce: float, kgco2e: float) -> float | None:
    if not cell.count:
        return 0.0
    if measure == "cost":
        return cell.cost
    if measure == "carbon":
        return cell.energy * kgco2e
    if measure == "kgce":
        return cell.energy * kgce
    return cell.energy


def series_of(
    table: Table, subject: Subject, measure: Measure = "energy", grouping: Grouping = "category"
) -> list[Series]:
    """The table's series merged by category (or by energy item), valued as energy, cost or carbon."""
    groups: dict[tuple[int, int | None], list[Cell]] = {}
    for (category, item), cells in sorted(table.series.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        if grouping == "item" and item is None:
            continue
        key = (category, item if grouping == "item" else None)
        merged = groups.setdefault(key, [Cell() for _ in table.starts])
        for target, cell in zip(merged, cells, strict=True):
            target.add(cell.energy, cell.cost, cell.quality, cell.count)
    out: list[Series] = []
    for (category, item), cells in groups.items():
        info = subject.categories.get(category, {})
        kgce, kgco2e = subject.factor(category, "kgce"), subject.factor(category, "kgco2e")
        unit = {"cost": CURRENCY, "carbon": "kgCO2e", "kgce": "kgce"}.get(
            measure, info.get("unit_of_measure", "")
        )
        name = (
            subject.items.get(item, {}).get("name", f"item {item}")
            if item is not None
            else info.get("name", "")
        )
        out.append(
            Series(
                name=name,
                unit=unit,
                values=[_value(c, measure, kgce, kgco2e) for c in cells],
                qualities=[c.quality_label for c in cells],
                category_id=category,
                item_id=item,
                energy=[c.energy for c in cells],
                counts=[c.count for c in cells],
            )
        )
    return out


def increment_rate(reporting: float | None, base: float | None) -> float | None:
    """(reporting - base) / base, MyEMS's increment rate; None without a base."""
    if reporting is None or not base:
        return None
    return (reporting - base) / base


def _worst(labels: Sequence[str]) -> str:
    qualities = [Quality[label.upper()] for label in labels]
    return Quality.worst(*qualities).label if qualities else Quality.MISSING.label


def series_section(
    series: list[Series],
    starts: list[datetime],
    subject: Subject,
    *,
    base: list[Series] | None = None,
) -> dict[str, Any]:
    """A MyEMS multi-series section (names, units, subtotals, timestamps, values, qualities…)."""
    timestamps = [format_local(s) for s in starts]
    kgce = [sum(e * subject.factor(s.category_id or 0, "kgce") for e in s.energy) for s in series]
    kgco2e = [sum(e * subject.factor(s.category_id or 0, "kgco2e") for e in s.energy) for s in series]
    section: dict[str, Any] = {
        "names": [s.name for s in series],
        "units": [s.unit for s in series],
        "energy_category_ids": [s.category_id for s in series],
        "energy_item_ids": [s.item_id for s in series],
        "subtotals": [s.subtotal for s in series],
        "subtotals_in_kgce": kgce,
        "subtotals_in_kgco2e": kgco2e,
        "total_in_kgce": sum(kgce),
        "total_in_kgco2e": sum(kgco2e),
        "timestamps": [timestamps for _ in series],
        "values": [s.values for s in series],
        "qualities": [s.qualities for s in series],
        "quality": [
            _worst([q for q, c in zip(s.qualities, s.counts, strict=True) if c] or ["missing"])
            for s in series
        ],
    }
    area = subject.raw.get("area")
    if area:
        section["subtotals_per_unit_area"] = [
            None if s.subtotal is None else s.subtotal / float(area) for s in series
        ]
    if base is not None:
        base_by_name = {(b.category_id, b.item_id): b.subtotal for b in base}
        section["increment_rates"] = [
            increment_rate(s.subtotal, base_by_name.get((s.category_id, s.item_id))) for s in series
        ]
        base_kgce = sum(sum(e * subject.factor(b.category_id or 0, "kgce") for e in b.energy) for b in base)
        section["increment_rate"] = increment_rate(section["total_in_kgce"], base_kgce)
        section["increment_rate_in_kgce"] = section["increment_rate"]
        base_co2 = sum(sum(e * subject.factor(b.category_id or 0, "kgco2e") for e in b.energy) for b in base)
        section["increment_rate_in_kgco2e"] = increment_rate(section["total_in_kgco2e"], base_co2)
    return section


def series_blocks(title: str, series: list[Series], starts: list[datetime]) -> list[Block]:
    """The same numbers as ``series_section``, as a sheet table (one column per series) with a chart."""
    header = ["Datetime", *[f"{s.name} ({s.unit})" for s in series]]
    rows: list[list[Any]] = [
        [format_local(start), *[s.values[i] for s in series]] for i, start in enumerate(starts)
    ]
    rows.append(["Subtotal", *[s.subtotal for s in series]])
    return [Block(title, header, rows, chart=bool(series) and bool(starts))]


# -- answering -----------------------------------------------------------------------------------------


def instants(period: tuple[datetime, datetime], tz: ZoneInfo) -> tuple[datetime, datetime]:
    """A local wall-clock period as the UTC instants a user means by it."""
    return resolve_local(period[0], tz), resolve_local(period[1], tz)


TREND_WINDOW = timedelta(days=3)  # the longest span normalisation's five-minute route answers
TREND_WINDOWS = 10  # a trend covers at most the last 30 days of the period


async def point_trends(
    ctx: ServiceContext, points: list[dict[str, Any]], start: datetime, end: datetime, tz: ZoneInfo
) -> dict[str, Any]:
    """MyEMS ``parameters``: each bound point's values over [start, end) (aware), five-minute slots from
    normalisation's readings (the mean for measurements, the energy for energy points), in local time.

    A trend covers at most the last 30 days of the period. Where normalisation serves no values for a point,
    its name is listed with empty values.
    """
    start = max(start, end - TREND_WINDOW * TREND_WINDOWS)
    windows: list[tuple[datetime, datetime]] = []
    moment = start
    while moment < end:
        windows.append((moment, min(moment + TREND_WINDOW, end)))
        moment += TREND_WINDOW

    def reader(point_id: int, a: datetime, b: datetime) -> Callable[[], Awaitable[Any]]:
        return lambda: _get(
            ctx,
            "normalisation",
            f"/internal/dataapi/points/{point_id}/fiveminutes",
            params={"start": a.isoformat(), "end": b.isoformat()},
        )

    answers = await bounded(reader(int(p["id"]), a, b) for p in points for a, b in windows)
    names, timestamps, values = [], [], []
    for index, point in enumerate(points):
        slots = [
            slot
            for answer in answers[index * len(windows) : (index + 1) * len(windows)]
            for slot in (answer or {}).get("slots", [])
        ]
        names.append(f"{point['name']} ({point.get('units', '')})")
        timestamps.append([format_local(datetime.fromisoformat(s["start"]).astimezone(tz)) for s in slots])
        values.append([s["value"] for s in slots])
    return {"names": names, "timestamps": timestamps, "values": values}


def _filename(report: str, subject: str, ext: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", subject).strip("-")[:60] or "report"
    return f"{report}-{safe}.{ext}"


def respond(
    report: str, query: ReportQuery, result: dict[str, Any], sheet: Sheet
) -> dict[str, Any] | Response:
    """The JSON result (with ``excel_bytes_base64`` unless quickmode), or the Excel or CSV file itself."""
    if query.format == "xlsx":
        return Response(
            to_xlsx(sheet),
            media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            headers={
                "Content-Disposition": f'attachment; filename="{_filename(report, sheet.subject, "xlsx")}"'
            },
        )
    if query.format == "csv":
        return Response(
            to_csv(sheet),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="{_filename(report, sheet.subject, "csv")}"'
            },
        )
    if not query.quickmode:
        result["excel_bytes_base64"] = xlsx_base64(sheet)
    return result


def local_period_label(start: datetime, end: datetime) -> str:
    return f"{start.isoformat(timespec='seconds')} to {end.isoformat(timespec='seconds')}"


def today_local(tz: ZoneInfo) -> date:
    return datetime.now(UTC).astimezone(tz).date()

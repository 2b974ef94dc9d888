"""The Data API calls (`/data/...`, seeds 000 and 004): what a provider's own systems read.

Every call is read-only and narrowed twice:

* **scope**: a key of scope `user` sees only the installations its user is a member of; scope `portal` every
  installation of its provider. Any other installation is a 403 saying so (whether or not it exists).
* **package** (seed 004's function matrix): `basic` has the installation list and details, plant-level
  totals, the component overview and component events; `advanced` adds per-component values and KPIs. A basic
  key on an advanced route is a 403 naming what the package lacks.

Callers that are not Data API keys (a logged-in user, or a personal key from `/apikeys`) are served by role:
staff (administrators, operators, installers) as scope `portal` with the `advanced` package, owners and guests
as scope `user` (their own installations) with the `basic` package.

Resolution follows the period, in the installation's time zone: `day` -> five-minute values, `month` -> days,
`year` -> months, `total` -> years (services/reporting/dataapi_periods.py). Month, year and total values are
sums of the energy aggregation stores per quarter hour; five-minute values come from the normalisation
service's readings (services/normalisation/dataapi_internal.py). A value without any data is 0 with quality
`missing`.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from libs.service import Principal, ProblemError, ServiceContext, bad_request, current_principal, get_context
from proto_schemas.quality import Quality
from services.reporting.dataapi_periods import (
    FIRST_YEAR,
    LAST_YEAR,
    RESOLUTION,
    Period,
    Slot,
    period_slots,
    utc_bounds,
)
from services.reporting.periods import format_local

router = APIRouter(tags=["data"])

MAX_ID = 2**53 - 1
STAFF = ("platform_admin", "provider_admin", "operator", "installer")
# Installation parameters naming the meter that plays each role (for plant totals and KPIs).
ROLES = ("production", "consumption", "grid_import", "grid_export", "battery_charge", "battery_discharge")
MAX_EVENT_SPAN = timedelta(days=366)

InstanceId = Path(ge=1, le=MAX_ID, description="The installation", examples=[7])
PeriodQuery = Query(
    "day",
    description="day (5-minute values), month (daily), year (monthly), total (yearly)",
    openapi_examples={
        "day": {"summary": "a day in 5-minute values", "value": "day"},
        "month": {"summary": "a month in days", "value": "month"},
    },
)
DateQuery = Query(
    None,
    alias="date",
    description="A day inside the period, YYYY-MM-DD (local); default today in the installation's zone",
    openapi_examples={"a day": {"summary": "29 March 2026", "value": "2026-03-29"}},
)


def _problem(status: int, title: str, detail: str) -> dict[str, Any]:
    return {
        "description": detail,
        "content": {
            "application/problem+json": {
                "example": {"type": "about:blank", "title": title, "status": status, "detail": detail}
            }
        },
    }


_DENIED_SCOPE: dict[int | str, Any] = {
    403: _problem(403, "Forbidden", "this key's user scope does not include installation 7")
}


@dataclass(frozen=True)
class Access:
    """What a caller may read through the Data API."""

    scope: str  # "user" | "portal"
    package: str  # "basic" | "advanced"
    data_key: bool  # a Data API key (else a logged-in user or a personal key)


def access_of(principal: Principal | None) -> Access:
    if principal is None:
        raise ProblemError(401, "Unauthorized", "send a Data API key as API-Key")
    if principal.data_scope is not None:
        return Access(principal.data_scope, principal.data_package or "basic", True)
    if principal.role in STAFF:
        return Access("portal", "advanced", False)
    return Access("user", "basic", False)


def require_package(access: Access, what: str) -> None:
    if access.package != "advanced":
        raise ProblemError(403, "Forbidden", f"the {access.package} package does not include {what}")


def _not_in_scope(access: Access, instance_id: int) -> ProblemError:
    """A Data API key is told which scope excludes the installation; anyone else gets the 404 the rest of the
    API gives for an installation they cannot see."""
    if access.data_key:
        return ProblemError(
            403, "Forbidden", f"this key's {access.scope} scope does not include installation {instance_id}"
        )
    return ProblemError(404, "Not found", f"installation {instance_id} does not exist or is not yours to see")


async def _json(ctx: ServiceContext, service: str, method: str, path: str, **kwargs: Any) -> Any:
    answer = await ctx.call(service, method, path, **kwargs)
    if answer.status_code != 200:
        raise ProblemError(502, "Upstream error", f"the {service} service did not answer")
    return answer.json()


async def _installation(ctx: ServiceContext, access: Access, instance_id: int) -> dict[str, Any]:
    answer = await ctx.call("registry", "GET", f"/internal/dataapi/instances/{instance_id}")
    if answer.status_code == 404:
        raise _not_in_scope(access, instance_id)
    if answer.status_code != 200:
        raise ProblemError(502, "Upstream error", "the registry did not answer")
    return dict(answer.json())


def _zone(installation: dict[str, Any]) -> ZoneInfo:
    return ZoneInfo(installation["timezone"])


def _day(value: date | None, tz: ZoneInfo) -> date:
    day = value or datetime.now(tz).date()
    if not FIRST_YEAR <= day.year <= LAST_YEAR:
        raise bad_request("date", f"date must lie in the years {FIRST_YEAR} to {LAST_YEAR}")
    return day


def _roles(installation: dict[str, Any]) -> dict[str, int]:
    """Role -> meter id, from the installation's parameters `<role>_meter_id` (meters of the installation)."""
    own = {m["id"] for m in installation["meters"]}
    roles: dict[str, int] = {}
    for role in ROLES:
        raw = installation["parameters"].get(f"{role}_meter_id")
        try:
            meter_id = int(raw)
        except (TypeError, ValueError):
            continue
        if meter_id in own:
            roles[role] = meter_id
    return roles


# -- reading energy ---------------------------------------------------------------------------------------


@dataclass
class Series:
    values: list[float]
    qualities: list[int]

    @property
    def total(self) -> float:
        return sum(v for v, q in zip(self.values, self.qualities, strict=True) if q != Quality.MISSING)

    def add(self, other: Series) -> None:
        for i, (value, quality) in enumerate(zip(other.values, other.qualities, strict=True)):
            if quality == Quality.MISSING:
                continue
            if self.qualities[i] == Quality.MISSING:
                self.values[i], self.qualities[i] = value, quality
            else:
                self.values[i] += value
                self.qualities[i] = max(self.qualities[i], quality)

    def as_json(self, slots: list[Slot]) -> dict[str, Any]:
        present = [q for q in self.qualities if q != Quality.MISSING]
        return {
            "total": self.total,
            "quality": Quality.worst(*present).label if present else Quality.MISSING.label,
            "timestamps": [format_local(local) for local, _, _ in slots],
            "values": self.values,
            "qualities": [Quality(q).label for q in self.qualities],
        }


def _empty(n: int) -> Series:
    return Series([0.0] * n, [int(Quality.MISSING)] * n)


async def _sums(ctx: ServiceContext, meter_id: int, slots: list[Slot]) -> Series:
    found = await _json(
        ctx,
        "aggregation",
        "POST",
        f"/internal/meters/{meter_id}/sums",
        json={"ranges": [[a.isoformat(), b.isoformat()] for _, a, b in slots]},
    )
    series = _empty(len(slots))
    for i, row in enumerate(found):
        if row["quarters"]:
            series.values[i], series.qualities[i] = float(row["energy"]), int(row["quality"] or 0)
    return series


async def _five_minutes(ctx: ServiceContext, meter: dict[str, Any], slots: list[Slot]) -> Series:
    """A meter's energy per five-minute slot: the sum over its energy points (from their readings)."""
    series = _empty(len(slots))
    if not slots:
        return series
    index = {utc_from: i for i, (_, utc_from, _) in enumerate(slots)}
    points = [p for p in meter["points"] if p["object_type"] == "ENERGY_VALUE"]
    answers = await asyncio.gather(
        *(
            _json(
                ctx,
                "normalisation",
                "GET",
                f"/internal/dataapi/points/{p['id']}/fiveminutes",
                params={"start": slots[0][1].isoformat(), "end": slots[-1][2].isoformat()},
            )
            for p in points
        )
    )
    for answer in answers:
        part = _empty(len(slots))
        for slot in answer["slots"]:
            i = index.get(datetime.fromisoformat(slot["start"]).astimezone(UTC))
            if i is not None:
                part.values[i], part.qualities[i] = (
                    float(slot["value"]),
                    int(Quality[slot["quality"].upper()]),
                )
        series.add(part)
    return series


async def _meter_series(
    ctx: ServiceContext, meter: dict[str, Any], period: Period, slots: list[Slot]
) -> Series:
    if period == "day":
        return await _five_minutes(ctx, meter, slots)
    return await _sums(ctx, meter["id"], slots)


async def _first_year(ctx: ServiceContext, meters: list[dict[str, Any]], day: date, tz: ZoneInfo) -> int:
    """The first local year with energy on any of the meters (for `total`); the year of `day` without any."""
    years = period_slots("total", day, tz, FIRST_YEAR)
    found = await asyncio.gather(*(_sums(ctx, m["id"], years) for m in meters))
    with_data = [
        local.year
        for i, (local, _, _) in enumerate(years)
        if any(s.qualities[i] != Quality.MISSING for s in found)
    ]
    return min(with_data, default=day.year)


async def _slots(
    ctx: ServiceContext, period: Period, day: date, tz: ZoneInfo, meters: list[dict[str, Any]]
) -> list[Slot]:
    first = await _first_year(ctx, meters, day, tz) if period == "total" else None
    return period_slots(period, day, tz, first)


def _frame(instance_id: int, period: Period, day: date, tz: ZoneInfo, slots: list[Slot]) -> dict[str, Any]:
    start, end = (slots[0][1], slots[-1][2]) if slots else utc_bounds(period, day, tz)
    return {
        "instance_id": instance_id,
        "period": period,
        "date": day.isoformat(),
        "timezone": tz.key,
        "resolution": RESOLUTION[period],
        "start": format_local(start.astimezone(tz)),
        "end": format_local(end.astimezone(tz)),
    }


# -- routes -------------------------------------------------------------------------------------------------

_INSTANCE_EXAMPLE = {
    "id": 7,
    "uuid": "5b8a2a0e-0c57-4c6a-9d7e-2f1d7a1f3c9b",
    "title": "Home Jansen",
    "type": "hems",
    "serial": "HQ-100-2231",
    "address": {"street": "Kade 1", "postal_code": "1011AA", "city": "Amsterdam", "country": "NL"},
    "timezone": "Europe/Amsterdam",
    "status": "active",
}


@router.get(
    "/data/instances",
    responses={200: {"content": {"application/json": {"example": [_INSTANCE_EXAMPLE]}}}},
)
async def data_instances(
    request: Request, ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    """The installations this key may read (scope `user`: its user's; `portal`: all of the provider's),
    with their general information (basic package)."""
    access_of(current_principal(request))
    rows = await _json(ctx, "registry", "GET", "/internal/dataapi/instances")
    return [{k: row[k] for k in (*_INSTANCE_EXAMPLE, "created_datetime_utc")} for row in rows]


@router.get(
    "/data/instances/{instance_id}/totals",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "instance_id": 7,
                        "period": "month",
                        "date": "2026-03-29",
                        "timezone": "Europe/Amsterdam",
                        "resolution": "day",
                        "start": "2026-03-01T00:00:00+01:00",
                        "end": "2026-04-01T00:00:00+02:00",
                        "timestamps": ["2026-03-01T00:00:00+01:00", "2026-03-02T00:00:00+01:00"],
                        "categories": [
                            {
                                "category": "Electricity",
                                "unit": "kWh",
                                "meters": 2,
                                "total": 25.5,
                                "quality": "good",
                                "values": [12.5, 13.0],
                                "qualities": ["good", "good"],
                            }
                        ],
                        "roles": {"production": {"meter_id": 11, "total": 8.25, "values": [4.0, 4.25]}},
                    }
                }
            }
        },
        **_DENIED_SCOPE,
    },
)
async def data_totals(
    request: Request,
    instance_id: int = InstanceId,
    period: Period = PeriodQuery,
    day: date | None = DateQuery,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """Plant-level energy of an installation over a period, at the period's resolution (basic package).

    `categories` sums, per energy category, the installation's counted meters that have no master meter;
    `roles` gives the meters its parameters name (`production_meter_id`, `consumption_meter_id`,
    `grid_import_meter_id`, `grid_export_meter_id`, `battery_charge_meter_id`, `battery_discharge_meter_id`).
    """
    access = access_of(current_principal(request))
    installation = await _installation(ctx, access, instance_id)
    tz = _zone(installation)
    day = _day(day, tz)
    meters = installation["meters"]
    counted = [m for m in meters if m["is_counted"] and m["master_meter_id"] is None]
    roles = _roles(installation)
    by_id = {m["id"]: m for m in meters}
    wanted = {m["id"]: m for m in counted} | {mid: by_id[mid] for mid in roles.values()}
    slots = await _slots(ctx, period, day, tz, list(wanted.values()))
    found = await asyncio.gather(*(_meter_series(ctx, m, period, slots) for m in wanted.values()))
    series = dict(zip(wanted, found, strict=True))
    categories: dict[tuple[str, str], list[int]] = defaultdict(list)
    for m in counted:
        categories[(m["category"], m["unit_of_measure"])].append(m["id"])
    out_categories = []
    for (category, unit), ids in sorted(categories.items()):
        total = _empty(len(slots))
        for mid in ids:
            total.add(series[mid])
        body = total.as_json(slots)
        body.pop("timestamps")
        out_categories.append({"category": category, "unit": unit, "meters": len(ids), **body})
    out_roles = {}
    for role, mid in roles.items():
        body = series[mid].as_json(slots)
        body.pop("timestamps")
        out_roles[role] = {"meter_id": mid, "unit": by_id[mid]["unit_of_measure"], **body}
    return {
        **_frame(instance_id, period, day, tz, slots),
        "timestamps": [format_local(local) for local, _, _ in slots],
        "categories": out_categories,
        "roles": out_roles,
    }


@router.get(
    "/data/instances/{instance_id}/components",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "instance_id": 7,
                        "meters": [
                            {
                                "id": 11,
                                "name": "PV meter",
                                "category": "Electricity",
                                "unit": "kWh",
                                "role": "production",
                                "is_counted": True,
                                "master_meter_id": None,
                            }
                        ],
                        "device_groups": [
                            {
                                "group": "battery",
                                "devices": ["bat-1"],
                                "max_charge_w": 5000,
                                "max_discharge_w": 5000,
                                "capacity_wh": 10000,
                                "max_power_w": None,
                            }
                        ],
                        "gateways": [{"id": 3, "name": "HQ-100 controller", "status": "online"}],
                        "data_sources": [
                            {"id": 4, "name": "inverter", "protocol": "modbus-tcp", "status": "online"}
                        ],
                    }
                }
            }
        },
        **_DENIED_SCOPE,
    },
)
async def data_components(
    request: Request, instance_id: int = InstanceId, ctx: ServiceContext = Depends(get_context)
) -> dict[str, Any]:
    """The installation's components: its meters (with the role its parameters give them), device groups,
    controllers and data sources (basic package). A meter's `id` is the `cid` of its values."""
    access = access_of(current_principal(request))
    installation = await _installation(ctx, access, instance_id)
    role_of = {mid: role for role, mid in _roles(installation).items()}
    return {
        "instance_id": instance_id,
        "meters": [
            {
                "id": m["id"],
                "uuid": m["uuid"],
                "name": m["name"],
                "category": m["category"],
                "unit": m["unit_of_measure"],
                "role": role_of.get(m["id"]),
                "is_counted": m["is_counted"],
                "master_meter_id": m["master_meter_id"],
            }
            for m in installation["meters"]
        ],
        "device_groups": installation["device_groups"],
        "gateways": installation["gateways"],
        "data_sources": installation["data_sources"],
    }


EventType = Literal["gateway_online", "gateway_offline", "datasource_online", "datasource_offline"]


@router.get(
    "/data/instances/{instance_id}/events",
    responses={
        200: {
            "description": "Events oldest first; the total in `X-Total-Count`",
            "content": {
                "application/json": {
                    "example": [
                        {
                            "at": "2026-03-29T08:15:02+00:00",
                            "type": "gateway_offline",
                            "component": {"kind": "gateway", "id": 3, "name": "HQ-100 controller"},
                        }
                    ]
                }
            },
        },
        **_DENIED_SCOPE,
    },
)
async def data_events(
    request: Request,
    response: Response,
    instance_id: int = InstanceId,
    since: datetime | None = Query(None, description="From this instant (with offset); default 7 days ago"),
    until: datetime | None = Query(None, description="Before this instant (with offset); default now"),
    event_type: EventType | None = Query(None, alias="type", description="Only events of this type"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=1_000_000),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    """Component events of an installation (basic package): its controllers and data sources going online
    or offline, oldest first, paginated with `limit` and `offset` (the total in `X-Total-Count`)."""
    access = access_of(current_principal(request))
    earliest, latest = datetime(FIRST_YEAR, 1, 8, tzinfo=UTC), datetime(LAST_YEAR, 1, 1, tzinfo=UTC)
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise bad_request(name, f"{name} needs an offset")
        if moment is not None and not earliest <= moment <= latest:
            raise bad_request(name, f"events lie in the years {FIRST_YEAR} to {LAST_YEAR}")
    end = until or datetime.now(UTC)
    start = since or end - timedelta(days=7)
    if end <= start or end - start > MAX_EVENT_SPAN:
        raise bad_request("until", "until must be after since, at most 366 days later")
    installation = await _installation(ctx, access, instance_id)
    window = {"since": start.isoformat(), "until": end.isoformat()}
    histories, sources = await asyncio.gather(
        asyncio.gather(
            *(
                _json(ctx, "ingestion", "GET", f"/fleet/{g['id']}/history", params={**window, "limit": 10000})
                for g in installation["gateways"]
            )
        ),
        _json(
            ctx, "registry", "GET", f"/internal/dataapi/instances/{instance_id}/sourceevents", params=window
        ),
    )
    events: list[dict[str, Any]] = []
    for gateway, history in zip(installation["gateways"], histories, strict=True):
        for change in history["status"]:
            events.append(
                {
                    "at": change["at"],
                    "type": f"gateway_{change['status']}",
                    "component": {"kind": "gateway", "id": gateway["id"], "name": gateway["name"]},
                }
            )
    for change in sources:
        events.append(
            {
                "at": change["at"],
                "type": f"datasource_{change['status']}",
                "component": {"kind": "data_source", "id": change["data_source_id"], "name": change["name"]},
            }
        )
    if event_type is not None:
        events = [e for e in events if e["type"] == event_type]
    events.sort(key=lambda e: datetime.fromisoformat(e["at"]))
    response.headers["X-Total-Count"] = str(len(events))
    return events[offset : offset + limit]


@router.get(
    "/data/instances/{instance_id}/components/{cid}/values",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "instance_id": 7,
                        "component": {"kind": "meter", "id": 11, "name": "PV meter", "unit": "kWh"},
                        "period": "day",
                        "date": "2026-03-29",
                        "timezone": "Europe/Amsterdam",
                        "resolution": "5min",
                        "start": "2026-03-29T00:00:00+01:00",
                        "end": "2026-03-30T00:00:00+02:00",
                        "total": 0.25,
                        "quality": "good",
                        "timestamps": ["2026-03-29T00:00:00+01:00", "2026-03-29T00:05:00+01:00"],
                        "values": [0.125, 0.125],
                        "qualities": ["good", "good"],
                    }
                }
            }
        },
        403: _problem(403, "Forbidden", "the basic package does not include component values"),
        404: _problem(404, "Not found", "component 12 is not a meter of installation 7"),
    },
)
async def data_component_values(
    request: Request,
    instance_id: int = InstanceId,
    cid: int = Path(ge=1, le=MAX_ID, description="A meter of the installation (from /components)"),
    period: Period = PeriodQuery,
    day: date | None = DateQuery,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """One meter's energy over a period at the period's resolution (advanced package)."""
    access = access_of(current_principal(request))
    installation = await _installation(ctx, access, instance_id)
    require_package(access, "component values")
    meter = next((m for m in installation["meters"] if m["id"] == cid), None)
    if meter is None:
        raise ProblemError(404, "Not found", f"component {cid} is not a meter of installation {instance_id}")
    tz = _zone(installation)
    day = _day(day, tz)
    slots = await _slots(ctx, period, day, tz, [meter])
    series = await _meter_series(ctx, meter, period, slots)
    return {
        **_frame(instance_id, period, day, tz, slots),
        "component": {"kind": "meter", "id": cid, "name": meter["name"], "unit": meter["unit_of_measure"]},
        **series.as_json(slots),
    }


def kpis(energy: dict[str, float | None], peak_kw: float | None) -> dict[str, float | None]:
    """Plant KPIs over one period from role energies (None where a meter is missing).

    * consumption: the consumption meter, else production + grid import - grid export
      (+ battery discharge - battery charge where battery meters exist);
    * self_consumption_rate = (production - grid export) / production;
    * autarky_rate = (consumption - grid import) / consumption (the share of consumption not drawn from the
      grid);
    * specific_yield_kwh_per_kwp = production / installed peak power.
    """
    production, imported, exported = (
        energy.get("production"),
        energy.get("grid_import"),
        energy.get("grid_export"),
    )
    consumption = energy.get("consumption")
    if consumption is None and None not in (production, imported, exported):
        assert production is not None and imported is not None and exported is not None
        consumption = (
            production + imported - exported
            + (energy.get("battery_discharge") or 0.0) - (energy.get("battery_charge") or 0.0)
        )  # fmt: skip
    return {
        "consumption": consumption,
        "self_consumption_rate": (
            min(1.0, max(0.0, (production - exported) / production))
            if production and exported is not None
            else None
        ),
        "autarky_rate": (
            min(1.0, max(0.0, (consumption - imported) / consumption))
            if consumption and imported is not None
            else None
        ),
        "specific_yield_kwh_per_kwp": production / peak_kw if production is not None and peak_kw else None,
    }


def _peak_kw(installation: dict[str, Any]) -> float | None:
    raw = installation["parameters"].get("pv_peak_power_kw")
    try:
        if raw is not None and float(raw) > 0:
            return float(raw)
    except (TypeError, ValueError):
        pass
    solar = next((g for g in installation["device_groups"] if g["group"] == "solar"), None)
    if solar is not None and solar["max_power_w"]:
        return float(solar["max_power_w"]) / 1000.0
    return None


@router.get(
    "/data/instances/{instance_id}/kpis",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "instance_id": 7,
                        "period": "year",
                        "date": "2026-03-29",
                        "timezone": "Europe/Amsterdam",
                        "resolution": "month",
                        "start": "2026-01-01T00:00:00+01:00",
                        "end": "2027-01-01T00:00:00+01:00",
                        "energy": {"production": 4200.0, "grid_import": 1800.0, "grid_export": 2100.0},
                        "peak_power_kw": 4.8,
                        "kpis": {
                            "consumption": 3900.0,
                            "self_consumption_rate": 0.5,
                            "autarky_rate": 0.538,
                            "specific_yield_kwh_per_kwp": 875.0,
                        },
                    }
                }
            }
        },
        403: _problem(403, "Forbidden", "the basic package does not include KPIs"),
    },
)
async def data_kpis(
    request: Request,
    instance_id: int = InstanceId,
    period: Period = PeriodQuery,
    day: date | None = DateQuery,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """Plant KPIs over a period (advanced package): self-consumption rate, autarky rate and specific yield,
    where the installation's parameters name the meters they need (see `kpis` for the definitions)."""
    access = access_of(current_principal(request))
    installation = await _installation(ctx, access, instance_id)
    require_package(access, "KPIs")
    tz = _zone(installation)
    day = _day(day, tz)
    roles = _roles(installation)
    by_id = {m["id"]: m for m in installation["meters"]}
    slots = await _slots(ctx, period, day, tz, [by_id[mid] for mid in roles.values()])
    bounds = [(slots[0][0], slots[0][1], slots[-1][2])] if slots else []
    found = await asyncio.gather(*(_sums(ctx, mid, bounds) for mid in roles.values()))
    energy: dict[str, float | None] = {
        role: series.total if bounds and series.qualities[0] != Quality.MISSING else None
        for role, series in zip(roles, found, strict=True)
    }
    peak = _peak_kw(installation)
    return {
        **_frame(instance_id, period, day, tz, slots),
        "energy": energy,
        "peak_power_kw": peak,
        "kpis": kpis(energy, peak),
    }

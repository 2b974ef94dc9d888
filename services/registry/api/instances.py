"""Installations (seed 000's "instances"): basic details, bound controllers, device groups, owner and guests.

`/instances` carries what the instance manager shows: title, type, serial, address, time zone, status, free
key/value parameters and an optional root space, plus a summary of its controllers. Below it:

- `/instances/{id}/gateways`: the controllers of the installation. A controller belongs to one installation;
  binding one that another installation holds is a 409 naming that installation.
- `/instances/{id}/devicegroups`: at most one group each of battery, solar, ev and hvac, with their devices and
  capacities (what live and scheduled control are checked against).
- `/instances/{id}/users`: at most one owner and any number of guests, with the share and write flags of the
  "User's details" tab. Guests cannot change the settings: a guest's writes below `/instances/{id}` are 403.

Every write runs in one transaction (nothing is stored half-done) with the installation's row locked, so two
requests racing on the same installation are decided one after the other; the unique indexes of migration 004
settle the rest. A change event follows every committed write.

Errors name the field as elsewhere in the registry: `data.<path>` when the body breaks its schema (the OpenAPI
document states every such rule), the bare field name when a rule needs the database or other fields (an
unknown reference, a battery without its capacity, a second owner).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import asyncpg
import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from libs.db import Queryable
from libs.service import ProblemError, ServiceContext, current_principal, get_context, not_found
from services.registry.api.common import Body, Envelope, publish_change

router = APIRouter(tags=["instances"])

MAX_ID = 2**53 - 1  # ids stay exact in JSON numbers everywhere (and well inside bigint)
MAX_SERIAL_ID = 2**31 - 1  # timezones use a 32-bit serial
MAX_PARAMETERS = 100
MAX_DEVICES = 100
MAX_SAFE_INTEGER = 2**53  # parameters are read by JavaScript clients too

# ISO 3166-1 alpha-2: the officially assigned codes.
COUNTRIES = frozenset((
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ", "BA",
    "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS", "BT", "BV",
    "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN", "CO", "CR", "CU",
    "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE", "EG", "EH", "ER", "ES",
    "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF", "GG", "GH", "GI", "GL", "GM",
    "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM", "HN", "HR", "HT", "HU", "ID", "IE",
    "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM", "JO", "JP", "KE", "KG", "KH", "KI", "KM",
    "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC", "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY",
    "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK", "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT",
    "MU", "MV", "MW", "MX", "MY", "MZ", "NA", "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU",
    "NZ", "OM", "PA", "PE", "PF", "PG", "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA",
    "RE", "RO", "RS", "RU", "RW", "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM",
    "SN", "SO", "SR", "SS", "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL",
    "TM", "TN", "TO", "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE",
    "VG", "VI", "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
))  # fmt: skip

InstanceId = Annotated[int, Path(ge=1, le=MAX_ID, description="The installation's id")]
Group = Literal["battery", "solar", "ev", "hvac"]


# -- input types -------------------------------------------------------------------------------------


def _single_line(value: str) -> str:
    """Names, serials, address lines: no control characters (PostgreSQL refuses NUL outright)."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must not contain control characters (tabs, line breaks, NUL)")
    return value


def _no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _blank_is_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _country(value: str) -> str:
    code = value.upper()
    if code not in COUNTRIES:
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code (such as NL, DE or FR)")
    return code


def _json_object(value: Any) -> Any:
    """MyEMS clients send nested JSON as a string: accept `"{...}"` as well as `{...}`."""
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"must be a JSON object: {exc}") from exc
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("must be an object of key/value pairs")
    return value


def _parameter_value(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value) or abs(value) > MAX_SAFE_INTEGER:
            raise ValueError("numbers must be finite and lie within ±2^53; send a larger one as text")
        return value
    if isinstance(value, str):
        if len(value) > 1024:
            raise ValueError("text values are at most 1024 characters")
        _no_nul(value)
        return value
    raise ValueError("a parameter is a string, a number or a boolean (not an object, a list or null)")


def _stripped(max_length: int, min_length: int = 1) -> StringConstraints:
    return StringConstraints(strip_whitespace=True, min_length=min_length, max_length=max_length)


@dataclass(frozen=True)
class _Documented:
    """Annotated metadata that adds keywords to a type's JSON schema: what a validator checks is then in the
    OpenAPI document too (a client, or a generator of test requests, sees the rule before it is refused)."""

    keywords: tuple[tuple[str, Any], ...]

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema.update(self.keywords)
        return schema


# Text on one line with something besides spaces in it; text with no NUL (PostgreSQL refuses NUL).
SINGLE_LINE = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
NO_NUL = r"^[^\x00]*$"
NOT_BLANK_NO_NUL = r"^[^\x00]*[^\s\x00][^\x00]*$"

Title = Annotated[str, _stripped(255), AfterValidator(_single_line), _Documented((("pattern", SINGLE_LINE),))]
Short = Annotated[str, _stripped(64), AfterValidator(_single_line), _Documented((("pattern", SINGLE_LINE),))]
DeviceText = Annotated[
    str, _stripped(128), AfterValidator(_single_line), _Documented((("pattern", SINGLE_LINE),))
]
AddressLine = Annotated[
    Annotated[str, _stripped(255, 0), AfterValidator(_no_nul), _Documented((("pattern", NO_NUL),))] | None,
    BeforeValidator(_blank_is_none),
]
PostalCode = Annotated[
    Annotated[str, _stripped(32, 0), AfterValidator(_no_nul), _Documented((("pattern", NO_NUL),))] | None,
    BeforeValidator(_blank_is_none),
]
Country = Annotated[
    Annotated[str, _stripped(64), AfterValidator(_country)] | None,
    BeforeValidator(_blank_is_none),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "enum": sorted(COUNTRIES)}, {"type": "null"}],
            "description": "ISO 3166-1 alpha-2 (stored upper case; lower case is accepted)",
        }
    ),
]
ParameterKey = Annotated[str, _stripped(128), AfterValidator(_no_nul)]
ParameterValue = Annotated[Any, AfterValidator(_parameter_value)]
Parameters = Annotated[
    dict[ParameterKey, ParameterValue],
    BeforeValidator(_json_object),
    Field(max_length=MAX_PARAMETERS),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_PARAMETERS,
            "propertyNames": {"minLength": 1, "maxLength": 128, "pattern": NOT_BLANK_NO_NUL},
            "additionalProperties": {
                "anyOf": [
                    {"type": "string", "maxLength": 1024, "pattern": NO_NUL},
                    {"type": "number", "minimum": -MAX_SAFE_INTEGER, "maximum": MAX_SAFE_INTEGER},
                    {"type": "boolean"},
                ]
            },
            "description": "Free key/value pairs (at most 100): text, numbers or booleans",
        }
    ),
]
Description = Annotated[
    Annotated[
        str, StringConstraints(max_length=4096), AfterValidator(_no_nul), _Documented((("pattern", NO_NUL),))
    ]
    | None,
    Field(description="Free text"),
]
Watts = Annotated[float | None, Field(ge=0, le=1e9, allow_inf_nan=False, description="W, not negative")]
WattHours = Annotated[float | None, Field(ge=0, le=1e10, allow_inf_nan=False, description="Wh, not negative")]


class AddressIn(Body):
    street: AddressLine = None
    postal_code: PostalCode = None
    city: AddressLine = None
    country: Country = None


class InstanceIn(Body):
    title: Title
    type: Short = Field("other", description="Free text, e.g. home, commercial, industrial, other")
    serial: Short
    address: AddressIn = Field(default_factory=AddressIn)
    timezone_id: int = Field(ge=1, le=MAX_SERIAL_ID)
    status: Literal["active", "inactive", "maintenance"] = "active"
    parameters: Parameters = Field(default_factory=dict)
    root_space_id: int | None = Field(None, ge=1, le=MAX_ID)
    description: Description = None


class GatewayBinding(Body):
    gateway_id: int = Field(ge=1, le=MAX_ID)


class Device(Body):
    id: DeviceText
    type: DeviceText
    vendor: DeviceText
    model: DeviceText


class DeviceGroupSpec(Body):
    devices: list[Device] = Field(default_factory=list, max_length=MAX_DEVICES)
    max_charge_w: Watts = None
    max_discharge_w: Watts = None
    capacity_wh: WattHours = None
    max_power_w: Watts = None


class DeviceGroupIn(DeviceGroupSpec):
    group: Group


class DeviceGroupUpdate(DeviceGroupSpec):
    group: Group | None = Field(None, description="Optional; when sent it must match the path")


class InstanceUserSpec(Body):
    role: Literal["owner", "guest"]
    share_content: bool = False
    share_reports: bool = False
    allow_write: bool = Field(False, description="Write to devices; a guest needs share_content for it")


class InstanceUserIn(InstanceUserSpec):
    user_id: int = Field(ge=1, le=MAX_ID)


class InstanceUserUpdate(InstanceUserSpec):
    user_id: int | None = Field(
        None, ge=1, le=MAX_ID, description="Optional; when sent it must match the path"
    )


class Created(BaseModel):
    id: int


# -- helpers -----------------------------------------------------------------------------------------


def _problem(status: int, title: str, problems: Sequence[tuple[str, str]]) -> ProblemError:
    errors = [{"field": field, "message": message} for field, message in problems]
    return ProblemError(status, title, "; ".join(message for _, message in problems), errors)


def _invalid(field: str, message: str) -> ProblemError:
    return _problem(400, "Invalid input", [(field, message)])


def _conflict(field: str, message: str) -> ProblemError:
    return _problem(409, "Conflict", [(field, message)])


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _epoch_ms(moment: datetime | None) -> float | None:
    return moment.timestamp() * 1000 if moment else None


def _online(last_seen: datetime | None, reported_status: str | None, window_s: int) -> bool:
    """The rule of `/gateways`: heard from within the window, and not announced offline since."""
    if last_seen is None or reported_status == "offline":
        return False
    return (datetime.now(UTC) - last_seen).total_seconds() <= window_s


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def _lock_instance(conn: Queryable, instance_id: int) -> asyncpg.Record:
    """The installation's row, locked until the transaction ends (404 when there is none)."""
    row = await conn.fetchrow("SELECT id, title FROM instances WHERE id = $1 FOR NO KEY UPDATE", instance_id)
    if row is None:
        raise not_found("installation", instance_id)
    return row


async def _may_change(
    conn: Queryable, request: Request, instance_id: int, leaving_user: int | None = None
) -> None:
    """Guests cannot change the settings of an installation (seed 000, "User's details"); a guest may only
    leave it (`leaving_user`: the user a DELETE removes)."""
    principal = current_principal(request)
    if principal is None or principal.is_admin or principal.user_id == leaving_user:
        return
    role = await conn.fetchval(
        "SELECT role FROM instance_users WHERE instance_id = $1 AND user_id = $2",
        instance_id,
        principal.user_id,
    )
    if role == "guest":
        raise ProblemError(
            403,
            "Forbidden",
            f"{principal.name} is a guest of installation {instance_id}; guests cannot change its settings",
        )


# -- installations -----------------------------------------------------------------------------------

_INSTANCE_SQL = (
    "SELECT i.*, t.name AS timezone_name, t.utc_offset AS timezone_utc_offset,"
    " s.name AS root_space_name, s.uuid AS root_space_uuid,"
    " (SELECT count(*) FROM instance_users u WHERE u.instance_id = i.id) AS user_count"
    " FROM instances i JOIN timezones t ON t.id = i.timezone_id"
    " LEFT JOIN spaces s ON s.id = i.root_space_id"
)


async def _controller_summaries(
    conn: Queryable, instance_ids: list[int], window_s: int
) -> dict[int, dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT ig.instance_id, g.last_seen_at, g.reported_status FROM instance_gateways ig"
        " JOIN gateways g ON g.id = ig.gateway_id WHERE ig.instance_id = ANY($1::bigint[])",
        instance_ids,
    )
    by_instance: dict[int, list[asyncpg.Record]] = {instance_id: [] for instance_id in instance_ids}
    for row in rows:
        by_instance[row["instance_id"]].append(row)
    out: dict[int, dict[str, Any]] = {}
    for instance_id, mine in by_instance.items():
        online = sum(_online(row["last_seen_at"], row["reported_status"], window_s) for row in mine)
        seen = [row["last_seen_at"] for row in mine if row["last_seen_at"] is not None]
        out[instance_id] = {
            "count": len(mine),
            "online": online,
            "offline": len(mine) - online,
            "ping_time": _epoch_ms(max(seen)) if seen else None,
        }
    return out


def _instance(row: asyncpg.Record, controllers: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "uuid": str(row["uuid"]),
        "title": row["title"],
        "type": row["type"],
        "serial": row["serial"],
        "address": {
            "street": row["street"],
            "postal_code": row["postal_code"],
            "city": row["city"],
            "country": row["country"],
        },
        "timezone": {
            "id": row["timezone_id"],
            "name": row["timezone_name"],
            "utc_offset": row["timezone_utc_offset"],
        },
        "status": row["status"],
        "parameters": row["parameters"],
        "root_space": (
            None
            if row["root_space_id"] is None
            else {
                "id": row["root_space_id"],
                "name": row["root_space_name"],
                "uuid": str(row["root_space_uuid"]),
            }
        ),
        "description": row["description"],
        "created_datetime": _iso(row["created_at"]),
        "modified_datetime": _iso(row["modified_at"]),
        "controllers": controllers,
        "user_count": row["user_count"],
    }


@router.get("/instances")
async def list_instances(
    response: Response,
    q: str | None = Query(
        None, max_length=255, description="Only installations whose title or serial contains this"
    ),
    status: Literal["active", "inactive", "maintenance"] | None = Query(None),
    limit: int = Query(1000, ge=1, le=10000),
    offset: int = Query(0, ge=0, le=MAX_ID),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    """Installations by id, filtered by `q` (title or serial, case-insensitive) and `status`; the total matching
    is in `X-Total-Count`."""
    if q is not None and "\x00" in q:
        raise _invalid("q", "must not contain NUL characters")
    conditions: list[str] = []
    args: list[Any] = []
    if q:
        args.append(f"%{_escape_like(q.strip())}%")
        conditions.append(f"(i.title ILIKE ${len(args)} OR i.serial ILIKE ${len(args)})")
    if status:
        args.append(status)
        conditions.append(f"i.status = ${len(args)}")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    async with ctx.db.acquire() as conn:
        total = await conn.fetchval(f"SELECT count(*) FROM instances i{where}", *args)
        rows = await conn.fetch(f"{_INSTANCE_SQL}{where} ORDER BY i.id LIMIT {limit} OFFSET {offset}", *args)
        summaries = await _controller_summaries(
            conn, [row["id"] for row in rows], ctx.settings.gateway_online_window_s
        )
    response.headers["X-Total-Count"] = str(total)
    return [_instance(row, summaries[row["id"]]) for row in rows]


@router.get("/instances/{instance_id}")
async def get_instance(instance_id: InstanceId, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    async with ctx.db.acquire() as conn:
        row = await conn.fetchrow(_INSTANCE_SQL + " WHERE i.id = $1", instance_id)
        if row is None:
            raise not_found("installation", instance_id)
        summaries = await _controller_summaries(conn, [instance_id], ctx.settings.gateway_online_window_s)
    return _instance(row, summaries[instance_id])


async def _check_instance_refs(conn: Queryable, d: InstanceIn) -> None:
    problems = []
    if not await conn.fetchval("SELECT 1 FROM timezones WHERE id = $1", d.timezone_id):
        problems.append(("timezone_id", f"time zone {d.timezone_id} does not exist"))
    if d.root_space_id is not None and not await conn.fetchval(
        "SELECT 1 FROM spaces WHERE id = $1", d.root_space_id
    ):
        problems.append(("root_space_id", f"space {d.root_space_id} does not exist"))
    if problems:
        raise _problem(400, "Invalid input", problems)


async def _check_unique(conn: Queryable, d: InstanceIn, instance_id: int | None) -> None:
    """Title (any case) and serial are each unique: a 409 naming the installation that holds them."""
    problems = []
    holder = await conn.fetchrow(
        "SELECT id, title FROM instances WHERE lower(title) = lower($1) AND id IS DISTINCT FROM $2",
        d.title,
        instance_id,
    )
    if holder is not None:
        problems.append(("title", f"installation {holder['id']} is already called {holder['title']!r}"))
    holder = await conn.fetchrow(
        "SELECT id, title FROM instances WHERE serial = $1 AND id IS DISTINCT FROM $2", d.serial, instance_id
    )
    if holder is not None:
        problems.append(
            (
                "serial",
                f"serial {d.serial!r} belongs to installation {holder['id']} ({holder['title']})",
            )
        )
    if problems:
        raise _problem(409, "Conflict", problems)


def _unique_violation(exc: asyncpg.UniqueViolationError) -> ProblemError:
    """The index that caught a race, as the 409 the checks before it would have given."""
    if exc.constraint_name == "instances_serial_unique":
        return _conflict("serial", "another installation has this serial")
    return _conflict("title", "another installation has this title")


async def _write_instance(
    ctx: ServiceContext, d: InstanceIn, request: Request, instance_id: int | None
) -> int:
    a = d.address
    values = (
        d.title, d.type, d.serial, a.street, a.postal_code, a.city, a.country, d.timezone_id, d.status,
        d.parameters, d.root_space_id, d.description,
    )  # fmt: skip
    async with ctx.db.acquire() as conn:
        try:
            async with conn.transaction():
                if instance_id is not None:
                    await _lock_instance(conn, instance_id)
                    await _may_change(conn, request, instance_id)
                await _check_instance_refs(conn, d)
                await _check_unique(conn, d, instance_id)
                if instance_id is None:
                    return int(
                        await conn.fetchval(
                            "INSERT INTO instances (uuid, title, type, serial, street, postal_code, city, country,"
                            " timezone_id, status, parameters, root_space_id, description)"
                            " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13) RETURNING id",
                            uuid.uuid4(),
                            *values,
                        )
                    )
                await conn.execute(
                    "UPDATE instances SET title=$2, type=$3, serial=$4, street=$5, postal_code=$6, city=$7,"
                    " country=$8, timezone_id=$9, status=$10, parameters=$11, root_space_id=$12,"
                    " description=$13, modified_at=now() WHERE id=$1",
                    instance_id,
                    *values,
                )
                return instance_id
        except asyncpg.UniqueViolationError as exc:
            raise _unique_violation(exc) from exc
        except asyncpg.ForeignKeyViolationError as exc:  # the zone or space went away meanwhile
            raise _invalid("root_space_id", f"a referenced object no longer exists ({exc.detail})") from exc


@router.post("/instances", status_code=201, response_model=Created)
async def create_instance(
    body: Envelope[InstanceIn],
    request: Request,
    response: Response,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, int]:
    new_id = await _write_instance(ctx, body.data, request, None)
    response.headers["Location"] = f"/instances/{new_id}"
    await publish_change(ctx, "instance", "created", new_id)
    return {"id": new_id}


@router.put("/instances/{instance_id}", response_model=Created)
async def update_instance(
    instance_id: InstanceId,
    body: Envelope[InstanceIn],
    request: Request,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, int]:
    """Replace the installation's details (every field; those left out take their defaults)."""
    await _write_instance(ctx, body.data, request, instance_id)
    await publish_change(ctx, "instance", "updated", instance_id)
    return {"id": instance_id}


@router.delete("/instances/{instance_id}", status_code=204)
async def delete_instance(
    instance_id: InstanceId, request: Request, ctx: ServiceContext = Depends(get_context)
) -> Response:
    """Delete the installation with its controller bindings, device groups and users (the controllers,
    spaces and user accounts themselves stay)."""
    async with ctx.db.acquire() as conn, conn.transaction():
        await _lock_instance(conn, instance_id)
        await _may_change(conn, request, instance_id)
        try:
            await conn.execute("DELETE FROM instances WHERE id = $1", instance_id)
        except asyncpg.ForeignKeyViolationError as exc:
            raise ProblemError(
                409, "In use", f"installation {instance_id} is still referenced ({exc.detail})"
            ) from exc
    await publish_change(ctx, "instance", "deleted", instance_id)
    return Response(status_code=204)


# -- controllers -------------------------------------------------------------------------------------


def _controller(row: asyncpg.Record, window_s: int) -> dict[str, Any]:
    seen = _epoch_ms(row["last_seen_at"])
    return {
        "id": row["id"],
        "name": row["name"],
        "uuid": str(row["uuid"]),
        "status": "online" if _online(row["last_seen_at"], row["reported_status"], window_s) else "offline",
        "last_seen_datetime": seen,
        "ping_time": seen,
        "bound_datetime": _iso(row["bound_at"]),
        "description": row["description"],
    }


@router.get("/instances/{instance_id}/gateways")
async def instance_gateways(
    instance_id: InstanceId, ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    """The installation's controllers: status (online when heard from within the online window),
    `last_seen_datetime` and `ping_time` in epoch milliseconds."""
    async with ctx.db.acquire() as conn:
        if not await conn.fetchval("SELECT 1 FROM instances WHERE id = $1", instance_id):
            raise not_found("installation", instance_id)
        rows = await conn.fetch(
            "SELECT g.id, g.name, g.uuid, g.last_seen_at, g.reported_status, g.description, ig.bound_at"
            " FROM instance_gateways ig JOIN gateways g ON g.id = ig.gateway_id WHERE ig.instance_id = $1"
            " ORDER BY g.id",
            instance_id,
        )
    return [_controller(row, ctx.settings.gateway_online_window_s) for row in rows]


async def _gateway_holder(conn: Queryable, gateway_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT i.id, i.title, g.name AS gateway_name FROM instance_gateways ig"
        " JOIN instances i ON i.id = ig.instance_id JOIN gateways g ON g.id = ig.gateway_id"
        " WHERE ig.gateway_id = $1",
        gateway_id,
    )


def _bound_elsewhere(gateway_id: int, holder: asyncpg.Record) -> ProblemError:
    return _conflict(
        "gateway_id",
        f"gateway {gateway_id} ({holder['gateway_name']}) is bound to installation {holder['id']}"
        f" ({holder['title']}); unbind it there first",
    )


@router.post("/instances/{instance_id}/gateways", status_code=201, response_model=Created)
async def bind_gateway(
    instance_id: InstanceId,
    body: Envelope[GatewayBinding],
    request: Request,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, int]:
    """Bind a controller. Binding one already bound here changes nothing; one bound elsewhere is a 409."""
    gateway_id = body.data.gateway_id
    async with ctx.db.acquire() as conn:
        try:
            async with conn.transaction():
                await _lock_instance(conn, instance_id)
                await _may_change(conn, request, instance_id)
                if not await conn.fetchval("SELECT 1 FROM gateways WHERE id = $1", gateway_id):
                    raise _invalid("gateway_id", f"gateway {gateway_id} does not exist")
                holder = await _gateway_holder(conn, gateway_id)
                if holder is not None and holder["id"] != instance_id:
                    raise _bound_elsewhere(gateway_id, holder)
                if holder is not None:
                    return {"id": gateway_id}
                await conn.execute(
                    "INSERT INTO instance_gateways (instance_id, gateway_id) VALUES ($1, $2)",
                    instance_id,
                    gateway_id,
                )
        except asyncpg.UniqueViolationError as exc:  # another installation bound it meanwhile
            holder = await _gateway_holder(conn, gateway_id)
            if holder is None:
                raise _conflict("gateway_id", f"gateway {gateway_id} was bound meanwhile") from exc
            raise _bound_elsewhere(gateway_id, holder) from exc
        except asyncpg.ForeignKeyViolationError as exc:  # the gateway was deleted meanwhile
            raise _invalid("gateway_id", f"gateway {gateway_id} does not exist") from exc
    await publish_change(ctx, "instance_gateway", "bound", instance_id, gateway_id)
    return {"id": gateway_id}


@router.delete("/instances/{instance_id}/gateways/{gateway_id}", status_code=204)
async def unbind_gateway(
    instance_id: InstanceId,
    gateway_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    request: Request,
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    async with ctx.db.acquire() as conn, conn.transaction():
        await _lock_instance(conn, instance_id)
        await _may_change(conn, request, instance_id)
        found = await conn.fetchval(
            "DELETE FROM instance_gateways WHERE instance_id = $1 AND gateway_id = $2 RETURNING gateway_id",
            instance_id,
            gateway_id,
        )
    if found is None:
        raise ProblemError(
            404, "Not found", f"gateway {gateway_id} is not bound to installation {instance_id}"
        )
    await publish_change(ctx, "instance_gateway", "unbound", instance_id, gateway_id)
    return Response(status_code=204)


# -- device groups -----------------------------------------------------------------------------------


def _device_group_problems(group: str, d: DeviceGroupSpec) -> list[tuple[str, str]]:
    """What a group needs to be steered safely: a battery its capacity and charge/discharge limits, solar its
    peak power; device ids are unique within the group."""
    problems: list[tuple[str, str]] = []
    if group == "battery":
        if d.capacity_wh is None or d.capacity_wh <= 0:
            problems.append(("capacity_wh", "a battery group needs capacity_wh (Wh, greater than 0)"))
        for name in ("max_charge_w", "max_discharge_w"):
            if getattr(d, name) is None:
                problems.append((name, f"a battery group needs {name} (W, 0 or more)"))
    elif group == "solar" and (d.max_power_w is None or d.max_power_w <= 0):
        problems.append(("max_power_w", "a solar group needs max_power_w (W, greater than 0)"))
    seen: set[str] = set()
    for index, device in enumerate(d.devices):
        if device.id in seen:
            problems.append((f"devices.{index}.id", f"device id {device.id!r} appears twice"))
        seen.add(device.id)
    return problems


async def _check_device_ids(conn: Queryable, instance_id: int, group: str, d: DeviceGroupSpec) -> None:
    """A device id names one device of the installation: it may not appear in another of its groups."""
    if not d.devices:
        return
    rows = await conn.fetch(
        "SELECT g.grp, dev->>'id' AS device_id FROM instance_device_groups g,"
        " jsonb_array_elements(g.devices) dev WHERE g.instance_id = $1 AND g.grp <> $2"
        " AND dev->>'id' = ANY($3::text[])",
        instance_id,
        group,
        [device.id for device in d.devices],
    )
    taken = {row["device_id"]: row["grp"] for row in rows}
    problems = [
        (f"devices.{index}.id", f"device {device.id!r} is already in the {taken[device.id]} group")
        for index, device in enumerate(d.devices)
        if device.id in taken
    ]
    if problems:
        raise _problem(409, "Conflict", problems)


def _device_group(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "group": row["grp"],
        "devices": row["devices"],
        "max_charge_w": row["max_charge_w"],
        "max_discharge_w": row["max_discharge_w"],
        "capacity_wh": row["capacity_wh"],
        "max_power_w": row["max_power_w"],
        "created_datetime": _iso(row["created_at"]),
        "modified_datetime": _iso(row["modified_at"]),
    }


_GROUP_ORDER = "array_position(ARRAY['battery','solar','ev','hvac'], grp)"


@router.get("/instances/{instance_id}/devicegroups")
async def list_device_groups(
    instance_id: InstanceId, ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    async with ctx.db.acquire() as conn:
        if not await conn.fetchval("SELECT 1 FROM instances WHERE id = $1", instance_id):
            raise not_found("installation", instance_id)
        rows = await conn.fetch(
            f"SELECT * FROM instance_device_groups WHERE instance_id = $1 ORDER BY {_GROUP_ORDER}",
            instance_id,
        )
    return [_device_group(row) for row in rows]


@router.get("/instances/{instance_id}/devicegroups/{group}")
async def get_device_group(
    instance_id: InstanceId, group: Group, ctx: ServiceContext = Depends(get_context)
) -> dict[str, Any]:
    async with ctx.db.acquire() as conn:
        if not await conn.fetchval("SELECT 1 FROM instances WHERE id = $1", instance_id):
            raise not_found("installation", instance_id)
        row = await conn.fetchrow(
            "SELECT * FROM instance_device_groups WHERE instance_id = $1 AND grp = $2", instance_id, group
        )
    if row is None:
        raise ProblemError(404, "Not found", f"installation {instance_id} has no {group} group")
    return _device_group(row)


def _group_exists(instance_id: int, group: str) -> ProblemError:
    return _conflict(
        "group",
        f"installation {instance_id} already has a {group} group;"
        f" change it with PUT /instances/{instance_id}/devicegroups/{group}",
    )


@router.post("/instances/{instance_id}/devicegroups", status_code=201)
async def create_device_group(
    instance_id: InstanceId,
    body: Envelope[DeviceGroupIn],
    request: Request,
    response: Response,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """Add one device group (battery, solar, ev or hvac); a group the installation has already is a 409."""
    d = body.data
    problems = _device_group_problems(d.group, d)
    if problems:
        raise _problem(400, "Invalid input", problems)
    devices = [device.model_dump() for device in d.devices]
    async with ctx.db.acquire() as conn:
        try:
            async with conn.transaction():
                await _lock_instance(conn, instance_id)
                await _may_change(conn, request, instance_id)
                if await conn.fetchval(
                    "SELECT 1 FROM instance_device_groups WHERE instance_id = $1 AND grp = $2",
                    instance_id,
                    d.group,
                ):
                    raise _group_exists(instance_id, d.group)
                await _check_device_ids(conn, instance_id, d.group, d)
                new_id = await conn.fetchval(
                    "INSERT INTO instance_device_groups (instance_id, grp, devices, max_charge_w,"
                    " max_discharge_w, capacity_wh, max_power_w) VALUES ($1,$2,$3,$4,$5,$6,$7) RETURNING id",
                    instance_id,
                    d.group,
                    devices,
                    d.max_charge_w,
                    d.max_discharge_w,
                    d.capacity_wh,
                    d.max_power_w,
                )
        except asyncpg.UniqueViolationError as exc:
            raise _group_exists(instance_id, d.group) from exc
    response.headers["Location"] = f"/instances/{instance_id}/devicegroups/{d.group}"
    await publish_change(ctx, "instance_device_group", "created", instance_id, d.group)
    return {"id": new_id, "group": d.group}


@router.put("/instances/{instance_id}/devicegroups/{group}")
async def update_device_group(
    instance_id: InstanceId,
    group: Group,
    body: Envelope[DeviceGroupUpdate],
    request: Request,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """Replace a group's devices and capacities."""
    d = body.data
    if d.group is not None and d.group != group:
        raise _invalid("group", f"the body names {d.group} but the path {group}; a group cannot be renamed")
    problems = _device_group_problems(group, d)
    if problems:
        raise _problem(400, "Invalid input", problems)
    devices = [device.model_dump() for device in d.devices]
    async with ctx.db.acquire() as conn, conn.transaction():
        await _lock_instance(conn, instance_id)
        await _may_change(conn, request, instance_id)
        await _check_device_ids(conn, instance_id, group, d)
        found = await conn.fetchval(
            "UPDATE instance_device_groups SET devices=$3, max_charge_w=$4, max_discharge_w=$5,"
            " capacity_wh=$6, max_power_w=$7, modified_at=now() WHERE instance_id=$1 AND grp=$2 RETURNING id",
            instance_id,
            group,
            devices,
            d.max_charge_w,
            d.max_discharge_w,
            d.capacity_wh,
            d.max_power_w,
        )
    if found is None:
        raise ProblemError(404, "Not found", f"installation {instance_id} has no {group} group")
    await publish_change(ctx, "instance_device_group", "updated", instance_id, group)
    return {"id": found, "group": group}


@router.delete("/instances/{instance_id}/devicegroups/{group}", status_code=204)
async def delete_device_group(
    instance_id: InstanceId, group: Group, request: Request, ctx: ServiceContext = Depends(get_context)
) -> Response:
    async with ctx.db.acquire() as conn, conn.transaction():
        await _lock_instance(conn, instance_id)
        await _may_change(conn, request, instance_id)
        found = await conn.fetchval(
            "DELETE FROM instance_device_groups WHERE instance_id = $1 AND grp = $2 RETURNING id",
            instance_id,
            group,
        )
    if found is None:
        raise ProblemError(404, "Not found", f"installation {instance_id} has no {group} group")
    await publish_change(ctx, "instance_device_group", "deleted", instance_id, group)
    return Response(status_code=204)


# -- owner and guests --------------------------------------------------------------------------------


def _member(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["user_id"],
        "user_id": row["user_id"],
        "name": row["name"],
        "display_name": row["display_name"],
        "email": row["email"],
        "uuid": str(row["uuid"]),
        "role": row["role"],
        "share_content": row["share_content"],
        "share_reports": row["share_reports"],
        "allow_write": row["allow_write"],
        "created_datetime": _iso(row["created_at"]),
    }


@router.get("/instances/{instance_id}/users")
async def list_instance_users(
    instance_id: InstanceId, ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    """The owner first, then the guests by name."""
    async with ctx.db.acquire() as conn:
        if not await conn.fetchval("SELECT 1 FROM instances WHERE id = $1", instance_id):
            raise not_found("installation", instance_id)
        rows = await conn.fetch(
            "SELECT iu.*, u.name, u.display_name, u.email, u.uuid FROM instance_users iu"
            " JOIN users u ON u.id = iu.user_id WHERE iu.instance_id = $1"
            " ORDER BY iu.role = 'owner' DESC, u.name, u.id",
            instance_id,
        )
    return [_member(row) for row in rows]


def _membership_problems(d: InstanceUserSpec) -> None:
    if d.role == "guest" and d.allow_write and not d.share_content:
        raise _invalid(
            "allow_write", "a guest may be allowed to write to devices only when share_content is true"
        )


async def _owner_name(conn: Queryable, instance_id: int, except_user: int | None = None) -> str | None:
    name: str | None = await conn.fetchval(
        "SELECT u.name FROM instance_users iu JOIN users u ON u.id = iu.user_id"
        " WHERE iu.instance_id = $1 AND iu.role = 'owner' AND iu.user_id IS DISTINCT FROM $2",
        instance_id,
        except_user,
    )
    return name


def _second_owner(name: str | None) -> ProblemError:
    return _conflict("role", f"installation already has an owner: {name or 'another user'}")


async def _write_member(
    ctx: ServiceContext,
    request: Request,
    instance_id: int,
    user_id: int,
    d: InstanceUserSpec,
    *,
    create: bool,
) -> None:
    _membership_problems(d)
    async with ctx.db.acquire() as conn:
        try:
            async with conn.transaction():
                await _lock_instance(conn, instance_id)
                await _may_change(conn, request, instance_id)
                user = await conn.fetchrow("SELECT id, name FROM users WHERE id = $1", user_id)
                if user is None:
                    if create:
                        raise _invalid("user_id", f"user {user_id} does not exist")
                    raise not_found("user", user_id)
                current = await conn.fetchval(
                    "SELECT role FROM instance_users WHERE instance_id = $1 AND user_id = $2",
                    instance_id,
                    user_id,
                )
                if create and current is not None:
                    raise _conflict(
                        "user_id",
                        f"user {user['name']} is already the {current} of installation {instance_id};"
                        f" change it with PUT /instances/{instance_id}/users/{user_id}",
                    )
                if not create and current is None:
                    raise ProblemError(
                        404, "Not found", f"user {user_id} is not a user of installation {instance_id}"
                    )
                if d.role == "owner":
                    owner = await _owner_name(conn, instance_id, except_user=user_id)
                    if owner is not None:
                        raise _second_owner(owner)
                flags = (d.role, d.share_content, d.share_reports, d.allow_write)
                if create:
                    await conn.execute(
                        "INSERT INTO instance_users (instance_id, user_id, role, share_content, share_reports,"
                        " allow_write) VALUES ($1, $2, $3, $4, $5, $6)",
                        instance_id,
                        user_id,
                        *flags,
                    )
                else:
                    await conn.execute(
                        "UPDATE instance_users SET role=$3, share_content=$4, share_reports=$5, allow_write=$6"
                        " WHERE instance_id=$1 AND user_id=$2",
                        instance_id,
                        user_id,
                        *flags,
                    )
        except asyncpg.UniqueViolationError as exc:  # decided by the indexes when requests raced
            if exc.constraint_name == "instance_users_one_owner":
                raise _second_owner(await _owner_name(conn, instance_id)) from exc
            raise _conflict("user_id", f"user {user_id} is already a user of this installation") from exc
        except asyncpg.ForeignKeyViolationError as exc:  # the account was deleted meanwhile
            raise _invalid("user_id", f"user {user_id} does not exist") from exc


@router.post("/instances/{instance_id}/users", status_code=201, response_model=Created)
async def add_instance_user(
    instance_id: InstanceId,
    body: Envelope[InstanceUserIn],
    request: Request,
    response: Response,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, int]:
    """Add the owner (at most one) or a guest. A guest may write to devices only with share_content."""
    user_id = body.data.user_id
    await _write_member(ctx, request, instance_id, user_id, body.data, create=True)
    response.headers["Location"] = f"/instances/{instance_id}/users/{user_id}"
    await publish_change(ctx, "instance_user", "bound", instance_id, user_id)
    return {"id": user_id}


@router.put("/instances/{instance_id}/users/{user_id}", response_model=Created)
async def update_instance_user(
    instance_id: InstanceId,
    user_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    body: Envelope[InstanceUserUpdate],
    request: Request,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, int]:
    """Change a user's role or flags on the installation (the same rules as adding)."""
    if body.data.user_id is not None and body.data.user_id != user_id:
        raise _invalid("user_id", f"the body names user {body.data.user_id} but the path {user_id}")
    await _write_member(ctx, request, instance_id, user_id, body.data, create=False)
    await publish_change(ctx, "instance_user", "updated", instance_id, user_id)
    return {"id": user_id}


@router.delete("/instances/{instance_id}/users/{user_id}", status_code=204)
async def remove_instance_user(
    instance_id: InstanceId,
    user_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    request: Request,
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    async with ctx.db.acquire() as conn, conn.transaction():
        await _lock_instance(conn, instance_id)
        await _may_change(conn, request, instance_id, leaving_user=user_id)
        found = await conn.fetchval(
            "DELETE FROM instance_users WHERE instance_id = $1 AND user_id = $2 RETURNING user_id",
            instance_id,
            user_id,
        )
    if found is None:
        raise ProblemError(404, "Not found", f"user {user_id} is not a user of installation {instance_id}")
    await publish_change(ctx, "instance_user", "unbound", instance_id, user_id)
    return Response(status_code=204)

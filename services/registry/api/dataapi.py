"""The Data API account of a service provider (seed 000's "Data API account manager") and its key checks.

One account per provider. Its key is shown once, stored as a SHA-256 digest, carries an optional expiry and
is sent as `API-Key`. Renewing issues a new key; the previous one keeps working for a grace period (24 h by
default) and then stops. Deleting ends the account and its keys at once (the gateway forgets cached
credentials when the change is announced). Every key has a **scope** (`user`: the installations its user is a
member of; `portal`: every installation of the provider) and a **package** (`basic` or `advanced`), which the
reporting service's `/data` routes enforce (services/reporting/dataapi.py).

The `/internal/dataapi/...` routes are the read model those calls use: the installations a caller may see,
one installation with its components (meters, device groups, controllers, data sources) and its data source
status history.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Body as BodyParam
from pydantic import Field, model_validator

from libs.auth import token_digest
from libs.service import (
    Principal,
    ProblemError,
    ServiceContext,
    bad_request,
    current_principal,
    get_context,
    not_found,
)
from services.registry.api.common import Body, Envelope, publish_change

router = APIRouter(tags=["dataapi"])

DATA_KEY_PREFIX = "gfd_"
DEFAULT_GRACE = timedelta(hours=24)
MAX_GRACE = timedelta(days=30)
MAX_LIFETIME = timedelta(days=3 * 366)
_ADMINS = ("platform_admin", "provider_admin")

_ACCOUNT_EXAMPLE: dict[str, Any] = {
    "id": 3,
    "uuid": "6f0f3c7e-2f7b-4a39-9d62-0d3f4f1f5c11",
    "provider_id": 2,
    "scope": "portal",
    "package": "basic",
    "user_id": None,
    "created_datetime_utc": "2026-03-01T09:00:00+00:00",
    "expires_datetime_utc": None,
    "key_prefix": "gfd_3a9c01fe",
    "key_created_datetime_utc": "2026-03-01T09:00:00+00:00",
    "last_used_datetime_utc": "2026-03-02T07:15:04+00:00",
    "previous_key_prefix": None,
    "previous_key_valid_until_utc": None,
}
_PROBLEM = {"application/problem+json": {"example": {"title": "Not found", "status": 404}}}


def _require_admin(request: Request) -> Principal:
    principal = current_principal(request)
    if principal is None:
        raise ProblemError(401, "Unauthorized", "log in first")
    if principal.data_scope is not None:
        raise ProblemError(403, "Forbidden", "a Data API key cannot manage its own account")
    if principal.role not in _ADMINS:
        raise ProblemError(403, "Forbidden", "this needs one of the roles: platform_admin, provider_admin")
    return principal


def _provider_of(principal: Principal, provider_id: int | None) -> int:
    """The provider whose account is meant: the caller's own; a platform administrator names one."""
    if principal.role == "platform_admin":
        if provider_id is None:
            raise bad_request("provider_id", "a platform administrator names the provider (?provider_id=)")
        return provider_id
    if provider_id not in (None, principal.provider_id) or principal.provider_id is None:
        raise bad_request("provider_id", "the Data API account of your own provider only")
    return principal.provider_id


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _account(row: asyncpg.Record) -> dict[str, Any]:
    previous_live = row["previous_valid_until"] is not None and row["previous_valid_until"] > datetime.now(
        UTC
    )
    return {
        "id": row["id"],
        "uuid": str(row["uuid"]),
        "provider_id": row["provider_id"],
        "scope": row["scope"],
        "package": row["package"],
        "user_id": row["user_id"],
        "created_datetime_utc": row["created_at"].isoformat(),
        "expires_datetime_utc": _iso(row["expires_at"]),
        "key_prefix": f"{DATA_KEY_PREFIX}{row['key_prefix']}",
        "key_created_datetime_utc": row["key_created_at"].isoformat(),
        "last_used_datetime_utc": _iso(row["last_used_at"]),
        "previous_key_prefix": f"{DATA_KEY_PREFIX}{row['previous_prefix']}" if previous_live else None,
        "previous_key_valid_until_utc": _iso(row["previous_valid_until"]) if previous_live else None,
    }


def _new_key() -> tuple[str, str]:
    """(prefix, clear key): `gfd_<8 hex>_<secret>`; the prefix finds the row, the digest proves the key."""
    prefix = secrets.token_hex(4)
    return prefix, f"{DATA_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32).replace('_', 'x')}"


class AccountIn(Body):
    scope: Literal["user", "portal"] = Field(
        description="`user`: only the installations `user_id` is a member of; `portal`: all of the provider's"
    )
    package: Literal["basic", "advanced"] = Field(
        description="`basic`: totals, components, events; `advanced` adds component values and KPIs"
    )
    user_id: int | None = Field(None, ge=1, le=2**53 - 1, description="Required for scope `user`")
    expires_at: datetime | None = Field(None, description="When the key stops working; none = no expiry")

    @model_validator(mode="after")
    def _check(self) -> AccountIn:
        if self.scope == "user" and self.user_id is None:
            raise ValueError("user_id is required for scope user")
        if self.scope == "portal" and self.user_id is not None:
            raise ValueError("user_id applies to scope user only")
        if self.expires_at is not None:
            if self.expires_at.tzinfo is None:
                self.expires_at = self.expires_at.replace(tzinfo=UTC)
            if self.expires_at <= datetime.now(UTC):
                raise ValueError("expires_at must be in the future")
            if self.expires_at > datetime.now(UTC) + MAX_LIFETIME:
                raise ValueError("a Data API key lives at most three years")
        return self


class RenewIn(Body):
    grace_seconds: int = Field(
        int(DEFAULT_GRACE.total_seconds()),
        ge=0,
        le=int(MAX_GRACE.total_seconds()),
        description="How long the previous key keeps working (default 86400 = 24 h; 0 = stops at once)",
    )


@router.post(
    "/dataapi/account",
    status_code=201,
    responses={
        201: {
            "description": "The account; `api_key` is shown this once",
            "content": {"application/json": {"example": {**_ACCOUNT_EXAMPLE, "api_key": "gfd_3a9c01fe_…"}}},
        },
        409: {"description": "The provider has an account already", "content": _PROBLEM},
    },
)
async def create_account(
    request: Request,
    response: Response,
    body: Envelope[AccountIn] = BodyParam(
        openapi_examples={
            "portal": {
                "summary": "every installation of the provider, basic package",
                "value": {"data": {"scope": "portal", "package": "basic"}},
            },
            "user": {
                "summary": "the installations of user 12, advanced package, expiring",
                "value": {
                    "data": {
                        "scope": "user",
                        "package": "advanced",
                        "user_id": 12,
                        "expires_at": "2027-01-01T00:00:00Z",
                    }
                },
            },
        }
    ),
    provider_id: int | None = Query(None, ge=1, le=2**53 - 1, description="Platform administrators only"),
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """Create the provider's Data API account and its first key (shown once, stored hashed)."""
    principal = _require_admin(request)
    provider = _provider_of(principal, provider_id)
    d = body.data
    if d.user_id is not None:
        owner = await ctx.db.fetchval("SELECT provider_id FROM users WHERE id = $1", d.user_id)
        if owner != provider:
            raise bad_request("user_id", f"user {d.user_id} is not a user of provider {provider}")
    prefix, key = _new_key()
    try:
        row = await ctx.db.fetchrow(
            "INSERT INTO dataapi_accounts (uuid, provider_id, scope, package, user_id, created_by, expires_at,"
            " key_prefix, key_digest) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *",
            uuid.uuid4(), provider, d.scope, d.package, d.user_id,
            principal.user_id if principal.user_id > 0 else None, d.expires_at, prefix, token_digest(key),
        )  # fmt: skip
    except asyncpg.UniqueViolationError as exc:
        raise ProblemError(
            409, "Duplicate", "this provider has a Data API account already; renew or delete it"
        ) from exc
    except asyncpg.ForeignKeyViolationError as exc:
        raise bad_request("provider_id", f"provider {provider} does not exist") from exc
    assert row is not None
    response.headers["Location"] = "/dataapi/account"
    await publish_change(ctx, "api_key", "created", row["id"])
    return {**_account(row), "api_key": key}


async def _account_row(ctx: ServiceContext, provider: int) -> asyncpg.Record:
    row = await ctx.db.fetchrow("SELECT * FROM dataapi_accounts WHERE provider_id = $1", provider)
    if row is None:
        raise ProblemError(404, "Not found", "this provider has no Data API account")
    return row


@router.get(
    "/dataapi/account",
    responses={
        200: {"content": {"application/json": {"example": _ACCOUNT_EXAMPLE}}},
        404: {"description": "No Data API account", "content": _PROBLEM},
    },
)
async def get_account(
    request: Request,
    provider_id: int | None = Query(None, ge=1, le=2**53 - 1, description="Platform administrators only"),
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """The account without its key: scope, package, created, expires, last used, the previous key's grace end."""
    principal = _require_admin(request)
    return _account(await _account_row(ctx, _provider_of(principal, provider_id)))


@router.post(
    "/dataapi/account/renew",
    responses={
        200: {
            "description": "The new key, shown this once; the previous one works until its grace end",
            "content": {
                "application/json": {
                    "example": {
                        **_ACCOUNT_EXAMPLE,
                        "previous_key_prefix": "gfd_77e0c2aa",
                        "previous_key_valid_until_utc": "2026-03-03T09:00:00+00:00",
                        "api_key": "gfd_3a9c01fe_…",
                    }
                }
            },
        },
        404: {"description": "No Data API account", "content": _PROBLEM},
    },
)
async def renew_account(
    request: Request,
    body: Envelope[RenewIn] | None = BodyParam(
        None,
        openapi_examples={
            "default": {"summary": "24 h grace", "value": {"data": {}}},
            "at once": {"summary": "the old key stops now", "value": {"data": {"grace_seconds": 0}}},
        },
    ),
    provider_id: int | None = Query(None, ge=1, le=2**53 - 1, description="Platform administrators only"),
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """A new key; the current one keeps working for `grace_seconds` (default 24 h), an older one stops now."""
    principal = _require_admin(request)
    provider = _provider_of(principal, provider_id)
    grace = timedelta(seconds=(body.data if body is not None else RenewIn()).grace_seconds)
    prefix, key = _new_key()
    row = await ctx.db.fetchrow(
        "UPDATE dataapi_accounts SET previous_prefix = key_prefix, previous_digest = key_digest,"
        " previous_valid_until = now() + $2::interval, key_prefix = $3, key_digest = $4, key_created_at = now()"
        " WHERE provider_id = $1 RETURNING *",
        provider, grace, prefix, token_digest(key),
    )  # fmt: skip
    if row is None:
        raise ProblemError(404, "Not found", "this provider has no Data API account")
    await publish_change(ctx, "api_key", "updated", row["id"])
    return {**_account(row), "api_key": key}


@router.delete(
    "/dataapi/account",
    status_code=204,
    responses={404: {"description": "No Data API account", "content": _PROBLEM}},
)
async def delete_account(
    request: Request,
    provider_id: int | None = Query(None, ge=1, le=2**53 - 1, description="Platform administrators only"),
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    """End the account: its keys (current and previous) stop working at once."""
    principal = _require_admin(request)
    provider = _provider_of(principal, provider_id)
    found = await ctx.db.fetchval(
        "DELETE FROM dataapi_accounts WHERE provider_id = $1 RETURNING id", provider
    )
    if found is None:
        raise not_found("Data API account of provider", provider)
    await publish_change(ctx, "api_key", "deleted", found)
    return Response(status_code=204)


# -- the key check (called by /internal/auth/verify) --------------------------------------------------


async def verify_data_key(ctx: ServiceContext, api_key: str) -> dict[str, Any]:
    """The principal of a Data API key, or 401: read-only, narrowed to its scope and package.

    Scope `user` acts as its user in the role `guest`, so row-level security alone already limits it to the
    installations that user is a member of; scope `portal` acts in the role `operator` of the provider.
    """
    parts = api_key.split("_")
    if len(parts) != 3 or not parts[1]:
        raise ProblemError(401, "Unauthorized", "the API key is malformed")
    now = datetime.now(UTC)
    digest = token_digest(api_key)
    row = await ctx.db.fetchrow(
        "SELECT a.*, u.uuid AS user_uuid, u.is_disabled, u.account_expires_at"
        " FROM dataapi_accounts a LEFT JOIN users u ON u.id = a.user_id"
        " WHERE a.key_prefix = $1 OR a.previous_prefix = $1",
        parts[1],
    )
    if row is None:
        raise ProblemError(401, "Unauthorized", "the API key is unknown, revoked or expired")
    current = row["key_prefix"] == parts[1] and secrets.compare_digest(row["key_digest"], digest)
    previous = (
        not current
        and row["previous_prefix"] == parts[1]
        and secrets.compare_digest(row["previous_digest"] or "", digest)
        and row["previous_valid_until"] is not None
        and row["previous_valid_until"] > now
    )
    if not (current or previous) or (row["expires_at"] is not None and row["expires_at"] <= now):
        raise ProblemError(401, "Unauthorized", "the API key is unknown, revoked or expired")
    if row["scope"] == "user" and (
        row["is_disabled"] or (row["account_expires_at"] is not None and row["account_expires_at"] <= now)
    ):
        raise ProblemError(401, "Unauthorized", "the key's user is disabled or expired")
    await ctx.db.execute("UPDATE dataapi_accounts SET last_used_at = now() WHERE id = $1", row["id"])
    ends = [
        m
        for m in (
            row["expires_at"],
            None if current else row["previous_valid_until"],
            row["account_expires_at"],
        )
        if m is not None
    ]
    principal = Principal(
        user_id=row["user_id"] if row["scope"] == "user" else 0,
        user_uuid=str(row["user_uuid"] if row["scope"] == "user" else row["uuid"]),
        name=f"dataapi:{DATA_KEY_PREFIX}{parts[1]}",
        provider_id=row["provider_id"],
        role="guest" if row["scope"] == "user" else "operator",
        via_key=True,
        expires_at=min(ends).timestamp() if ends else None,
        data_scope=row["scope"],
        data_package=row["package"],
    )
    return principal.__dict__


# -- the read model for the /data calls ----------------------------------------------------------------


def _members_only(principal: Principal | None) -> int | None:
    """The user whose memberships narrow the caller (Data API scope `user`, owners and guests), or None."""
    if principal is None:
        return None
    if principal.data_scope == "user" or (
        principal.data_scope is None and principal.role in ("owner", "guest")
    ):
        return principal.user_id
    return None


_INSTANCE_SQL = (
    "SELECT i.id, i.uuid::text AS uuid, i.title, i.type, i.serial, i.street, i.postal_code, i.city, i.country,"
    " t.name AS timezone, i.status, i.parameters, i.root_space_id, i.created_at"
    " FROM instances i JOIN timezones t ON t.id = i.timezone_id"
    " WHERE ($1::bigint IS NULL OR EXISTS (SELECT 1 FROM instance_users m WHERE m.instance_id = i.id AND m.user_id = $1))"
)


def _instance(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "uuid": row["uuid"],
        "title": row["title"],
        "type": row["type"],
        "serial": row["serial"],
        "address": {
            "street": row["street"],
            "postal_code": row["postal_code"],
            "city": row["city"],
            "country": row["country"],
        },
        "timezone": row["timezone"],
        "status": row["status"],
        "parameters": row["parameters"],
        "root_space_id": row["root_space_id"],
        "created_datetime_utc": row["created_at"].isoformat(),
    }


@router.get("/internal/dataapi/instances", include_in_schema=False)
async def visible_instances(
    request: Request, ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    """The installations the caller may read through the Data API."""
    rows = await ctx.db.fetch(_INSTANCE_SQL + " ORDER BY i.id", _members_only(current_principal(request)))
    return [_instance(r) for r in rows]


_METERS_SQL = """
WITH RECURSIVE tree(id) AS (
    SELECT root_space_id FROM instances WHERE id = $1 AND root_space_id IS NOT NULL
    UNION SELECT s.id FROM spaces s JOIN tree t ON s.parent_space_id = t.id
), ids AS (
    SELECT meter_id FROM space_meters WHERE space_id IN (SELECT id FROM tree)
    UNION SELECT mp.meter_id FROM instance_gateways ig JOIN data_sources d ON d.gateway_id = ig.gateway_id
        JOIN points p ON p.data_source_id = d.id JOIN meter_points mp ON mp.point_id = p.id
        WHERE ig.instance_id = $1
)
SELECT m.id, m.uuid::text AS uuid, m.name, c.name AS category, c.unit_of_measure, m.is_counted, m.master_meter_id,
    coalesce((SELECT json_agg(json_build_object('id', p.id, 'object_type', p.object_type, 'units', p.units)
              ORDER BY p.id) FROM meter_points mp JOIN points p ON p.id = mp.point_id WHERE mp.meter_id = m.id),
             '[]') AS points
FROM meters m JOIN energy_categories c ON c.id = m.energy_category_id
WHERE m.id IN (SELECT meter_id FROM ids) ORDER BY m.id
"""


@router.get("/internal/dataapi/instances/{instance_id}", include_in_schema=False)
async def instance_components(
    instance_id: int, request: Request, ctx: ServiceContext = Depends(get_context)
) -> dict[str, Any]:
    """One visible installation with its meters, device groups, controllers and data sources (404 if not
    visible to the caller)."""
    if not 1 <= instance_id <= 2**63 - 1:
        raise not_found("installation", instance_id)
    row = await ctx.db.fetchrow(
        _INSTANCE_SQL + " AND i.id = $2", _members_only(current_principal(request)), instance_id
    )
    if row is None:
        raise not_found("installation", instance_id)
    meters = await ctx.db.fetch(_METERS_SQL, instance_id)
    groups = await ctx.db.fetch(
        "SELECT grp, devices, max_charge_w, max_discharge_w, capacity_wh, max_power_w"
        " FROM instance_device_groups WHERE instance_id = $1 ORDER BY grp",
        instance_id,
    )
    gateways = await ctx.db.fetch(
        "SELECT g.id, g.uuid::text AS uuid, g.name, g.last_seen_at, g.reported_status"
        " FROM instance_gateways ig JOIN gateways g ON g.id = ig.gateway_id WHERE ig.instance_id = $1 ORDER BY g.id",
        instance_id,
    )
    sources = await ctx.db.fetch(
        "SELECT d.id, d.name, d.protocol, d.gateway_id, d.status, d.status_changed_at, d.last_seen_at"
        " FROM instance_gateways ig JOIN data_sources d ON d.gateway_id = ig.gateway_id"
        " WHERE ig.instance_id = $1 ORDER BY d.id",
        instance_id,
    )
    return {
        **_instance(row),
        "meters": [{**dict(m), "points": m["points"]} for m in meters],
        "device_groups": [
            {
                "group": g["grp"],
                "devices": g["devices"],
                "max_charge_w": g["max_charge_w"],
                "max_discharge_w": g["max_discharge_w"],
                "capacity_wh": g["capacity_wh"],
                "max_power_w": g["max_power_w"],
            }
            for g in groups
        ],
        "gateways": [
            {
                "id": g["id"],
                "uuid": g["uuid"],
                "name": g["name"],
                "status": g["reported_status"],
                "last_seen_datetime_utc": _iso(g["last_seen_at"]),
            }
            for g in gateways
        ],
        "data_sources": [
            {
                "id": s["id"],
                "name": s["name"],
                "protocol": s["protocol"],
                "gateway_id": s["gateway_id"],
                "status": s["status"],
                "status_changed_datetime_utc": _iso(s["status_changed_at"]),
                "last_seen_datetime_utc": _iso(s["last_seen_at"]),
            }
            for s in sources
        ],
    }


@router.get("/internal/dataapi/instances/{instance_id}/sourceevents", include_in_schema=False)
async def source_events(
    instance_id: int,
    since: datetime,
    until: datetime,
    limit: int = Query(10_000, ge=1, le=100_000),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    """Status changes of the installation's data sources in [since, until), oldest first."""
    rows = await ctx.db.fetch(
        "SELECT e.at, e.status, d.id, d.name FROM datasource_status_events e"
        " JOIN data_sources d ON d.id = e.data_source_id"
        " JOIN instance_gateways ig ON ig.gateway_id = d.gateway_id"
        " WHERE ig.instance_id = $1 AND e.at >= $2 AND e.at < $3 ORDER BY e.at, e.id LIMIT $4",
        instance_id, since, until, limit,
    )  # fmt: skip
    return [
        {"at": r["at"].isoformat(), "status": r["status"], "data_source_id": r["id"], "name": r["name"]}
        for r in rows
    ]

"""Licenses (seed 003): "device + license = service".

A license is a type (Basic < PRO < Elite) of one service (`dataapi`, `scheduling`, …) on one device, made from
a license code that administrators create at `POST /activationcodes {"kind": "license", "service", "type",
"duration_days"}` (shown once, stored hashed, used once). Routes:

- `POST /licenses/activate {"data": {"code", "device_id"}}`: the device's owner starts a license; time starts
  now and never pauses. A device has at most one active license per service (409: extend or upgrade it).
- `POST /licenses/{id}/extend {"data": {"code"}}`: a code of the same service and type adds its duration to
  the expiry (of an expired license too: the time it lay expired counts).
- `POST /licenses/{id}/upgrade {"data": {"code"}}`: a code of a higher type raises the type; the expiry
  becomes the later of the current one and now plus the code's duration. Refused at Elite and once expired.
- `PUT /licenses/{id} {"data": {"device_id"}}`: licenses are not transferable; another device is a 409. A
  license stays with its device when the device changes owner.
- `GET /licenses?status=active|expired`, `GET /licenses/{id}` (with its history).
- `GET /internal/devices/{id}/entitlements` (services only): what the device may use now,
  `{"device_id", "services": {"dataapi": {"type": "PRO", "expires_at": …, "license_id": …}}}`.

A monitor announces each license `license.warning` (`GRIDFLEET_OWNERSHIP_LICENSE_WARNING_DAYS`, 7 by default,
before expiry) and `license.expired` (at expiry) as audit events on the bus, logs them and adds them to the
device's history. It sleeps until the next announcement is due (at most `license_check_max_s`), is woken by
every change of a license, and claims rows with `FOR UPDATE SKIP LOCKED`, so replicas announce each once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from pydantic import Field

from libs.db import Queryable
from libs.service import ServiceContext
from proto_schemas import topics
from proto_schemas.audit import AuditEvent
from services.onboarding import ownership_store as store
from services.onboarding.ownership import load_code, mark_used
from services.onboarding.ownership_rules import (
    Caller,
    License,
    Refusal,
    activate_license,
    check_license_holder,
    check_move,
    extend_license,
    invalid_code,
    rank,
    upgrade_license,
)
from services.onboarding.ownership_store import MAX_ID, Body, CodeText, Envelope, iso, problem

log = logging.getLogger(__name__)

WAKE = "license_monitor_wake"


@contextlib.asynccontextmanager
async def _monitor_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the expiry monitor for the life of the service (the app's own start-up has run by now)."""
    ctx: ServiceContext = app.state.ctx
    if ctx.pool is None:
        yield
        return
    wake = asyncio.Event()
    ctx.state[WAKE] = wake
    task = asyncio.create_task(_monitor(ctx, wake), name="license-monitor")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


router = APIRouter(tags=["licenses"], lifespan=_monitor_lifespan)

LicenseId = Annotated[int, Path(ge=1, le=MAX_ID, description="The license id")]


class LicenseActivation(Body):
    code: CodeText
    device_id: int = Field(ge=1, le=MAX_ID)


class CodeOnly(Body):
    code: CodeText


class LicenseMove(Body):
    device_id: int = Field(ge=1, le=MAX_ID)


def _as_rules(row: Any) -> License:
    return License(
        row["id"], row["instance_id"], row["service"], row["type"], row["activated_at"], row["expires_at"]
    )


def _view(row: Any, moment: datetime) -> dict[str, Any]:
    remaining = (row["expires_at"] - moment).total_seconds()
    return {
        "id": row["id"],
        "device_id": row["instance_id"],
        "service": row["service"],
        "type": row["type"],
        "status": "active" if row["activated_at"] <= moment < row["expires_at"] else "expired",
        "activated_at": iso(row["activated_at"]),
        "expires_at": iso(row["expires_at"]),
        "days_remaining": max(0, int(remaining // 86400)),
        "activated_by": {"id": row["activated_by"], "name": row["activated_by_name"]},
    }


def _wake(ctx: ServiceContext) -> None:
    event = ctx.state.get(WAKE)
    if isinstance(event, asyncio.Event):
        event.set()


async def _visible_license(conn: Queryable, ctx: ServiceContext, license_id: int, caller: Caller) -> Any:
    """The license if the caller may see it: administrators of its provider, members of its device, and the
    user who activated it."""
    row = await conn.fetchrow("SELECT * FROM licenses WHERE id = $1", license_id)
    if row is not None and not (
        caller.administers(row["provider_id"]) or row["activated_by"] == caller.user_id
    ):
        inst = (await store.installations(ctx, [row["instance_id"]])).get(row["instance_id"])
        if inst is None or inst.member(caller.user_id) is None:
            row = None
    if row is None:
        raise problem(404, "id", f"license {license_id} does not exist")
    return row


@router.post("/licenses/activate", status_code=201)
async def activate(
    body: Envelope[LicenseActivation],
    request: Request,
    response: Response,
    ctx: ServiceContext = Depends(store.service_context),
) -> dict[str, Any]:
    """Start a license on a device with a license code (once; time starts now)."""
    caller = store.caller_of(request)
    name = store.caller_name(request)
    d = body.data
    await store.check_code_rate(ctx, caller)
    key = store.digest(d.code)
    async with store.counting_wrong_codes(ctx, caller):
        if key is None:
            raise invalid_code()
        async with ctx.system() as conn, conn.transaction():
            await store.lock_devices(conn, [d.device_id])
            inst = (await store.installations(ctx, [d.device_id])).get(d.device_id)
            if inst is None:
                raise Refusal(400, "device_id", f"device {d.device_id} does not exist")
            device = await store.device_state(conn, inst)
            loaded = await load_code(conn, key, lock=True)
            moment = await conn.fetchval("SELECT now()")
            existing = [
                _as_rules(r)
                for r in await conn.fetch("SELECT * FROM licenses WHERE instance_id = $1", d.device_id)
            ]
            new_id = await conn.fetchval("SELECT nextval(pg_get_serial_sequence('licenses', 'id'))")
            planned = activate_license(
                loaded[0] if loaded else None, caller, device, existing, moment, new_id
            )
            row: Any = await conn.fetchrow(
                "INSERT INTO licenses (id, instance_id, provider_id, service, type, activated_at, expires_at,"
                " activated_by, activated_by_name, code_id) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) RETURNING *",
                planned.id,
                d.device_id,
                inst.provider_id,
                planned.service,
                planned.type,
                planned.activated_at,
                planned.expires_at,
                caller.user_id,
                name,
                loaded[0].id if loaded else None,
            )
            assert loaded is not None
            await mark_used(conn, loaded[0].id, caller, name, "license")
            await store.record(
                conn, d.device_id, "license_activated", caller, name,
                {"service": planned.service, "type": planned.type, "expires_at": iso(planned.expires_at)}, planned.id,
            )  # fmt: skip
    _wake(ctx)
    response.headers["Location"] = f"/licenses/{row['id']}"
    return _view(row, moment)


async def _change(
    ctx: ServiceContext, request: Request, license_id: int, code_text: str, verb: Literal["extend", "upgrade"]
) -> dict[str, Any]:
    caller = store.caller_of(request)
    name = store.caller_name(request)
    await store.check_code_rate(ctx, caller)
    key = store.digest(code_text)
    async with store.counting_wrong_codes(ctx, caller), ctx.system() as conn, conn.transaction():
        first = await _visible_license(conn, ctx, license_id, caller)
        await store.lock_devices(conn, [first["instance_id"]])
        row: Any = await conn.fetchrow("SELECT * FROM licenses WHERE id = $1 FOR UPDATE", license_id)
        inst = (await store.installations(ctx, [row["instance_id"]])).get(row["instance_id"])
        if inst is None:
            raise Refusal(409, "id", f"the device of license {license_id} no longer exists")
        check_license_holder(await store.device_state(conn, inst), caller)
        if key is None:
            raise invalid_code()
        loaded = await load_code(conn, key, lock=True)
        moment = await conn.fetchval("SELECT now()")
        code = loaded[0] if loaded else None
        before = _as_rules(row)
        after = (
            extend_license(code, caller, before)
            if verb == "extend"
            else upgrade_license(code, caller, before, moment)
        )
        assert code is not None
        # A later expiry is announced again (warning, then expiry); an unchanged one keeps its notices.
        row = await conn.fetchrow(
            "UPDATE licenses SET type = $2, expires_at = $3,"
            " warned_at = CASE WHEN $3 > expires_at THEN NULL ELSE warned_at END,"
            " expired_notified_at = CASE WHEN $3 > expires_at THEN NULL ELSE expired_notified_at END"
            " WHERE id = $1 RETURNING *",
            license_id,
            after.type,
            after.expires_at,
        )
        await mark_used(conn, code.id, caller, name, "extension" if verb == "extend" else "upgrade")
        await store.record(
                conn, row["instance_id"], f"license_{verb}ed" if verb == "extend" else "license_upgraded", caller, name,
                {"type_before": before.type, "type": after.type, "expires_before": iso(before.expires_at),
                 "expires_at": iso(after.expires_at), "code_id": code.id},
                license_id,
            )  # fmt: skip
    _wake(ctx)
    return _view(row, moment)


@router.post("/licenses/{license_id}/extend")
async def extend(
    license_id: LicenseId,
    body: Envelope[CodeOnly],
    request: Request,
    ctx: ServiceContext = Depends(store.service_context),
) -> dict[str, Any]:
    """Add an extension code's duration to the expiry (same service and type)."""
    return await _change(ctx, request, license_id, body.data.code, "extend")


@router.post("/licenses/{license_id}/upgrade")
async def upgrade(
    license_id: LicenseId,
    body: Envelope[CodeOnly],
    request: Request,
    ctx: ServiceContext = Depends(store.service_context),
) -> dict[str, Any]:
    """Raise the type with a code of a higher type of the same service."""
    return await _change(ctx, request, license_id, body.data.code, "upgrade")


@router.put("/licenses/{license_id}")
async def move(
    license_id: LicenseId,
    body: Envelope[LicenseMove],
    request: Request,
    ctx: ServiceContext = Depends(store.service_context),
) -> dict[str, Any]:
    """Licenses are not transferable: naming another device is a 409 (the same device changes nothing)."""
    caller = store.caller_of(request)
    async with ctx.system() as conn:
        row = await _visible_license(conn, ctx, license_id, caller)
        moment = await conn.fetchval("SELECT now()")
    try:
        check_move(_as_rules(row), body.data.device_id)
    except Refusal as refusal:
        raise store.refused(refusal) from refusal
    return _view(row, moment)


@router.get("/licenses")
async def list_licenses(
    request: Request,
    response: Response,
    status: Literal["active", "expired"] | None = Query(None, description="The Active or the Expired tab"),
    device_id: int | None = Query(None, ge=1, le=MAX_ID),
    service: str | None = Query(None, max_length=32, pattern=r"^[a-z][a-z0-9_-]{0,31}$"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_ID),
    ctx: ServiceContext = Depends(store.service_context),
) -> list[dict[str, Any]]:
    """Licenses of the caller's devices (and those they activated); administrators see their provider's.
    Newest first; the total is in `X-Total-Count`."""
    caller = store.caller_of(request)
    args: list[Any] = []
    where: list[str] = []
    if caller.is_platform_admin:
        pass
    elif caller.role == "provider_admin":
        args.append(caller.provider_id)
        where.append(f"provider_id = ${len(args)}")
    else:
        mine = list(await store.installations(ctx, user_id=caller.user_id))
        args += [mine, caller.user_id]
        where.append(f"(instance_id = ANY(${len(args) - 1}::bigint[]) OR activated_by = ${len(args)})")
    for clause, value in (("instance_id = ${}", device_id), ("service = ${}", service)):
        if value is not None:
            args.append(value)
            where.append(clause.format(len(args)))
    if status is not None:
        where.append("expires_at > now()" if status == "active" else "expires_at <= now()")
    sql_where = (" WHERE " + " AND ".join(where)) if where else ""
    async with ctx.system() as conn:
        total = await conn.fetchval(f"SELECT count(*) FROM licenses{sql_where}", *args)
        rows = await conn.fetch(
            f"SELECT * FROM licenses{sql_where} ORDER BY id DESC LIMIT {limit} OFFSET {offset}", *args
        )
        moment = await conn.fetchval("SELECT now()")
    response.headers["X-Total-Count"] = str(total)
    return [_view(row, moment) for row in rows]


@router.get("/licenses/{license_id}")
async def get_license(
    license_id: LicenseId, request: Request, ctx: ServiceContext = Depends(store.service_context)
) -> dict[str, Any]:
    """One license with its history (activation, extensions, upgrades, warnings, expiry)."""
    caller = store.caller_of(request)
    async with ctx.system() as conn:
        row = await _visible_license(conn, ctx, license_id, caller)
        moment = await conn.fetchval("SELECT now()")
        steps = await conn.fetch("SELECT * FROM device_history WHERE license_id = $1 ORDER BY id", license_id)
    return {
        **_view(row, moment),
        "history": [{"at": iso(s["at"]), "action": s["action"], "actor": s["actor_name"], "detail": s["detail"]}
                    for s in steps],
    }  # fmt: skip


@router.get("/internal/devices/{device_id}/entitlements", include_in_schema=False)
async def entitlements(
    device_id: Annotated[int, Path(ge=1, le=MAX_ID)], ctx: ServiceContext = Depends(store.service_context)
) -> dict[str, Any]:
    """What a device may use now: per service, the type and expiry of its active license (the highest type
    when several are active)."""
    async with ctx.system() as conn:
        rows = await conn.fetch(
            "SELECT id, service, type, expires_at FROM licenses WHERE instance_id = $1"
            " AND activated_at <= now() AND expires_at > now() ORDER BY id",
            device_id,
        )
    services: dict[str, dict[str, Any]] = {}
    for row in rows:
        held = services.get(row["service"])
        if held is None or rank(row["type"]) > rank(held["type"]):
            services[row["service"]] = {
                "type": row["type"],
                "expires_at": iso(row["expires_at"]),
                "license_id": row["id"],
            }
    return {"device_id": device_id, "services": services}


# -- the expiry monitor -----------------------------------------------------------------------------


async def _announce(
    ctx: ServiceContext, conn: Queryable, row: Any, kind: Literal["warning", "expired"]
) -> None:
    """Publish one notice (an audit event keyed by the license and its expiry, so it is stored once)."""
    stamp = int(row["expires_at"].timestamp())
    log.info(
        f"license {kind}",
        extra={"fields": {"license_id": row["id"], "device_id": row["instance_id"], "service": row["service"],
                          "expires_at": iso(row["expires_at"])}},
    )  # fmt: skip
    if ctx.bus is not None:
        event = AuditEvent(
            event_key=f"license-{row['id']}-{kind}-{stamp}",
            at=row["expires_at"] if kind == "expired" else await conn.fetchval("SELECT now()"),
            actor="system:onboarding",
            actor_kind="system",
            provider_id=row["provider_id"],
            action=f"license.{kind}",
            object=f"licenses/{row['id']}",
            outcome=200,
        )
        await ctx.mqtt.publish(topics.AUDIT, event, wait_s=10)
    await store.record(
        conn, row["instance_id"], f"license_{kind}", None, "system",
        {"service": row["service"], "type": row["type"], "expires_at": iso(row["expires_at"])}, row["id"],
    )  # fmt: skip


async def announce_due(ctx: ServiceContext) -> float:
    """Announce every warning and expiry that is due; the seconds until the next one is."""
    cfg = store.ownership_settings()
    warning = timedelta(days=cfg.license_warning_days)
    async with ctx.system() as conn:
        async with conn.transaction():
            for row in await conn.fetch(
                "SELECT * FROM licenses WHERE expired_notified_at IS NULL AND expires_at <= now()"
                " ORDER BY expires_at LIMIT 200 FOR UPDATE SKIP LOCKED"
            ):
                await _announce(ctx, conn, row, "expired")
                await conn.execute(
                    "UPDATE licenses SET expired_notified_at = now(), warned_at = coalesce(warned_at, now())"
                    " WHERE id = $1",
                    row["id"],
                )
        async with conn.transaction():
            for row in await conn.fetch(
                "SELECT * FROM licenses WHERE warned_at IS NULL AND expired_notified_at IS NULL"
                " AND expires_at > now() AND expires_at - $1::interval <= now()"
                " ORDER BY expires_at LIMIT 200 FOR UPDATE SKIP LOCKED",
                warning,
            ):
                await _announce(ctx, conn, row, "warning")
                await conn.execute("UPDATE licenses SET warned_at = now() WHERE id = $1", row["id"])
        wait = await conn.fetchval(
            "SELECT extract(epoch FROM min(CASE WHEN warned_at IS NULL THEN expires_at - $1::interval"
            " ELSE expires_at END) - now()) FROM licenses WHERE expired_notified_at IS NULL",
            warning,
        )
    if wait is None:
        return cfg.license_check_max_s
    return min(cfg.license_check_max_s, max(0.05, float(wait)))


async def _monitor(ctx: ServiceContext, wake: asyncio.Event) -> None:
    while True:
        wake.clear()
        try:
            delay = await announce_due(ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("license notices failed; retrying")
            delay = 5.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), delay)

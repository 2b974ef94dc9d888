"""Device ownership (seed 003; CONTRACTS.md §3 "Ownership"): activation codes, activation, claim and
transfer, shares, and each device's history.

A "device" is an installation of the registry, found by its id (and shown with its serial). The registry keeps
its single owner and its guests; this service keeps the codes, the claims and the history, and decides every
step with the pure rules of `ownership_rules.py`:

- `/activationcodes`: a provider's administrators create codes (`single`: one installation, `group`: the
  installations of a sales order, `license`: see `licenses.py`). The code is in the answer to the POST only;
  listings show its kind, sales order, installations and use, never the code.
- `POST /devices/activate {"data": {"code"}}`, `POST /devices/{id}/claim`, `/claim/cancel`,
  `/transfer/accept`, `/transfer/reject`: see `ownership_rules.py` for exactly what each does and refuses.
- `GET /devices?relation=owned|shared|claimed_by_others|claims`: the panels "My devices", "Shared with me",
  "Claimed by others", and the caller's own claims with their state and reason.
- `/devices/{id}/shares`: the owner adds, changes and removes guests (through the registry's
  `/instances/{id}/users`); guests cannot change them (403), but may leave.
- `GET /devices/{id}/history`: every step on the device, newest first.

Every step on a device runs under a lock on that device, so two users racing (the same code twice, a claim
against an accept) are decided one after the other; the registry's compare-and-set on the owner settles the
rest.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import Field, StringConstraints

from libs.db import Queryable
from libs.service import ProblemError, ServiceContext
from services.onboarding import ownership_store as store
from services.onboarding.ownership_rules import (
    ADMIN_ROLES,
    Caller,
    Code,
    Device,
    Refusal,
    check_cancel,
    check_claim,
    check_claim_code,
    check_decision,
    check_share_change,
    invalid_code,
    plan_activation,
)
from services.onboarding.ownership_store import (
    MAX_ID,
    NO_NUL,
    NOT_BLANK_LINE,
    SINGLE_LINE,
    Body,
    CodeIn,
    Envelope,
    iso,
    problem,
)

router = APIRouter(tags=["ownership"])

DeviceId = Annotated[int, Path(ge=1, le=MAX_ID, description="The device (installation) id")]
UserId = Annotated[int, Path(ge=1, le=MAX_ID, description="The guest's user id")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Rows per page")]
Offset = Annotated[int, Query(ge=0, le=MAX_ID, description="Rows to skip")]
LicenseType = Literal["Basic", "PRO", "Elite"]
Service = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
SalesOrder = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=NOT_BLANK_LINE)]
Description = Annotated[str, StringConstraints(max_length=1024, pattern=NO_NUL)]


# -- activation codes -------------------------------------------------------------------------------


class CodeCreate(Body):
    kind: Literal["single", "group", "license"]
    installation_id: int | None = Field(None, ge=1, le=MAX_ID, description="single: the installation")
    installation_ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None = Field(
        None, max_length=1000, description="group: every installation of the sales order"
    )
    sales_order: SalesOrder | None = Field(None, description="group: required; single: optional")
    service: Service | None = Field(None, description="license: the service, e.g. dataapi or scheduling")
    type: LicenseType | None = Field(None, description="license: Basic < PRO < Elite")
    duration_days: float | None = Field(
        None, ge=1 / 86400, le=36500, allow_inf_nan=False, description="license: days (fractions allowed)"
    )
    description: Description | None = None


def _require_admin(caller: Caller) -> None:
    if caller.role not in ADMIN_ROLES:
        raise problem(403, "role", "only administrators manage activation codes")


def _kind_problems(d: CodeCreate) -> list[tuple[str, str]]:
    device_fields = {"installation_id": d.installation_id, "installation_ids": d.installation_ids}
    license_fields = {"service": d.service, "type": d.type, "duration_days": d.duration_days}
    problems: list[tuple[str, str]] = []

    def needs(fields: dict[str, Any], names: tuple[str, ...]) -> None:
        problems.extend((name, f"required for a {d.kind} code") for name in names if fields.get(name) is None)

    def refuses(fields: dict[str, Any]) -> None:
        problems.extend((name, f"not used by a {d.kind} code") for name, v in fields.items() if v is not None)

    if d.kind == "single":
        needs(device_fields, ("installation_id",))
        refuses({"installation_ids": d.installation_ids, **license_fields})
    elif d.kind == "group":
        needs(device_fields, ("installation_ids",))
        needs({"sales_order": d.sales_order}, ("sales_order",))
        refuses({"installation_id": d.installation_id, **license_fields})
        ids = d.installation_ids or []
        if d.installation_ids is not None and not ids:
            problems.append(("installation_ids", "a sales order has at least one installation"))
        for index, value in enumerate(ids):
            if value in ids[:index]:
                problems.append((f"installation_ids.{index}", f"installation {value} appears twice"))
    else:
        needs(license_fields, ("service", "type", "duration_days"))
        refuses({**device_fields, "sales_order": d.sales_order})
    return problems


def _code_view(row: Any) -> dict[str, Any]:
    installations = [
        {"id": i, "serial": s} for i, s in zip(row["instance_ids"] or [], row["serials"] or [], strict=True)
    ]
    return {
        "id": row["id"],
        "kind": row["kind"],
        "sales_order": row["sales_order"],
        "description": row["description"],
        "installations": installations,
        "service": row["service"],
        "type": row["license_type"],
        "duration_days": row["duration_days"],
        "provider_id": row["provider_id"],
        "created_by": row["created_by_name"],
        "created_at": iso(row["created_at"]),
        "used": row["used_at"] is not None,
        "used_at": iso(row["used_at"]),
        "used_by": None if row["used_by"] is None else {"id": row["used_by"], "name": row["used_by_name"]},
        "used_for": row["used_for"],
    }


_CODES_SQL = (
    "SELECT c.*, array_agg(ci.instance_id ORDER BY ci.instance_id) FILTER (WHERE ci.instance_id IS NOT NULL)"
    " AS instance_ids, array_agg(ci.serial ORDER BY ci.instance_id) FILTER (WHERE ci.instance_id IS NOT NULL)"
    " AS serials FROM activation_codes c LEFT JOIN activation_code_installations ci ON ci.code_id = c.id"
)


@router.post("/activationcodes", status_code=201)
async def create_code(
    body: Envelope[CodeCreate],
    request: Request,
    response: Response,
    ctx: ServiceContext = Depends(store.service_context),
) -> dict[str, Any]:
    """Create a code; the answer holds the code itself, shown this once (only its digest is kept)."""
    caller = store.caller_of(request)
    _require_admin(caller)
    d = body.data
    problems = _kind_problems(d)
    if problems:
        raise ProblemError(
            400,
            "Invalid input",
            "; ".join(m for _, m in problems),
            [{"field": f, "message": m} for f, m in problems],
        )
    ids = [d.installation_id] if d.installation_id is not None else list(d.installation_ids or [])
    found = await store.installations(ctx, ids)
    provider_id = caller.provider_id
    for index, instance_id in enumerate(ids):
        inst = found.get(instance_id)
        field = "installation_id" if d.kind == "single" else f"installation_ids.{index}"
        if inst is None or not caller.administers(inst.provider_id):
            raise problem(400, field, f"installation {instance_id} does not exist")
        if provider_id is None:
            provider_id = inst.provider_id
        elif inst.provider_id != provider_id:
            raise problem(400, field, "every installation of a code belongs to one service provider")
    code = store.new_code()
    async with ctx.system() as conn, conn.transaction():
        code_id = await conn.fetchval(
            "INSERT INTO activation_codes (kind, code_digest, provider_id, sales_order, description, service,"
            " license_type, duration_days, created_by, created_by_name) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)"
            " RETURNING id",
            d.kind,
            store.digest(code),
            provider_id,
            d.sales_order,
            d.description,
            d.service,
            d.type,
            d.duration_days,
            caller.user_id,
            store.caller_name(request),
        )
        await conn.executemany(
            "INSERT INTO activation_code_installations (code_id, instance_id, serial) VALUES ($1, $2, $3)",
            [(code_id, i, found[i].serial) for i in ids],
        )
        row = await conn.fetchrow(f"{_CODES_SQL} WHERE c.id = $1 GROUP BY c.id", code_id)
    response.headers["Location"] = f"/activationcodes/{code_id}"
    return {**_code_view(row), "code": code}


def _visible_codes(caller: Caller, args: list[Any]) -> str:
    if caller.is_platform_admin:
        return "true"
    args.append(caller.provider_id)
    return f"c.provider_id = ${len(args)}"


@router.get("/activationcodes")
async def list_codes(
    request: Request,
    response: Response,
    kind: Literal["single", "group", "license"] | None = Query(None),
    used: bool | None = Query(None, description="Only used (true) or unused (false) codes"),
    sales_order: str | None = Query(None, max_length=128, pattern=SINGLE_LINE),
    installation_id: int | None = Query(None, ge=1, le=MAX_ID, description="Only codes of this installation"),
    limit: Limit = 100,
    offset: Offset = 0,
    ctx: ServiceContext = Depends(store.service_context),
) -> list[dict[str, Any]]:
    """The provider's codes, newest first (never the codes themselves); the total is in `X-Total-Count`."""
    caller = store.caller_of(request)
    _require_admin(caller)
    args: list[Any] = []
    where = [_visible_codes(caller, args)]
    for clause, value in (
        ("c.kind = ${}", kind),
        ("c.sales_order = ${}", sales_order),
        (
            "c.id IN (SELECT code_id FROM activation_code_installations WHERE instance_id = ${})",
            installation_id,
        ),
    ):
        if value is not None:
            args.append(value)
            where.append(clause.format(len(args)))
    if used is not None:
        where.append("c.used_at IS NOT NULL" if used else "c.used_at IS NULL")
    sql_where = " WHERE " + " AND ".join(where)
    async with ctx.system() as conn:
        total = await conn.fetchval(f"SELECT count(*) FROM activation_codes c{sql_where}", *args)
        rows = await conn.fetch(
            f"{_CODES_SQL}{sql_where} GROUP BY c.id ORDER BY c.id DESC LIMIT {limit} OFFSET {offset}", *args
        )
    response.headers["X-Total-Count"] = str(total)
    return [_code_view(row) for row in rows]


async def _one_code(conn: Queryable, caller: Caller, code_id: int) -> Any:
    args: list[Any] = [code_id]
    row = await conn.fetchrow(
        f"{_CODES_SQL} WHERE c.id = $1 AND {_visible_codes(caller, args)} GROUP BY c.id", *args
    )
    if row is None:
        raise problem(404, "id", f"activation code {code_id} does not exist")
    return row


@router.get("/activationcodes/{code_id}")
async def get_code(
    code_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    request: Request,
    ctx: ServiceContext = Depends(store.service_context),
) -> dict[str, Any]:
    caller = store.caller_of(request)
    _require_admin(caller)
    async with ctx.system() as conn:
        return _code_view(await _one_code(conn, caller, code_id))


@router.delete("/activationcodes/{code_id}", status_code=204)
async def delete_code(
    code_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    request: Request,
    ctx: ServiceContext = Depends(store.service_context),
) -> Response:
    """Withdraw an unused code (say, one sent to the wrong customer); a used code stays as the record."""
    caller = store.caller_of(request)
    _require_admin(caller)
    async with ctx.system() as conn, conn.transaction():
        row = await _one_code(conn, caller, code_id)
        if row["used_at"] is not None:
            raise problem(409, "id", f"activation code {code_id} was used; used codes are kept as the record")
        await conn.execute("UPDATE device_claims SET code_id = NULL WHERE code_id = $1", code_id)
        await conn.execute("DELETE FROM activation_codes WHERE id = $1", code_id)
    return Response(status_code=204)


# -- codes as the rules see them --------------------------------------------------------------------


async def load_code(conn: Queryable, key: str, *, lock: bool = False) -> tuple[Code, Any] | None:
    """The code with this digest, as the rules see it (None when there is none)."""
    row = await conn.fetchrow(
        "SELECT * FROM activation_codes WHERE code_digest = $1" + (" FOR UPDATE" if lock else ""), key
    )
    if row is None:
        return None
    ids = [r["instance_id"] for r in await conn.fetch(
        "SELECT instance_id FROM activation_code_installations WHERE code_id = $1 ORDER BY instance_id", row["id"]
    )]  # fmt: skip
    code = Code(
        id=row["id"],
        kind=row["kind"],
        provider_id=row["provider_id"],
        installations=tuple(ids),
        used_by=row["used_by"],
        sales_order=row["sales_order"],
        service=row["service"],
        license_type=row["license_type"],
        duration=timedelta(days=row["duration_days"]) if row["duration_days"] is not None else None,
    )
    return code, row


async def mark_used(conn: Queryable, code_id: int, caller: Caller, name: str, purpose: str) -> None:
    await conn.execute(
        "UPDATE activation_codes SET used_at = now(), used_by = $2, used_by_name = $3, used_for = $4"
        " WHERE id = $1 AND used_at IS NULL",
        code_id,
        caller.user_id,
        name,
        purpose,
    )


# -- devices: views ---------------------------------------------------------------------------------


def _claim_view(row: Any, inst: store.Installation | None = None) -> dict[str, Any]:
    return {
        "id": row["id"],
        "device_id": row["instance_id"],
        "serial": inst.serial if inst else None,
        "state": row["state"],
        "reason": row["reason"],
        "claimant": {"id": row["claimant_id"], "name": row["claimant_name"]},
        "keep_shares": row["keep_shares"],
        "created_at": iso(row["created_at"]),
        "decided_at": iso(row["decided_at"]),
    }


def _device_view(
    inst: store.Installation, relation: str, caller: Caller, pending: Any = None
) -> dict[str, Any]:
    member = inst.member(caller.user_id) or {}
    view: dict[str, Any] = {
        "id": inst.id,
        "serial": inst.serial,
        "title": inst.title,
        "relation": relation,
        "status": "transfer_pending" if pending is not None else "active",
        "share_content": member.get("share_content"),
        "share_reports": member.get("share_reports"),
        "allow_write": member.get("allow_write"),
        "claim": None,
    }
    if pending is not None and (relation in ("owner", "admin") or pending["claimant_id"] == caller.user_id):
        view["claim"] = _claim_view(pending, inst)
    if relation in ("owner", "admin"):
        view["guests"] = [m for m in inst.members if m["role"] == "guest"]
    return view


async def _relation(conn: Queryable, inst: store.Installation, caller: Caller) -> str | None:
    """How the caller stands to a device: owner, guest, admin, claimant, former owner, or not at all."""
    if inst.owner_id == caller.user_id:
        return "owner"
    member = inst.member(caller.user_id)
    if member is not None:
        return "guest"
    if caller.administers(inst.provider_id):
        return "admin"
    # Someone who claimed it, or who owned it when it was claimed (and so may hear why a late accept fails).
    stood = await conn.fetchval(
        "SELECT CASE WHEN claimant_id = $2 THEN 'claimant' ELSE 'former_owner' END FROM device_claims"
        " WHERE instance_id = $1 AND (claimant_id = $2 OR owner_id = $2) ORDER BY id DESC LIMIT 1",
        inst.id,
        caller.user_id,
    )
    return str(stood) if stood is not None else None


async def _visible_device(
    conn: Queryable, ctx: ServiceContext, device_id: int, caller: Caller
) -> tuple[store.Installation, str]:
    inst = await store.installation(ctx, device_id)
    relation = await _relation(conn, inst, caller)
    if relation is None:
        raise problem(404, "id", f"device {device_id} does not exist")
    return inst, relation


async def _pending(conn: Queryable, device_ids: list[int]) -> dict[int, Any]:
    rows = await conn.fetch(
        "SELECT * FROM device_claims WHERE instance_id = ANY($1::bigint[]) AND state = 'transfer_pending'",
        device_ids,
    )
    return {row["instance_id"]: row for row in rows}


@router.get("/devices")
async def list_devices(
    request: Request,
    response: Response,
    relation: Literal["owned", "shared", "claimed_by_others", "claims"] = Query(
        "owned",
        description="owned: My devices (with the devices I claim, pending); shared: Shared with me;"
        " claimed_by_others: my devices someone claims; claims: every claim I made, with its state",
    ),
    limit: Limit = 100,
    offset: Offset = 0,
    ctx: ServiceContext = Depends(store.service_context),
) -> list[dict[str, Any]]:
    """The caller's devices by panel, ordered by id (claims: newest first); the total is in `X-Total-Count`."""
    caller = store.caller_of(request)
    items: list[dict[str, Any]] = []
    async with ctx.system() as conn:
        if relation == "claims":
            rows = await conn.fetch(
                "SELECT * FROM device_claims WHERE claimant_id = $1 ORDER BY id DESC", caller.user_id
            )
            found = await store.installations(ctx, [r["instance_id"] for r in rows])
            items = [_claim_view(row, found.get(row["instance_id"])) for row in rows]
        else:
            mine = await store.installations(ctx, user_id=caller.user_id)
            pending = await _pending(conn, list(mine))
            for inst in mine.values():
                claim = pending.get(inst.id)
                if relation == "owned" and inst.owner_id == caller.user_id:
                    items.append(_device_view(inst, "owner", caller, claim))
                elif relation == "shared" and inst.owner_id != caller.user_id:
                    items.append(_device_view(inst, "guest", caller))
                elif (
                    relation == "claimed_by_others" and inst.owner_id == caller.user_id and claim is not None
                ):
                    items.append(_device_view(inst, "owner", caller, claim))
            if relation == "owned":
                rows = await conn.fetch(
                    "SELECT * FROM device_claims WHERE claimant_id = $1 AND state = 'transfer_pending'",
                    caller.user_id,
                )
                found = await store.installations(ctx, [r["instance_id"] for r in rows])
                items += [
                    _device_view(found[r["instance_id"]], "claimant", caller, r)
                    for r in rows
                    if r["instance_id"] in found
                ]
            items.sort(key=lambda item: item["id"])
    response.headers["X-Total-Count"] = str(len(items))
    return items[offset : offset + limit]


@router.get("/devices/{device_id}")
async def get_device(
    device_id: DeviceId, request: Request, ctx: ServiceContext = Depends(store.service_context)
) -> dict[str, Any]:
    """A device as the caller stands to it; its pending claim is shown to its owner and its claimant."""
    caller = store.caller_of(request)
    async with ctx.system() as conn:
        inst, relation = await _visible_device(conn, ctx, device_id, caller)
        pending = (await _pending(conn, [device_id])).get(device_id)
    return _device_view(inst, relation, caller, pending)


# -- activation -------------------------------------------------------------------------------------


def _brief(inst: store.Installation) -> dict[str, Any]:
    return {"id": inst.id, "serial": inst.serial, "title": inst.title}


@router.post("/devices/activate")
async def activate(
    body: Envelope[CodeIn],
    request: Request,
    response: Response,
    ctx: ServiceContext = Depends(store.service_context),
) -> dict[str, Any]:
    """Enter a device activation code: 201 when it made the caller owner, 202 when it started a claim, 200
    when nothing changed (the caller owns the devices already)."""
    caller = store.caller_of(request)
    name = store.caller_name(request)
    await store.check_code_rate(ctx, caller)
    key = store.digest(body.data.code)
    async with store.counting_wrong_codes(ctx, caller):
        if key is None:
            raise invalid_code()
        async with ctx.system() as conn, conn.transaction():
            first = await load_code(conn, key)
            if first is None:
                raise invalid_code()
            await store.lock_devices(conn, list(first[0].installations))
            loaded = await load_code(conn, key, lock=True)
            if loaded is None:
                raise invalid_code()  # withdrawn meanwhile
            code, _ = loaded
            found = await store.installations(ctx, list(code.installations))
            devices: dict[int, Device] = {i: await store.device_state(conn, found[i]) for i in found}
            alive = replace(code, installations=tuple(i for i in code.installations if i in found))
            if code.kind != "license" and not alive.installations:
                raise Refusal(409, "code", "the installations of this activation code no longer exist")
            plan = plan_activation(alive, caller, devices)
            taken: list[int] = []
            skipped = [{**_brief(found[i]), "reason": reason} for i, reason in plan.skipped]
            for instance_id in plan.take:
                done = await store.set_owner(
                    ctx, instance_id, caller.user_id, keep_guests=True, expected=None
                )
                if done is None:
                    skipped.append(
                        {**_brief(found[instance_id]), "reason": "activated by another user meanwhile"}
                    )
                    continue
                taken.append(instance_id)
                await store.record(
                    conn, instance_id, "activated", caller, name, {"code_id": code.id, "kind": code.kind}
                )
            if code.kind == "single" and plan.take and not taken:
                raise Refusal(
                    409,
                    "code",
                    f"device {plan.take[0]} was activated by another user meanwhile; to ask for its ownership,"
                    f" claim it with POST /devices/{plan.take[0]}/claim",
                )
            claim = None
            if plan.claim is not None:
                claim = await _start_claim(
                    conn, found[plan.claim], devices[plan.claim], caller, name, code.id
                )
            if plan.use_code and (taken or plan.already):
                await mark_used(conn, code.id, caller, name, "activation")
    response.status_code = 201 if taken else 202 if claim is not None else 200
    return {
        "activated": [_brief(found[i]) for i in taken],
        "already_owned": [_brief(found[i]) for i in plan.already],
        "skipped": skipped,
        "claim": None if claim is None else _claim_view(claim, found[claim["instance_id"]]),
    }


# -- claim and transfer -----------------------------------------------------------------------------


async def _start_claim(
    conn: Queryable, inst: store.Installation, device: Device, caller: Caller, name: str, code_id: int | None
) -> Any:
    check_claim(device, caller)
    owner = inst.member(inst.owner_id) if inst.owner_id is not None else None
    try:
        row: Any = await conn.fetchrow(
            "INSERT INTO device_claims (instance_id, provider_id, claimant_id, claimant_name, owner_id, owner_name,"
            " code_id) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
            inst.id,
            inst.provider_id,
            caller.user_id,
            name,
            inst.owner_id,
            owner["name"] if owner else None,
            code_id,
        )
    except asyncpg.UniqueViolationError as exc:  # only if the device lock was bypassed
        raise Refusal(409, "id", f"another claim on device {inst.id} is pending") from exc
    await store.record(conn, inst.id, "claim_started", caller, name, {"claim_id": row["id"]})
    return row


@router.post("/devices/{device_id}/claim", status_code=201)
async def claim_device(
    device_id: DeviceId,
    body: Envelope[CodeIn],
    request: Request,
    ctx: ServiceContext = Depends(store.service_context),
) -> dict[str, Any]:
    """Claim a device someone else owns with its activation code: the transfer is pending until its owner
    accepts or rejects it."""
    caller = store.caller_of(request)
    name = store.caller_name(request)
    await store.check_code_rate(ctx, caller)
    key = store.digest(body.data.code)
    async with store.counting_wrong_codes(ctx, caller):
        if key is None:
            raise invalid_code()
        async with ctx.system() as conn, conn.transaction():
            await store.lock_devices(conn, [device_id])
            loaded = await load_code(conn, key)
            check_claim_code(loaded[0] if loaded else None, caller, device_id)
            assert loaded is not None
            inst = await store.installation(ctx, device_id)
            device = await store.device_state(conn, inst)
            row = await _start_claim(conn, inst, device, caller, name, loaded[0].id)
    return _claim_view(row, inst)


class AcceptIn(Body):
    keep_shares: bool = Field(
        False, description="Keep the guests (default: they are removed with the old owner)"
    )


class RejectIn(Body):
    reason: Annotated[str, StringConstraints(max_length=1024, pattern=NO_NUL)] | None = None


async def _decide(
    ctx: ServiceContext, request: Request, device_id: int, verdict: Literal["accept", "reject", "cancel"],
    keep_shares: bool = False, reason: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    caller = store.caller_of(request)
    name = store.caller_name(request)
    async with ctx.system() as conn, conn.transaction():
        await store.lock_devices(conn, [device_id])
        inst, _ = await _visible_device(conn, ctx, device_id, caller)
        device = await store.device_state(conn, inst)
        try:
            claim = check_cancel(device, caller) if verdict == "cancel" else check_decision(device, caller)
        except Refusal as refusal:
            raise store.refused(refusal) from refusal
        if verdict == "accept":
            done = await store.set_owner(
                ctx, device_id, claim.claimant, keep_guests=keep_shares, expected=caller.user_id
            )
            if done is None:
                raise problem(409, "id", f"the owner of device {device_id} changed meanwhile; reload it")
            state, why = "accepted", None
        elif verdict == "reject":
            state, why = "rejected", reason or "rejected by the owner"
        else:
            state, why = "cancelled", "withdrawn by the claimant"
        row: Any = await conn.fetchrow(
            "UPDATE device_claims SET state = $2, reason = $3, keep_shares = $4, decided_at = now(), decided_by = $5"
            " WHERE id = $1 RETURNING *",
            claim.id,
            state,
            why,
            keep_shares if verdict == "accept" else None,
            caller.user_id,
        )
        if verdict == "accept" and row["code_id"] is not None:
            await conn.execute(
                "UPDATE activation_codes SET used_at = now(), used_by = $2, used_by_name = $3, used_for = 'transfer'"
                " WHERE id = $1 AND used_at IS NULL",
                row["code_id"],
                claim.claimant,
                row["claimant_name"],
            )
        action = {"accept": "transfer_accepted", "reject": "transfer_rejected", "cancel": "claim_cancelled"}[
            verdict
        ]
        detail = {"claim_id": claim.id, "claimant_id": claim.claimant, "reason": why}
        if verdict == "accept":
            detail["keep_shares"] = keep_shares
            detail["previous_owner_id"] = caller.user_id
        await store.record(conn, device_id, action, caller, name, detail)
    return _claim_view(row, inst)


@router.post("/devices/{device_id}/transfer/accept")
async def accept_transfer(
    device_id: DeviceId,
    request: Request,
    body: Envelope[AcceptIn] | None = None,
    ctx: ServiceContext = Depends(store.service_context),
) -> dict[str, Any]:
    """The owner hands the device to the claimant and loses every right to it; guests are removed unless
    `keep_shares`."""
    keep = body.data.keep_shares if body is not None else False
    return await _decide(ctx, request, device_id, "accept", keep_shares=keep)


@router.post("/devices/{device_id}/transfer/reject")
async def reject_transfer(
    device_id: DeviceId,
    request: Request,
    body: Envelope[RejectIn] | None = None,
    ctx: ServiceContext = Depends(store.service_context),
) -> dict[str, Any]:
    """The owner keeps the device; the claimant sees the claim `rejected` with the reason."""
    reason = body.data.reason if body is not None else None
    return await _decide(ctx, request, device_id, "reject", reason=reason)


@router.post("/devices/{device_id}/claim/cancel")
async def cancel_claim(
    device_id: DeviceId, request: Request, ctx: ServiceContext = Depends(store.service_context)
) -> dict[str, Any]:
    """The claimant withdraws a pending claim."""
    return await _decide(ctx, request, device_id, "cancel")


@router.get("/devices/{device_id}/history")
async def device_history(
    device_id: DeviceId,
    request: Request,
    response: Response,
    limit: Limit = 100,
    offset: Offset = 0,
    ctx: ServiceContext = Depends(store.service_context),
) -> list[dict[str, Any]]:
    """Every ownership, share and license step on the device, newest first (its owner and administrators)."""
    caller = store.caller_of(request)
    async with ctx.system() as conn:
        _, relation = await _visible_device(conn, ctx, device_id, caller)
        if relation not in ("owner", "admin"):
            raise problem(403, "id", f"only the owner of device {device_id} reads its history")
        total = await conn.fetchval("SELECT count(*) FROM device_history WHERE instance_id = $1", device_id)
        rows = await conn.fetch(
            f"SELECT * FROM device_history WHERE instance_id = $1 ORDER BY id DESC LIMIT {limit} OFFSET {offset}",
            device_id,
        )
    response.headers["X-Total-Count"] = str(total)
    return [
        {"id": r["id"], "at": iso(r["at"]), "action": r["action"], "license_id": r["license_id"],
         "actor": None if r["actor_id"] is None else {"id": r["actor_id"], "name": r["actor_name"]},
         "detail": r["detail"]}
        for r in rows
    ]  # fmt: skip


# -- shares -----------------------------------------------------------------------------------------


class ShareFlags(Body):
    share_content: bool = False
    share_reports: bool = False
    allow_write: bool = Field(False, description="Write to devices; needs share_content")


class ShareIn(ShareFlags):
    user_id: int = Field(ge=1, le=MAX_ID)


async def _share_step(
    ctx: ServiceContext, request: Request, device_id: int, target: int, action: str,
    method: str, path: str, flags: ShareFlags | None = None,
) -> None:  # fmt: skip
    """Check the caller may change the device's guests, then ask the registry as the caller."""
    caller = store.caller_of(request)
    name = store.caller_name(request)
    async with ctx.system() as conn, conn.transaction():
        await store.lock_devices(conn, [device_id])
        inst, _ = await _visible_device(conn, ctx, device_id, caller)
        device = await store.device_state(conn, inst)
        try:
            check_share_change(device, caller, target)
        except Refusal as refusal:
            raise store.refused(refusal) from refusal
        detail: dict[str, Any] = {"user_id": target, **(flags.model_dump() if flags else {})}
        body = {"json": {"data": {**detail, "role": "guest"}}} if flags else {}
        answer = await store.registry(ctx, method, path, **body)
        if answer.status_code >= 300:
            raise store.passed_on(answer)
        await store.record(conn, device_id, action, caller, name, detail)


def _guest_view(member: dict[str, Any]) -> dict[str, Any]:
    return {k: member[k] for k in ("user_id", "name", "share_content", "share_reports", "allow_write")}


@router.get("/devices/{device_id}/shares")
async def list_shares(
    device_id: DeviceId,
    request: Request,
    response: Response,
    ctx: ServiceContext = Depends(store.service_context),
) -> list[dict[str, Any]]:
    """The guests of a device with their flags (its owner, its guests and administrators may read them)."""
    caller = store.caller_of(request)
    async with ctx.system() as conn:
        inst, relation = await _visible_device(conn, ctx, device_id, caller)
    if relation in ("claimant", "former_owner"):
        raise problem(
            403, "id", f"only the owner, the guests and administrators of device {device_id} read its shares"
        )
    guests = [_guest_view(m) for m in inst.members if m["role"] == "guest"]
    response.headers["X-Total-Count"] = str(len(guests))
    return guests


@router.post("/devices/{device_id}/shares", status_code=201)
async def add_share(
    device_id: DeviceId, body: Envelope[ShareIn], request: Request, response: Response,
    ctx: ServiceContext = Depends(store.service_context),
) -> dict[str, Any]:  # fmt: skip
    """Share the device with a user as a guest (the owner keeps the ownership)."""
    d = body.data
    flags = ShareFlags(
        share_content=d.share_content, share_reports=d.share_reports, allow_write=d.allow_write
    )
    await _share_step(
        ctx, request, device_id, d.user_id, "share_added", "POST", f"/instances/{device_id}/users", flags
    )
    response.headers["Location"] = f"/devices/{device_id}/shares/{d.user_id}"
    return {"user_id": d.user_id, **flags.model_dump()}


@router.put("/devices/{device_id}/shares/{user_id}")
async def update_share(
    device_id: DeviceId, user_id: UserId, body: Envelope[ShareFlags], request: Request,
    ctx: ServiceContext = Depends(store.service_context),
) -> dict[str, Any]:  # fmt: skip
    """Change what a guest may do."""
    await _share_step(
        ctx,
        request,
        device_id,
        user_id,
        "share_updated",
        "PUT",
        f"/instances/{device_id}/users/{user_id}",
        body.data,
    )
    return {"user_id": user_id, **body.data.model_dump()}


@router.delete("/devices/{device_id}/shares/{user_id}", status_code=204)
async def remove_share(
    device_id: DeviceId,
    user_id: UserId,
    request: Request,
    ctx: ServiceContext = Depends(store.service_context),
) -> Response:
    """Stop sharing with a guest (a guest may also leave on their own)."""
    await _share_step(
        ctx, request, device_id, user_id, "share_removed", "DELETE", f"/instances/{device_id}/users/{user_id}"
    )
    return Response(status_code=204)

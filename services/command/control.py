"""Live and scheduled control of an installation (CONTRACTS.md §3): `/instances/{id}/policies` and `/schedules`.

Who may steer, and with which priority (services/command/common.py): platform and provider staff who steer
(platform_admin, provider_admin, operator) as `operator`; an owner or a guest of the installation whose
membership allows writing to devices as `user:<uuid>`; nobody else. Every caller sees only installations the
registry shows them (404 otherwise). Reading what is in force needs only to see the installation.

A policy is checked against the device group's capacities and lives 1 s to 24 h. A plan's intervals are
sorted, do not overlap, each within the capacities, none already over, reaching at most 31 days ahead, and do
not overlap another plan of the same group (remove or replace that one first). A plan with the `schedule_id`
of a live plan replaces it. An installation holds at most as many plans not yet finished as its `scheduling`
license allows (services/command/entitlements.py).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import aiomqtt
import asyncpg
import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import Field, ValidationError, model_validator

from libs.service import Principal, ProblemError, ServiceContext, get_context
from proto_schemas.base import Timestamp
from proto_schemas.control import DeviceGroup, Schedule
from services.command import entitlements, limits, registry, state
from services.command.common import (
    MEMBER_ROLES,
    OPERATOR,
    PRIORITY_NAMES,
    STEERING_ROLES,
    USER,
    Body,
    Envelope,
    caller,
    conflict,
    invalid,
    iso,
    now,
    who,
)

router = APIRouter(tags=["control"])

MAX_ID = 2**53 - 1
InstanceId = Annotated[int, Path(ge=1, le=MAX_ID, description="The installation's id")]
ScheduleKey = Annotated[str, Path(min_length=1, max_length=128)]
TEXT_ID = r"^[^\x00-\x1f\x7f/]+$"


MAX_SETPOINT_BYTES = 1024
Setpoint = Annotated[
    dict[str, Any],
    Field(
        description="battery {power_w}, solar {max_power_w}, ev {power_w}, hvac {mode, setpoint_c?, max_power_w?}"
        f"; at most {MAX_SETPOINT_BYTES} bytes of JSON"
    ),
]


def _too_big(setpoint: dict[str, Any]) -> str | None:
    try:
        size = len(orjson.dumps(setpoint))
    except TypeError as exc:  # an integer beyond 64 bits, say
        return f"not a JSON setpoint: {exc}"
    return f"a setpoint is at most {MAX_SETPOINT_BYTES} bytes of JSON" if size > MAX_SETPOINT_BYTES else None


class PolicyIn(Body):
    group: DeviceGroup
    setpoint: Setpoint
    ttl_s: int | None = Field(None, ge=limits.MIN_TTL_S, le=limits.MAX_TTL_S, description="1 s to 24 h")
    valid_until: Timestamp | None = Field(None, description="Instead of ttl_s: within 24 h")

    @model_validator(mode="after")
    def _one_lifetime(self) -> PolicyIn:
        if (self.ttl_s is None) == (self.valid_until is None):
            raise ValueError("give exactly one of ttl_s and valid_until")
        return self


class IntervalIn(Body):
    start: Timestamp
    end: Timestamp
    setpoint: Setpoint


class ScheduleIn(Body):
    schedule_id: Annotated[str, Field(min_length=1, max_length=128, pattern=TEXT_ID)] | None = Field(
        None, description="Default: a new uuid. A live plan with this id is replaced."
    )
    group: DeviceGroup
    intervals: list[IntervalIn] = Field(min_length=1, max_length=limits.MAX_INTERVALS)
    source: str | None = Field(None, max_length=255, description="Set from your credentials; optional")


# -- who is asking -----------------------------------------------------------------------------------


def _needs_membership(principal: Principal | None) -> Principal | None:
    return principal if principal is not None and principal.role in MEMBER_ROLES else None


async def _installation(ctx: ServiceContext, request: Request, instance_id: int) -> registry.Installation:
    return await registry.installation(ctx, instance_id, _needs_membership(caller(request)))


def _steering(principal: Principal | None, inst: registry.Installation) -> tuple[str, int]:
    """(source, priority) of a caller allowed to steer the installation; 403 otherwise."""
    if principal is None or principal.role in STEERING_ROLES:
        return "operator", OPERATOR
    if principal.role in MEMBER_ROLES:
        member = inst.member
        if member is None:
            raise ProblemError(
                403, "Forbidden", f"{principal.name} is not a member of installation {inst.instance_id}"
            )
        if not member.get("allow_write"):
            raise ProblemError(
                403,
                "Forbidden",
                f"{principal.name} may not steer installation {inst.instance_id}: their membership does not"
                " allow writing to devices (allow_write)",
            )
        return f"user:{principal.user_uuid}", USER
    raise ProblemError(403, "Forbidden", f"the {principal.role} role may not steer installations")


def _refused(exc: state.Refused) -> ProblemError:
    return conflict(exc.field, exc.reason)


def _broker_down(exc: BaseException) -> ProblemError:
    return ProblemError(
        503, "Unavailable", f"the broker did not take the new state; nothing changed ({exc!r})"
    )


def _capacity_problems(field: str, group: str, setpoint: dict[str, Any], inst: registry.Installation) -> None:
    too_big = _too_big(setpoint)
    problems = [too_big] if too_big else limits.setpoint_problems(group, setpoint, inst.groups.get(group))
    if problems:
        errors = [{"field": field, "message": message} for message in problems]
        raise ProblemError(400, "Invalid input", "; ".join(problems), errors)


def _no_controller(inst: registry.Installation) -> None:
    if not inst.gateways:
        raise conflict(
            "instance_id",
            f"installation {inst.instance_id} has no controller bound; bind one with"
            f" POST /instances/{inst.instance_id}/gateways",
        )


# -- what REST and providers (services/command/providers.py) both do ---------------------------------
#
# Each runs in one transaction holding the installation's row, first catching it up (expiry, due intervals)
# and publishing what changed before the commit; when there is nothing to do it rolls back whole.


class _NothingToEnd(Exception):
    pass


async def put_policy(
    ctx: ServiceContext,
    inst: registry.Installation,
    group: str,
    setpoint: dict[str, Any],
    until: datetime,
    source: str,
    priority: int,
    at: datetime,
    *,
    requested_by: str,
    request_id: str | None = None,
) -> tuple[uuid.UUID, int]:
    """Put a checked policy in force and publish the new control state: (policy id, control version).
    Raises state.Refused (arbitration), aiomqtt.MqttError or TimeoutError (nothing changed)."""
    async with ctx.db.acquire() as conn, conn.transaction():
        locked = await state.lock(conn, inst)
        _, schedules_changed = await state.catch_up(conn, inst.instance_id, at, ctx.settings.replica)
        policy_id = await state.place_policy(
            conn, inst.instance_id, group, setpoint, until, source, priority, at,
            requested_by=requested_by, request_id=request_id,
        )  # fmt: skip
        version = await state.publish_control(ctx, conn, locked, at)
        if schedules_changed:
            await state.publish_schedules(ctx, conn, locked, at)
    return policy_id, version


async def end_policy(
    ctx: ServiceContext,
    inst: registry.Installation,
    group: str,
    priority: int,
    at: datetime,
    *,
    requested_by: str,
    only_source: str | None = None,
) -> bool:
    """End the group's policy in force and publish; False when none is (or none of `only_source`)."""
    try:
        async with ctx.db.acquire() as conn, conn.transaction():
            locked = await state.lock(conn, inst)
            _, schedules_changed = await state.catch_up(conn, inst.instance_id, at, ctx.settings.replica)
            if only_source is not None:
                mine = await conn.fetchval(
                    "SELECT 1 FROM policies WHERE instance_id = $1 AND grp = $2 AND ended_at IS NULL"
                    " AND source = $3",
                    inst.instance_id,
                    group,
                    only_source,
                )
                if mine is None:
                    raise _NothingToEnd
            if not await state.remove_policy(conn, inst.instance_id, group, priority, at, requested_by):
                raise _NothingToEnd
            await state.publish_control(ctx, conn, locked, at)
            if schedules_changed:
                await state.publish_schedules(ctx, conn, locked, at)
    except _NothingToEnd:
        return False  # rolled back: what catch_up changed is done again, and published, next time
    return True


async def put_schedule(
    ctx: ServiceContext,
    inst: registry.Installation,
    plan: Schedule,
    priority: int,
    at: datetime,
    *,
    requested_by: str,
    request_id: str | None = None,
    only_own: bool = False,
) -> tuple[int, bool]:
    """Store a checked plan (replacing the live one with its id) and publish: (schedule version, replaced).
    With `only_own`, a live plan of that id from another source is refused rather than replaced. A new plan
    beyond what the installation's scheduling license allows is refused (entitlements.PlanLimitReached)."""
    limit = await entitlements.plan_limit(ctx, inst.instance_id)
    try:
        return await _put_schedule(
            ctx, inst, plan, priority, at, limit,
            requested_by=requested_by, request_id=request_id, only_own=only_own,
        )  # fmt: skip
    except entitlements.PlanLimitReached:
        # The cached limit refuses: ask again (a license activated or upgraded just now counts at once).
        fresh = await entitlements.plan_limit(ctx, inst.instance_id, fresh=True)
        return await _put_schedule(
            ctx, inst, plan, priority, at, fresh,
            requested_by=requested_by, request_id=request_id, only_own=only_own,
        )  # fmt: skip


async def _put_schedule(
    ctx: ServiceContext,
    inst: registry.Installation,
    plan: Schedule,
    priority: int,
    at: datetime,
    limit: entitlements.PlanLimit,
    *,
    requested_by: str,
    request_id: str | None = None,
    only_own: bool = False,
) -> tuple[int, bool]:
    instance_id = inst.instance_id
    async with ctx.db.acquire() as conn, conn.transaction():
        locked = await state.lock(conn, inst)
        control_changed, _ = await state.catch_up(conn, instance_id, at, ctx.settings.replica)
        existing = await conn.fetchrow(
            "SELECT id, source, priority FROM schedules WHERE instance_id = $1 AND schedule_id = $2"
            " AND ended_at IS NULL FOR UPDATE",
            instance_id,
            plan.schedule_id,
        )
        if existing is not None and (
            existing["priority"] > priority or (only_own and existing["source"] != plan.source)
        ):
            raise state.Refused(
                "schedule_id",
                f"plan {plan.schedule_id!r} was set by {existing['source']}"
                f" ({PRIORITY_NAMES[existing['priority']]} priority); a {PRIORITY_NAMES[priority]} request"
                " cannot replace it",
            )
        await _check_overlaps(conn, instance_id, plan, existing["id"] if existing else None)
        await entitlements.check(conn, instance_id, existing["id"] if existing else None, limit)
        if existing is not None:
            control_changed = (
                await state.end_schedule(conn, existing["id"], at, "replaced", requested_by)
                or control_changed
            )
        schedule_pk = await conn.fetchval(
            "INSERT INTO schedules (instance_id, schedule_id, grp, source, priority, requested_by, created_at,"
            " starts_at, ends_at, request_id) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) RETURNING id",
            instance_id, plan.schedule_id, plan.group, plan.source, priority, requested_by, at,
            plan.intervals[0].start, plan.intervals[-1].end, request_id,
        )  # fmt: skip
        await conn.executemany(
            "INSERT INTO schedule_intervals (schedule_pk, instance_id, seq, start_at, end_at, setpoint)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            [
                (schedule_pk, instance_id, seq, i.start, i.end, i.setpoint)
                for seq, i in enumerate(plan.intervals, start=1)
            ],
        )
        # An interval that has begun already is applied at once.
        control_changed = (
            await state.dispatch_due(conn, instance_id, at, ctx.settings.replica) or control_changed
        )
        if control_changed:
            await state.publish_control(ctx, conn, locked, at)
        version = await state.publish_schedules(ctx, conn, locked, at)
    return version, existing is not None


async def end_plan(
    ctx: ServiceContext,
    inst: registry.Installation,
    schedule_id: str,
    priority: int,
    at: datetime,
    *,
    requested_by: str,
    only_source: str | None = None,
) -> bool:
    """End a live plan and publish; False when there is none (or none of `only_source`)."""
    instance_id = inst.instance_id
    try:
        async with ctx.db.acquire() as conn, conn.transaction():
            locked = await state.lock(conn, inst)
            control_changed, _ = await state.catch_up(conn, instance_id, at, ctx.settings.replica)
            existing = await conn.fetchrow(
                "SELECT id, source, priority FROM schedules WHERE instance_id = $1 AND schedule_id = $2"
                " AND ended_at IS NULL FOR UPDATE",
                instance_id,
                schedule_id,
            )
            if existing is None or (only_source is not None and existing["source"] != only_source):
                raise _NothingToEnd
            if existing["priority"] > priority:
                raise state.Refused(
                    "schedule_id",
                    f"plan {schedule_id!r} was set by {existing['source']}"
                    f" ({PRIORITY_NAMES[existing['priority']]} priority); a {PRIORITY_NAMES[priority]} request"
                    " cannot remove it",
                )
            if await state.end_schedule(conn, existing["id"], at, "removed", requested_by) or control_changed:
                await state.publish_control(ctx, conn, locked, at)
            await state.publish_schedules(ctx, conn, locked, at)
    except _NothingToEnd:
        return False  # rolled back, as in end_policy
    return True


# -- live policies -----------------------------------------------------------------------------------


def _policy_status(row: asyncpg.Record) -> tuple[str, str | None]:
    if row["rejected_at"] is not None and (
        row["applied_at"] is None or row["rejected_at"] > row["applied_at"]
    ):
        return "rejected", row["rejected_reason"]
    return ("applied" if row["applied_at"] is not None else "accepted"), None


def _policy(row: asyncpg.Record) -> dict[str, Any]:
    status, reason = _policy_status(row)
    out = {
        "policy_id": str(row["policy_id"]),
        "group": row["grp"],
        "setpoint": row["setpoint"],
        "valid_until": iso(row["valid_until"]),
        "source": row["source"],
        "priority": PRIORITY_NAMES[row["priority"]],
        "origin": row["origin"],
        "status": status,
        "requested_by": row["requested_by"],
        "created_datetime": iso(row["created_at"]),
        "applied_datetime": iso(row["applied_at"]),
    }
    if reason is not None:
        out["reason"] = reason
    if row["schedule_id"] is not None:
        out["schedule_id"] = row["schedule_id"]
    return out


@router.post("/instances/{instance_id}/policies", status_code=201)
async def set_policy(
    instance_id: InstanceId,
    body: Envelope[PolicyIn],
    request: Request,
    response: Response,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """Put a live policy in force for one device group; it replaces the group's policy unless that one has a
    higher priority (409 with the reason). The controllers get the new state on their retained `control`
    topic; `GET` shows `applied` once one confirms it."""
    d = body.data
    principal = caller(request)
    inst = await _installation(ctx, request, instance_id)
    source, priority = _steering(principal, inst)
    _capacity_problems("setpoint", d.group, d.setpoint, inst)
    at = now()
    try:
        until = limits.valid_until(d.ttl_s, d.valid_until, at)
    except ValueError as exc:
        raise invalid("ttl_s" if d.ttl_s is not None else "valid_until", str(exc)) from exc
    _no_controller(inst)
    try:
        policy_id, version = await put_policy(
            ctx, inst, d.group, d.setpoint, until, source, priority, at, requested_by=who(principal)
        )
    except state.Refused as exc:
        raise _refused(exc) from exc
    except (aiomqtt.MqttError, TimeoutError) as exc:
        raise _broker_down(exc) from exc
    response.headers["Location"] = f"/instances/{instance_id}/policies"
    return {
        "policy_id": str(policy_id),
        "status": "accepted",
        "group": d.group,
        "valid_until": iso(until),
        "source": source,
        "version": version,
    }


_POLICIES_SQL = (
    "SELECT p.*, s.schedule_id FROM policies p LEFT JOIN schedule_intervals si ON si.id = p.interval_id"
    " LEFT JOIN schedules s ON s.id = si.schedule_pk"
)


@router.get("/instances/{instance_id}/policies")
async def list_policies(
    instance_id: InstanceId,
    request: Request,
    response: Response,
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    """The policies in force now, one per group at most, with their `status`: `accepted`, `applied` (a
    controller confirmed it) or `rejected` (with the controller's `reason`). The current control version is in
    `X-Control-Version`."""
    await _installation(ctx, request, instance_id)
    rows = await ctx.db.fetch(
        _POLICIES_SQL + " WHERE p.instance_id = $1 AND p.ended_at IS NULL AND p.valid_until > $2"
        " ORDER BY array_position(ARRAY['battery','solar','ev','hvac'], p.grp)",
        instance_id,
        now(),
    )
    version = await ctx.db.fetchval(
        "SELECT control_version FROM installations WHERE instance_id = $1", instance_id
    )
    response.headers["X-Control-Version"] = str(version or 0)
    return [_policy(row) for row in rows]


@router.delete("/instances/{instance_id}/policies/{group}", status_code=204)
async def remove_policy(
    instance_id: InstanceId, group: DeviceGroup, request: Request, ctx: ServiceContext = Depends(get_context)
) -> Response:
    """End the group's policy in force (404 when none is); one of a higher priority than yours is a 409."""
    principal = caller(request)
    inst = await _installation(ctx, request, instance_id)
    _, priority = _steering(principal, inst)
    at = now()
    try:
        if not await end_policy(ctx, inst, group, priority, at, requested_by=who(principal)):
            raise ProblemError(404, "Not found", f"installation {instance_id} has no {group} policy in force")
    except state.Refused as exc:
        raise _refused(exc) from exc
    except (aiomqtt.MqttError, TimeoutError) as exc:
        raise _broker_down(exc) from exc
    return Response(status_code=204)


# -- schedules ---------------------------------------------------------------------------------------


def _validated(d: ScheduleIn, source: str, inst: registry.Installation, at: datetime) -> Schedule:
    """The plan as the contract's Schedule, or a 400 naming the interval and the rule."""
    if d.source is not None and d.source != source:
        raise invalid("source", f"the source is taken from your credentials ({source}); leave it out")
    try:
        plan = Schedule(
            schedule_id=d.schedule_id or str(uuid.uuid4()),
            group=d.group,
            source=source,
            intervals=[i.model_dump() for i in d.intervals],
        )
    except ValidationError as exc:
        messages = [str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()]
        raise ProblemError(
            400,
            "Invalid input",
            "; ".join(messages),
            [{"field": "intervals", "message": message} for message in messages],
        ) from exc
    problems: list[dict[str, str]] = []
    capacity = inst.groups.get(d.group)
    for number, interval in enumerate(plan.intervals, start=1):
        field = f"intervals.{number - 1}"
        too_big = _too_big(interval.setpoint)
        messages = [too_big] if too_big else limits.setpoint_problems(d.group, interval.setpoint, capacity)
        for message in messages:
            problems.append({"field": f"{field}.setpoint", "message": f"interval {number}: {message}"})
        if interval.end <= at:
            problems.append({"field": f"{field}.end", "message": f"interval {number} is already over"})
        if interval.end - at > limits.MAX_SCHEDULE_AHEAD:
            problems.append(
                {"field": f"{field}.end", "message": f"interval {number} ends more than 31 days ahead"}
            )
        if capacity is None:
            break
    if problems:
        raise ProblemError(
            400, "Invalid input", "; ".join(p["message"] for p in problems[:5]), problems[:100]
        )
    return plan


async def _check_overlaps(conn: Any, instance_id: int, plan: Schedule, replacing: int | None) -> None:
    """A plan may not overlap another live plan of the same group (in its intervals still to run)."""
    rows = await conn.fetch(
        "SELECT s.schedule_id, s.source, s.priority, si.start_at, si.end_at FROM schedules s"
        " JOIN schedule_intervals si ON si.schedule_pk = s.id WHERE s.instance_id = $1 AND s.grp = $2"
        " AND s.ended_at IS NULL AND s.id IS DISTINCT FROM $3 AND si.end_at > $4 AND si.start_at < $5"
        " AND si.outcome IS DISTINCT FROM 'cancelled' ORDER BY si.start_at",
        instance_id,
        plan.group,
        replacing,
        plan.intervals[0].start,
        plan.intervals[-1].end,
    )
    for number, interval in enumerate(plan.intervals, start=1):
        for row in rows:
            if row["start_at"] < interval.end and interval.start < row["end_at"]:
                raise state.Refused(
                    "intervals",
                    f"interval {number} overlaps plan {row['schedule_id']!r} of {row['source']}"
                    f" ({PRIORITY_NAMES[row['priority']]} priority) from {iso(row['start_at'])} to"
                    f" {iso(row['end_at'])}; remove or replace that plan first",
                )


async def _schedules(conn: Any, instance_id: int, include_ended: bool) -> list[dict[str, Any]]:
    plans = await conn.fetch(
        "SELECT * FROM schedules WHERE instance_id = $1 AND ($2 OR ended_at IS NULL) ORDER BY starts_at, id",
        instance_id,
        include_ended,
    )
    intervals = await conn.fetch(
        "SELECT * FROM schedule_intervals WHERE schedule_pk = ANY($1::bigint[]) ORDER BY schedule_pk, seq",
        [plan["id"] for plan in plans],
    )
    by_plan: dict[int, list[dict[str, Any]]] = {plan["id"]: [] for plan in plans}
    for i in intervals:
        by_plan[i["schedule_pk"]].append(
            {
                "start": iso(i["start_at"]),
                "end": iso(i["end_at"]),
                "setpoint": i["setpoint"],
                "outcome": i["outcome"] or "pending",
                "reason": i["outcome_reason"],
                "dispatched_datetime": iso(i["dispatched_at"]),
                "policy_id": str(i["policy_id"]) if i["policy_id"] else None,
            }
        )
    out = []
    for plan in plans:
        if plan["rejected_at"] is not None and (
            plan["stored_at"] is None or plan["rejected_at"] > plan["stored_at"]
        ):
            status = "rejected"
        elif plan["ended_at"] is not None:
            status = plan["end_reason"]
        else:
            status = "stored" if plan["stored_at"] is not None else "accepted"
        out.append(
            {
                "schedule_id": plan["schedule_id"],
                "group": plan["grp"],
                "source": plan["source"],
                "priority": PRIORITY_NAMES[plan["priority"]],
                "status": status,
                "reason": plan["rejected_reason"] if status == "rejected" else None,
                "intervals": by_plan[plan["id"]],
                "requested_by": plan["requested_by"],
                "created_datetime": iso(plan["created_at"]),
                "ended_datetime": iso(plan["ended_at"]),
            }
        )
    return out


@router.post("/instances/{instance_id}/schedules", status_code=201)
async def set_schedule(
    instance_id: InstanceId,
    body: Envelope[ScheduleIn],
    request: Request,
    response: Response,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """Store a plan and send it to the controllers (retained `schedule`); each interval is applied on time as
    the group's policy, once. A plan with the id of a live one replaces it (409 when that one has a higher
    priority)."""
    d = body.data
    principal = caller(request)
    inst = await _installation(ctx, request, instance_id)
    source, priority = _steering(principal, inst)
    at = now()
    plan = _validated(d, source, inst, at)
    _no_controller(inst)
    try:
        version, replaced = await put_schedule(ctx, inst, plan, priority, at, requested_by=who(principal))
    except state.Refused as exc:
        raise _refused(exc) from exc
    except asyncpg.UniqueViolationError as exc:  # a concurrent request stored the same id first
        raise conflict("schedule_id", f"plan {plan.schedule_id!r} was stored meanwhile; retry") from exc
    except (aiomqtt.MqttError, TimeoutError) as exc:
        raise _broker_down(exc) from exc
    response.headers["Location"] = f"/instances/{instance_id}/schedules/{plan.schedule_id}"
    return {
        "schedule_id": plan.schedule_id,
        "status": "accepted",
        "source": source,
        "replaced": replaced,
        "version": version,
    }


@router.get("/instances/{instance_id}/schedules")
async def list_schedules(
    instance_id: InstanceId,
    request: Request,
    response: Response,
    include_ended: bool = Query(False, description="Also plans finished, replaced or removed"),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    """The plans not finished (with `include_ended`, all), each interval with its `outcome`: `pending`,
    `applied`, `overridden` (a policy of higher priority was in force; see `reason`), `lapsed` or `cancelled`.
    The current schedule version is in `X-Schedule-Version`."""
    await _installation(ctx, request, instance_id)
    async with ctx.db.acquire() as conn:
        out = await _schedules(conn, instance_id, include_ended)
        version = await conn.fetchval(
            "SELECT schedule_version FROM installations WHERE instance_id = $1", instance_id
        )
    response.headers["X-Schedule-Version"] = str(version or 0)
    return out


@router.delete("/instances/{instance_id}/schedules/{schedule_id}", status_code=204)
async def remove_schedule(
    instance_id: InstanceId,
    schedule_id: ScheduleKey,
    request: Request,
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    """End a live plan: its intervals still to come are cancelled and a policy in force from it ends."""
    principal = caller(request)
    inst = await _installation(ctx, request, instance_id)
    _, priority = _steering(principal, inst)
    at = now()
    try:
        if not await end_plan(ctx, inst, schedule_id, priority, at, requested_by=who(principal)):
            raise ProblemError(
                404, "Not found", f"installation {instance_id} has no live plan {schedule_id!r}"
            )
    except state.Refused as exc:
        raise _refused(exc) from exc
    except (aiomqtt.MqttError, TimeoutError) as exc:
        raise _broker_down(exc) from exc
    return Response(status_code=204)

"""What is in force per installation, and the retained `control` and `schedule` states that carry it.

Every change to an installation's policies or plans happens in one transaction holding the installation's row
(`installations`): REST requests wait for it, background work (`tick`) takes it with `FOR UPDATE SKIP LOCKED`
and comes back a moment later if it is busy, so replicas never work on one installation at once. Inside that
transaction the new state is published, retained, to every controller of the installation (QoS 1, waiting for
the broker), and only then committed: a crash before the commit rolls the change back and the next attempt
publishes a newer version; a version number is taken from a sequence and never reused.

`tick` is the background loop of every replica: it ends expired policies, dispatches due schedule intervals,
retires finished plans, and publishes what changed. It wakes at the next moment something is due.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from libs.bus import TRANSIENT_ERRORS, Delivery
from libs.service import ServiceContext
from proto_schemas import topics
from proto_schemas.control import (
    ControlAck,
    ControlState,
    Policy,
    Schedule,
    ScheduleAck,
    ScheduleInterval,
    ScheduleState,
)
from proto_schemas.registry import RegistryChange
from services.command import bindings, registry
from services.command.common import PRIORITY_NAMES, iso, now

log = logging.getLogger(__name__)

TICK_MAX_S = 0.5
TICK_MIN_S = 0.02
PUBLISH_WAIT_S = 5.0
TICK_WORKERS = 4


class Refused(Exception):
    """A request the arbitration or the plan rules refuse (409), with the reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


@dataclass
class Locked:
    """An installation's row, locked by the current transaction."""

    instance_id: int
    gateways: list[dict[str, Any]]
    fallback_timeout_s: int
    removed_gateways: list[dict[str, Any]]


def _as_locked(row: asyncpg.Record, removed: list[dict[str, Any]] | None = None) -> Locked:
    return Locked(row["instance_id"], list(row["gateways"]), row["fallback_timeout_s"], removed or [])


async def lock(conn: Any, inst: registry.Installation) -> Locked:
    """Lock the installation's row (creating it), recording its controllers as the registry has them now."""
    await conn.execute(
        "INSERT INTO installations (instance_id, gateways, fallback_timeout_s) VALUES ($1, $2, $3)"
        " ON CONFLICT (instance_id) DO NOTHING",
        inst.instance_id,
        inst.gateways,
        inst.fallback_timeout_s,
    )
    row = await conn.fetchrow(
        "SELECT * FROM installations WHERE instance_id = $1 FOR UPDATE", inst.instance_id
    )
    current = {g["uuid"] for g in inst.gateways}
    removed = [g for g in row["gateways"] if g["uuid"] not in current]
    if row["gateways"] != inst.gateways or row["fallback_timeout_s"] != inst.fallback_timeout_s:
        await conn.execute(
            "UPDATE installations SET gateways = $2, fallback_timeout_s = $3 WHERE instance_id = $1",
            inst.instance_id,
            inst.gateways,
            inst.fallback_timeout_s,
        )
    return Locked(inst.instance_id, list(inst.gateways), inst.fallback_timeout_s, removed)


async def try_lock(conn: Any, instance_id: int) -> Locked | None:
    """The installation's row if no one else holds it (background work)."""
    row = await conn.fetchrow(
        "SELECT * FROM installations WHERE instance_id = $1 FOR UPDATE SKIP LOCKED", instance_id
    )
    return None if row is None else _as_locked(row)


# -- policies ----------------------------------------------------------------------------------------


async def end_expired(conn: Any, instance_id: int, at: datetime) -> bool:
    ended = await conn.fetch(
        "UPDATE policies SET ended_at = $2, end_reason = 'expired' WHERE instance_id = $1 AND ended_at IS NULL"
        " AND valid_until <= $2 RETURNING policy_id",
        instance_id,
        at,
    )
    return bool(ended)


async def place_policy(
    conn: Any,
    instance_id: int,
    group: str,
    setpoint: dict[str, Any],
    valid_until: datetime,
    source: str,
    priority: int,
    at: datetime,
    *,
    requested_by: str,
    origin: str = "live",
    interval_id: int | None = None,
    request_id: str | None = None,
) -> uuid.UUID:
    """Put a policy in force for the group, replacing one of the same or a lower priority; Refused when one of
    a higher priority is in force."""
    current = await conn.fetchrow(
        "SELECT policy_id, source, priority, valid_until FROM policies"
        " WHERE instance_id = $1 AND grp = $2 AND ended_at IS NULL FOR UPDATE",
        instance_id,
        group,
    )
    if current is not None:
        if current["valid_until"] <= at:
            reason = "expired"
        elif current["priority"] > priority:
            raise Refused(
                "group",
                f"a {group} policy of higher priority ({current['source']}, {PRIORITY_NAMES[current['priority']]}"
                f" priority) is in force until {iso(current['valid_until'])}; a {PRIORITY_NAMES[priority]}"
                " request cannot replace it",
            )
        else:
            reason = "replaced"
        await conn.execute(
            "UPDATE policies SET ended_at = $2, end_reason = $3, ended_by = $4 WHERE policy_id = $1",
            current["policy_id"],
            at,
            reason,
            requested_by if reason == "replaced" else None,
        )
    policy_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO policies (policy_id, instance_id, grp, setpoint, source, priority, origin, interval_id,"
        " requested_by, created_at, valid_until, request_id) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)",
        policy_id, instance_id, group, setpoint, source, priority, origin, interval_id, requested_by, at,
        valid_until, request_id,
    )  # fmt: skip
    return policy_id


async def remove_policy(
    conn: Any, instance_id: int, group: str, priority: int, at: datetime, requested_by: str
) -> bool:
    """End the group's policy in force (False when none is); Refused when it has a higher priority."""
    current = await conn.fetchrow(
        "SELECT policy_id, source, priority FROM policies WHERE instance_id = $1 AND grp = $2"
        " AND ended_at IS NULL AND valid_until > $3 FOR UPDATE",
        instance_id,
        group,
        at,
    )
    if current is None:
        return False
    if current["priority"] > priority:
        raise Refused(
            "group",
            f"the {group} policy in force was set by {current['source']} ({PRIORITY_NAMES[current['priority']]}"
            f" priority); a {PRIORITY_NAMES[priority]} request cannot remove it",
        )
    await conn.execute(
        "UPDATE policies SET ended_at = $2, end_reason = 'removed', ended_by = $3 WHERE policy_id = $1",
        current["policy_id"],
        at,
        requested_by,
    )
    return True


# Installations whose control state changed in this process, for the providers' `state` (services/command/
# providers.py); a change rolled back afterwards only costs one needless state message.
CHANGED: set[int] = set()
CHANGED_EVENT = asyncio.Event()


async def publish_control(ctx: ServiceContext, conn: Any, locked: Locked, at: datetime) -> int:
    """Publish everything in force, retained, to every controller of the installation; returns the version."""
    CHANGED.add(locked.instance_id)
    CHANGED_EVENT.set()
    version = int(
        await conn.fetchval(
            "UPDATE installations SET control_version = nextval('control_version'), control_issued_at = $2"
            " WHERE instance_id = $1 RETURNING control_version",
            locked.instance_id,
            at,
        )
    )
    rows = await conn.fetch(
        "SELECT * FROM policies WHERE instance_id = $1 AND ended_at IS NULL AND valid_until > $2"
        " ORDER BY array_position(ARRAY['battery','solar','ev','hvac'], grp)",
        locked.instance_id,
        at,
    )
    state = ControlState(
        version=version,
        issued_at=at,
        fallback_timeout_s=locked.fallback_timeout_s,
        policies=[
            Policy(
                policy_id=str(row["policy_id"]),
                group=row["grp"],
                setpoint=row["setpoint"],
                valid_until=row["valid_until"],
                source=row["source"],
            )
            for row in rows
        ],
    )
    await conn.execute(
        "INSERT INTO control_publications (gateway_uuid, version, instance_id, issued_at, policy_ids)"
        " SELECT g, $2, $3, $4, $5 FROM unnest($1::uuid[]) AS g",
        [uuid.UUID(g["uuid"]) for g in locked.gateways],
        version,
        locked.instance_id,
        at,
        [row["policy_id"] for row in rows],
    )
    for gateway in locked.gateways:
        await ctx.mqtt.publish(
            topics.gateway_topic(gateway["uuid"], "control"), state, retain=True, wait_s=PUBLISH_WAIT_S
        )
    await _clear(ctx, locked.removed_gateways, "control")
    return version


async def _clear(ctx: ServiceContext, gateways: list[dict[str, Any]], leaf: str) -> None:
    """A controller no longer of the installation: its retained state is removed (an empty retained message)."""
    for gateway in gateways:
        await ctx.mqtt.publish(
            topics.gateway_topic(gateway["uuid"], leaf), b"", retain=True, wait_s=PUBLISH_WAIT_S
        )


# -- schedules ---------------------------------------------------------------------------------------


async def end_schedule(conn: Any, schedule_pk: int, at: datetime, reason: str, ended_by: str | None) -> bool:
    """End a plan: its intervals not dispatched are cancelled, and a policy in force from one of them ends.
    True when a policy ended (the control state changed)."""
    await conn.execute(
        "UPDATE schedules SET ended_at = $2, end_reason = $3, ended_by = $4 WHERE id = $1",
        schedule_pk,
        at,
        reason,
        ended_by,
    )
    await conn.execute(
        "UPDATE schedule_intervals SET outcome = 'cancelled', outcome_reason = $2"
        " WHERE schedule_pk = $1 AND outcome IS NULL",
        schedule_pk,
        f"the plan was {reason}",
    )
    if reason == "finished":
        return False
    ended = await conn.fetch(
        "UPDATE policies p SET ended_at = $2, end_reason = 'removed', ended_by = $3 FROM schedule_intervals si"
        " WHERE si.schedule_pk = $1 AND p.interval_id = si.id AND p.ended_at IS NULL RETURNING p.policy_id",
        schedule_pk,
        at,
        ended_by,
    )
    return bool(ended)


async def finish_schedules(conn: Any, instance_id: int, at: datetime) -> bool:
    rows = await conn.fetch(
        "SELECT id FROM schedules WHERE instance_id = $1 AND ended_at IS NULL AND ends_at <= $2",
        instance_id,
        at,
    )
    for row in rows:
        await end_schedule(conn, row["id"], at, "finished", None)
    return bool(rows)


async def dispatch_due(conn: Any, instance_id: int, at: datetime, replica: str) -> bool:
    """Apply every interval whose start has come, once: it becomes its group's policy until its end (unless a
    policy of higher priority is in force: then it is recorded `overridden`, with the reason). True when the
    control state changed."""
    rows = await conn.fetch(
        "SELECT si.id, si.seq, si.start_at, si.end_at, si.setpoint, s.grp, s.source, s.priority, s.schedule_id"
        " FROM schedule_intervals si JOIN schedules s ON s.id = si.schedule_pk"
        " WHERE si.instance_id = $1 AND si.outcome IS NULL AND si.start_at <= $2"
        " ORDER BY si.start_at, si.id FOR UPDATE OF si",
        instance_id,
        at,
    )
    changed = False
    for row in rows:
        if row["end_at"] <= at:
            await conn.execute(
                "UPDATE schedule_intervals SET outcome = 'lapsed', outcome_reason = $2 WHERE id = $1",
                row["id"],
                "the interval had ended before it could be dispatched",
            )
            continue
        outcome, reason, policy_id = "applied", None, None
        try:
            policy_id = await place_policy(
                conn, instance_id, row["grp"], row["setpoint"], row["end_at"], row["source"], row["priority"],
                at, requested_by=f"schedule {row['schedule_id']}", origin="schedule", interval_id=row["id"],
            )  # fmt: skip
            changed = True
        except Refused as exc:
            outcome, reason = "overridden", exc.reason
        await conn.execute(
            "UPDATE schedule_intervals SET outcome = $2, outcome_reason = $3, policy_id = $4, dispatched_at = $5,"
            " dispatch_count = dispatch_count + 1, dispatched_by = $6 WHERE id = $1",
            row["id"],
            outcome,
            reason,
            policy_id,
            at,
            replica,
        )
    return changed


def _schedule_message(plan: asyncpg.Record, intervals: list[asyncpg.Record]) -> Schedule:
    return Schedule(
        schedule_id=plan["schedule_id"],
        group=plan["grp"],
        source=plan["source"],
        intervals=[
            ScheduleInterval(start=i["start_at"], end=i["end_at"], setpoint=i["setpoint"]) for i in intervals
        ],
    )


async def publish_schedules(ctx: ServiceContext, conn: Any, locked: Locked, at: datetime) -> int:
    """Publish every plan not finished, retained, to every controller of the installation; returns the version."""
    version = int(await conn.fetchval("SELECT nextval('schedule_version')"))
    plans = await conn.fetch(
        "SELECT * FROM schedules WHERE instance_id = $1 AND ended_at IS NULL ORDER BY starts_at, id",
        locked.instance_id,
    )
    intervals = await conn.fetch(
        "SELECT * FROM schedule_intervals WHERE schedule_pk = ANY($1::bigint[]) ORDER BY schedule_pk, seq",
        [plan["id"] for plan in plans],
    )
    by_plan: dict[int, list[asyncpg.Record]] = {plan["id"]: [] for plan in plans}
    for interval in intervals:
        by_plan[interval["schedule_pk"]].append(interval)
    state = ScheduleState(
        version=version,
        issued_at=at,
        schedules=[_schedule_message(plan, by_plan[plan["id"]]) for plan in plans],
    )
    await conn.execute(
        "UPDATE installations SET schedule_version = $2, schedule_issued_at = $3 WHERE instance_id = $1",
        locked.instance_id,
        version,
        at,
    )
    await conn.executemany(
        "INSERT INTO schedule_publications (gateway_uuid, version, instance_id, issued_at, schedule_pks)"
        " VALUES ($1, $2, $3, $4, $5)",
        [(uuid.UUID(g["uuid"]), version, locked.instance_id, at, list(by_plan)) for g in locked.gateways],
    )
    for gateway in locked.gateways:
        await ctx.mqtt.publish(
            topics.gateway_topic(gateway["uuid"], "schedule"), state, retain=True, wait_s=PUBLISH_WAIT_S
        )
    await _clear(ctx, locked.removed_gateways, "schedule")
    return version


# -- the background loop -----------------------------------------------------------------------------

_DUE = """
SELECT instance_id FROM policies WHERE ended_at IS NULL AND valid_until <= $1
UNION SELECT instance_id FROM schedule_intervals WHERE outcome IS NULL AND start_at <= $1
UNION SELECT instance_id FROM schedules WHERE ended_at IS NULL AND ends_at <= $1
LIMIT 1000
"""

_NEXT = """
SELECT least(
    (SELECT min(valid_until) FROM policies WHERE ended_at IS NULL),
    (SELECT min(start_at) FROM schedule_intervals WHERE outcome IS NULL),
    (SELECT min(ends_at) FROM schedules WHERE ended_at IS NULL))
"""


async def catch_up(conn: Any, instance_id: int, at: datetime, replica: str) -> tuple[bool, bool]:
    """Bring one locked installation up to `at` (expiry, due intervals, finished plans) without publishing.
    (control changed, schedules changed)"""
    control = await end_expired(conn, instance_id, at)
    control = await dispatch_due(conn, instance_id, at, replica) or control
    schedules = await finish_schedules(conn, instance_id, at)
    return control, schedules


async def refresh(ctx: ServiceContext, conn: Any, locked: Locked, at: datetime) -> tuple[bool, bool]:
    """Bring one locked installation up to `at` and publish what changed. (control changed, schedules changed)"""
    control, schedules = await catch_up(conn, locked.instance_id, at, ctx.settings.replica)
    if control:
        await publish_control(ctx, conn, locked, at)
    if schedules:
        await publish_schedules(ctx, conn, locked, at)
    return control, schedules


async def tick_once(ctx: ServiceContext) -> float:
    """Handle every installation with something due; the seconds until the next thing is due.

    Installations are independent (each is its own transaction holding its own row), so TICK_WORKERS
    connections work through the due ones side by side: most of an installation's time is waiting for the
    database and for the broker's PUBACK, which overlap."""
    at = now()
    async with ctx.db.acquire() as conn:
        due = [row["instance_id"] for row in await conn.fetch(_DUE, at)]
    pending = iter(due)
    busy = False

    async def work() -> None:
        nonlocal busy
        async with ctx.db.acquire() as conn:
            for instance_id in pending:  # shared: each installation is taken by one worker
                async with conn.transaction():
                    locked = await try_lock(conn, instance_id)
                    if locked is None:
                        busy = True  # a request or another replica holds it: come back in a moment
                        continue
                    await refresh(ctx, conn, locked, now())

    outcomes = await asyncio.gather(
        *(work() for _ in range(min(TICK_WORKERS, len(due)))), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    async with ctx.db.acquire() as conn:
        following = await conn.fetchval(_NEXT)
    if busy:
        return TICK_MIN_S
    if following is None:
        return TICK_MAX_S
    return max(TICK_MIN_S, min(TICK_MAX_S, (following - now()).total_seconds()))


async def ticker(ctx: ServiceContext) -> None:
    while True:
        try:
            pause = await tick_once(ctx)
        except TRANSIENT_ERRORS as exc:
            log.warning("control tick failed", extra={"fields": {"error": repr(exc)}})
            pause = 1.0
        await asyncio.sleep(pause)


# -- acknowledgements and registry changes -----------------------------------------------------------


def _gateway_uuid(topic: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(topics.gateway_of(topic))
    except ValueError:
        return None


ACK_WAIT_S = 2.0
ACK_WAIT_STEP_S = 0.1


async def _with_patience(
    deliveries: list[Delivery[Any]], apply: Callable[[Delivery[Any]], Awaitable[bool]], what: str
) -> None:
    """Apply acknowledgements; one for a version not found yet is tried again for ACK_WAIT_S before it is a
    dead letter. A state is published before its transaction commits (so that nothing is committed that the
    broker did not take), and a quick controller can answer before that commit is visible."""
    pending = list(deliveries)
    waited = 0.0
    while True:
        missing = [delivery for delivery in pending if not await apply(delivery)]
        if not missing:
            return
        if waited >= ACK_WAIT_S:
            break
        await asyncio.sleep(ACK_WAIT_STEP_S)
        waited += ACK_WAIT_STEP_S
        pending = missing
    for delivery in missing:
        delivery.reject(f"{what} version {delivery.model.version} was never sent to this gateway")


@dataclass(frozen=True)
class _AckKind:
    """Where a controller's acknowledgement of a control or schedule version is recorded."""

    what: str  # "control" or "schedule", for the messages of _with_patience
    publications: str  # the table of versions sent, with ack_status / ack_reason / acked_at
    members: str  # that table's column listing what the version carried
    accepted: str  # the controller's word for success
    on_accepted: str  # SQL: $1 the members, $2 the time
    on_rejected: str  # SQL: $1 the members, $2 the time, $3 the reason


_CONTROL_ACK = _AckKind(
    "control", "control_publications", "policy_ids", "applied",
    "UPDATE policies SET applied_at = coalesce(applied_at, $2) WHERE policy_id = ANY($1::uuid[])",
    "UPDATE policies SET rejected_at = $2, rejected_reason = $3 WHERE policy_id = ANY($1::uuid[])",
)  # fmt: skip
_SCHEDULE_ACK = _AckKind(
    "schedule", "schedule_publications", "schedule_pks", "stored",
    "UPDATE schedules SET stored_at = coalesce(stored_at, $2) WHERE id = ANY($1::bigint[])",
    "UPDATE schedules SET rejected_at = $2, rejected_reason = $3 WHERE id = ANY($1::bigint[])",
)  # fmt: skip


async def on_control_ack(ctx: ServiceContext, deliveries: list[Delivery[ControlAck]]) -> None:
    await _on_acks(ctx, deliveries, _CONTROL_ACK)


async def on_schedule_ack(ctx: ServiceContext, deliveries: list[Delivery[ScheduleAck]]) -> None:
    await _on_acks(ctx, deliveries, _SCHEDULE_ACK)


async def _on_acks(
    ctx: ServiceContext, deliveries: list[Delivery[ControlAck]] | list[Delivery[ScheduleAck]], kind: _AckKind
) -> None:
    async with ctx.db.acquire() as conn:

        async def apply(delivery: Delivery[ControlAck] | Delivery[ScheduleAck]) -> bool:
            return await _apply_ack(conn, delivery, kind)

        await _with_patience(deliveries, apply, kind.what)


async def _apply_ack(
    conn: Any, delivery: Delivery[ControlAck] | Delivery[ScheduleAck], kind: _AckKind
) -> bool:
    """Record one acknowledgement; False when its version is not known (yet)."""
    gateway, ack = _gateway_uuid(delivery.topic), delivery.model
    if gateway is None:
        return False
    async with conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {kind.members} AS members, ack_status FROM {kind.publications}"
            " WHERE gateway_uuid = $1 AND version = $2 FOR UPDATE",
            gateway,
            ack.version,
        )
        if row is None:
            return False
        if row["ack_status"] is not None:
            return True  # a duplicate (or a second answer): the first one stands
        at = now()
        await conn.execute(
            f"UPDATE {kind.publications} SET ack_status = $3, ack_reason = $4, acked_at = $5"
            " WHERE gateway_uuid = $1 AND version = $2",
            gateway, ack.version, ack.status, ack.reason, at,
        )  # fmt: skip
        if ack.status == kind.accepted:
            await conn.execute(kind.on_accepted, row["members"], at)
        else:
            await conn.execute(kind.on_rejected, row["members"], at, ack.reason)
    return True


async def on_registry_change(ctx: ServiceContext, deliveries: list[Delivery[RegistryChange]]) -> None:
    """A controller bound to or unbound from an installation this service steers: the new set of controllers
    gets the current state (a new version), one that left has its retained state cleared. A deleted
    installation: everything in force ends."""
    touched: set[int] = set()
    for delivery in deliveries:
        change = delivery.model
        if change.entity in ("instance_gateway", "instance") and isinstance(change.id, int):
            if change.entity == "instance" and change.action != "deleted":
                continue
            touched.add(change.id)
    if not touched:
        return
    known = {
        row["instance_id"]
        for row in await ctx.db.fetch(
            "SELECT instance_id FROM installations WHERE instance_id = ANY($1::bigint[])", sorted(touched)
        )
    }
    for instance_id in sorted(known):
        inst = await registry.installation_as_system(ctx, instance_id)
        async with ctx.db.acquire() as conn, conn.transaction():
            at = now()
            if inst is None:
                row = await conn.fetchrow(
                    "SELECT * FROM installations WHERE instance_id = $1 FOR UPDATE", instance_id
                )
                assert row is not None  # installations rows are never deleted
                locked = Locked(instance_id, [], row["fallback_timeout_s"], list(row["gateways"]))
                await conn.execute(
                    "UPDATE policies SET ended_at = $2, end_reason = 'installation deleted'"
                    " WHERE instance_id = $1 AND ended_at IS NULL",
                    instance_id,
                    at,
                )
                for plan in await conn.fetch(
                    "SELECT id FROM schedules WHERE instance_id = $1 AND ended_at IS NULL", instance_id
                ):
                    await end_schedule(conn, plan["id"], at, "installation deleted", None)
                await conn.execute(
                    "UPDATE installations SET gateways = '[]' WHERE instance_id = $1", instance_id
                )
            else:
                locked = await lock(conn, inst)
                if not locked.removed_gateways and {g["uuid"] for g in locked.gateways} == {
                    g["uuid"] for g in await _published_to(conn, instance_id)
                }:
                    continue
            await publish_control(ctx, conn, locked, at)
            await publish_schedules(ctx, conn, locked, at)


async def _published_to(conn: Any, instance_id: int) -> list[dict[str, Any]]:
    """The controllers that got the installation's latest control state."""
    rows = await conn.fetch(
        "SELECT gateway_uuid::text AS uuid FROM control_publications WHERE instance_id = $1"
        " AND version = (SELECT control_version FROM installations WHERE instance_id = $1)",
        instance_id,
    )
    return [dict(row) for row in rows]


def register(ctx: ServiceContext) -> None:
    async def control_acks(deliveries: list[Delivery[ControlAck]]) -> None:
        await on_control_ack(ctx, deliveries)

    async def schedule_acks(deliveries: list[Delivery[ScheduleAck]]) -> None:
        await on_schedule_ack(ctx, deliveries)

    async def changes(deliveries: list[Delivery[RegistryChange]]) -> None:
        await on_registry_change(ctx, deliveries)
        await bindings.on_registry_change(ctx, deliveries)

    ctx.mqtt.subscribe(topics.CONTROL_ACK_ALL, ControlAck, control_acks, batch_max=200)
    ctx.mqtt.subscribe(topics.SCHEDULE_ACK_ALL, ScheduleAck, schedule_acks, batch_max=200)
    ctx.mqtt.subscribe(topics.CONFIG_CHANGED, RegistryChange, changes, batch_max=100, name="command-registry")
    ctx.background(lambda: ticker(ctx), "control-ticker")

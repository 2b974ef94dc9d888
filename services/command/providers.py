"""External signal providers steering installations over MQTT (CONTRACTS.md §2.2).

- Links: the onboarding service owns which provider may steer which installation. This service keeps a copy
  (`provider_links`) from its `ProviderLinkChanged` events (an older event never overwrites a newer one) and,
  at start-up, from `GET /internal/links?state=active`, which fills in links it never heard of. A link that
  becomes `offboarded` or `rejected` ends that provider's policies and plans on the installation at once.
- Requests on `gf/v1/ext/{provider_id}/inst/{installation_id}/live` and `…/schedule` go through the same
  checks, arbitration and storage as REST (services/command/control.py) with source `provider:<id>` and the
  provider priority. Each gets `accepted` or `rejected` with the reason on `…/ack` at once.
- Later acknowledgements come from an outbox: the rows a request created carry its `request_id`, and a sweeper
  sends `applied` (the controller confirmed the control state holding the policy, or stored the plan),
  `expired` (the policy's time ran out, the plan finished) and `removed` (removed, replaced, offboarded, the
  installation deleted) once each, marking them sent in the same transaction.
- `…/state` (retained) carries the policies in force, for every active link every 10 s and at once when the
  installation's control state changes.

A provider may remove or replace only its own policy or plan: the group's policy of someone else (the owner's)
is replaced by arbitration when the provider sets its own, never removed by a remove request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from libs.bus import TRANSIENT_ERRORS, Delivery
from libs.service import ProblemError, ServiceContext
from proto_schemas import topics
from proto_schemas.control import Policy, Schedule
from proto_schemas.onboarding import ProviderLinkChanged
from proto_schemas.provider_control import LiveRequest, ProviderAck, ProviderState, ScheduleRequest
from services.command import control, entitlements, limits, registry, state
from services.command.common import PROVIDER, now

log = logging.getLogger(__name__)

STATE_EVERY_S = 10.0
ACK_SWEEP_S = 0.25
ENDED_STATES = ("offboarded", "rejected")
PUBLISH_WAIT_S = 5.0
_UNREACHABLE: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, httpx.HTTPError)


class _Json(BaseModel):
    """Any JSON object: requests are checked in the handler, so that a bad one is answered, not dropped."""

    model_config = ConfigDict(extra="allow")


class Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _source(provider_id: int) -> str:
    return f"provider:{provider_id}"


def _request_id(payload: bytes) -> str:
    """The request id of a request that failed its checks, when it can be read (else empty)."""
    with contextlib.suppress(orjson.JSONDecodeError):
        body = orjson.loads(payload)
        if isinstance(body, dict) and isinstance(body.get("request_id"), str):
            return str(body["request_id"])[:128]
    return ""


def _invalid(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        field = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{field}: {message}" if field else message)
    return "invalid request: " + "; ".join(parts)


async def send_ack(ctx: ServiceContext, provider_id: int, installation_id: int, ack: ProviderAck) -> None:
    await ctx.mqtt.publish(
        topics.provider_topic(provider_id, installation_id, "ack"), ack, wait_s=PUBLISH_WAIT_S
    )


# -- checks --------------------------------------------------------------------------------------------


async def _link(ctx: ServiceContext, provider_id: int, installation_id: int) -> list[str]:
    """The groups the provider may steer on the installation; Rejected unless its link is active."""
    row = await ctx.db.fetchrow(
        "SELECT state, device_groups FROM provider_links WHERE provider_id = $1 AND installation_id = $2",
        provider_id,
        installation_id,
    )
    if row is None or row["state"] != "active":
        found = "no link" if row is None else f"its link is {row['state']}"
        raise Rejected(
            f"not onboarded: installation {installation_id} is not onboarded to provider {provider_id} ({found})"
        )
    return list(row["device_groups"])


def _permitted(group: str, groups: list[str], installation_id: int) -> None:
    if group not in groups:
        allowed = ", ".join(groups) or "none"
        raise Rejected(
            f"group not permitted: this provider may steer {allowed} on installation {installation_id}, not {group}"
        )


async def _installation(ctx: ServiceContext, installation_id: int) -> registry.Installation:
    try:
        inst = await registry.installation_as_system(ctx, installation_id)
    except ProblemError as exc:  # the registry is away: retry the message later
        raise ConnectionError(exc.detail) from exc
    if inst is None:
        raise Rejected(f"installation {installation_id} does not exist")
    if not inst.gateways:
        raise Rejected(f"installation {installation_id} has no controller bound")
    return inst


def _capacity(group: str, setpoint: dict[str, Any], inst: registry.Installation, prefix: str = "") -> None:
    problems = limits.setpoint_problems(group, setpoint, inst.groups.get(group))
    if problems:
        raise Rejected(f"{prefix}setpoint outside capacity: " + "; ".join(problems))


# -- requests ------------------------------------------------------------------------------------------


async def _already(
    ctx: ServiceContext, table: str, key: str, installation_id: int, source: str, request_id: str
) -> Any:
    """What an earlier delivery of the same request created, if it did (requests are idempotent)."""
    return await ctx.db.fetchval(
        f"SELECT {key} FROM {table} WHERE instance_id = $1 AND source = $2 AND request_id = $3 LIMIT 1",
        installation_id,
        source,
        request_id,
    )


async def handle_live(
    ctx: ServiceContext, provider_id: int, installation_id: int, payload: bytes
) -> ProviderAck:
    """Check and apply one live request; the immediate acknowledgement."""
    try:
        req = LiveRequest.model_validate_json(payload)
    except ValidationError as exc:
        return ProviderAck(request_id=_request_id(payload), status="rejected", reason=_invalid(exc))
    source = _source(provider_id)
    try:
        _permitted(req.group, await _link(ctx, provider_id, installation_id), installation_id)
        inst = await _installation(ctx, installation_id)
        at = now()
        if req.remove:
            ended = await control.end_policy(
                ctx, inst, req.group, PROVIDER, at, requested_by=source, only_source=source
            )
            if not ended:
                raise Rejected(f"no {req.group} policy of provider {provider_id} is in force")
            return ProviderAck(request_id=req.request_id, status="accepted", group=req.group)
        done = await _already(ctx, "policies", "policy_id", installation_id, source, req.request_id)
        if done is not None:  # a redelivered request: it was applied and answered before
            return ProviderAck(
                request_id=req.request_id, status="accepted", group=req.group, policy_id=str(done)
            )
        assert req.setpoint is not None
        _capacity(req.group, req.setpoint, inst)
        try:
            until = limits.valid_until(req.ttl_s, req.valid_until, at)
        except ValueError as exc:
            raise Rejected(f"ttl out of bounds: {exc}") from exc
        policy_id, _ = await control.put_policy(
            ctx, inst, req.group, req.setpoint, until, source, PROVIDER, at,
            requested_by=source, request_id=req.request_id,
        )  # fmt: skip
    except Rejected as exc:
        return ProviderAck(request_id=req.request_id, status="rejected", reason=exc.reason, group=req.group)
    except state.Refused as exc:
        return ProviderAck(
            request_id=req.request_id,
            status="rejected",
            reason=f"lower priority: {exc.reason}",
            group=req.group,
        )
    return ProviderAck(
        request_id=req.request_id, status="accepted", group=req.group, policy_id=str(policy_id)
    )


def _plan(req: ScheduleRequest, source: str, inst: registry.Installation, at: datetime) -> Schedule:
    assert req.group is not None and req.intervals is not None
    try:
        plan = Schedule(schedule_id=req.schedule_id, group=req.group, intervals=req.intervals, source=source)
    except ValidationError as exc:
        reason = _invalid(exc).removeprefix("invalid request: ")
        raise Rejected(
            ("overlapping intervals: " if "overlap" in reason else "invalid plan: ") + reason
        ) from exc
    for number, interval in enumerate(plan.intervals, start=1):
        _capacity(plan.group, interval.setpoint, inst, prefix=f"interval {number}: ")
        if interval.end <= at:
            raise Rejected(f"interval {number} is already over")
        if interval.end - at > limits.MAX_SCHEDULE_AHEAD:
            raise Rejected(f"interval {number} ends more than 31 days ahead")
    return plan


async def handle_schedule(
    ctx: ServiceContext, provider_id: int, installation_id: int, payload: bytes
) -> ProviderAck:
    """Check and apply one schedule request; the immediate acknowledgement."""
    try:
        req = ScheduleRequest.model_validate_json(payload)
    except ValidationError as exc:
        return ProviderAck(request_id=_request_id(payload), status="rejected", reason=_invalid(exc))
    source = _source(provider_id)
    ack = {"request_id": req.request_id, "schedule_id": req.schedule_id, "group": req.group}
    try:
        groups = await _link(ctx, provider_id, installation_id)
        inst = await _installation(ctx, installation_id)
        at = now()
        if req.remove:
            ended = await control.end_plan(
                ctx, inst, req.schedule_id, PROVIDER, at, requested_by=source, only_source=source
            )
            if not ended:
                raise Rejected(f"provider {provider_id} has no live plan {req.schedule_id!r}")
            return ProviderAck(status="accepted", **ack)
        assert req.group is not None
        _permitted(req.group, groups, installation_id)
        if await _already(ctx, "schedules", "id", installation_id, source, req.request_id) is not None:
            return ProviderAck(status="accepted", **ack)  # a redelivered request
        plan = _plan(req, source, inst, at)
        try:
            await control.put_schedule(
                ctx, inst, plan, PROVIDER, at, requested_by=source, request_id=req.request_id, only_own=True
            )
        except entitlements.PlanLimitReached as exc:
            raise Rejected(f"plan limit of the license: {exc.reason}") from exc
        except state.Refused as exc:
            prefix = "overlapping intervals: " if "overlaps" in exc.reason else "lower priority: "
            raise Rejected(prefix + exc.reason) from exc
    except Rejected as exc:
        return ProviderAck(status="rejected", reason=exc.reason, **ack)
    return ProviderAck(status="accepted", **ack)


async def on_requests(ctx: ServiceContext, deliveries: list[Delivery[_Json]], live: bool) -> None:
    for delivery in deliveries:
        try:
            provider_id, installation_id = topics.provider_of(delivery.topic)
        except ValueError:
            delivery.reject("not a provider topic")
            continue
        handle = handle_live if live else handle_schedule
        ack = await handle(ctx, provider_id, installation_id, delivery.payload)
        await send_ack(ctx, provider_id, installation_id, ack)


# -- links ---------------------------------------------------------------------------------------------


async def _end_provider(
    ctx: ServiceContext, provider_id: int, installation_id: int, why: str, keep: list[str] | None = None
) -> None:
    """End everything the provider has in force or planned on the installation (with `keep`, only in the
    groups not kept), and publish at once."""
    source = _source(provider_id)
    groups = [g for g in ("battery", "solar", "ev", "hvac") if keep is None or g not in keep]
    async with ctx.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT * FROM installations WHERE instance_id = $1 FOR UPDATE", installation_id
        )
        if row is None:
            return  # it never steered there
        locked = state.Locked(installation_id, list(row["gateways"]), row["fallback_timeout_s"], [])
        at = now()
        ended = await conn.fetch(
            "UPDATE policies SET ended_at = $3, end_reason = 'offboarded', ended_by = $4 WHERE instance_id = $1"
            " AND source = $2 AND ended_at IS NULL AND grp = ANY($5::text[]) RETURNING policy_id",
            installation_id, source, at, why, groups,
        )  # fmt: skip
        control_changed = bool(ended)
        plans = await conn.fetch(
            "SELECT id FROM schedules WHERE instance_id = $1 AND source = $2 AND ended_at IS NULL"
            " AND grp = ANY($3::text[])",
            installation_id,
            source,
            groups,
        )
        for plan in plans:
            control_changed = (
                await state.end_schedule(conn, plan["id"], at, "offboarded", why) or control_changed
            )
        if control_changed:
            await state.publish_control(ctx, conn, locked, at)
        if plans:
            await state.publish_schedules(ctx, conn, locked, at)
    if keep is not None:
        return
    await ctx.mqtt.publish(
        topics.provider_topic(provider_id, installation_id, "state"), b"", retain=True, wait_s=PUBLISH_WAIT_S
    )


async def on_links(ctx: ServiceContext, deliveries: list[Delivery[ProviderLinkChanged]]) -> None:
    for delivery in deliveries:
        link = delivery.model
        stored = await ctx.db.fetchval(
            "INSERT INTO provider_links (provider_id, installation_id, state, device_groups, changed_ms)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (provider_id, installation_id) DO UPDATE SET"
            " state = EXCLUDED.state, device_groups = EXCLUDED.device_groups, changed_ms = EXCLUDED.changed_ms,"
            " updated_at = now() WHERE provider_links.changed_ms <= EXCLUDED.changed_ms RETURNING state",
            link.provider_id, link.installation_id, link.state, list(link.device_groups), link.changed_ms,
        )  # fmt: skip
        if stored in ENDED_STATES:
            await _end_provider(ctx, link.provider_id, link.installation_id, f"provider link {stored}")
        elif stored == "active":
            # Groups the link no longer lists: what the provider steers there ends now.
            why = f"the provider link no longer lists this group (it lists {', '.join(link.device_groups) or 'none'})"
            await _end_provider(
                ctx, link.provider_id, link.installation_id, why, keep=list(link.device_groups)
            )
            state.CHANGED.add(link.installation_id)
            state.CHANGED_EVENT.set()


async def load_links(ctx: ServiceContext) -> None:
    """Fill in the active links this service never heard of (it started after they were made)."""
    delay = 1.0
    for _ in range(30):
        try:
            answer = await ctx.call("onboarding", "GET", "/internal/links", params={"state": "active"})
        except _UNREACHABLE as exc:
            log.info("onboarding not reachable yet", extra={"fields": {"error": repr(exc)}})
        else:
            if answer.status_code == 200:
                rows = [ProviderLinkChanged.model_validate({**row, "changed_ms": 0}) for row in answer.json()]
                await ctx.db.executemany(
                    "INSERT INTO provider_links (provider_id, installation_id, state, device_groups, changed_ms)"
                    " VALUES ($1, $2, $3, $4, 0) ON CONFLICT (provider_id, installation_id) DO NOTHING",
                    [(r.provider_id, r.installation_id, r.state, list(r.device_groups)) for r in rows],
                )
                log.info("provider links loaded", extra={"fields": {"active": len(rows)}})
                return
            log.info("onboarding has no links list yet", extra={"fields": {"status": answer.status_code}})
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)
    log.warning("provider links not loaded from onboarding; relying on its events")


# -- acknowledgements after the first, and the retained state -----------------------------------------


@dataclass(frozen=True)
class _Pending:
    """Provider requests (live policies or plans) whose `applied` or ending ack is still to be sent."""

    select: str  # rows as key, instance_id, grp, source, request_id, ref, done_at, done_acked_at, ended_*
    mark: str  # SQL marking the rows $1 as acknowledged at $2
    ref: str  # the ack's field naming the request's object: policy_id or schedule_id
    natural: str  # the end_reason of a natural end: expired or finished


def _pending(table: str, key: str, ref: str, done: str, natural: str) -> _Pending:
    select = f"""
SELECT {key} AS key, instance_id, grp, source, request_id, {ref}::text AS ref, {done}_at AS done_at,
       {done}_acked_at AS done_acked_at, ended_at, end_reason, ended_by, end_acked_at
FROM {table} WHERE request_id IS NOT NULL
  AND (({done}_at IS NOT NULL AND {done}_acked_at IS NULL) OR (ended_at IS NOT NULL AND end_acked_at IS NULL))
ORDER BY created_at LIMIT 500 FOR UPDATE SKIP LOCKED
"""
    mark = (
        f"UPDATE {table} SET {done}_acked_at = CASE WHEN {done}_at IS NOT NULL OR ended_at IS NOT NULL"
        f" THEN coalesce({done}_acked_at, $2) END, end_acked_at = CASE WHEN ended_at IS NOT NULL"
        f" THEN coalesce(end_acked_at, $2) END WHERE {key} = ANY($1)"
    )
    return _Pending(select, mark, ref, natural)


_PENDING = (
    _pending("policies", "policy_id", "policy_id", "applied", "expired"),
    _pending("schedules", "id", "schedule_id", "stored", "finished"),
)


def _ending(reason: str | None, natural: str, ended_by: str | None) -> tuple[str, str]:
    if reason == natural:
        return "expired", ("its time ran out" if natural == "expired" else "the plan finished")
    if reason == "offboarded":
        return "removed", ended_by or "the provider link ended"
    why = {"replaced": "replaced", "removed": "removed"}.get(reason or "", reason or "ended")
    return "removed", f"{why}{f' by {ended_by}' if ended_by else ''}"


def _provider(source: str) -> int | None:
    return int(source.split(":", 1)[1]) if source.startswith("provider:") else None


async def sweep_acks_once(ctx: ServiceContext) -> int:
    """Send every `applied`, `expired` and `removed` not sent yet (once: marked in the same transaction)."""
    sent = 0
    async with ctx.db.acquire() as conn, conn.transaction():
        at = now()
        for pending in _PENDING:
            rows = await conn.fetch(pending.select)
            for row in rows:
                provider = _provider(row["source"])
                if provider is None:
                    continue
                base = {"request_id": row["request_id"], "group": row["grp"], pending.ref: row["ref"]}
                if (
                    row["done_at"] is not None
                    and row["done_acked_at"] is None
                    and row["end_acked_at"] is None
                ):
                    await send_ack(ctx, provider, row["instance_id"], ProviderAck(status="applied", **base))
                    sent += 1
                if row["ended_at"] is not None and row["end_acked_at"] is None:
                    status, reason = _ending(row["end_reason"], pending.natural, row["ended_by"])
                    await send_ack(
                        ctx, provider, row["instance_id"], ProviderAck(status=status, reason=reason, **base)
                    )
                    sent += 1
            if rows:
                await conn.execute(pending.mark, [row["key"] for row in rows], at)
    return sent


async def ack_sweeper(ctx: ServiceContext) -> None:
    while True:
        try:
            await sweep_acks_once(ctx)
        except TRANSIENT_ERRORS as exc:
            log.warning("provider acknowledgements not sent yet", extra={"fields": {"error": repr(exc)}})
        await asyncio.sleep(ACK_SWEEP_S)


async def publish_states(ctx: ServiceContext, installation_ids: list[int] | None) -> int:
    """The retained `state` for every active link (of these installations); the number published."""
    links = await ctx.db.fetch(
        "SELECT provider_id, installation_id, device_groups FROM provider_links WHERE state = 'active'"
        " AND ($1::bigint[] IS NULL OR installation_id = ANY($1::bigint[]))",
        installation_ids,
    )
    if not links:
        return 0
    at = now()
    rows = await ctx.db.fetch(
        "SELECT * FROM policies WHERE instance_id = ANY($1::bigint[]) AND ended_at IS NULL AND valid_until > $2"
        " ORDER BY array_position(ARRAY['battery','solar','ev','hvac'], grp)",
        sorted({link["installation_id"] for link in links}),
        at,
    )
    by_installation: dict[int, list[Policy]] = {}
    for row in rows:
        by_installation.setdefault(row["instance_id"], []).append(
            Policy(
                policy_id=str(row["policy_id"]),
                group=row["grp"],
                setpoint=row["setpoint"],
                valid_until=row["valid_until"],
                source=row["source"],
            )
        )
    for link in links:
        message = ProviderState(
            ts=at,
            policies=by_installation.get(link["installation_id"], []),
            device_groups=list(link["device_groups"]),
        )
        await ctx.mqtt.publish(
            topics.provider_topic(link["provider_id"], link["installation_id"], "state"),
            message,
            retain=True,
            wait_s=PUBLISH_WAIT_S,
        )
    return len(links)


async def state_loop(ctx: ServiceContext) -> None:
    """Every 10 s all active links; in between, at once, the installations whose control state changed."""
    next_full = 0.0
    loop = asyncio.get_running_loop()
    while True:
        try:
            if loop.time() >= next_full:
                state.CHANGED.clear()
                state.CHANGED_EVENT.clear()
                await publish_states(ctx, None)
                next_full = loop.time() + STATE_EVERY_S
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.CHANGED_EVENT.wait(), next_full - loop.time())
                if state.CHANGED:
                    await asyncio.sleep(0.05)  # let the change commit (it is published before its commit)
                    changed = sorted(state.CHANGED)
                    state.CHANGED.clear()
                    state.CHANGED_EVENT.clear()
                    await publish_states(ctx, changed)
        except TRANSIENT_ERRORS as exc:
            log.warning("provider state not published", extra={"fields": {"error": repr(exc)}})
            await asyncio.sleep(1.0)


def register(ctx: ServiceContext) -> None:
    async def live(deliveries: list[Delivery[_Json]]) -> None:
        await on_requests(ctx, deliveries, live=True)

    async def schedules(deliveries: list[Delivery[_Json]]) -> None:
        await on_requests(ctx, deliveries, live=False)

    async def links(deliveries: list[Delivery[ProviderLinkChanged]]) -> None:
        await on_links(ctx, deliveries)

    ctx.mqtt.subscribe(topics.PROVIDER_LIVE_ALL, _Json, live, batch_max=50)
    ctx.mqtt.subscribe(topics.PROVIDER_SCHEDULE_ALL, _Json, schedules, batch_max=50)
    ctx.mqtt.subscribe(topics.ONBOARDING_EVENTS, ProviderLinkChanged, links, batch_max=100)
    ctx.background(lambda: load_links(ctx), "provider-links")
    ctx.background(lambda: ack_sweeper(ctx), "provider-acks")
    ctx.background(lambda: state_loop(ctx), "provider-state")

"""The audit log: every write and control call through the gateway, kept by the registry."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response

from libs.bus import Delivery
from libs.service import ProblemError, ServiceContext, current_principal, get_context
from proto_schemas.audit import AuditEvent

router = APIRouter(tags=["auditlogs"])


async def store(ctx: ServiceContext, deliveries: list[Delivery[AuditEvent]]) -> None:
    """Keep a batch of events; a redelivered event (same key) is stored once."""
    rows = [
        (e.event_key, e.at, e.actor, e.actor_kind, e.provider_id, e.action, e.object, e.outcome, e.source_address,
         e.correlation_id)
        for e in (d.model for d in deliveries)
    ]  # fmt: skip
    async with ctx.system() as conn:
        await conn.executemany(
            "INSERT INTO audit_logs (event_key, at, actor, actor_kind, provider_id, action, object, outcome,"
            " source_address, correlation_id) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) ON CONFLICT DO NOTHING",
            rows,
        )


@router.get("/auditlogs")
async def list_audit(
    request: Request,
    response: Response,
    actor: str | None = Query(None, max_length=255, description="Exactly this actor"),
    object: str | None = Query(
        None, max_length=1024, description="Objects whose path starts with this, e.g. meters/3"
    ),
    since: datetime | None = Query(None, description="From this instant (with offset)"),
    until: datetime | None = Query(None, description="Before this instant (with offset)"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    """Newest first; administrators see their provider's events (platform administrators all)."""
    principal = current_principal(request)
    if principal is None or principal.role not in ("platform_admin", "provider_admin"):
        raise ProblemError(403, "Forbidden", "only administrators read the audit log")
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise ProblemError(
                400, "Invalid input", f"{name} needs an offset", [{"field": name, "message": "add an offset"}]
            )
    where, args = [], []
    for clause, value in (
        ("actor = ${}", actor),
        ("object LIKE ${} || '%'", object),
        ("at >= ${}", since),
        ("at < ${}", until),
    ):
        if value is not None:
            args.append(value)
            where.append(clause.format(len(args)))
    sql_where = f" WHERE {' AND '.join(where)}" if where else ""
    total = await ctx.db.fetchval(f"SELECT count(*) FROM audit_logs{sql_where}", *args)
    rows = await ctx.db.fetch(
        f"SELECT * FROM audit_logs{sql_where} ORDER BY at DESC, id DESC LIMIT {limit} OFFSET {offset}", *args
    )
    response.headers["X-Total-Count"] = str(total)
    return [
        {
            "id": r["id"], "at": r["at"].isoformat(), "actor": r["actor"], "actor_kind": r["actor_kind"],
            "provider_id": r["provider_id"], "action": r["action"], "object": r["object"], "outcome": r["outcome"],
            "source_address": r["source_address"], "correlation_id": r["correlation_id"],
        }
        for r in rows
    ]  # fmt: skip

"""The fleet view (seed 000's fleet manager): `GET /fleet` and `GET /fleet/{gateway_id}/history`.

Health and status are ingestion's own data; which gateways the caller may see, and their installation, come
from the registry (asked with the caller's identity, so tenancy applies).
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Response

from libs.service import ProblemError, ServiceContext, get_context, not_found
from services.ingestion.fleet import is_online, seconds_online

router = APIRouter(tags=["fleet"])

SORTABLE = (
    "gateway_id", "gateway_name", "instance", "serial", "is_online", "online_status_changed",
    "seconds_online_last_day", "last_reboot", "sw_version", "types_version", "init_phase", "cpu_temp_c",
    "mem_available_mb", "unpublished_messages", "last_message_at", "db_status", "ping_ms", "last_seen_datetime",
)  # fmt: skip
HEALTH_FIELDS = (
    "serial", "sw_version", "types_version", "init_phase", "last_reboot", "cpu_temp_c", "mem_available_mb",
    "unpublished_messages", "last_message_at", "db_status", "ping_ms",
)  # fmt: skip


async def _directory(ctx: ServiceContext) -> list[dict[str, Any]]:
    answer = await ctx.call("registry", "GET", "/internal/gatewaydirectory")
    if answer.status_code != 200:
        raise ProblemError(502, "Upstream error", "the registry did not answer")
    return list(answer.json())


async def _rows(ctx: ServiceContext, directory: list[dict[str, Any]]) -> list[dict[str, Any]]:
    uuids = [g["uuid"] for g in directory]
    now = datetime.now(UTC)
    day_ago = now - timedelta(days=1)
    states = {
        r["gateway_uuid"]: r
        for r in await ctx.db.fetch("SELECT * FROM gateway_state WHERE gateway_uuid = ANY($1)", uuids)
    }
    history: dict[str, list[tuple[datetime, str]]] = {}
    for r in await ctx.db.fetch(
        "SELECT gateway_uuid, at, status FROM gateway_status_history WHERE gateway_uuid = ANY($1) AND at >= $2 ORDER BY at",
        uuids, day_ago,
    ):  # fmt: skip
        history.setdefault(r["gateway_uuid"], []).append((r["at"], r["status"]))
    before = {
        r["gateway_uuid"]: r["status"]
        for r in await ctx.db.fetch(
            "SELECT DISTINCT ON (gateway_uuid) gateway_uuid, status FROM gateway_status_history"
            " WHERE gateway_uuid = ANY($1) AND at < $2 ORDER BY gateway_uuid, at DESC",
            uuids, day_ago,
        )
    }  # fmt: skip
    window = timedelta(seconds=ctx.settings.gateway_online_window_s)
    rows = []
    for gateway in directory:
        state = states.get(gateway["uuid"])
        health = (state["health"] if state else None) or {}
        last_seen = state["last_seen_at"] if state else None
        status = state["status"] if state else None
        transitions = history.get(gateway["uuid"], [])
        starting = before.get(gateway["uuid"])
        # A controller that never sent a status message has no measurable online time.
        known_status = status is not None or bool(transitions) or starting is not None
        row: dict[str, Any] = {
            "gateway_id": gateway["id"],
            "gateway_uuid": gateway["uuid"],
            "gateway_name": gateway["name"],
            "instance_id": gateway["instance_id"],
            "instance": gateway["instance_title"],
            "is_online": is_online(status, last_seen, now, window),
            "online_status_changed": state["status_changed_at"].isoformat()
            if state and state["status_changed_at"]
            else None,
            "seconds_online_last_day": seconds_online(transitions, starting, day_ago, now)
            if known_status
            else None,
            "last_seen_datetime": last_seen.isoformat() if last_seen else None,
            "health_at": state["health_at"].isoformat() if state and state["health_at"] else None,
        }
        for field in HEALTH_FIELDS:
            row[field] = health.get(field)
        rows.append(row)
    return rows


def _sort_key(field: str) -> Any:
    def key(row: dict[str, Any]) -> tuple[int, Any]:
        value = row.get(field)
        return (1, "") if value is None else (0, value)

    return key


@router.get("/fleet")
async def fleet(
    response: Response,
    sort: str = Query("gateway_id", description=f"One of {', '.join(SORTABLE)}"),
    order: Literal["asc", "desc"] = Query("asc"),
    q: str | None = Query(
        None, max_length=255, description="Gateway name, installation or serial contains this"
    ),
    online: bool | None = Query(None, description="Only online (true) or offline (false) controllers"),
    limit: int = Query(100, ge=1, le=10000),
    offset: int = Query(0, ge=0),
    format: Literal["json", "csv"] = Query("json", description="csv: the same rows as a CSV file"),
    ctx: ServiceContext = Depends(get_context),
) -> Any:
    """Every controller the caller may see, with seed 000's fleet columns."""
    if sort not in SORTABLE:
        raise ProblemError(
            400,
            "Invalid input",
            f"sort must be one of {', '.join(SORTABLE)}",
            [{"field": "sort", "message": "unknown column"}],
        )
    rows = await _rows(ctx, await _directory(ctx))
    if q:
        needle = q.lower()
        rows = [
            r
            for r in rows
            if any(needle in str(r.get(f) or "").lower() for f in ("gateway_name", "instance", "serial"))
        ]
    if online is not None:
        rows = [r for r in rows if r["is_online"] == online]
    rows.sort(key=_sort_key(sort), reverse=order == "desc")
    if order == "desc":  # keep missing values last either way
        rows.sort(key=lambda r: r.get(sort) is None)
    total = len(rows)
    page = rows[offset : offset + limit]
    if format == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, fieldnames=list(page[0].keys()) if page else ["gateway_id"], extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(page)
        return Response(
            buffer.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="fleet.csv"', "X-Total-Count": str(total)},
        )
    response.headers["X-Total-Count"] = str(total)
    return page


@router.get("/fleet/{gateway_id}/history")
async def fleet_history(
    gateway_id: int,
    since: datetime | None = Query(None, description="From this instant (with offset); default a day ago"),
    until: datetime | None = Query(None, description="Before this instant (with offset); default now"),
    limit: int = Query(1000, ge=1, le=10000),
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """A controller's health reports and status changes over a period, oldest first."""
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise ProblemError(
                400, "Invalid input", f"{name} needs an offset", [{"field": name, "message": "add an offset"}]
            )
    gateway = next((g for g in await _directory(ctx) if g["id"] == gateway_id), None)
    if gateway is None:
        raise not_found("gateway", gateway_id)
    end = until or datetime.now(UTC)
    start = since or end - timedelta(days=1)
    health = await ctx.db.fetch(
        "SELECT received_at, report FROM gateway_health_history WHERE gateway_uuid = $1 AND received_at >= $2"
        " AND received_at < $3 ORDER BY received_at LIMIT $4",
        gateway["uuid"], start, end, limit,
    )  # fmt: skip
    status = await ctx.db.fetch(
        "SELECT at, status FROM gateway_status_history WHERE gateway_uuid = $1 AND at >= $2 AND at < $3 ORDER BY at LIMIT $4",
        gateway["uuid"], start, end, limit,
    )  # fmt: skip
    return {
        "gateway_id": gateway_id,
        "gateway_uuid": gateway["uuid"],
        "health": [{"received_at": r["received_at"].isoformat(), **r["report"]} for r in health],
        "status": [{"at": r["at"].isoformat(), "status": r["status"]} for r in status],
    }

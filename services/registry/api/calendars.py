"""Non-working days of working calendars (MyEMS `/workingcalendars/{id}/nonworkingdays`, `/nonworkingdays/{id}`)."""

from __future__ import annotations

from datetime import date
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, Response

from libs.service import ProblemError, ServiceContext, get_context, not_found
from services.registry.api.common import Body, Description, Envelope, fetch_or_404, publish_change

router = APIRouter(tags=["workingcalendars"])


class NonWorkingDayIn(Body):
    date_local: date
    description: Description = None
    working_calendar_id: int | None = None  # MyEMS sends it on update; it must match the day's calendar


def _day(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "working_calendar_id": row["working_calendar_id"],
        "date_local": row["date_local"].isoformat(),
        "description": row["description"],
    }


@router.get("/workingcalendars/{calendar_id}/nonworkingdays")
async def list_days(calendar_id: int, ctx: ServiceContext = Depends(get_context)) -> list[dict[str, Any]]:
    await fetch_or_404(
        ctx.db, "working calendar", "SELECT id FROM working_calendars WHERE id = $1", calendar_id
    )
    rows = await ctx.db.fetch(
        "SELECT * FROM non_working_days WHERE working_calendar_id = $1 ORDER BY date_local", calendar_id
    )
    return [_day(row) for row in rows]


@router.post("/workingcalendars/{calendar_id}/nonworkingdays", status_code=201)
async def create_day(
    calendar_id: int,
    body: Envelope[NonWorkingDayIn],
    response: Response,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, int]:
    await fetch_or_404(
        ctx.db, "working calendar", "SELECT id FROM working_calendars WHERE id = $1", calendar_id
    )
    try:
        new_id = await ctx.db.fetchval(
            "INSERT INTO non_working_days (working_calendar_id, date_local, description) VALUES ($1, $2, $3) RETURNING id",
            calendar_id,
            body.data.date_local,
            body.data.description,
        )
    except asyncpg.UniqueViolationError as exc:
        raise ProblemError(
            409, "Duplicate", f"{body.data.date_local} is already a non-working day of this calendar",
            [{"field": "date_local", "message": "already listed"}],
        ) from exc  # fmt: skip
    response.headers["Location"] = f"/nonworkingdays/{new_id}"
    await publish_change(ctx, "non_working_day", "created", new_id)
    return {"id": new_id}


@router.get("/nonworkingdays/{day_id}")
async def get_day(day_id: int, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    return _day(
        await fetch_or_404(ctx.db, "non-working day", "SELECT * FROM non_working_days WHERE id = $1", day_id)
    )


@router.put("/nonworkingdays/{day_id}")
async def update_day(
    day_id: int, body: Envelope[NonWorkingDayIn], ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    row = await fetch_or_404(
        ctx.db, "non-working day", "SELECT * FROM non_working_days WHERE id = $1", day_id
    )
    if body.data.working_calendar_id not in (None, row["working_calendar_id"]):
        raise ProblemError(
            400, "Invalid input", "a non-working day cannot move to another calendar",
            [{"field": "data.working_calendar_id", "message": "must be the day's own calendar"}],
        )  # fmt: skip
    try:
        await ctx.db.execute(
            "UPDATE non_working_days SET date_local = $2, description = $3 WHERE id = $1",
            day_id,
            body.data.date_local,
            body.data.description,
        )
    except asyncpg.UniqueViolationError as exc:
        raise ProblemError(
            409, "Duplicate", f"{body.data.date_local} is already listed in this calendar"
        ) from exc
    await publish_change(ctx, "non_working_day", "updated", day_id)
    return {"id": day_id}


@router.delete("/nonworkingdays/{day_id}", status_code=204)
async def delete_day(day_id: int, ctx: ServiceContext = Depends(get_context)) -> Response:
    if await ctx.db.fetchval("DELETE FROM non_working_days WHERE id = $1 RETURNING id", day_id) is None:
        raise not_found("non-working day", day_id)
    await publish_change(ctx, "non_working_day", "deleted", day_id)
    return Response(status_code=204)

"""Lookups: time zones (every IANA zone, read-only) and energy categories."""

from __future__ import annotations

import uuid
import zoneinfo
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from libs.service import ServiceContext, get_context, not_found
from services.registry.api.common import (
    Body,
    Envelope,
    Name,
    Page,
    conflict_from,
    fetch_or_404,
    fetch_page,
    page_params,
    publish_change,
)

router = APIRouter()


class TimezoneOut(BaseModel):
    id: int
    name: str
    description: str
    utc_offset: str


def _format_offset(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def standard_offset(name: str) -> str:
    """The zone's standard (non-summer) offset, as MyEMS lists it (e.g. `+01:00` for Europe/Amsterdam)."""
    zone = zoneinfo.ZoneInfo(name)
    for month in (1, 7):
        moment = datetime(2026, month, 1, 12, tzinfo=zone)
        if not moment.dst():
            offset = moment.utcoffset()
            assert offset is not None
            return _format_offset(offset)
    offset = datetime(2026, 1, 1, 12, tzinfo=zone).utcoffset()
    assert offset is not None
    return _format_offset(offset)


async def seed_timezones(ctx: ServiceContext) -> None:
    """Insert zones not yet known; existing ids never change, so references stay valid across tzdata updates."""
    names = sorted(zoneinfo.available_timezones())
    rows = []
    for name in names:
        offset = standard_offset(name)
        rows.append((name, f"(UTC{offset}) {name}", offset))
    await ctx.db.executemany(
        "INSERT INTO timezones (name, description, utc_offset) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        rows,
    )


@router.get("/timezones", response_model=list[TimezoneOut], tags=["timezones"])
async def list_timezones(ctx: ServiceContext = Depends(get_context)) -> list[dict[str, Any]]:
    rows = await ctx.db.fetch("SELECT id, name, description, utc_offset FROM timezones ORDER BY id")
    return [dict(row) for row in rows]


@router.get("/timezones/{timezone_id}", response_model=TimezoneOut, tags=["timezones"])
async def get_timezone(timezone_id: int, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    row = await ctx.db.fetchrow(
        "SELECT id, name, description, utc_offset FROM timezones WHERE id = $1", timezone_id
    )
    if row is None:
        raise not_found("timezone", timezone_id)
    return dict(row)


class EnergyCategoryIn(Body):
    name: Name
    unit_of_measure: Name
    kgce: float = Field(0, ge=0, le=1e6)
    kgco2e: float = Field(0, ge=0, le=1e6)


class EnergyCategoryOut(BaseModel):
    id: int
    name: str
    uuid: str
    unit_of_measure: str
    kgce: float
    kgco2e: float


def _category(row: asyncpg.Record) -> dict[str, Any]:
    return {**dict(row), "uuid": str(row["uuid"])}


@router.get("/energycategories", response_model=list[EnergyCategoryOut], tags=["energycategories"])
async def list_categories(
    response: Response, page: Page = Depends(page_params), ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    return [
        _category(row)
        for row in await fetch_page(ctx.db, response, "SELECT * FROM energy_categories c", "c", page)
    ]


@router.get("/energycategories/{category_id}", response_model=EnergyCategoryOut, tags=["energycategories"])
async def get_category(category_id: int, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    row = await fetch_or_404(
        ctx.db, "energy category", "SELECT * FROM energy_categories WHERE id = $1", category_id
    )
    return _category(row)


@router.post("/energycategories", status_code=201, tags=["energycategories"])
async def create_category(
    body: Envelope[EnergyCategoryIn], response: Response, ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    d = body.data
    try:
        new_id = await ctx.db.fetchval(
            "INSERT INTO energy_categories (uuid, name, unit_of_measure, kgce, kgco2e)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING id",
            uuid.uuid4(),
            d.name,
            d.unit_of_measure,
            d.kgce,
            d.kgco2e,
        )
    except asyncpg.UniqueViolationError as exc:
        raise conflict_from(exc) from exc
    response.headers["Location"] = f"/energycategories/{new_id}"
    await publish_change(ctx, "energy_category", "created", new_id)
    return {"id": new_id}


@router.put("/energycategories/{category_id}", tags=["energycategories"])
async def update_category(
    category_id: int, body: Envelope[EnergyCategoryIn], ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    d = body.data
    try:
        updated = await ctx.db.fetchval(
            "UPDATE energy_categories SET name=$2, unit_of_measure=$3, kgce=$4, kgco2e=$5 WHERE id=$1 RETURNING id",
            category_id,
            d.name,
            d.unit_of_measure,
            d.kgce,
            d.kgco2e,
        )
    except asyncpg.UniqueViolationError as exc:
        raise conflict_from(exc) from exc
    if updated is None:
        raise not_found("energy category", category_id)
    await publish_change(ctx, "energy_category", "updated", category_id)
    return {"id": category_id}


@router.delete("/energycategories/{category_id}", status_code=204, tags=["energycategories"])
async def delete_category(category_id: int, ctx: ServiceContext = Depends(get_context)) -> Response:
    try:
        deleted = await ctx.db.fetchval(
            "DELETE FROM energy_categories WHERE id = $1 RETURNING id", category_id
        )
    except asyncpg.ForeignKeyViolationError as exc:
        raise conflict_from(exc) from exc
    if deleted is None:
        raise not_found("energy category", category_id)
    await publish_change(ctx, "energy_category", "deleted", category_id)
    return Response(status_code=204)

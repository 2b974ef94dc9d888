"""Metering and hierarchy (MyEMS): meters with their points, spaces with their meters."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, Response
from pydantic import Field, model_validator

from libs.db import Queryable
from libs.service import ProblemError, ServiceContext, bad_request, get_context, not_found
from services.registry.api.common import (
    Body,
    Description,
    Envelope,
    Name,
    Page,
    conflict_from,
    fetch_or_404,
    fetch_page,
    must_exist,
    page_params,
    publish_change,
    ref,
)
from services.registry.resources.framework import ensure_unbound

router = APIRouter()


# -- meters ------------------------------------------------------------------------------------------


class MeterIn(Body):
    name: Name
    energy_category_id: int = Field(ge=1)
    is_counted: bool = True
    hourly_low_limit: float = Field(0.0, ge=0)
    hourly_high_limit: float | None = Field(None, ge=0)
    cost_center_id: int | None = None
    energy_item_id: int | None = None
    master_meter_id: int | None = None
    description: Description = None

    @model_validator(mode="after")
    def _limits_ordered(self) -> MeterIn:
        if self.hourly_high_limit is not None and self.hourly_low_limit > self.hourly_high_limit:
            raise ValueError("hourly_low_limit must not exceed hourly_high_limit")
        return self


_METER_SQL = (
    "SELECT m.*, c.id AS energy_category_id, c.name AS energy_category_name, c.uuid AS energy_category_uuid,"
    " c.unit_of_measure AS energy_category_unit_of_measure,"
    " mm.id AS master_meter_id, mm.name AS master_meter_name, mm.uuid AS master_meter_uuid,"
    " cc.id AS cost_center_id, cc.name AS cost_center_name, cc.uuid AS cost_center_uuid,"
    " ei.id AS energy_item_id, ei.name AS energy_item_name, ei.uuid AS energy_item_uuid"
    " FROM meters m JOIN energy_categories c ON c.id = m.energy_category_id"
    " LEFT JOIN meters mm ON mm.id = m.master_meter_id"
    " LEFT JOIN cost_centers cc ON cc.id = m.cost_center_id"
    " LEFT JOIN energy_items ei ON ei.id = m.energy_item_id"
)


def _meter(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "uuid": str(row["uuid"]),
        "energy_category": ref(row, "energy_category", "name", "uuid", "unit_of_measure"),
        "is_counted": row["is_counted"],
        "hourly_low_limit": row["hourly_low_limit"],
        "hourly_high_limit": row["hourly_high_limit"],
        "cost_center": ref(row, "cost_center", "name", "uuid"),
        "energy_item": ref(row, "energy_item", "name", "uuid"),
        "master_meter": ref(row, "master_meter", "name", "uuid"),
        "description": row["description"],
        "qrcode": f"meter:{row['uuid']}",
    }


@router.get("/meters", tags=["meters"])
async def list_meters(
    response: Response, page: Page = Depends(page_params), ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    return [_meter(row) for row in await fetch_page(ctx.db, response, _METER_SQL, "m", page)]


@router.get("/meters/{meter_id}", tags=["meters"])
async def get_meter(meter_id: int, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    return _meter(await fetch_or_404(ctx.db, "meter", _METER_SQL + " WHERE m.id = $1", meter_id))


async def _write_meter(ctx: ServiceContext, d: MeterIn, meter_id: int | None) -> int:
    if meter_id is not None and d.master_meter_id == meter_id:
        raise bad_request("master_meter_id", "a meter cannot be its own master meter")
    values = (
        d.name, d.energy_category_id, d.is_counted, d.hourly_low_limit, d.hourly_high_limit,
        d.master_meter_id, d.description, d.cost_center_id, d.energy_item_id,
    )  # fmt: skip
    async with ctx.db.acquire() as conn:
        await must_exist(conn, "energy_categories", d.energy_category_id, "energy_category_id")
        await must_exist(conn, "meters", d.master_meter_id, "master_meter_id")
        await must_exist(conn, "cost_centers", d.cost_center_id, "cost_center_id")
        await must_exist(conn, "energy_items", d.energy_item_id, "energy_item_id")
        if d.energy_item_id is not None:
            item_category = await conn.fetchval(
                "SELECT energy_category_id FROM energy_items WHERE id = $1", d.energy_item_id
            )
            if item_category != d.energy_category_id:
                raise bad_request("energy_item_id", "the energy item belongs to another energy category")
        try:
            if meter_id is None:
                return int(
                    await conn.fetchval(
                        "INSERT INTO meters (uuid, name, energy_category_id, is_counted, hourly_low_limit,"
                        " hourly_high_limit, master_meter_id, description, cost_center_id, energy_item_id)"
                        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) RETURNING id",
                        uuid.uuid4(),
                        *values,
                    )
                )
            found = await conn.fetchval(
                "UPDATE meters SET name=$2, energy_category_id=$3, is_counted=$4, hourly_low_limit=$5,"
                " hourly_high_limit=$6, master_meter_id=$7, description=$8, cost_center_id=$9,"
                " energy_item_id=$10 WHERE id=$1 RETURNING id",
                meter_id,
                *values,
            )
        except asyncpg.UniqueViolationError as exc:
            raise conflict_from(exc) from exc
    if found is None:
        raise not_found("meter", meter_id)
    return meter_id


@router.post("/meters", status_code=201, tags=["meters"])
async def create_meter(
    body: Envelope[MeterIn], response: Response, ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    new_id = await _write_meter(ctx, body.data, None)
    response.headers["Location"] = f"/meters/{new_id}"
    await publish_change(ctx, "meter", "created", new_id)
    return {"id": new_id}


@router.put("/meters/{meter_id}", tags=["meters"])
async def update_meter(
    meter_id: int, body: Envelope[MeterIn], ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    await _write_meter(ctx, body.data, meter_id)
    await publish_change(ctx, "meter", "updated", meter_id)
    return {"id": meter_id}


@router.delete("/meters/{meter_id}", status_code=204, tags=["meters"])
async def delete_meter(meter_id: int, ctx: ServiceContext = Depends(get_context)) -> Response:
    await ensure_unbound(ctx.db, "meters", "meter", meter_id)
    try:
        found = await ctx.db.fetchval("DELETE FROM meters WHERE id = $1 RETURNING id", meter_id)
    except asyncpg.ForeignKeyViolationError as exc:
        raise conflict_from(exc) from exc
    if found is None:
        raise not_found("meter", meter_id)
    await publish_change(ctx, "meter", "deleted", meter_id)
    return Response(status_code=204)


@router.get("/meters/{meter_id}/submeters", tags=["meters"])
async def submeters(meter_id: int, ctx: ServiceContext = Depends(get_context)) -> list[dict[str, Any]]:
    """Meters whose master meter is this one."""
    await fetch_or_404(ctx.db, "meter", "SELECT id FROM meters WHERE id = $1", meter_id)
    return [
        _meter(row)
        for row in await ctx.db.fetch(_METER_SQL + " WHERE m.master_meter_id = $1 ORDER BY m.id", meter_id)
    ]


class PointBinding(Body):
    point_id: int = Field(ge=1)


@router.get("/meters/{meter_id}/points", tags=["meters"])
async def meter_points(meter_id: int, ctx: ServiceContext = Depends(get_context)) -> list[dict[str, Any]]:
    await fetch_or_404(ctx.db, "meter", "SELECT id FROM meters WHERE id = $1", meter_id)
    rows = await ctx.db.fetch(
        "SELECT p.id, p.name, p.object_type, p.units FROM meter_points mp JOIN points p ON p.id = mp.point_id"
        " WHERE mp.meter_id = $1 ORDER BY p.id",
        meter_id,
    )
    return [dict(row) for row in rows]


@router.post("/meters/{meter_id}/points", status_code=201, tags=["meters"])
async def bind_point(
    meter_id: int, body: Envelope[PointBinding], ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    async with ctx.db.acquire() as conn:
        await fetch_or_404(conn, "meter", "SELECT id FROM meters WHERE id = $1", meter_id)
        await must_exist(conn, "points", body.data.point_id, "point_id")
        await conn.execute(
            "INSERT INTO meter_points (meter_id, point_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            meter_id,
            body.data.point_id,
        )
    await publish_change(ctx, "meter_point", "bound", meter_id, body.data.point_id)
    return {"id": body.data.point_id}


@router.delete("/meters/{meter_id}/points/{point_id}", status_code=204, tags=["meters"])
async def unbind_point(meter_id: int, point_id: int, ctx: ServiceContext = Depends(get_context)) -> Response:
    # The link table carries no tenancy: the meter's row does (another provider's meter is 404).
    await fetch_or_404(ctx.db, "meter", "SELECT id FROM meters WHERE id = $1", meter_id)
    found = await ctx.db.fetchval(
        "DELETE FROM meter_points WHERE meter_id = $1 AND point_id = $2 RETURNING point_id",
        meter_id,
        point_id,
    )
    if found is None:
        raise not_found("meter point binding", f"{meter_id}/{point_id}")
    await publish_change(ctx, "meter_point", "unbound", meter_id, point_id)
    return Response(status_code=204)


# -- spaces ------------------------------------------------------------------------------------------


class SpaceIn(Body):
    name: Name
    parent_space_id: int | None = None
    area: float = Field(0.0, ge=0)
    timezone_id: int = Field(ge=1)
    is_input_counted: bool = True
    is_output_counted: bool = False
    contact_id: int | None = None
    cost_center_id: int | None = None
    latitude: float | None = Field(None, ge=-90, le=90)
    longitude: float | None = Field(None, ge=-180, le=180)
    description: Description = None


_SPACE_SQL = (
    "SELECT s.*, t.id AS timezone_id, t.name AS timezone_name, t.description AS timezone_description,"
    " t.utc_offset AS timezone_utc_offset,"
    " ct.id AS contact_id, ct.name AS contact_name, ct.uuid AS contact_uuid,"
    " cc.id AS cost_center_id, cc.name AS cost_center_name, cc.uuid AS cost_center_uuid"
    " FROM spaces s JOIN timezones t ON t.id = s.timezone_id"
    " LEFT JOIN contacts ct ON ct.id = s.contact_id LEFT JOIN cost_centers cc ON cc.id = s.cost_center_id"
)


def _space(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "uuid": str(row["uuid"]),
        "parent_space_id": row["parent_space_id"],
        "area": row["area"],
        "timezone": ref(row, "timezone", "name", "description", "utc_offset"),
        "is_input_counted": row["is_input_counted"],
        "is_output_counted": row["is_output_counted"],
        "contact": ref(row, "contact", "name", "uuid"),
        "cost_center": ref(row, "cost_center", "name", "uuid"),
        "latitude": row["latitude"],
        "longitude": row["longitude"],
        "description": row["description"],
        "qrcode": f"space:{row['uuid']}",
    }


@router.get("/spaces", tags=["spaces"])
async def list_spaces(
    response: Response, page: Page = Depends(page_params), ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    return [_space(row) for row in await fetch_page(ctx.db, response, _SPACE_SQL, "s", page)]


@router.get("/spaces/tree", tags=["spaces"])
async def space_tree(ctx: ServiceContext = Depends(get_context)) -> list[dict[str, Any]]:
    """Every space as a tree: roots with nested `children`."""
    rows = [_space(row) for row in await ctx.db.fetch(_SPACE_SQL + " ORDER BY s.id")]
    by_id = {row["id"]: {**row, "children": []} for row in rows}
    roots: list[dict[str, Any]] = []
    for node in by_id.values():
        parent = by_id.get(node["parent_space_id"])
        (parent["children"] if parent else roots).append(node)
    return roots


@router.get("/spaces/{space_id}/children", tags=["spaces"])
async def space_children(space_id: int, ctx: ServiceContext = Depends(get_context)) -> list[dict[str, Any]]:
    await fetch_or_404(ctx.db, "space", "SELECT id FROM spaces WHERE id = $1", space_id)
    return [
        _space(row)
        for row in await ctx.db.fetch(_SPACE_SQL + " WHERE s.parent_space_id = $1 ORDER BY s.id", space_id)
    ]


@router.get("/spaces/{space_id}", tags=["spaces"])
async def get_space(space_id: int, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    return _space(await fetch_or_404(ctx.db, "space", _SPACE_SQL + " WHERE s.id = $1", space_id))


async def _would_cycle(conn: Queryable, space_id: int, parent_id: int) -> bool:
    return bool(
        await conn.fetchval(
            "WITH RECURSIVE up(id) AS (SELECT $2::bigint UNION SELECT s.parent_space_id FROM spaces s"
            " JOIN up ON s.id = up.id WHERE s.parent_space_id IS NOT NULL) SELECT 1 FROM up WHERE id = $1",
            space_id,
            parent_id,
        )
    )


async def _write_space(ctx: ServiceContext, d: SpaceIn, space_id: int | None) -> int:
    values = (
        d.name, d.parent_space_id, d.area, d.timezone_id, d.is_input_counted, d.is_output_counted,
        d.latitude, d.longitude, d.description, d.contact_id, d.cost_center_id,
    )  # fmt: skip
    async with ctx.db.acquire() as conn:
        await must_exist(conn, "timezones", d.timezone_id, "timezone_id")
        await must_exist(conn, "spaces", d.parent_space_id, "parent_space_id")
        await must_exist(conn, "contacts", d.contact_id, "contact_id")
        await must_exist(conn, "cost_centers", d.cost_center_id, "cost_center_id")
        if (
            space_id is not None
            and d.parent_space_id is not None
            and await _would_cycle(conn, space_id, d.parent_space_id)
        ):
            raise bad_request("parent_space_id", "a space cannot be placed under itself or its descendants")
        if space_id is None:
            return int(
                await conn.fetchval(
                    "INSERT INTO spaces (uuid, name, parent_space_id, area, timezone_id, is_input_counted,"
                    " is_output_counted, latitude, longitude, description, contact_id, cost_center_id)"
                    " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) RETURNING id",
                    uuid.uuid4(),
                    *values,
                )
            )
        found = await conn.fetchval(
            "UPDATE spaces SET name=$2, parent_space_id=$3, area=$4, timezone_id=$5, is_input_counted=$6,"
            " is_output_counted=$7, latitude=$8, longitude=$9, description=$10, contact_id=$11,"
            " cost_center_id=$12 WHERE id=$1 RETURNING id",
            space_id,
            *values,
        )
    if found is None:
        raise not_found("space", space_id)
    return space_id


@router.post("/spaces", status_code=201, tags=["spaces"])
async def create_space(
    body: Envelope[SpaceIn], response: Response, ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    new_id = await _write_space(ctx, body.data, None)
    response.headers["Location"] = f"/spaces/{new_id}"
    await publish_change(ctx, "space", "created", new_id)
    return {"id": new_id}


@router.put("/spaces/{space_id}", tags=["spaces"])
async def update_space(
    space_id: int, body: Envelope[SpaceIn], ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    await _write_space(ctx, body.data, space_id)
    await publish_change(ctx, "space", "updated", space_id)
    return {"id": space_id}


@router.delete("/spaces/{space_id}", status_code=204, tags=["spaces"])
async def delete_space(space_id: int, ctx: ServiceContext = Depends(get_context)) -> Response:
    children = await ctx.db.fetch(
        "SELECT id, name FROM spaces WHERE parent_space_id = $1 ORDER BY id LIMIT 5", space_id
    )
    if children:
        names = ", ".join(f"space {c['id']} ({c['name']})" for c in children)
        raise ProblemError(
            409, "In use", f"space {space_id} has child spaces: {names}; move or delete them first"
        )
    try:
        found = await ctx.db.fetchval("DELETE FROM spaces WHERE id = $1 RETURNING id", space_id)
    except asyncpg.ForeignKeyViolationError as exc:
        raise conflict_from(exc) from exc
    if found is None:
        raise not_found("space", space_id)
    await publish_change(ctx, "space", "deleted", space_id)
    return Response(status_code=204)


class MeterBinding(Body):
    meter_id: int = Field(ge=1)


@router.get("/spaces/{space_id}/meters", tags=["spaces"])
async def space_meters(space_id: int, ctx: ServiceContext = Depends(get_context)) -> list[dict[str, Any]]:
    await fetch_or_404(ctx.db, "space", "SELECT id FROM spaces WHERE id = $1", space_id)
    rows = await ctx.db.fetch(
        _METER_SQL + " JOIN space_meters sm ON sm.meter_id = m.id WHERE sm.space_id = $1 ORDER BY m.id",
        space_id,
    )
    return [_meter(row) for row in rows]


@router.post("/spaces/{space_id}/meters", status_code=201, tags=["spaces"])
async def bind_meter(
    space_id: int, body: Envelope[MeterBinding], ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    async with ctx.db.acquire() as conn:
        await fetch_or_404(conn, "space", "SELECT id FROM spaces WHERE id = $1", space_id)
        await must_exist(conn, "meters", body.data.meter_id, "meter_id")
        await conn.execute(
            "INSERT INTO space_meters (space_id, meter_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            space_id,
            body.data.meter_id,
        )
    await publish_change(ctx, "space_meter", "bound", space_id, body.data.meter_id)
    return {"id": body.data.meter_id}


@router.delete("/spaces/{space_id}/meters/{meter_id}", status_code=204, tags=["spaces"])
async def unbind_meter(space_id: int, meter_id: int, ctx: ServiceContext = Depends(get_context)) -> Response:
    await fetch_or_404(ctx.db, "space", "SELECT id FROM spaces WHERE id = $1", space_id)
    found = await ctx.db.fetchval(
        "DELETE FROM space_meters WHERE space_id = $1 AND meter_id = $2 RETURNING meter_id",
        space_id,
        meter_id,
    )
    if found is None:
        raise not_found("space meter binding", f"{space_id}/{meter_id}")
    await publish_change(ctx, "space_meter", "unbound", space_id, meter_id)
    return Response(status_code=204)

"""Read models other services fetch (with the internal token): points, meter bindings, meter context."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from libs.service import ServiceContext, get_context, not_found

router = APIRouter(prefix="/internal", include_in_schema=False)


@router.get("/points")
async def all_points(ctx: ServiceContext = Depends(get_context)) -> list[dict[str, Any]]:
    """Every point with what ingestion and normalisation need to accept and scale its readings."""
    rows = await ctx.db.fetch(
        "SELECT p.id, g.uuid::text AS gateway_uuid, p.object_type, p.ratio, p.high_limit, p.low_limit,"
        " p.higher_limit, p.lower_limit, p.is_trend, p.is_virtual, p.address"
        " FROM points p JOIN data_sources d ON d.id = p.data_source_id JOIN gateways g ON g.id = d.gateway_id"
    )
    return [dict(row) for row in rows]


@router.get("/meterpoints")
async def all_meter_points(ctx: ServiceContext = Depends(get_context)) -> list[dict[str, int]]:
    rows = await ctx.db.fetch("SELECT meter_id, point_id FROM meter_points")
    return [dict(row) for row in rows]


@router.get("/meters/{meter_id}/context")
async def meter_context(meter_id: int, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    """A meter with its category and the time zone its reports use (its space's; UTC when unbound)."""
    row = await ctx.db.fetchrow(
        "SELECT m.id, m.name, m.uuid::text AS uuid, c.name AS category, c.unit_of_measure,"
        " c.kgce, c.kgco2e, m.hourly_low_limit, m.hourly_high_limit,"
        " (SELECT t.name FROM space_meters sm JOIN spaces s ON s.id = sm.space_id"
        "  JOIN timezones t ON t.id = s.timezone_id WHERE sm.meter_id = m.id ORDER BY s.id LIMIT 1) AS timezone"
        " FROM meters m JOIN energy_categories c ON c.id = m.energy_category_id WHERE m.id = $1",
        meter_id,
    )
    if row is None:
        raise not_found("meter", meter_id)
    out = dict(row)
    out["timezone"] = out["timezone"] or "UTC"
    return out


@router.get("/meterzones")
async def meter_zones(ctx: ServiceContext = Depends(get_context)) -> list[dict[str, Any]]:
    """Every meter's reporting time zone: its (first) space's, else UTC."""
    rows = await ctx.db.fetch(
        "SELECT m.id AS meter_id, coalesce((SELECT t.name FROM space_meters sm JOIN spaces s ON s.id = sm.space_id"
        " JOIN timezones t ON t.id = s.timezone_id WHERE sm.meter_id = m.id ORDER BY s.id LIMIT 1), 'UTC') AS timezone"
        " FROM meters m ORDER BY m.id"
    )
    return [dict(row) for row in rows]


@router.get("/virtualmeters")
async def virtual_meters(ctx: ServiceContext = Depends(get_context)) -> list[dict[str, Any]]:
    """Every virtual meter's expression (equation and variables over meters, offline and virtual meters)."""
    rows = await ctx.db.fetch("SELECT id, expression FROM virtual_meters ORDER BY id")
    return [dict(row) for row in rows]


@router.get("/offlinemetervalues")
async def offline_meter_values(
    since_file_id: int = Query(0, ge=0, description="Only values from files after this one"),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    """Period totals of offline meters from uploaded files, oldest file first."""
    rows = await ctx.db.fetch(
        "SELECT offline_meter_id, start_datetime, end_datetime, value, file_id FROM offline_meter_values"
        " WHERE file_id > $1 ORDER BY file_id, offline_meter_id, start_datetime",
        since_file_id,
    )
    return [
        {
            "offline_meter_id": r["offline_meter_id"],
            "start": r["start_datetime"].isoformat(),
            "end": r["end_datetime"].isoformat(),
            "value": r["value"],
            "file_id": r["file_id"],
        }
        for r in rows
    ]


@router.get("/gatewaydirectory")
async def gateway_directory(ctx: ServiceContext = Depends(get_context)) -> list[dict[str, Any]]:
    """The gateways the caller may see, with their installation: the fleet view joins its health to this."""
    rows = await ctx.db.fetch(
        "SELECT g.id, g.uuid::text AS uuid, g.name, ig.instance_id, i.title AS instance_title, i.serial AS instance_serial"
        " FROM gateways g LEFT JOIN instance_gateways ig ON ig.gateway_id = g.id"
        " LEFT JOIN instances i ON i.id = ig.instance_id ORDER BY g.id"
    )
    return [dict(row) for row in rows]


@router.get("/modbussources")
async def modbus_sources(ctx: ServiceContext = Depends(get_context)) -> list[dict[str, Any]]:
    """Every modbus-tcp data source with its gateway, connection and the addresses of its points."""
    rows = await ctx.db.fetch(
        "SELECT d.id AS data_source_id, g.uuid::text AS gateway_uuid, d.connection,"
        " coalesce(json_agg(json_build_object('point_id', p.id, 'address', p.address) ORDER BY p.id)"
        "  FILTER (WHERE p.id IS NOT NULL AND NOT p.is_virtual), '[]') AS points"
        " FROM data_sources d JOIN gateways g ON g.id = d.gateway_id LEFT JOIN points p ON p.data_source_id = d.id"
        " WHERE d.protocol = 'modbus-tcp' GROUP BY d.id, g.uuid ORDER BY d.id"
    )
    return [
        {
            "data_source_id": r["data_source_id"],
            "gateway_uuid": r["gateway_uuid"],
            "host": r["connection"].get("host"),
            "port": r["connection"].get("port", 502),
            "points": r["points"],
        }
        for r in rows
    ]

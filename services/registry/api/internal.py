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


# Report subjects (reporting's read model): kind -> (table, space link for the zone, leaf links, point link).
_SUBJECTS: dict[str, tuple[str, str | None, tuple[tuple[str, str, str, bool], ...], str | None]] = {
    "space": ("spaces", None, (("meter", "space_meters", "meter_id", False),
              ("offlinemeter", "space_offline_meters", "offline_meter_id", False),
              ("virtualmeter", "space_virtual_meters", "virtual_meter_id", False)), "space_points"),
    "meter": ("meters", "space_meters", (), "meter_points"),
    "virtualmeter": ("virtual_meters", "space_virtual_meters", (), None),
    "offlinemeter": ("offline_meters", "space_offline_meters", (), None),
    "equipment": ("equipments", "space_equipments", (("meter", "equipment_meters", "meter_id", True),
                  ("offlinemeter", "equipment_offline_meters", "offline_meter_id", True),
                  ("virtualmeter", "equipment_virtual_meters", "virtual_meter_id", True)), None),
    "combinedequipment": ("combined_equipments", "space_combined_equipments",
                          (("meter", "combined_equipment_meters", "meter_id", True),
                           ("offlinemeter", "combined_equipment_offline_meters", "offline_meter_id", True),
                           ("virtualmeter", "combined_equipment_virtual_meters", "virtual_meter_id", True)), None),
    **{kind: (f"{kind}s", f"space_{kind}s", (("meter", f"{kind}_meters", "meter_id", False),
              ("offlinemeter", f"{kind}_offline_meters", "offline_meter_id", False),
              ("virtualmeter", f"{kind}_virtual_meters", "virtual_meter_id", False)), f"{kind}_points")
       for kind in ("tenant", "store", "shopfloor")},
}  # fmt: skip
_LEAF_TABLES = {"meter": "meters", "offlinemeter": "offline_meters", "virtualmeter": "virtual_meters"}


@router.get("/reportscope")
async def report_scope(ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    """What the calling owner or guest may read reports of (seed 000 "share reports"): the root spaces of
    the installations they own or that share reports with them, and the subjects in those spaces (the spaces
    below the roots and what is bound to them, by kind); ``withheld``: the same for installations where they
    are a guest without ``share_reports``."""
    found: dict[str, Any] = {}
    for name, shared in (("subjects", True), ("withheld", False)):
        roots = [
            r["root_space_id"]
            for r in await ctx.db.fetch(
                "SELECT DISTINCT i.root_space_id FROM instances i JOIN instance_users iu"
                " ON iu.instance_id = i.id WHERE iu.user_id = gf_user() AND i.root_space_id IS NOT NULL"
                " AND (iu.role = 'owner' OR iu.share_reports) = $1 ORDER BY 1",
                shared,
            )
        ]
        spaces = [
            r["id"]
            for r in await ctx.db.fetch(
                "WITH RECURSIVE down(id) AS (SELECT unnest($1::bigint[]) UNION SELECT s.id FROM spaces s"
                " JOIN down d ON s.parent_space_id = d.id) SELECT id FROM down ORDER BY id",
                roots,
            )
        ]
        subjects: dict[str, list[int]] = {"space": spaces}
        for kind, (_, zone_link, _, _) in _SUBJECTS.items():
            if zone_link is None:
                continue
            own = {"combinedequipment": "combined_equipment_id", "virtualmeter": "virtual_meter_id",
                   "offlinemeter": "offline_meter_id"}.get(kind, f"{kind}_id")  # fmt: skip
            subjects[kind] = [
                r["id"]
                for r in await ctx.db.fetch(
                    f"SELECT DISTINCT l.{own} AS id FROM {zone_link} l WHERE l.space_id = ANY($1::bigint[])"
                    " ORDER BY 1",
                    spaces,
                )
            ]
        # and the meters of those equipment, tenants, stores and shopfloors
        for kind, (_, zone_link, leaves, _) in _SUBJECTS.items():
            if zone_link is None or not subjects.get(kind):
                continue
            own = {"combinedequipment": "combined_equipment_id"}.get(kind, f"{kind}_id")
            for leaf, link, leaf_column, _ in leaves:
                bound = await ctx.db.fetch(
                    f"SELECT DISTINCT {leaf_column} AS id FROM {link} WHERE {own} = ANY($1::bigint[])",
                    subjects[kind],
                )
                subjects[leaf] = sorted({*subjects[leaf], *(r["id"] for r in bound)})
        found[name] = subjects
        if shared:
            found["roots"] = roots
    return found


@router.get("/reportsubjects/{kind}/{key}")
async def report_subject(kind: str, key: str, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    """A report's subject as the caller may see it, by id or uuid: name, zone, the meters (plain, offline,
    virtual) that make it up, its points, and every energy category and item (reports label by them)."""
    if kind not in _SUBJECTS:
        raise not_found("report subject kind", kind)
    table, zone_link, leaves, point_link = _SUBJECTS[kind]
    column = "id" if key.isdigit() else "uuid::text"
    row = await ctx.db.fetchrow(
        f"SELECT * FROM {table} WHERE {column} = $1", int(key) if key.isdigit() else key
    )
    if row is None:
        raise not_found(kind, key)
    ident = row["id"]
    own = f"{kind}_id" if kind not in ("combinedequipment", "virtualmeter", "offlinemeter") else {
        "combinedequipment": "combined_equipment_id", "virtualmeter": "virtual_meter_id",
        "offlinemeter": "offline_meter_id"}[kind]  # fmt: skip
    if zone_link is None:
        zone = await ctx.db.fetchval("SELECT name FROM timezones WHERE id = $1", row["timezone_id"])
    else:
        zone = await ctx.db.fetchval(
            f"SELECT t.name FROM {zone_link} l JOIN spaces s ON s.id = l.space_id JOIN timezones t"
            f" ON t.id = s.timezone_id WHERE l.{own} = $1 ORDER BY s.id LIMIT 1",
            ident,
        )
    # A space counts its own meters and those of the spaces below it (MyEMS).
    holders = (
        [r["id"] for r in await ctx.db.fetch(
            "WITH RECURSIVE down(id) AS (SELECT $1::bigint UNION SELECT s.id FROM spaces s JOIN down d"
            " ON s.parent_space_id = d.id) SELECT id FROM down", ident)]
        if kind == "space" else [ident]
    )  # fmt: skip
    members: list[dict[str, Any]] = []
    if kind in _LEAF_TABLES:
        members.append({"kind": kind, "id": ident, "is_output": False})
    for leaf, link, leaf_column, flagged in leaves:
        output = "l.is_output" if flagged else "false"
        for r in await ctx.db.fetch(
            f"SELECT DISTINCT l.{leaf_column} AS id, {output} AS is_output FROM {link} l"
            f" WHERE l.{own} = ANY($1::bigint[]) ORDER BY 1",
            holders,
        ):
            members.append({"kind": leaf, "id": r["id"], "is_output": r["is_output"]})
    meters: list[dict[str, Any]] = []
    for leaf, table_name in _LEAF_TABLES.items():
        ids = [m["id"] for m in members if m["kind"] == leaf]
        if not ids:
            continue
        item = "NULL::bigint" if leaf == "meter" else "x.energy_item_id"
        found = {
            r["id"]: dict(r)
            for r in await ctx.db.fetch(
                f"SELECT x.id, x.name, x.uuid::text AS uuid, x.energy_category_id, {item} AS energy_item_id,"
                f" x.is_counted FROM {table_name} x WHERE x.id = ANY($1::bigint[])",
                ids,
            )
        }
        meters += [{**found[m["id"]], **m} for m in members if m["kind"] == leaf and m["id"] in found]
    points = (
        [dict(r) for r in await ctx.db.fetch(
            f"SELECT p.id, p.name, p.units, p.object_type FROM {point_link} l JOIN points p ON p.id = l.point_id"
            f" WHERE l.{own} = $1 ORDER BY p.id", ident)]
        if point_link else []
    )  # fmt: skip
    submeters = (
        [dict(r) for r in await ctx.db.fetch(
            "SELECT id, name, uuid::text AS uuid, energy_category_id FROM meters WHERE master_meter_id = $1"
            " ORDER BY id", ident)]
        if kind == "meter" else []
    )  # fmt: skip
    categories = [
        dict(r)
        for r in await ctx.db.fetch(
            "SELECT id, name, uuid::text AS uuid, unit_of_measure, kgce, kgco2e FROM energy_categories ORDER BY id"
        )
    ]
    items = [
        dict(r)
        for r in await ctx.db.fetch("SELECT id, name, energy_category_id FROM energy_items ORDER BY id")
    ]
    return {
        "kind": kind,
        "id": ident,
        "name": row["name"],
        "uuid": str(row["uuid"]),
        "timezone": zone or "UTC",
        "area": row.get("area"),
        "energy_category_id": row.get("energy_category_id"),
        "cost_center_id": row.get("cost_center_id"),
        "meters": meters,
        "points": points,
        "submeters": submeters,
        "energy_categories": categories,
        "energy_items": items,
    }

"""The read model aggregation copies (internal token): what it needs for cost, carbon and subject rollups.

One document, read in one snapshot, so aggregation diffs it against its copy and recomputes only what changed:

* ``categories``: every energy category's kgce and kgco2e factors;
* ``sources``: every meter, virtual meter and offline meter with its energy category, energy item, cost center,
  ``is_counted`` flag and reporting zone (its first space's, else UTC). A meter's cost center and energy item
  are its own columns where the registry has them; otherwise the cost center of the first tenant, store,
  shopfloor, equipment or combined equipment it is bound to that has one;
* ``tariffs``: every tariff with its periods or blocks, and ``cost_center_tariffs`` binding them;
* ``subjects``: every space, equipment, combined equipment, tenant, store and shopfloor with its counting
  flags, zone and bindings (meters, offline and virtual meters, child subjects).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from libs.service import ServiceContext, get_context

router = APIRouter(prefix="/internal/aggregation", include_in_schema=False)

_ZONE = (
    "(SELECT t.name FROM {link} l JOIN spaces s ON s.id = l.space_id JOIN timezones t ON t.id = s.timezone_id"
    " WHERE l.{col} = x.id ORDER BY s.id LIMIT 1)"
)

# A meter's cost center where it has none of its own: the first subject it is bound to that has one.
_BOUND_COST_CENTER = (
    "(SELECT b.cc FROM ("
    " SELECT 1 AS o, t.id AS i, t.cost_center_id AS cc FROM tenant_meters l JOIN tenants t ON t.id = l.tenant_id"
    "  WHERE l.meter_id = x.id"
    " UNION ALL SELECT 2, t.id, t.cost_center_id FROM store_meters l JOIN stores t ON t.id = l.store_id"
    "  WHERE l.meter_id = x.id"
    " UNION ALL SELECT 3, t.id, t.cost_center_id FROM shopfloor_meters l JOIN shopfloors t ON t.id = l.shopfloor_id"
    "  WHERE l.meter_id = x.id"
    " UNION ALL SELECT 4, t.id, t.cost_center_id FROM equipment_meters l JOIN equipments t ON t.id = l.equipment_id"
    "  WHERE l.meter_id = x.id"
    " UNION ALL SELECT 5, t.id, t.cost_center_id FROM combined_equipment_meters l"
    "  JOIN combined_equipments t ON t.id = l.combined_equipment_id WHERE l.meter_id = x.id"
    ") b WHERE b.cc IS NOT NULL ORDER BY b.o, b.i LIMIT 1)"
)

_SOURCES = f"""
SELECT 'meter' AS kind, x.id, x.energy_category_id,
       (to_jsonb(x) ->> 'energy_item_id')::bigint AS energy_item_id,
       coalesce((to_jsonb(x) ->> 'cost_center_id')::bigint, {_BOUND_COST_CENTER}) AS cost_center_id,
       x.is_counted, coalesce({_ZONE.format(link="space_meters", col="meter_id")}, 'UTC') AS timezone
FROM meters x
UNION ALL
SELECT 'virtual_meter', x.id, x.energy_category_id, x.energy_item_id, x.cost_center_id, x.is_counted,
       coalesce({_ZONE.format(link="space_virtual_meters", col="virtual_meter_id")}, 'UTC')
FROM virtual_meters x
UNION ALL
SELECT 'offline_meter', x.id, x.energy_category_id, x.energy_item_id, x.cost_center_id, x.is_counted,
       coalesce({_ZONE.format(link="space_offline_meters", col="offline_meter_id")}, 'UTC')
FROM offline_meters x
ORDER BY 1, 2
"""

# (kind, table, zone link table or None for spaces, column in the zone link table)
_SUBJECT_TABLES = (
    ("equipment", "equipments", "space_equipments", "equipment_id"),
    ("combined_equipment", "combined_equipments", "space_combined_equipments", "combined_equipment_id"),
    ("tenant", "tenants", "space_tenants", "tenant_id"),
    ("store", "stores", "space_stores", "store_id"),
    ("shopfloor", "shopfloors", "space_shopfloors", "shopfloor_id"),
)

# (parent kind, link table, parent column, child kind, child column, has is_output)
_LINKS = (
    ("space", "space_meters", "space_id", "meter", "meter_id", False),
    ("space", "space_offline_meters", "space_id", "offline_meter", "offline_meter_id", False),
    ("space", "space_virtual_meters", "space_id", "virtual_meter", "virtual_meter_id", False),
    ("space", "space_equipments", "space_id", "equipment", "equipment_id", False),
    ("space", "space_combined_equipments", "space_id", "combined_equipment", "combined_equipment_id", False),
    ("space", "space_tenants", "space_id", "tenant", "tenant_id", False),
    ("space", "space_stores", "space_id", "store", "store_id", False),
    ("space", "space_shopfloors", "space_id", "shopfloor", "shopfloor_id", False),
    ("equipment", "equipment_meters", "equipment_id", "meter", "meter_id", True),
    ("equipment", "equipment_offline_meters", "equipment_id", "offline_meter", "offline_meter_id", True),
    ("equipment", "equipment_virtual_meters", "equipment_id", "virtual_meter", "virtual_meter_id", True),
    ("combined_equipment", "combined_equipment_meters", "combined_equipment_id", "meter", "meter_id", True),
    (
        "combined_equipment",
        "combined_equipment_offline_meters",
        "combined_equipment_id",
        "offline_meter",
        "offline_meter_id",
        True,
    ),
    (
        "combined_equipment",
        "combined_equipment_virtual_meters",
        "combined_equipment_id",
        "virtual_meter",
        "virtual_meter_id",
        True,
    ),
    (
        "combined_equipment",
        "combined_equipment_equipments",
        "combined_equipment_id",
        "equipment",
        "equipment_id",
        False,
    ),
    ("shopfloor", "shopfloor_meters", "shopfloor_id", "meter", "meter_id", False),
    ("shopfloor", "shopfloor_offline_meters", "shopfloor_id", "offline_meter", "offline_meter_id", False),
    ("shopfloor", "shopfloor_virtual_meters", "shopfloor_id", "virtual_meter", "virtual_meter_id", False),
    ("shopfloor", "shopfloor_equipments", "shopfloor_id", "equipment", "equipment_id", False),
    ("store", "store_meters", "store_id", "meter", "meter_id", False),
    ("store", "store_offline_meters", "store_id", "offline_meter", "offline_meter_id", False),
    ("store", "store_virtual_meters", "store_id", "virtual_meter", "virtual_meter_id", False),
    ("tenant", "tenant_meters", "tenant_id", "meter", "meter_id", False),
    ("tenant", "tenant_offline_meters", "tenant_id", "offline_meter", "offline_meter_id", False),
    ("tenant", "tenant_virtual_meters", "tenant_id", "virtual_meter", "virtual_meter_id", False),
)


def _subjects_sql() -> str:
    parts = [
        "SELECT 'space' AS kind, x.id, x.parent_space_id AS parent_id, x.is_input_counted,"
        " x.is_output_counted, t.name AS timezone FROM spaces x JOIN timezones t ON t.id = x.timezone_id"
    ]
    for kind, table, link, col in _SUBJECT_TABLES:
        output = "x.is_output_counted" if kind in ("equipment", "combined_equipment") else "false"
        parts.append(
            f"SELECT '{kind}', x.id, NULL::bigint, x.is_input_counted, {output},"
            f" coalesce({_ZONE.format(link=link, col=col)}, 'UTC') FROM {table} x"
        )
    return " UNION ALL ".join(parts) + " ORDER BY 1, 2"


def _links_sql() -> str:
    parts = [
        f"SELECT '{parent}' AS parent_kind, l.{pcol} AS parent_id, '{child}' AS child_kind,"
        f" l.{ccol} AS child_id, {'l.is_output' if output else 'false'} AS is_output FROM {table} l"
        for parent, table, pcol, child, ccol, output in _LINKS
    ]
    return " UNION ALL ".join(parts) + " ORDER BY 1, 2, 3, 4"


_SUBJECTS = _subjects_sql()
_BINDINGS = _links_sql()


@router.get("/model")
async def aggregation_model(ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    """Categories, sources, tariffs and subjects as they are now (one consistent snapshot)."""
    async with ctx.db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        categories = await conn.fetch("SELECT id, kgce, kgco2e FROM energy_categories ORDER BY id")
        sources = await conn.fetch(_SOURCES)
        tariffs = await conn.fetch(
            "SELECT id, energy_category_id, tariff_type, valid_from, valid_through FROM tariffs ORDER BY id"
        )
        periods = await conn.fetch(
            "SELECT tariff_id, start_second, end_second, peak_type, price::text AS price"
            " FROM tariff_timeofuses ORDER BY tariff_id, start_second"
        )
        blocks = await conn.fetch(
            "SELECT tariff_id, start_amount::text AS start_amount, end_amount::text AS end_amount,"
            " price::text AS price FROM tariff_blocks ORDER BY tariff_id, ordinal"
        )
        bound = await conn.fetch(
            "SELECT cost_center_id, tariff_id FROM cost_center_tariffs ORDER BY cost_center_id, tariff_id"
        )
        subjects = await conn.fetch(_SUBJECTS)
        bindings = await conn.fetch(_BINDINGS)
    parts: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for row in periods:
        entry = parts.setdefault(row["tariff_id"], {"timeofuse": [], "block": []})
        entry["timeofuse"].append(
            {
                "start_second": row["start_second"],
                "end_second": row["end_second"],
                "peak_type": row["peak_type"],
                "price": row["price"],
            }
        )
    for row in blocks:
        entry = parts.setdefault(row["tariff_id"], {"timeofuse": [], "block": []})
        entry["block"].append(
            {"start_amount": row["start_amount"], "end_amount": row["end_amount"], "price": row["price"]}
        )
    return {
        "categories": [dict(row) for row in categories],
        "sources": [dict(row) for row in sources],
        "tariffs": [
            {
                "id": row["id"],
                "energy_category_id": row["energy_category_id"],
                "tariff_type": row["tariff_type"],
                "valid_from": row["valid_from"].isoformat(),
                "valid_through": row["valid_through"].isoformat(),
                **parts.get(row["id"], {"timeofuse": [], "block": []}),
            }
            for row in tariffs
        ],
        "cost_center_tariffs": [dict(row) for row in bound],
        "subjects": [dict(row) for row in subjects],
        "bindings": [dict(row) for row in bindings],
    }

"""The MyEMS resources served by the generic framework, and the binding matrix (seed 001, digest §2.3)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter

from libs.db import Queryable
from libs.expressions import ExpressionError, dependency_cycle, parse
from libs.service import bad_request
from services.registry.resources.framework import (
    Binding,
    Col,
    Resource,
    binding_router,
    register_binding,
    resource_router,
)

_AREA = Col("area", float, default=0.0, constraints={"ge": 0, "le": 1e9})
_CONTACT = Col("contact_id", int, ref="contacts")
_COST_CENTER = Col("cost_center_id", int, ref="cost_centers")
_CATEGORY = Col(
    "energy_category_id",
    int,
    required=True,
    ref="energy_categories",
    ref_fields=("name", "uuid", "unit_of_measure"),
)
_ENERGY_ITEM = Col("energy_item_id", int, ref="energy_items")
_TEXT = {"max_length": 255}


async def _validate_expression(db: Queryable, data: dict[str, Any], ident: int | None) -> None:
    """A virtual meter's expression: known variables over existing meters, a valid equation, no cycle."""
    expression = data.get("expression") or {}
    variables = expression.get("variables")
    if not isinstance(variables, list) or not variables:
        raise bad_request("expression.variables", "a virtual meter needs at least one variable")
    tables = {"meter": "meters", "offline_meter": "offline_meters", "virtual_meter": "virtual_meters"}
    names: set[str] = set()
    references: list[int] = []
    for index, variable in enumerate(variables):
        where = f"expression.variables.{index}"
        if not isinstance(variable, dict):
            raise bad_request(where, "each variable is an object with name, meter_type and meter_id")
        name, kind, meter_id = variable.get("name"), variable.get("meter_type"), variable.get("meter_id")
        if not isinstance(name, str) or not name:
            raise bad_request(f"{where}.name", "a variable needs a name")
        if name in names:
            raise bad_request(f"{where}.name", f"variable {name} is defined twice")
        if kind not in tables:
            raise bad_request(
                f"{where}.meter_type", "meter_type must be meter, offline_meter or virtual_meter"
            )
        if isinstance(meter_id, str) and meter_id.isdigit():
            meter_id = int(meter_id)
        if not isinstance(meter_id, int) or isinstance(meter_id, bool):
            raise bad_request(f"{where}.meter_id", "meter_id must be an integer")
        if not await db.fetchval(f"SELECT 1 FROM {tables[kind]} WHERE id = $1", meter_id):
            raise bad_request(f"{where}.meter_id", f"{kind} {meter_id} does not exist")
        names.add(name)
        variable["meter_id"] = meter_id
        if kind == "virtual_meter":
            references.append(meter_id)
    equation = expression.get("equation")
    if not isinstance(equation, str):
        raise bad_request("expression.equation", "the equation is a string such as x1+x2-x3")
    try:
        parse(equation, allowed=names)
    except ExpressionError as exc:
        raise bad_request("expression.equation", exc.message) from exc
    if ident is not None and references:
        graph: dict[str, list[str]] = {str(ident): [str(r) for r in references]}
        for row in await db.fetch("SELECT id, expression FROM virtual_meters WHERE id <> $1", ident):
            graph[str(row["id"])] = [
                str(v.get("meter_id"))
                for v in row["expression"].get("variables", [])
                if v.get("meter_type") == "virtual_meter"
            ]
        cycle = dependency_cycle(graph)
        if cycle:
            raise bad_request(
                "expression.variables", "virtual meters would depend on themselves: " + " -> ".join(cycle)
            )


async def _validate_lease(db: Queryable, data: dict[str, Any], ident: int | None) -> None:
    start, end = data.get("lease_start_datetime"), data.get("lease_end_datetime")
    if isinstance(start, datetime) and isinstance(end, datetime) and end <= start:
        raise bad_request("lease_end_datetime", "the lease must end after it starts")


def _with_limits(data: dict[str, Any]) -> None:
    low, high = data.get("hourly_low_limit"), data.get("hourly_high_limit")
    if low is not None and high is not None and low > high:
        raise bad_request("hourly_low_limit", "hourly_low_limit must not exceed hourly_high_limit")


async def _validate_offline_meter(db: Queryable, data: dict[str, Any], ident: int | None) -> None:
    _with_limits(data)


CONTACTS = Resource(
    "contacts", "contacts", "contact",
    (Col("name", str, required=True), Col("email", str, constraints={"max_length": 255, "pattern": r"^[^@\s]+@[^@\s]+$"}),
     Col("phone", str, constraints={"max_length": 64})),
)  # fmt: skip
COST_CENTERS = Resource(
    "costcenters",
    "cost_centers",
    "cost center",
    (Col("name", str, required=True), Col("external_id", str, constraints=_TEXT)),
)
ENERGY_ITEMS = Resource(
    "energyitems", "energy_items", "energy item", (Col("name", str, required=True), _CATEGORY), verbs=()
)
PROTOCOLS = Resource(
    "protocols", "protocols", "protocol",
    (Col("name", str, required=True), Col("code", str, required=True, constraints={"pattern": r"^[a-z0-9][a-z0-9\-]{0,31}$"})),
)  # fmt: skip
SENSORS = Resource("sensors", "sensors", "sensor", (Col("name", str, required=True),))
TENANT_TYPES = Resource(
    "tenanttypes",
    "tenant_types",
    "tenant type",
    (Col("name", str, required=True), Col("simplified_code", str, constraints=_TEXT)),
    verbs=(),
)
STORE_TYPES = Resource(
    "storetypes",
    "store_types",
    "store type",
    (Col("name", str, required=True), Col("simplified_code", str, constraints=_TEXT)),
    verbs=(),
)
TENANTS = Resource(
    "tenants", "tenants", "tenant",
    (Col("name", str, required=True), Col("buildings", str, constraints=_TEXT), Col("floors", str, constraints=_TEXT),
     Col("rooms", str, constraints=_TEXT), _AREA, Col("tenant_type_id", int, required=True, ref="tenant_types"),
     Col("is_input_counted", bool, default=True), Col("is_key_tenant", bool, default=False),
     Col("lease_number", str, constraints=_TEXT), Col("lease_start_datetime", datetime), Col("lease_end_datetime", datetime),
     Col("is_in_lease", bool, default=True), _CONTACT, _COST_CENTER),
    qrcode="tenant", validate=_validate_lease,
)  # fmt: skip
STORES = Resource(
    "stores", "stores", "store",
    (Col("name", str, required=True), Col("address", str, constraints={"max_length": 1024}),
     Col("latitude", float, constraints={"ge": -90, "le": 90}), Col("longitude", float, constraints={"ge": -180, "le": 180}),
     _AREA, Col("store_type_id", int, required=True, ref="store_types"), Col("is_input_counted", bool, default=True),
     _CONTACT, _COST_CENTER),
    qrcode="store",
)  # fmt: skip
SHOPFLOORS = Resource(
    "shopfloors", "shopfloors", "shopfloor",
    (Col("name", str, required=True), _AREA, Col("is_input_counted", bool, default=True), _CONTACT, _COST_CENTER),
    qrcode="shopfloor",
)  # fmt: skip
_EQUIPMENT_COLS = (
    Col("name", str, required=True), Col("is_input_counted", bool, default=True), Col("is_output_counted", bool, default=False),
    _COST_CENTER, Col("svg", str, constraints={"max_length": 1_000_000}), Col("camera_url", str, constraints={"max_length": 2048}),
)  # fmt: skip
EQUIPMENTS = Resource("equipments", "equipments", "equipment", _EQUIPMENT_COLS, qrcode="equipment")
COMBINED_EQUIPMENTS = Resource(
    "combinedequipments",
    "combined_equipments",
    "combined equipment",
    _EQUIPMENT_COLS,
    qrcode="combinedequipment",
)
WORKING_CALENDARS = Resource(
    "workingcalendars", "working_calendars", "working calendar", (Col("name", str, required=True),)
)
OFFLINE_METERS = Resource(
    "offlinemeters", "offline_meters", "offline meter",
    (Col("name", str, required=True), _CATEGORY, Col("is_counted", bool, default=True),
     Col("hourly_low_limit", float, default=0.0, constraints={"ge": 0}), Col("hourly_high_limit", float, constraints={"ge": 0}),
     _COST_CENTER, _ENERGY_ITEM),
    validate=_validate_offline_meter,
)  # fmt: skip
VIRTUAL_METERS = Resource(
    "virtualmeters", "virtual_meters", "virtual meter",
    (Col("name", str, required=True), _CATEGORY, Col("is_counted", bool, default=True), _COST_CENTER, _ENERGY_ITEM,
     Col("expression", dict, required=True, json=True,
         description='{"equation": "x1+x2-x3", "variables": [{"name": "x1", "meter_type": "meter", "meter_id": 1}]}')),
    validate=_validate_expression,
)  # fmt: skip


async def _validate_privilege(db: Queryable, data: dict[str, Any], ident: int | None) -> None:
    """`data` is `{"spaces": [space ids]}` over spaces that exist (and the caller can see)."""
    spaces = (data.get("data") or {}).get("spaces")
    if not isinstance(spaces, list) or not spaces:
        raise bad_request("data.spaces", 'a privilege lists the spaces it grants, e.g. {"spaces": [1, 3]}')
    for index, space in enumerate(spaces):
        if isinstance(space, bool) or not isinstance(space, int):
            raise bad_request(f"data.spaces.{index}", "space ids are integers")
        if not await db.fetchval("SELECT 1 FROM spaces WHERE id = $1", space):
            raise bad_request(f"data.spaces.{index}", f"space {space} does not exist")


PRIVILEGES = Resource(
    "privileges", "privileges", "privilege",
    (Col("name", str, required=True),
     Col("data", dict, required=True, json=True, description='{"spaces": [1, 3]}: those spaces and all below them')),
    validate=_validate_privilege, verbs=(),
)  # fmt: skip

RESOURCES = (
    PRIVILEGES,
    CONTACTS, COST_CENTERS, ENERGY_ITEMS, PROTOCOLS, SENSORS, TENANT_TYPES, STORE_TYPES, TENANTS, STORES, SHOPFLOORS,
    EQUIPMENTS, COMBINED_EQUIPMENTS, WORKING_CALENDARS, OFFLINE_METERS, VIRTUAL_METERS,
)  # fmt: skip

# Resources whose routes are written by hand, described here so they can be parents and children of links.
SPACES = Resource("spaces", "spaces", "space", (Col("name", str, required=True),))
METERS = Resource("meters", "meters", "meter", (Col("name", str, required=True),))

_CHILDREN = {
    "points": ("points", "point_id", "point"),
    "meters": ("meters", "meter_id", "meter"),
    "offlinemeters": ("offline_meters", "offline_meter_id", "offline meter"),
    "virtualmeters": ("virtual_meters", "virtual_meter_id", "virtual meter"),
    "sensors": ("sensors", "sensor_id", "sensor"),
    "equipments": ("equipments", "equipment_id", "equipment"),
    "combinedequipments": ("combined_equipments", "combined_equipment_id", "combined equipment"),
    "shopfloors": ("shopfloors", "shopfloor_id", "shopfloor"),
    "stores": ("stores", "store_id", "store"),
    "tenants": ("tenants", "tenant_id", "tenant"),
    "workingcalendars": ("working_calendars", "working_calendar_id", "working calendar"),
}


def _link(
    parent: Resource, child_path: str, link_table: str, parent_col: str, flags: tuple[str, ...] = ()
) -> Binding:
    table, key, label = _CHILDREN[child_path]
    return Binding(parent, child_path, table, link_table, parent_col, key, key, label, flags)


BINDINGS = (
    _link(SENSORS, "points", "sensor_points", "sensor_id"),
    _link(SPACES, "points", "space_points", "space_id"),
    _link(SPACES, "offlinemeters", "space_offline_meters", "space_id"),
    _link(SPACES, "virtualmeters", "space_virtual_meters", "space_id"),
    _link(SPACES, "sensors", "space_sensors", "space_id"),
    _link(SPACES, "equipments", "space_equipments", "space_id"),
    _link(SPACES, "combinedequipments", "space_combined_equipments", "space_id"),
    _link(SPACES, "shopfloors", "space_shopfloors", "space_id"),
    _link(SPACES, "stores", "space_stores", "space_id"),
    _link(SPACES, "tenants", "space_tenants", "space_id"),
    _link(SPACES, "workingcalendars", "space_working_calendars", "space_id"),
    _link(EQUIPMENTS, "meters", "equipment_meters", "equipment_id", ("is_output",)),
    _link(COMBINED_EQUIPMENTS, "equipments", "combined_equipment_equipments", "combined_equipment_id"),
    _link(
        COMBINED_EQUIPMENTS, "meters", "combined_equipment_meters", "combined_equipment_id", ("is_output",)
    ),
    _link(SHOPFLOORS, "meters", "shopfloor_meters", "shopfloor_id"),
    _link(SHOPFLOORS, "points", "shopfloor_points", "shopfloor_id"),
    _link(SHOPFLOORS, "equipments", "shopfloor_equipments", "shopfloor_id"),
    _link(STORES, "meters", "store_meters", "store_id"),
    _link(STORES, "points", "store_points", "store_id"),
    _link(TENANTS, "meters", "tenant_meters", "tenant_id"),
    _link(TENANTS, "points", "tenant_points", "tenant_id"),
    _link(EQUIPMENTS, "offlinemeters", "equipment_offline_meters", "equipment_id", ("is_output",)),
    _link(EQUIPMENTS, "virtualmeters", "equipment_virtual_meters", "equipment_id", ("is_output",)),
    _link(
        COMBINED_EQUIPMENTS,
        "offlinemeters",
        "combined_equipment_offline_meters",
        "combined_equipment_id",
        ("is_output",),
    ),
    _link(
        COMBINED_EQUIPMENTS,
        "virtualmeters",
        "combined_equipment_virtual_meters",
        "combined_equipment_id",
        ("is_output",),
    ),
    *(
        _link(
            parent,
            child,
            f"{parent.table.removesuffix('s')}_{_CHILDREN[child][0]}",
            f"{parent.table.removesuffix('s')}_id",
        )
        for parent in (SHOPFLOORS, STORES, TENANTS)
        for child in ("offlinemeters", "virtualmeters", "sensors", "workingcalendars")
    ),
)

# Links served by hand-written routes (services/registry/api/metering.py), known for delete protection.
HAND_WRITTEN_BINDINGS = (
    _link(SPACES, "meters", "space_meters", "space_id"),
    _link(METERS, "points", "meter_points", "meter_id"),
)


def routers() -> list[APIRouter]:
    """Every generic resource's routes, then every link's."""
    for binding in HAND_WRITTEN_BINDINGS:
        register_binding(binding)
    out = [resource_router(resource) for resource in RESOURCES]
    out += [binding_router(binding) for binding in BINDINGS]
    return out

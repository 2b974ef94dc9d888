"""Tariffs (MyEMS cost layer): time-of-use and block tariffs, and which cost centers they price.

The rules a tariff must follow (periods tile the day, blocks form a ladder from 0) live in
`services.registry.tariffs`; here they are applied to request bodies, and a tariff with its periods or blocks is
written in one transaction. Results use MyEMS field names, with `valid_from` and `valid_through` as POSIX
milliseconds; requests give them as ISO strings (a time without an offset is UTC) or as milliseconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field, ValidationError, field_validator

from libs.db import Queryable
from libs.service import ProblemError, ServiceContext, bad_request, get_context, not_found
from services.registry.api.common import (
    Body,
    Description,
    Envelope,
    Name,
    Page,
    copy_name,
    fetch_or_404,
    fetch_page,
    page_params,
    publish_change,
    ref,
)
from services.registry.tariffs import (
    Block,
    Period,
    TariffError,
    format_end,
    format_start,
    validate_blocks,
    validate_timeofuse,
)

router = APIRouter(tags=["tariffs"])

_PRICE = Field(ge=0, le=1_000_000_000)
_AMOUNT_LIMIT = 10**15


class TimeOfUseIn(Body):
    start_time_of_day: str = Field(max_length=16, examples=["00:00:00"])
    end_time_of_day: str = Field(
        max_length=16,
        examples=["05:59:59"],
        description="Inclusive when the seconds are 59 (MyEMS: 05:59:59), else exclusive (06:00:00)",
    )
    peak_type: Literal["toppeak", "onpeak", "midpeak", "offpeak"]
    price: Decimal = _PRICE


class BlockIn(Body):
    start_amount: Decimal = Field(ge=0, le=_AMOUNT_LIMIT)
    end_amount: Decimal | None = Field(
        None, ge=0, le=_AMOUNT_LIMIT, description="null: unbounded (last block)"
    )
    price: Decimal = _PRICE


class TariffIn(Body):
    name: Name
    energy_category_id: int = Field(ge=1)
    tariff_type: Literal["timeofuse", "block"]
    unit_of_price: str = Field(min_length=1, max_length=255, examples=["EUR/kWh"])
    valid_from: datetime = Field(description="ISO 8601 (UTC when no offset is given) or POSIX milliseconds")
    valid_through: datetime = Field(
        description="ISO 8601 (UTC when no offset is given) or POSIX milliseconds"
    )
    timeofuse: list[TimeOfUseIn] | None = Field(None, max_length=288)
    block: list[BlockIn] | None = Field(None, max_length=100)
    description: Description = None

    @field_validator("valid_from", "valid_through", mode="before")
    @classmethod
    def _from_epoch_ms(cls, value: Any) -> Any:
        """Numbers are POSIX milliseconds, as MyEMS results give them (so an export imports as is)."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return datetime.fromtimestamp(value / 1000, UTC)
            except (OverflowError, OSError, ValueError) as exc:
                raise ValueError("not a time in POSIX milliseconds") from exc
        return value

    @field_validator("valid_from", "valid_through")
    @classmethod
    def _utc_when_naive(cls, value: datetime) -> datetime:
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _Checked:
    """A request that follows every tariff rule, ready to store."""

    name: str
    energy_category_id: int
    tariff_type: str
    unit_of_price: str
    valid_from: datetime
    valid_through: datetime
    description: str | None
    periods: list[Period]
    blocks: list[Block]


def _checked(d: TariffIn) -> _Checked:
    if d.valid_through <= d.valid_from:
        raise bad_request("valid_through", "valid_through must be after valid_from")
    timeofuse, block = d.timeofuse or [], d.block or []
    try:
        if d.tariff_type == "timeofuse":
            if block:
                raise bad_request("block", "a timeofuse tariff has no blocks; send timeofuse periods")
            periods, blocks = validate_timeofuse([p.model_dump() for p in timeofuse]), []
        else:
            if timeofuse:
                raise bad_request("timeofuse", "a block tariff has no time-of-use periods; send blocks")
            periods, blocks = [], validate_blocks([b.model_dump() for b in block])
    except TariffError as exc:
        raise bad_request(exc.field, exc.message) from exc
    return _Checked(
        d.name, d.energy_category_id, d.tariff_type, d.unit_of_price, d.valid_from, d.valid_through,
        d.description, periods, blocks,
    )  # fmt: skip


# -- reading ------------------------------------------------------------------------------------------

_TARIFF_SQL = (
    "SELECT t.*, c.name AS energy_category_name, c.uuid AS energy_category_uuid,"
    " c.unit_of_measure AS energy_category_unit_of_measure"
    " FROM tariffs t JOIN energy_categories c ON c.id = t.energy_category_id"
)


def _ms(value: datetime) -> float:
    return value.timestamp() * 1000.0


def _number(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _tariff(
    row: asyncpg.Record, periods: Sequence[asyncpg.Record], blocks: Sequence[asyncpg.Record]
) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "uuid": str(row["uuid"]),
        "energy_category": ref(row, "energy_category", "name", "uuid", "unit_of_measure"),
        "tariff_type": row["tariff_type"],
        "unit_of_price": row["unit_of_price"],
        "valid_from": _ms(row["valid_from"]),
        "valid_through": _ms(row["valid_through"]),
        "timeofuse": [
            {
                "start_time_of_day": format_start(p["start_second"]),
                "end_time_of_day": format_end(p["end_second"]),
                "peak_type": p["peak_type"],
                "price": _number(p["price"]),
            }
            for p in periods
        ],
        "block": [
            {
                "start_amount": _number(b["start_amount"]),
                "end_amount": _number(b["end_amount"]),
                "price": _number(b["price"]),
            }
            for b in blocks
        ],
        "description": row["description"],
    }


async def _with_parts(db: Queryable, rows: Sequence[asyncpg.Record]) -> list[dict[str, Any]]:
    """Tariff rows with their periods and blocks, two queries for any number of tariffs."""
    ids = [row["id"] for row in rows]
    periods: dict[int, list[asyncpg.Record]] = {i: [] for i in ids}
    blocks: dict[int, list[asyncpg.Record]] = {i: [] for i in ids}
    if ids:
        for p in await db.fetch(
            "SELECT * FROM tariff_timeofuses WHERE tariff_id = ANY($1) ORDER BY tariff_id, ordinal", ids
        ):
            periods[p["tariff_id"]].append(p)
        for b in await db.fetch(
            "SELECT * FROM tariff_blocks WHERE tariff_id = ANY($1) ORDER BY tariff_id, ordinal", ids
        ):
            blocks[b["tariff_id"]].append(b)
    return [_tariff(row, periods[row["id"]], blocks[row["id"]]) for row in rows]


async def _one(db: Queryable, tariff_id: int) -> dict[str, Any]:
    row = await fetch_or_404(db, "tariff", _TARIFF_SQL + " WHERE t.id = $1", tariff_id)
    return (await _with_parts(db, [row]))[0]


@router.get("/tariffs")
async def list_tariffs(
    response: Response, page: Page = Depends(page_params), ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    return await _with_parts(ctx.db, await fetch_page(ctx.db, response, _TARIFF_SQL, "t", page))


@router.get("/tariffs/{tariff_id}")
async def get_tariff(tariff_id: int, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    return await _one(ctx.db, tariff_id)


@router.get("/tariffs/{tariff_id}/export")
async def export_tariff(tariff_id: int, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    """The tariff as JSON, its energy category as an object, ready for `POST /tariffs/import` elsewhere."""
    return await _one(ctx.db, tariff_id)


# -- writing ------------------------------------------------------------------------------------------


def _duplicate() -> ProblemError:
    return ProblemError(
        409,
        "Duplicate",
        "a tariff with this name exists already",
        [{"field": "name", "message": "already exists"}],
    )


async def _overlap(
    conn: Queryable,
    cost_center_ids: Sequence[int],
    tariff_id: int,
    energy_category_id: int,
    valid_from: datetime,
    valid_through: datetime,
    field_name: str,
) -> None:
    """Refuse (409) a tariff whose validity overlaps another of its energy category at the same cost center."""
    clash = await conn.fetchrow(
        "SELECT c.id AS cost_center_id, c.name AS cost_center_name, t.id, t.name, t.valid_from, t.valid_through"
        " FROM cost_center_tariffs ct JOIN tariffs t ON t.id = ct.tariff_id"
        " JOIN cost_centers c ON c.id = ct.cost_center_id"
        " WHERE ct.cost_center_id = ANY($1) AND t.id <> $2 AND t.energy_category_id = $3"
        " AND t.valid_from < $5 AND $4 < t.valid_through ORDER BY c.id, t.id LIMIT 1",
        list(cost_center_ids),
        tariff_id,
        energy_category_id,
        valid_from,
        valid_through,
    )
    if clash is None:
        return
    message = (
        f"tariff {clash['id']} ({clash['name']}) of the same energy category is bound to cost center"
        f" {clash['cost_center_id']} ({clash['cost_center_name']}) and valid from"
        f" {clash['valid_from'].isoformat()} through {clash['valid_through'].isoformat()}, overlapping tariff"
        f" {tariff_id} ({valid_from.isoformat()} through {valid_through.isoformat()})"
    )
    raise ProblemError(409, "Overlapping tariff", message, [{"field": field_name, "message": message}])


async def _store(ctx: ServiceContext, t: _Checked, tariff_id: int | None) -> int:
    """Insert (tariff_id None) or replace a tariff with its periods or blocks, all or nothing."""
    header = (
        t.name, t.energy_category_id, t.tariff_type, t.unit_of_price, t.valid_from, t.valid_through, t.description,
    )  # fmt: skip
    async with ctx.db.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT 1 FROM energy_categories WHERE id = $1", t.energy_category_id):
            raise bad_request(
                "energy_category_id", f"energy_category_id {t.energy_category_id} does not exist"
            )
        try:
            if tariff_id is None:
                tariff_id = int(
                    await conn.fetchval(
                        "INSERT INTO tariffs (uuid, name, energy_category_id, tariff_type, unit_of_price,"
                        " valid_from, valid_through, description) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) RETURNING id",
                        uuid.uuid4(),
                        *header,
                    )
                )
            else:
                found = await conn.fetchval(
                    "UPDATE tariffs SET name=$2, energy_category_id=$3, tariff_type=$4, unit_of_price=$5,"
                    " valid_from=$6, valid_through=$7, description=$8 WHERE id=$1 RETURNING id",
                    tariff_id,
                    *header,
                )
                if found is None:
                    raise not_found("tariff", tariff_id)
                # Locks are taken tariff first, then cost center, here and in bind_tariff: holding this tariff,
                # no bind of it can slip past; holding its cost centers, no other update or bind there can.
                bound = [
                    r["id"]
                    for r in await conn.fetch(
                        "SELECT c.id FROM cost_centers c JOIN cost_center_tariffs ct ON ct.cost_center_id = c.id"
                        " WHERE ct.tariff_id = $1 ORDER BY c.id FOR UPDATE OF c",
                        tariff_id,
                    )
                ]
                if bound:
                    await _overlap(
                        conn,
                        bound,
                        tariff_id,
                        t.energy_category_id,
                        t.valid_from,
                        t.valid_through,
                        "valid_from",
                    )
                await conn.execute("DELETE FROM tariff_timeofuses WHERE tariff_id = $1", tariff_id)
                await conn.execute("DELETE FROM tariff_blocks WHERE tariff_id = $1", tariff_id)
        except asyncpg.UniqueViolationError as exc:
            raise _duplicate() from exc
        await conn.executemany(
            "INSERT INTO tariff_timeofuses (tariff_id, ordinal, start_second, end_second, peak_type, price)"
            " VALUES ($1,$2,$3,$4,$5,$6)",
            [(tariff_id, i, p.start, p.end, p.peak_type, p.price) for i, p in enumerate(t.periods)],
        )
        await conn.executemany(
            "INSERT INTO tariff_blocks (tariff_id, ordinal, start_amount, end_amount, price)"
            " VALUES ($1,$2,$3,$4,$5)",
            [(tariff_id, i, b.start_amount, b.end_amount, b.price) for i, b in enumerate(t.blocks)],
        )
    return tariff_id


@router.post("/tariffs", status_code=201)
async def create_tariff(
    body: Envelope[TariffIn], response: Response, ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    new_id = await _store(ctx, _checked(body.data), None)
    response.headers["Location"] = f"/tariffs/{new_id}"
    await publish_change(ctx, "tariff", "created", new_id)
    return {"id": new_id}


@router.put("/tariffs/{tariff_id}")
async def update_tariff(
    tariff_id: int, body: Envelope[TariffIn], ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    await _store(ctx, _checked(body.data), tariff_id)
    await publish_change(ctx, "tariff", "updated", tariff_id)
    return {"id": tariff_id}


@router.delete("/tariffs/{tariff_id}", status_code=204)
async def delete_tariff(tariff_id: int, ctx: ServiceContext = Depends(get_context)) -> Response:
    """Refused (409, naming them) while cost centers are bound to the tariff."""
    async with ctx.db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM tariffs WHERE id = $1 FOR UPDATE", tariff_id)  # binds wait for us
        holders = await conn.fetch(
            "SELECT c.id, c.name FROM cost_center_tariffs ct JOIN cost_centers c ON c.id = ct.cost_center_id"
            " WHERE ct.tariff_id = $1 ORDER BY c.id LIMIT 5",
            tariff_id,
        )
        if holders:
            names = ", ".join(f"cost center {h['id']} ({h['name']})" for h in holders)
            raise ProblemError(409, "In use", f"tariff {tariff_id} is bound to {names}; unbind it first")
        try:
            found = await conn.fetchval("DELETE FROM tariffs WHERE id = $1 RETURNING id", tariff_id)
        except asyncpg.ForeignKeyViolationError as exc:  # bound meanwhile
            raise ProblemError(
                409, "In use", f"tariff {tariff_id} was bound meanwhile; unbind it first"
            ) from exc
    if found is None:
        raise not_found("tariff", tariff_id)
    await publish_change(ctx, "tariff", "deleted", tariff_id)
    return Response(status_code=204)


class ImportBody(BaseModel):
    """`POST /tariffs/import`: the object as `GET /tariffs/{id}/export` gave it, wrapped in `data`."""

    data: dict[str, Any]


_IMPORTED = ("name", "tariff_type", "unit_of_price", "valid_from", "valid_through", "description")
_PERIOD_KEYS = ("start_time_of_day", "end_time_of_day", "peak_type", "price")
_BLOCK_KEYS = ("start_amount", "end_amount", "price")


def _parts(value: Any, keys: tuple[str, ...]) -> Any:
    """The items of an exported list, without fields a result carries and a request does not (e.g. ids)."""
    if not isinstance(value, list):
        return value
    return [{k: item[k] for k in keys if k in item} if isinstance(item, dict) else item for item in value]


async def _import_category(conn: Queryable, exported: dict[str, Any]) -> Any:
    """The energy category by uuid, then name (so an export moves between databases), else the id given."""
    category = exported.get("energy_category")
    if not isinstance(category, dict):
        return exported.get("energy_category_id")
    found = None
    if category.get("uuid"):
        found = await conn.fetchval(
            "SELECT id FROM energy_categories WHERE uuid::text = $1", str(category["uuid"])
        )
    if found is None and category.get("name"):
        found = await conn.fetchval("SELECT id FROM energy_categories WHERE name = $1", str(category["name"]))
    if found is None:
        raise bad_request(
            "energy_category",
            f"energy category {category.get('name') or category.get('id')} does not exist here",
        )
    return found


@router.post("/tariffs/import", status_code=201)
async def import_tariff(
    body: ImportBody, response: Response, ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    nested = body.data.get("data")
    exported: dict[str, Any] = nested if isinstance(nested, dict) else body.data
    data: dict[str, Any] = {k: exported[k] for k in _IMPORTED if k in exported}
    data["timeofuse"] = _parts(exported.get("timeofuse"), _PERIOD_KEYS)
    data["block"] = _parts(exported.get("block"), _BLOCK_KEYS)
    data["energy_category_id"] = await _import_category(ctx.db, exported)
    try:
        validated = TariffIn.model_validate(data)
    except ValidationError as exc:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        raise ProblemError(400, "Invalid input", "the exported tariff does not validate", errors) from exc
    new_id = await _store(ctx, _checked(validated), None)
    response.headers["Location"] = f"/tariffs/{new_id}"
    await publish_change(ctx, "tariff", "created", new_id)
    return {"id": new_id}


@router.post("/tariffs/{tariff_id}/clone", status_code=201)
async def clone_tariff(
    tariff_id: int, response: Response, ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    """A copy under a new uuid named `<name> (copy)` (numbered when that is taken); cost centers stay unbound."""
    row = await fetch_or_404(ctx.db, "tariff", "SELECT * FROM tariffs WHERE id = $1", tariff_id)
    periods = await ctx.db.fetch(
        "SELECT * FROM tariff_timeofuses WHERE tariff_id = $1 ORDER BY ordinal", tariff_id
    )
    blocks = await ctx.db.fetch(
        "SELECT * FROM tariff_blocks WHERE tariff_id = $1 ORDER BY ordinal", tariff_id
    )
    name = await copy_name(ctx.db, "tariffs", row["name"])
    copy = _Checked(
        name, row["energy_category_id"], row["tariff_type"], row["unit_of_price"], row["valid_from"],
        row["valid_through"], row["description"],
        [Period(p["start_second"], p["end_second"], p["peak_type"], p["price"]) for p in periods],
        [Block(b["start_amount"], b["end_amount"], b["price"]) for b in blocks],
    )  # fmt: skip
    new_id = await _store(ctx, copy, None)
    response.headers["Location"] = f"/tariffs/{new_id}"
    await publish_change(ctx, "tariff", "created", new_id)
    return {"id": new_id}


# -- cost centers -------------------------------------------------------------------------------------


class TariffBinding(Body):
    tariff_id: int = Field(ge=1)


@router.get("/costcenters/{cost_center_id}/tariffs", tags=["costcenters"])
async def cost_center_tariffs(
    cost_center_id: int, ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    await fetch_or_404(ctx.db, "cost center", "SELECT id FROM cost_centers WHERE id = $1", cost_center_id)
    rows = await ctx.db.fetch(
        _TARIFF_SQL + " JOIN cost_center_tariffs ct ON ct.tariff_id = t.id WHERE ct.cost_center_id = $1"
        " ORDER BY t.id",
        cost_center_id,
    )
    return await _with_parts(ctx.db, rows)


@router.post("/costcenters/{cost_center_id}/tariffs", status_code=201, tags=["costcenters"])
async def bind_tariff(
    cost_center_id: int, body: Envelope[TariffBinding], ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    """Refused (409, naming it) when a bound tariff of the same energy category has an overlapping validity."""
    tariff_id = body.data.tariff_id
    await fetch_or_404(ctx.db, "cost center", "SELECT id FROM cost_centers WHERE id = $1", cost_center_id)
    async with ctx.db.acquire() as conn, conn.transaction():
        # Tariff first, then cost center (as in an update): the share lock waits out an update of the tariff,
        # and the cost center's lock serialises binds to it, so two overlapping tariffs cannot slip in together.
        tariff = await conn.fetchrow(
            "SELECT energy_category_id, valid_from, valid_through FROM tariffs WHERE id = $1 FOR SHARE",
            tariff_id,
        )
        if tariff is None:
            raise bad_request("tariff_id", f"tariff {tariff_id} does not exist")
        await fetch_or_404(
            conn, "cost center", "SELECT id FROM cost_centers WHERE id = $1 FOR UPDATE", cost_center_id
        )
        await _overlap(
            conn, [cost_center_id], tariff_id, tariff["energy_category_id"], tariff["valid_from"],
            tariff["valid_through"], "tariff_id",
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO cost_center_tariffs (cost_center_id, tariff_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            cost_center_id,
            tariff_id,
        )
    await publish_change(ctx, "cost_center_tariff", "bound", cost_center_id, tariff_id)
    return {"id": tariff_id}


@router.delete("/costcenters/{cost_center_id}/tariffs/{tariff_id}", status_code=204, tags=["costcenters"])
async def unbind_tariff(
    cost_center_id: int, tariff_id: int, ctx: ServiceContext = Depends(get_context)
) -> Response:
    found = await ctx.db.fetchval(
        "DELETE FROM cost_center_tariffs WHERE cost_center_id = $1 AND tariff_id = $2 RETURNING tariff_id",
        cost_center_id,
        tariff_id,
    )
    if found is None:
        raise not_found("cost center tariff binding", f"{cost_center_id}/{tariff_id}")
    await publish_change(ctx, "cost_center_tariff", "unbound", cost_center_id, tariff_id)
    return Response(status_code=204)

"""Aggregation: interval energy becomes energy per meter per 15-minute UTC bucket ("quarter").

Each batch of intervals is split into UTC quarters per point (services/aggregation/hourly.py) and written to a
ledger keyed by (batch, point, quarter). Only ledger rows that are new add to `meter_energy_quarter`, in the same
statement, so a redelivered batch (alone, twice in one handler call, or regrouped with others) changes nothing
and a late correction simply adds its (possibly negative) contribution to the quarters it touches. A quality
ledger keyed by (batch, point, quarter, quality) counts the intervals each batch added (+1) and withdrew (-1);
after a batch that withdrew intervals, the quality of their quarters is recomputed from the intervals still in
force, so an estimated quarter whose gap was later filled by real readings becomes good. The same
statement marks the quarters it changed in `rollup_pending`; the rollup task (services/aggregation/rollups.py)
then recomputes exactly the local days, months and years, and the virtual meter quarters, they feed.

What aggregation copies from the registry, each refreshed on change events and a one-minute timer:

* meter -> point bindings (`/internal/meterpoints`); a meter whose points changed is rebuilt from the ledger;
* each meter's time zone (`/internal/meterzones`, else `/internal/meters/{id}/context` one by one); a meter
  whose zone changed has its rollups rebuilt;
* virtual meter definitions (`/internal/virtualmeters`) and offline meter period totals
  (`/internal/offlinemetervalues`); while the registry lacks these routes the features are simply off.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from libs.bus import Delivery
from libs.logs import correlation_id
from libs.service import ServiceContext
from proto_schemas import topics
from proto_schemas.pipeline import EnergyIntervalBatch
from proto_schemas.quality import Quality
from proto_schemas.registry import RegistryChange
from services.aggregation.hourly import quality_counts, quarter_contributions
from services.aggregation.offline import spread_periods

log = logging.getLogger(__name__)

_APPLY = """
WITH fresh AS (
    INSERT INTO energy_ledger_quarter (batch_key, point_id, quarter, energy, quality)
    SELECT b, p, to_timestamp(q / 1000.0), e, c
    FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::float8[], $5::smallint[]) AS r(b, p, q, e, c)
    ON CONFLICT DO NOTHING
    RETURNING point_id, quarter, energy, quality
), changed AS (
    INSERT INTO meter_energy_quarter AS m (meter_id, quarter, energy, quality)
    SELECT mp.meter_id, f.quarter, sum(f.energy), max(f.quality)
    FROM fresh f JOIN meter_points mp ON mp.point_id = f.point_id
    GROUP BY mp.meter_id, f.quarter
    ON CONFLICT (meter_id, quarter) DO UPDATE
    SET energy = m.energy + EXCLUDED.energy, quality = GREATEST(m.quality, EXCLUDED.quality), updated_at = now()
    RETURNING meter_id, quarter
)
INSERT INTO rollup_pending (meter_id, quarter) SELECT meter_id, quarter FROM changed
"""

# The quality ledger: net intervals per (batch, point, quarter, quality); written by every batch.
_APPLY_QUALITY = """
INSERT INTO quality_ledger_quarter (batch_key, point_id, quarter, quality, n)
SELECT b, p, to_timestamp(q / 1000.0), c, n
FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::smallint[], $5::int[]) AS r(b, p, q, c, n)
ON CONFLICT DO NOTHING
"""

# After a batch that withdrew intervals: the quality of the quarters they covered, from the contributions
# still in force (worst quality with a positive net count), so a correction can make a quarter better.
_REQUALIFY = """
WITH t AS (
    SELECT DISTINCT mp.meter_id, to_timestamp(r.q / 1000.0) AS quarter
    FROM unnest($1::int[], $2::bigint[]) AS r(p, q) JOIN meter_points mp ON mp.point_id = r.p
), live AS (
    SELECT t.meter_id, t.quarter, max(g.quality) AS quality
    FROM t JOIN meter_points mp ON mp.meter_id = t.meter_id
    JOIN LATERAL (
        SELECT l.quality FROM quality_ledger_quarter l WHERE l.point_id = mp.point_id AND l.quarter = t.quarter
        GROUP BY l.quality HAVING sum(l.n) > 0
    ) g ON true
    GROUP BY t.meter_id, t.quarter
), fixed AS (
    UPDATE meter_energy_quarter m SET quality = live.quality, updated_at = now()
    FROM live WHERE m.meter_id = live.meter_id AND m.quarter = live.quarter AND m.quality <> live.quality
    RETURNING m.meter_id, m.quarter
)
INSERT INTO rollup_pending (meter_id, quarter) SELECT meter_id, quarter FROM fixed
"""

_REBUILD_METER = """
WITH gone AS (DELETE FROM meter_energy_quarter WHERE meter_id = $1), energy AS (
    SELECT l.quarter, sum(l.energy) AS energy
    FROM energy_ledger_quarter l JOIN meter_points mp ON mp.point_id = l.point_id AND mp.meter_id = $1
    GROUP BY l.quarter
), live AS (
    SELECT quarter, max(quality) AS quality FROM (
        SELECT l.quarter, l.quality
        FROM quality_ledger_quarter l JOIN meter_points mp ON mp.point_id = l.point_id AND mp.meter_id = $1
        GROUP BY l.point_id, l.quarter, l.quality HAVING sum(l.n) > 0
    ) AS q GROUP BY quarter
)
INSERT INTO meter_energy_quarter (meter_id, quarter, energy, quality)
SELECT $1, e.quarter, e.energy, coalesce(g.quality, 0) FROM energy e LEFT JOIN live g USING (quarter)
"""

_MARK_REBUILD = "INSERT INTO rebuild_pending (kind, source_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"

# rebuild_pending.kind
REBUILD_METER, REBUILD_OFFLINE, REBUILD_VIRTUAL = 0, 1, 2

# Writers take this lock shared; a rebuild of a meter takes it exclusively, so none interleave.
_LOCK_KEY = 0x67660A99


def batch_key(batch_id: str) -> int:
    return int.from_bytes(hashlib.sha256(batch_id.encode()).digest()[:8], "big", signed=True)


def _normalised_expression(value: Any) -> Any:
    """A virtual meter's expression as a JSON value, whether the registry stored an object or its text."""
    if isinstance(value, str | bytes):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


class Aggregation:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._bindings_stale = asyncio.Event()
        self._zones_stale = asyncio.Event()
        self._virtual_stale = asyncio.Event()
        self._offline_stale = asyncio.Event()
        self._unavailable: set[str] = set()  # registry routes that answered 404 (logged once)
        self.also_stale: list[
            asyncio.Event
        ] = []  # set on every registry change (services/aggregation/model.py)

    def register(self) -> None:
        self.ctx.mqtt.subscribe(topics.ENERGY_INTERVALS, EnergyIntervalBatch, self.on_intervals, batch_max=50)
        self.ctx.mqtt.subscribe(
            topics.CONFIG_CHANGED,
            RegistryChange,
            self.on_registry_change,
            shared=False,
            name="registry-bindings",
        )
        self.ctx.background(
            lambda: self._refresher(self._bindings_stale, self.sync_bindings, "binding"), "meter-bindings"
        )
        self.ctx.background(
            lambda: self._refresher(self._zones_stale, self.sync_zones, "zone"), "meter-zones"
        )
        self.ctx.background(
            lambda: self._refresher(self._virtual_stale, self.sync_virtual_meters, "virtual meter"),
            "virtual-meters",
        )
        self.ctx.background(
            lambda: self._refresher(self._offline_stale, self.sync_offline_values, "offline value"),
            "offline-values",
        )

    async def on_intervals(self, deliveries: list[Delivery[EnergyIntervalBatch]]) -> None:
        keys: list[int] = []
        point_ids: list[int] = []
        quarters: list[int] = []
        energy: list[float] = []
        quality: list[int] = []
        q_columns: tuple[list[int], list[int], list[int], list[int], list[int]] = ([], [], [], [], [])
        withdrawn: set[tuple[int, int]] = set()
        for delivery in deliveries:
            batch = delivery.model
            key = batch_key(batch.batch_id)
            counts = quality_counts(
                batch.point_ids, batch.start_ms, batch.end_ms, batch.energy, batch.quality
            )
            for (point_id, quarter, code), n in counts.items():
                for column, item in zip(q_columns, (key, point_id, quarter, code, n), strict=True):
                    column.append(item)
            if any(math.copysign(1.0, part) < 0 for part in batch.energy):
                withdrawn.update((p, q) for p, q, _ in counts)
            totals = quarter_contributions(
                batch.point_ids, batch.start_ms, batch.end_ms, batch.energy, batch.quality
            )
            for (point_id, quarter), (value, code) in totals.items():
                keys.append(key)
                point_ids.append(point_id)
                quarters.append(quarter)
                energy.append(value)
                quality.append(code)
        if not keys:
            return
        correlation_id.set(deliveries[0].model.correlation_id)
        async with self.ctx.db.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", _LOCK_KEY)
            await conn.execute(_APPLY, keys, point_ids, quarters, energy, quality)
            await conn.execute(_APPLY_QUALITY, *q_columns)
            if withdrawn:
                ordered = sorted(withdrawn)
                await conn.execute(_REQUALIFY, [p for p, _ in ordered], [q for _, q in ordered])

    async def on_registry_change(self, deliveries: list[Delivery[RegistryChange]]) -> None:
        entities = {d.model.entity for d in deliveries}
        if entities & {"meter_point", "meter", "point"}:
            self._bindings_stale.set()
        if entities & {"meter", "space", "space_meter"}:
            self._zones_stale.set()
        if entities & {"virtual meter", "virtual_meter"}:
            self._virtual_stale.set()
        if entities & {"offline_meter_file", "offline meter", "offline_meter"}:
            self._offline_stale.set()
        for stale in self.also_stale:
            stale.set()  # the cost and subject model diffs itself against every change

    # --- bindings -------------------------------------------------------------------------------------------

    async def sync_bindings(self) -> None:
        """Copy the registry's meter-point bindings; rebuild the quarters of every meter that changed."""
        response = await self.ctx.call("registry", "GET", "/internal/meterpoints")
        response.raise_for_status()
        wanted = {(row["meter_id"], row["point_id"]) for row in response.json()}
        async with self.ctx.db.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            current = {(r["meter_id"], r["point_id"]) for r in await conn.fetch("SELECT * FROM meter_points")}
            if current == wanted:
                return
            added, removed = wanted - current, current - wanted
            if removed:
                await conn.executemany(
                    "DELETE FROM meter_points WHERE meter_id = $1 AND point_id = $2", list(removed)
                )
            if added:
                await conn.executemany("INSERT INTO meter_points VALUES ($1, $2)", list(added))
            for meter_id in sorted({meter for meter, _ in added | removed}):
                await conn.execute(_REBUILD_METER, meter_id)
                await conn.execute(_MARK_REBUILD, REBUILD_METER, meter_id)
            log.info(
                "meter bindings synced", extra={"fields": {"added": len(added), "removed": len(removed)}}
            )

    # --- zones ----------------------------------------------------------------------------------------------

    async def _registry_zones(self) -> dict[int, str]:
        response = await self.ctx.call("registry", "GET", "/internal/meterzones")
        if response.status_code != 404:
            response.raise_for_status()
            return {int(row["meter_id"]): str(row["timezone"] or "UTC") for row in response.json()}
        # Older registry: ask for each meter aggregation knows of.
        self._note_unavailable("/internal/meterzones")
        known = await self.ctx.db.fetch(
            "SELECT meter_id FROM meter_points UNION SELECT meter_id FROM meter_zones"
            " UNION SELECT DISTINCT meter_id FROM meter_energy_daily"
        )
        zones: dict[int, str] = {}
        for row in known:
            answer = await self.ctx.call("registry", "GET", f"/internal/meters/{row['meter_id']}/context")
            if answer.status_code == 404:
                continue
            answer.raise_for_status()
            zones[row["meter_id"]] = str(answer.json().get("timezone") or "UTC")
        return zones

    async def sync_zones(self) -> None:
        """Copy each meter's reporting zone; a meter whose zone changed gets its rollups rebuilt."""
        wanted = await self._registry_zones()
        async with self.ctx.db.acquire() as conn, conn.transaction():
            current = {r["meter_id"]: r["timezone"] for r in await conn.fetch("SELECT * FROM meter_zones")}
            changed = sorted((meter, tz) for meter, tz in wanted.items() if current.get(meter) != tz)
            removed = sorted(current.keys() - wanted.keys())
            if not changed and not removed:
                return
            if changed:
                await conn.executemany(
                    "INSERT INTO meter_zones (meter_id, timezone) VALUES ($1, $2)"
                    " ON CONFLICT (meter_id) DO UPDATE SET timezone = EXCLUDED.timezone",
                    changed,
                )
                await conn.executemany(_MARK_REBUILD, [(REBUILD_METER, meter) for meter, _ in changed])
            if removed:
                await conn.execute("DELETE FROM meter_zones WHERE meter_id = ANY($1::int[])", removed)
            log.info(
                "meter zones synced", extra={"fields": {"changed": len(changed), "removed": len(removed)}}
            )

    # --- virtual meters -------------------------------------------------------------------------------------

    async def sync_virtual_meters(self) -> None:
        """Copy the virtual meter definitions; a new, changed or deleted one is recomputed wholly."""
        response = await self.ctx.call("registry", "GET", "/internal/virtualmeters")
        if response.status_code == 404:
            self._note_unavailable("/internal/virtualmeters")
            return
        response.raise_for_status()
        wanted = {int(row["id"]): _normalised_expression(row["expression"]) for row in response.json()}
        async with self.ctx.db.acquire() as conn, conn.transaction():
            rows = await conn.fetch("SELECT virtual_meter_id, expression FROM virtual_meter_definitions")
            current = {r["virtual_meter_id"]: r["expression"] for r in rows}
            changed = sorted(ident for ident, expr in wanted.items() if current.get(ident) != expr)
            removed = sorted(current.keys() - wanted.keys())
            if not changed and not removed:
                return
            await conn.executemany(
                "INSERT INTO virtual_meter_definitions (virtual_meter_id, expression) VALUES ($1, $2)"
                " ON CONFLICT (virtual_meter_id) DO UPDATE SET expression = EXCLUDED.expression",
                [(ident, wanted[ident]) for ident in changed],
            )
            await conn.execute(
                "DELETE FROM virtual_meter_definitions WHERE virtual_meter_id = ANY($1::int[])", removed
            )
            await conn.executemany(_MARK_REBUILD, [(REBUILD_VIRTUAL, i) for i in changed + removed])
            log.info(
                "virtual meters synced", extra={"fields": {"changed": len(changed), "removed": len(removed)}}
            )

    # --- offline meters -------------------------------------------------------------------------------------

    async def sync_offline_values(self) -> None:
        """Copy the offline meters' period totals; re-spread every offline meter whose periods changed."""
        response = await self.ctx.call("registry", "GET", "/internal/offlinemetervalues")
        if response.status_code == 404:
            self._note_unavailable("/internal/offlinemetervalues")
            return
        response.raise_for_status()
        wanted: dict[int, dict[datetime, tuple[datetime, float, int]]] = {}
        for row in response.json():
            start = datetime.fromisoformat(row["start"]).astimezone(UTC)
            end = datetime.fromisoformat(row["end"]).astimezone(UTC)
            periods = wanted.setdefault(int(row["offline_meter_id"]), {})
            periods[start] = (end, float(row["value"]), int(row["file_id"]))
        async with self.ctx.db.acquire() as conn, conn.transaction():
            current: dict[int, dict[datetime, tuple[datetime, float, int]]] = {}
            for r in await conn.fetch("SELECT * FROM offline_meter_values"):
                current.setdefault(r["offline_meter_id"], {})[r["start_at"]] = (
                    r["end_at"],
                    r["value"],
                    r["file_id"],
                )
            changed = sorted(m for m in wanted.keys() | current.keys() if wanted.get(m) != current.get(m))
            if not changed:
                return
            await conn.execute(
                "DELETE FROM offline_meter_values WHERE offline_meter_id = ANY($1::int[])", changed
            )
            await conn.execute(
                "DELETE FROM offline_meter_energy_quarter WHERE offline_meter_id = ANY($1::int[])", changed
            )
            for meter in changed:
                periods = wanted.get(meter, {})
                await conn.executemany(
                    "INSERT INTO offline_meter_values (offline_meter_id, start_at, end_at, value, file_id)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    [(meter, start, end, value, file_id) for start, (end, value, file_id) in periods.items()],
                )
                quarters = spread_periods(
                    (_ms(start), _ms(end), value) for start, (end, value, _) in periods.items()
                )
                await conn.execute(
                    "INSERT INTO offline_meter_energy_quarter (offline_meter_id, quarter, energy, quality)"
                    " SELECT $1, to_timestamp(q / 1000.0), e, $4"
                    " FROM unnest($2::bigint[], $3::float8[]) AS r(q, e)",
                    meter,
                    list(quarters),
                    list(quarters.values()),
                    int(Quality.MANUAL),
                )
                await conn.execute(_MARK_REBUILD, REBUILD_OFFLINE, meter)
            log.info("offline meter values synced", extra={"fields": {"offline_meters": len(changed)}})

    # --- plumbing -------------------------------------------------------------------------------------------

    def _note_unavailable(self, route: str) -> None:
        if route not in self._unavailable:
            self._unavailable.add(route)
            log.info("registry route not available yet; feature off", extra={"fields": {"route": route}})

    async def sync_others(self) -> None:
        """Zones, virtual meters and offline values; each failure is logged and retried by its refresher."""
        for sync, stale in (
            (self.sync_zones, self._zones_stale),
            (self.sync_virtual_meters, self._virtual_stale),
            (self.sync_offline_values, self._offline_stale),
        ):
            try:
                await sync()
            except Exception:
                log.warning("registry copy failed; retrying soon", exc_info=True)
                stale.set()

    async def sync_when_ready(self) -> None:
        delay = 0.2
        while True:
            try:
                await self.sync_bindings()
                break
            except Exception as exc:
                log.warning("registry not reachable yet", extra={"fields": {"error": repr(exc)}})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        await self.sync_others()

    async def _refresher(self, stale: asyncio.Event, sync: Callable[[], Awaitable[None]], what: str) -> None:
        while True:
            try:
                await asyncio.wait_for(stale.wait(), 60.0)
            except TimeoutError:
                pass
            stale.clear()
            try:
                await sync()
            except Exception:
                log.warning(f"{what} sync failed", exc_info=True)
                await asyncio.sleep(5.0)
                stale.set()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)

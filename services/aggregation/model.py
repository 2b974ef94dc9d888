"""Aggregation's copy of the registry's read model for cost, carbon and subjects, and what a change implies.

``GET /internal/aggregation/model`` on the registry (services/registry/api/aggregation_internal.py) gives the
energy categories' factors, every source's category, item, cost center, ``is_counted`` and zone, the tariffs
with their cost center bindings, and the subjects with their bindings. On every registry change event (and a
one-minute timer) the copy is refreshed and, in the same transaction:

* a source whose cost center, category or zone changed, or whose cost center's tariffs changed, is marked in
  ``cost_pending`` (its cost is recomputed wholly by the rollup task);
* a subject whose members (services/aggregation/subjects.py) or zone changed, or one of whose members changed
  category or item, is marked in ``subject_rebuild_pending``; a subject that disappeared loses its rollups.

Factors are not copied into rollups: kgce and kgco2e are derived when read, so a new factor applies at once.

The model's digest is stored with the copy (``model_state``, written in the same transaction): a sync that
fetches a model with the digest last applied skips the diff, since most registry changes (gateways, points,
users...) and every timed sync leave it as it is. The first sync of a process always diffs, so a new release
whose rules derive something more from the same model (e.g. output members) applies them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import Any

from libs.service import ServiceContext
from services.aggregation.subjects import Binding, Ref, Subject, members, output_kind, output_members

log = logging.getLogger(__name__)

_SUBJECT_TABLES = ("subject_energy_daily", "subject_energy_monthly", "subject_energy_yearly")


class Model:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.stale = asyncio.Event()
        self._lock = asyncio.Lock()
        self.available = True
        self._synced_at = float("-inf")
        self._diffed = False  # a first sync in this process always diffs (the rules may be new)

    async def sync_if_quiet(self, interval_s: float = 2.0) -> None:
        """Sync unless a sync finished in the last ``interval_s`` (a burst of unknown subjects asks once)."""
        if time.monotonic() - self._synced_at >= interval_s:
            await self.sync()

    async def sync(self) -> None:
        """Copy the registry's model now and mark what must be recomputed."""
        async with self._lock:
            self._synced_at = time.monotonic()
            response = await self.ctx.call("registry", "GET", "/internal/aggregation/model")
            if response.status_code == 404:
                if self.available:
                    log.info("registry has no aggregation model yet; cost and subjects off")
                self.available = False
                return
            response.raise_for_status()
            self.available = True
            await self._apply(response.json())

    async def _apply(self, model: dict[str, Any]) -> None:
        digest = hashlib.sha256(json.dumps(model, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        if self._diffed and digest == await self.ctx.db.fetchval("SELECT digest FROM model_state"):
            return  # the copy is this model already
        sources = {
            (str(s["kind"]), int(s["id"])): (
                int(s["energy_category_id"]),
                None if s["energy_item_id"] is None else int(s["energy_item_id"]),
                None if s["cost_center_id"] is None else int(s["cost_center_id"]),
                bool(s["is_counted"]),
                str(s["timezone"] or "UTC"),
            )
            for s in model["sources"]
        }
        tariffs = {int(t["id"]): (int(t["energy_category_id"]), t) for t in model["tariffs"]}
        bound = {(int(b["cost_center_id"]), int(b["tariff_id"])) for b in model["cost_center_tariffs"]}
        subjects = [
            Subject(
                str(s["kind"]),
                int(s["id"]),
                None if s["parent_id"] is None else int(s["parent_id"]),
                bool(s["is_input_counted"]),
                str(s["timezone"] or "UTC"),
                bool(s.get("is_output_counted", False)),
            )
            for s in model["subjects"]
        ]
        bindings = [
            Binding(
                (str(b["parent_kind"]), int(b["parent_id"])),
                (str(b["child_kind"]), int(b["child_id"])),
                bool(b["is_output"]),
            )
            for b in model["bindings"]
        ]
        counted = {ref: info[3] for ref, info in sources.items()}
        wanted_members = members(subjects, bindings, counted)
        zones: dict[Ref, str] = {(s.kind, s.id): s.timezone for s in subjects}
        # Output energy: its own subjects (``equipment_output``, ...), in the zone of the subject they belong to.
        for (kind, ident), outputs in output_members(subjects, bindings, counted).items():
            wanted_members[(output_kind(kind), ident)] = outputs
            zones[(output_kind(kind), ident)] = zones[(kind, ident)]
        for ref in wanted_members:
            if ref in sources:
                zones[ref] = sources[ref][4]

        async with self.ctx.db.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM energy_category_factors")
            await conn.executemany(
                "INSERT INTO energy_category_factors VALUES ($1, $2, $3)",
                [(int(c["id"]), float(c["kgce"]), float(c["kgco2e"])) for c in model["categories"]],
            )
            # --- sources
            current = {
                (r["kind"], r["source_id"]): (
                    r["energy_category_id"],
                    r["energy_item_id"],
                    r["cost_center_id"],
                    r["is_counted"],
                    r["timezone"],
                )
                for r in await conn.fetch("SELECT * FROM source_info")
            }
            changed_sources = {
                ref for ref in sources.keys() | current.keys() if sources.get(ref) != current.get(ref)
            }
            cost_dirty = {
                ref
                for ref in changed_sources
                if ref in sources
                and (
                    ref not in current
                    or sources[ref][:3] != current[ref][:3]
                    or sources[ref][4] != current[ref][4]
                )
            }
            gone_sources = current.keys() - sources.keys()
            if changed_sources:
                await conn.execute(
                    "DELETE FROM source_info WHERE (kind, source_id) IN"
                    " (SELECT * FROM unnest($1::text[], $2::int[]))",
                    [k for k, _ in changed_sources],
                    [i for _, i in changed_sources],
                )
                await conn.executemany(
                    "INSERT INTO source_info VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    [(ref[0], ref[1], *sources[ref]) for ref in changed_sources if ref in sources],
                )
            if gone_sources:
                await conn.execute(
                    "DELETE FROM source_cost_quarter WHERE (kind, source_id) IN"
                    " (SELECT * FROM unnest($1::text[], $2::int[]))",
                    [k for k, _ in gone_sources],
                    [i for _, i in gone_sources],
                )
            # --- tariffs
            current_tariffs = {
                r["tariff_id"]: (r["energy_category_id"], r["definition"])
                for r in await conn.fetch("SELECT * FROM tariff_copies")
            }
            current_bound = {
                (r["cost_center_id"], r["tariff_id"])
                for r in await conn.fetch("SELECT * FROM cost_center_tariff_copies")
            }
            changed_tariffs = {
                t for t in tariffs.keys() | current_tariffs.keys() if tariffs.get(t) != current_tariffs.get(t)
            }
            if changed_tariffs:
                await conn.execute(
                    "DELETE FROM tariff_copies WHERE tariff_id = ANY($1::int[])", sorted(changed_tariffs)
                )
                await conn.executemany(
                    "INSERT INTO tariff_copies VALUES ($1, $2, $3)",
                    [(t, tariffs[t][0], tariffs[t][1]) for t in changed_tariffs if t in tariffs],
                )
            if bound != current_bound:
                await conn.execute("DELETE FROM cost_center_tariff_copies")
                await conn.executemany("INSERT INTO cost_center_tariff_copies VALUES ($1, $2)", sorted(bound))
            centers = {cc for cc, t in bound ^ current_bound}
            centers |= {cc for cc, t in bound | current_bound if t in changed_tariffs}
            cost_dirty |= {ref for ref, info in sources.items() if info[2] is not None and info[2] in centers}
            if cost_dirty:
                await conn.executemany(
                    "INSERT INTO cost_pending VALUES ($1, $2) ON CONFLICT DO NOTHING", sorted(cost_dirty)
                )
            # --- subjects
            current_zones = {
                (r["kind"], r["subject_id"]): r["timezone"]
                for r in await conn.fetch("SELECT * FROM subjects")
            }
            current_members: dict[Ref, set[Ref]] = {}
            for r in await conn.fetch("SELECT * FROM subject_members"):
                current_members.setdefault((r["kind"], r["subject_id"]), set()).add(
                    (r["source_kind"], r["source_id"])
                )
            category_changed = {
                ref
                for ref in changed_sources
                if ref in sources and ref in current and sources[ref][:2] != current[ref][:2]
            }
            rebuild = {
                ref
                for ref, wanted in wanted_members.items()
                if set(wanted) != current_members.get(ref, set())
                or zones.get(ref, "UTC") != current_zones.get(ref)
                or wanted & category_changed
            }
            removed = current_zones.keys() - wanted_members.keys()
            if rebuild or removed:
                touched = sorted(rebuild | removed)
                args = ([k for k, _ in touched], [i for _, i in touched])
                for table in ("subjects", "subject_members"):
                    await conn.execute(
                        f"DELETE FROM {table} WHERE (kind, subject_id) IN (SELECT * FROM unnest($1::text[], $2::int[]))",
                        *args,
                    )
                for table in _SUBJECT_TABLES:
                    await conn.execute(
                        f"DELETE FROM {table} WHERE (kind, subject_id) IN (SELECT * FROM unnest($1::text[], $2::int[]))",
                        *args,
                    )
                await conn.executemany(
                    "INSERT INTO subjects VALUES ($1, $2, $3)",
                    [(ref[0], ref[1], zones.get(ref, "UTC")) for ref in sorted(rebuild)],
                )
                await conn.executemany(
                    "INSERT INTO subject_members VALUES ($1, $2, $3, $4)",
                    [
                        (ref[0], ref[1], m[0], m[1])
                        for ref in sorted(rebuild)
                        for m in sorted(wanted_members[ref])
                    ],
                )
                await conn.executemany(
                    "INSERT INTO subject_rebuild_pending VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    sorted(rebuild),
                )
                await conn.execute(
                    "DELETE FROM subject_rebuild_pending WHERE (kind, subject_id) IN"
                    " (SELECT * FROM unnest($1::text[], $2::int[]))",
                    [k for k, _ in removed],
                    [i for _, i in removed],
                )
            await conn.execute(
                "INSERT INTO model_state VALUES (true, $1, 1, now()) ON CONFLICT (only_row) DO UPDATE"
                " SET digest = EXCLUDED.digest, applies = model_state.applies + 1, applied_at = now()",
                digest,
            )
            self._diffed = True
            if changed_sources or changed_tariffs or rebuild or removed or bound != current_bound:
                log.info(
                    "aggregation model synced",
                    extra={
                        "fields": {
                            "sources": len(changed_sources),
                            "tariffs": len(changed_tariffs),
                            "cost_pending": len(cost_dirty),
                            "subjects_rebuilt": len(rebuild),
                            "subjects_removed": len(removed),
                        }
                    },
                )

    async def refresher(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.stale.wait(), 60.0)
            except TimeoutError:
                pass
            self.stale.clear()
            try:
                await self.sync()
            except Exception:
                log.warning("aggregation model sync failed", exc_info=True)
                await asyncio.sleep(5.0)
                self.stale.set()

"""The registry's read model as other services hold it: a cache of points, refreshed on change events."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from libs.bus import Delivery
from libs.service import ServiceContext
from proto_schemas import topics
from proto_schemas.registry import RegistryChange

log = logging.getLogger(__name__)

# Entities whose change can alter what a point means to ingestion or normalisation.
_POINT_ENTITIES = {"point", "data_source", "gateway"}


@dataclass(frozen=True, slots=True)
class PointInfo:
    id: int
    gateway_uuid: str
    object_type: str
    ratio: float
    high_limit: float | None
    low_limit: float | None
    higher_limit: float | None
    lower_limit: float | None
    is_trend: bool
    is_virtual: bool
    address: dict[str, Any] = field(default_factory=dict)

    @property
    def is_energy(self) -> bool:
        return self.object_type == "ENERGY_VALUE"


class PointDirectory:
    """Every point of the registry, by id. Refreshed at start, on registry change events, every minute,
    and (at most every `miss_refresh_s`) when a reading names a point it does not know yet."""

    def __init__(self, ctx: ServiceContext, *, miss_refresh_s: float = 1.0, period_s: float = 60.0) -> None:
        self._ctx = ctx
        self.points: dict[int, PointInfo] = {}
        self.gateways: set[str] = set()
        self._loaded_at = 0.0
        self._miss_refresh_s = miss_refresh_s
        self._period_s = period_s
        self._lock = asyncio.Lock()
        self._stale = asyncio.Event()

    async def load(self) -> None:
        async with self._lock:
            response = await self._ctx.call("registry", "GET", "/internal/points")
            response.raise_for_status()
            gateways = await self._ctx.call("registry", "GET", "/internal/gatewaydirectory")
            gateways.raise_for_status()
            self.points = {row["id"]: PointInfo(**row) for row in response.json()}
            self.gateways = {row["uuid"] for row in gateways.json()}
            self._loaded_at = time.monotonic()

    async def load_when_ready(self) -> None:
        """Wait for the registry at start (it may come up after this service)."""
        delay = 0.2
        while True:
            try:
                await self.load()
                return
            except Exception as exc:
                log.warning("registry not reachable yet", extra={"fields": {"error": repr(exc)}})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def refresh_if_missing(
        self, point_ids: set[int], gateway_uuids: AbstractSet[str] = frozenset()
    ) -> None:
        """Reload once if some points or gateways are unknown and the last load is not fresh."""
        unknown = bool(point_ids - self.points.keys()) or bool(gateway_uuids - self.gateways)
        if unknown and time.monotonic() - self._loaded_at > self._miss_refresh_s:
            try:
                await self.load()
            except Exception:
                log.warning("registry refresh failed", exc_info=True)

    def watch(self) -> None:
        """Subscribe to registry changes and keep the cache fresh in the background."""

        async def on_change(deliveries: list[Delivery[RegistryChange]]) -> None:
            if any(d.model.entity in _POINT_ENTITIES for d in deliveries):
                self._stale.set()

        self._ctx.mqtt.subscribe(
            topics.CONFIG_CHANGED,
            RegistryChange,
            on_change,
            shared=False,
            batch_max=100,
            name="registry-points",
        )
        self._ctx.background(self._refresher, "point-directory")

    async def _refresher(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._stale.wait(), self._period_s)
            except TimeoutError:
                pass
            self._stale.clear()
            try:
                await self.load()
            except Exception:
                log.warning("registry refresh failed", exc_info=True)

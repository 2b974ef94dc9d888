"""How many plans an installation may hold at once, from its `scheduling` license (docs/control.md, Licenses).

Plans not yet finished (stored, running, or waiting for their first interval) count; a plan replacing a live
plan of the same `schedule_id` takes that one's place and does not count twice.

| `scheduling` license | plans at once                                                  |
|----------------------|----------------------------------------------------------------|
| none (or expired)    | `GRIDFLEET_SCHEDULING_PLANS_WITHOUT_LICENSE` (10 by default)   |
| Basic                | 25                                                             |
| PRO                  | 100                                                            |
| Elite                | unlimited                                                      |

The license comes from the onboarding service (`GET /internal/devices/{id}/entitlements`; the device is the
installation). Answers are cached per installation for at most `GRIDFLEET_SCHEDULING_LICENSE_CACHE_S` (30 s),
and never past the license's expiry, so the limit drops at the expiry itself. A plan the cached limit would
refuse makes a fresh look-up first, so an activation or an upgrade counts at once. When onboarding does not
answer, the limit is the one without a license (the safe side: a license is never assumed); that answer is cached for `GRIDFLEET_SCHEDULING_LICENSE_FAILURE_CACHE_S` (5 s).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.service import ServiceContext
from services.command import state

log = logging.getLogger(__name__)

SERVICE = "scheduling"
# Plans at once per license type; None is unlimited.
PLANS_BY_TYPE: dict[str, int | None] = {"Basic": 25, "PRO": 100, "Elite": None}
CACHE_KEY = "scheduling_entitlements"


class SchedulingSettings(BaseSettings):
    """The limit without a license and the cache of license answers (`GRIDFLEET_SCHEDULING_*`)."""

    model_config = SettingsConfigDict(env_prefix="GRIDFLEET_SCHEDULING_", extra="ignore")

    plans_without_license: int = Field(10, ge=0, description="Plans at once without a scheduling license")
    license_cache_s: float = Field(30.0, ge=0, le=30, description="How long a license answer is kept")
    license_failure_cache_s: float = Field(
        5.0, ge=0, le=30, description="How long 'onboarding is down' is kept"
    )
    license_timeout_s: float = Field(2.0, gt=0, description="How long to wait for the onboarding service")


_settings: SchedulingSettings | None = None


def scheduling_settings() -> SchedulingSettings:
    global _settings
    if _settings is None:
        _settings = SchedulingSettings()
    return _settings


@dataclass(frozen=True)
class PlanLimit:
    """What an installation may hold now: `plans` (None: unlimited) under `license` (None: no license)."""

    plans: int | None
    license: str | None
    expires_at: datetime | None
    fetched_at: float  # time.monotonic() of the look-up
    good_until: float  # time.monotonic() after which it is looked up again
    reachable: bool = True

    @property
    def label(self) -> str:
        if not self.reachable:
            return "no scheduling license known (the license service did not answer)"
        if self.license is None:
            return "no scheduling license"
        return f"a {self.license} scheduling license"

    def allows(self, live: int) -> bool:
        return self.plans is None or live < self.plans


class PlanLimitReached(state.Refused):
    """A new plan beyond what the installation's scheduling license allows."""

    def __init__(self, instance_id: int, live: int, limit: PlanLimit) -> None:
        table = ", ".join(
            f"{kind}: {'unlimited' if plans is None else plans}" for kind, plans in PLANS_BY_TYPE.items()
        )
        super().__init__(
            "schedule_id",
            f"installation {instance_id} holds {live} plans not yet finished, the most {limit.label} allows"
            f" ({limit.plans}); remove a plan, wait for one to finish, or activate a higher scheduling license"
            f" (without one: {scheduling_settings().plans_without_license}, {table})",
        )
        self.limit = limit


def limit_for(license_type: str | None) -> int | None:
    if license_type is None:
        return scheduling_settings().plans_without_license
    return PLANS_BY_TYPE.get(license_type, scheduling_settings().plans_without_license)


def _cache(ctx: ServiceContext) -> dict[int, PlanLimit]:
    cache = ctx.state.get(CACHE_KEY)
    if not isinstance(cache, dict):
        cache = {}
        ctx.state[CACHE_KEY] = cache
    return cache


async def _look_up(ctx: ServiceContext, instance_id: int) -> PlanLimit:
    cfg = scheduling_settings()
    started = time.monotonic()
    try:
        response = await ctx.call(
            "onboarding",
            "GET",
            f"/internal/devices/{instance_id}/entitlements",
            timeout=cfg.license_timeout_s,
        )
        response.raise_for_status()
        held = response.json().get("services", {}).get(SERVICE)
        license_type = str(held["type"]) if held else None
        expires_at = datetime.fromisoformat(held["expires_at"]) if held else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning(
            "scheduling license unknown; the limit without a license applies",
            extra={"fields": {"instance_id": instance_id, "error": repr(exc)}},
        )
        return PlanLimit(
            cfg.plans_without_license, None, None, started, started + cfg.license_failure_cache_s, False
        )
    good_until = started + cfg.license_cache_s
    if expires_at is not None:
        good_until = min(good_until, started + (expires_at.timestamp() - time.time()))
    return PlanLimit(limit_for(license_type), license_type, expires_at, started, good_until)


async def plan_limit(ctx: ServiceContext, instance_id: int, *, fresh: bool = False) -> PlanLimit:
    """The installation's limit, from the cache unless it is stale or `fresh` is asked for."""
    cache = _cache(ctx)
    moment = time.monotonic()
    held = cache.get(instance_id)
    if held is not None and moment < held.good_until and not fresh:
        return held
    limit = await _look_up(ctx, instance_id)
    if len(cache) > 100_000:  # bounded: drop what is stale, else start over
        for key in [k for k, v in cache.items() if v.good_until <= moment] or list(cache):
            cache.pop(key, None)
    cache[instance_id] = limit
    return limit


async def check(conn: Any, instance_id: int, replacing: int | None, limit: PlanLimit) -> None:
    """Refuse a new plan (PlanLimitReached) when the installation already holds as many as `limit` allows; the
    plan it replaces (`replacing`, a schedules row id) does not count. Call on the locked installation."""
    if limit.plans is None:
        return
    live = await conn.fetchval(
        "SELECT count(*) FROM schedules WHERE instance_id = $1 AND ended_at IS NULL AND id IS DISTINCT FROM $2",
        instance_id,
        replacing,
    )
    if not limit.allows(int(live)):
        raise PlanLimitReached(instance_id, int(live), limit)

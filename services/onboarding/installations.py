"""What onboarding reads from the registry about an installation, through the registry's API.

Reads on behalf of the caller forward the caller's principal (the registry's row-level security decides what
they see); the service's own background work reads as the system.
"""

from __future__ import annotations

from typing import Any

import httpx

from libs.service import PRINCIPAL_HEADER, Principal, ProblemError, ServiceContext, not_found

SYSTEM = Principal(user_id=0, user_uuid="", name="onboarding", is_admin=True, role="platform_admin")


def _system_headers() -> dict[str, str]:
    return {PRINCIPAL_HEADER: SYSTEM.to_header()}


async def _get(ctx: ServiceContext, path: str, *, as_system: bool) -> httpx.Response:
    try:
        return await ctx.call("registry", "GET", path, headers=_system_headers() if as_system else {})
    except httpx.HTTPError as exc:
        raise ProblemError(503, "Unavailable", "the registry could not be reached; retry") from exc


async def _json(ctx: ServiceContext, path: str, what: str, ident: object, *, as_system: bool) -> Any:
    answer = await _get(ctx, path, as_system=as_system)
    if answer.status_code == 404:
        raise not_found(what, ident)
    if 400 <= answer.status_code < 500:  # the registry's refusal (403, 400, …) is the caller's answer too
        try:
            body = answer.json()
            detail = str(body.get("detail") or body.get("title"))
        except (ValueError, AttributeError):
            detail = f"the registry refused access to {what} {ident}"
        raise ProblemError(answer.status_code, "Refused", detail)
    if answer.status_code != 200:
        raise ProblemError(
            503, "Unavailable", f"the registry answered {answer.status_code} for {what} {ident}"
        )
    return answer.json()


async def installation(
    ctx: ServiceContext, installation_id: int, *, as_system: bool = False
) -> dict[str, Any]:
    """The installation (404 when the caller may not see it)."""
    found: dict[str, Any] = await _json(
        ctx, f"/instances/{installation_id}", "installation", installation_id, as_system=as_system
    )
    return found


async def device_groups(ctx: ServiceContext, installation_id: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await _json(
        ctx, f"/instances/{installation_id}/devicegroups", "installation", installation_id, as_system=True
    )
    return found


async def members(ctx: ServiceContext, installation_id: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await _json(
        ctx, f"/instances/{installation_id}/users", "installation", installation_id, as_system=True
    )
    return found


async def gateways(ctx: ServiceContext, installation_id: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await _json(
        ctx, f"/instances/{installation_id}/gateways", "installation", installation_id, as_system=True
    )
    return found


async def data_sources(ctx: ServiceContext, gateway_id: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await _json(
        ctx, f"/gateways/{gateway_id}/datasources", "gateway", gateway_id, as_system=True
    )
    return found


async def gateway_directory(ctx: ServiceContext) -> dict[str, int]:
    """Gateway uuid -> installation id, for every gateway bound to an installation."""
    rows = await _json(ctx, "/internal/gatewaydirectory", "directory", "", as_system=True)
    return {row["uuid"]: row["instance_id"] for row in rows if row.get("instance_id") is not None}

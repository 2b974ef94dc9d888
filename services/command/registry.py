"""What the command service reads from the registry, through its HTTP API (never its tables).

A request is checked as its caller: the registry is asked with the caller's principal forwarded, so row-level
security decides what the caller may see (a gateway or installation of another provider, or of which an owner
is not a member, is a 404 here as there). Background work (expiry, dispatch, republishing on a change) asks as
the system.

Today an installation is read with four calls to the registry's public routes (the installation, its
controllers, its device groups, its members); `GET /internal/instances/{id}/control` returning the same in one
answer is proposed to the registry, and `installation()` is the one place to switch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from libs.service import Principal, ProblemError, ServiceContext, current_principal_header, not_found

DEFAULT_FALLBACK_TIMEOUT_S = 900
FALLBACK_PARAMETER = "fallback_timeout_s"


@dataclass
class Installation:
    instance_id: int
    gateways: list[dict[str, Any]]  # [{"id": int, "uuid": str}]
    groups: dict[
        str, dict[str, Any]
    ]  # group -> {"max_charge_w", "max_discharge_w", "capacity_wh", "max_power_w"}
    fallback_timeout_s: int = DEFAULT_FALLBACK_TIMEOUT_S
    member: dict[str, Any] | None = None  # the caller's membership (owner or guest), when asked
    title: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _unavailable(exc: BaseException | None = None) -> ProblemError:
    detail = "the registry is not reachable; retry shortly"
    if exc is not None:
        detail = f"{detail} ({type(exc).__name__})"
    return ProblemError(503, "Unavailable", detail)


@contextlib.contextmanager
def as_system() -> Iterator[None]:
    """Ask the registry as the service itself, not as the caller of the request being served."""
    token = current_principal_header.set(None)
    try:
        yield
    finally:
        current_principal_header.reset(token)


async def _get(ctx: ServiceContext, path: str) -> httpx.Response:
    try:
        answer = await ctx.call("registry", "GET", path)
    except httpx.HTTPError as exc:
        raise _unavailable(exc) from exc
    if answer.status_code >= 500:
        raise _unavailable()
    if answer.status_code in (401, 403):
        detail = (
            answer.json().get("detail") if answer.headers.get("content-type", "").endswith("json") else None
        )
        raise ProblemError(403, "Forbidden", str(detail or "the registry refused this caller"))
    return answer


async def gateway(ctx: ServiceContext, gateway_id: int) -> dict[str, Any] | None:
    """The gateway as the caller sees it (`id`, `name`, `uuid`), or None when it does not exist for them."""
    answer = await _get(ctx, f"/gateways/{gateway_id}")
    if answer.status_code in (404, 400, 422):
        return None
    if answer.status_code != 200:
        raise _unavailable()
    return dict(answer.json())


async def gateway_by_uuid(ctx: ServiceContext, gateway_uuid: str) -> dict[str, Any] | None:
    """A gateway the caller may see, found by uuid (for imports from another database)."""
    answer = await _get(ctx, "/internal/gatewaydirectory")
    if answer.status_code != 200:
        raise _unavailable()
    for row in answer.json():
        if row.get("uuid") == gateway_uuid:
            return dict(row)
    return None


def _fallback(parameters: Any) -> int:
    if isinstance(parameters, dict):
        value = parameters.get(FALLBACK_PARAMETER)
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 86400:
            return value
    return DEFAULT_FALLBACK_TIMEOUT_S


async def installation(
    ctx: ServiceContext, instance_id: int, principal: Principal | None = None
) -> Installation:
    """The installation with its controllers and device groups, as the caller sees it (404 when they cannot).

    With `principal` (an owner or guest), their membership is read too.
    """
    head = await _get(ctx, f"/instances/{instance_id}")
    if head.status_code in (404, 400, 422):
        raise not_found("installation", instance_id)
    if head.status_code != 200:
        raise _unavailable()
    paths = [f"/instances/{instance_id}/gateways", f"/instances/{instance_id}/devicegroups"]
    if principal is not None:
        paths.append(f"/instances/{instance_id}/users")
    answers = await asyncio.gather(*(_get(ctx, path) for path in paths))
    if any(answer.status_code == 404 for answer in answers):
        raise not_found("installation", instance_id)  # deleted meanwhile
    if any(answer.status_code != 200 for answer in answers):
        raise _unavailable()
    info = head.json()
    member = None
    if principal is not None:
        member = next((m for m in answers[2].json() if m.get("user_id") == principal.user_id), None)
    return Installation(
        instance_id=instance_id,
        gateways=[{"id": g["id"], "uuid": g["uuid"]} for g in answers[0].json()],
        groups={g["group"]: g for g in answers[1].json()},
        fallback_timeout_s=_fallback(info.get("parameters")),
        member=member,
        title=info.get("title"),
    )


async def installation_as_system(ctx: ServiceContext, instance_id: int) -> Installation | None:
    """The installation as the system sees it, or None when it no longer exists."""
    with as_system():
        try:
            return await installation(ctx, instance_id)
        except ProblemError as exc:
            if exc.status == 404:
                return None
            raise

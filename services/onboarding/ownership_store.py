"""What the ownership and license routes share: the caller, the registry's membership, codes, limits, history.

The registry is the source of truth for who owns and shares an installation; this service reads it (as the
system, through `GET /internal/ownership/instances`) and changes the owner only through
`PUT /internal/instances/{id}/owner`, a compare-and-set in one registry transaction. Shares are changed
through the registry's own `/instances/{id}/users` routes, asked as the caller.

Codes are 16 characters of Crockford's base 32 (80 random bits), shown once as `XXXX-XXXX-XXXX-XXXX`; they
are typed back with or without dashes, in any case, with O for 0 and I or L for 1. Only a SHA-256 digest of
the normalised code is stored. Wrong codes are limited per user (`OwnershipSettings`): past the limit every
code entry is a 429 with `Retry-After` until the oldest failure leaves the window.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Generic, TypeVar

import httpx
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.auth import token_digest
from libs.db import Queryable
from libs.service import (
    CLIENT_ADDRESS_HEADER,
    ProblemError,
    ServiceContext,
    current_principal,
    current_principal_header,
)
from services.onboarding.ownership_rules import INVALID_CODE, Caller, Claim, Device, Refusal

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

MAX_ID = 2**53 - 1
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base 32: no I, L, O, U
CODE_LENGTH = 16
_TYPED = str.maketrans({"O": "0", "I": "1", "L": "1"})

# Text on one line (no control characters) and free text without NUL: the OpenAPI document states both.
SINGLE_LINE = r"^[^\x00-\x1f\x7f]*$"
NOT_BLANK_LINE = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
NO_NUL = r"^[^\x00]*$"
CodeText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=NOT_BLANK_LINE),
    Field(description="The code as typed: XXXX-XXXX-XXXX-XXXX (case, dashes and spaces do not matter)"),
]


class OwnershipSettings(BaseSettings):
    """Limits of code entry and license notices (`GRIDFLEET_OWNERSHIP_*`)."""

    model_config = SettingsConfigDict(env_prefix="GRIDFLEET_OWNERSHIP_", extra="ignore")

    code_failures_max: int = Field(5, ge=1, description="Wrong codes a user may enter within the window")
    code_failure_window_s: float = Field(900.0, gt=0)
    code_failures_per_address_max: int = Field(
        20, ge=1, description="Wrong codes one client address may enter within the window, whoever logs in"
    )
    license_warning_days: float = Field(7.0, ge=0, description="Warn this long before a license expires")
    license_check_max_s: float = Field(60.0, gt=0, description="Longest sleep of the expiry monitor")


_settings: OwnershipSettings | None = None


def ownership_settings() -> OwnershipSettings:
    global _settings
    if _settings is None:
        _settings = OwnershipSettings()
    return _settings


class Body(BaseModel):
    """Request bodies refuse unknown fields, so a typo is a 400 naming it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Envelope(BaseModel, Generic[T]):
    """MyEMS wraps every request body as `{"data": {...}}`."""

    data: T


class CodeIn(Body):
    code: CodeText


def now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def problem(status: int, field: str, message: str, headers: dict[str, str] | None = None) -> ProblemError:
    title = {400: "Invalid input", 403: "Forbidden", 404: "Not found", 409: "Conflict"}.get(status, "Error")
    return ProblemError(status, title, message, [{"field": field, "message": message}], headers)


def refused(refusal: Refusal) -> ProblemError:
    return problem(refusal.status, refusal.field, refusal.message)


def service_context(request: Request) -> ServiceContext:
    """The service context as it is: these routes work on connections of their own (`ctx.system()`, one at a
    time per request) and check the caller's provider themselves, instead of holding a scoped connection
    for the whole request beside them."""
    ctx: ServiceContext = request.app.state.ctx
    return ctx


def caller_of(request: Request) -> Caller:
    """The logged-in user making the request (the gateway forwards the principal)."""
    principal = current_principal(request)
    if principal is None:
        raise ProblemError(401, "Unauthorized", "these routes act for a logged-in user")
    return Caller(
        principal.user_id, principal.provider_id, principal.role, request.headers.get(CLIENT_ADDRESS_HEADER)
    )


def caller_name(request: Request) -> str:
    principal = current_principal(request)
    return principal.name if principal else "system"


# -- codes ------------------------------------------------------------------------------------------


def new_code() -> str:
    """A fresh code as shown to its buyer: `XXXX-XXXX-XXXX-XXXX`."""
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(raw[i : i + 4] for i in range(0, CODE_LENGTH, 4))


def normalise(typed: str) -> str | None:
    """The code as stored (digested): upper case, no dashes or spaces; None when it cannot be a code."""
    text = "".join(ch for ch in typed.upper() if ch not in "- \t").translate(_TYPED)
    if len(text) != CODE_LENGTH or any(ch not in ALPHABET for ch in text):
        return None
    return text


def digest(typed: str) -> str | None:
    normal = normalise(typed)
    return token_digest(normal) if normal is not None else None


# -- wrong codes ------------------------------------------------------------------------------------


async def check_code_rate(ctx: ServiceContext, caller: Caller) -> None:
    """A 429 with Retry-After while the caller has entered too many wrong codes within the window.

    Platform administrators are not limited: they can assign any owner directly, so guessing gains nothing.
    """
    if caller.is_platform_admin:
        return
    cfg = ownership_settings()
    async with ctx.system() as conn:
        rows = await conn.fetch(
            "SELECT at FROM code_failures WHERE user_id = $1 AND at > now() - make_interval(secs => $2)"
            " ORDER BY at DESC LIMIT $3",
            caller.user_id,
            cfg.code_failure_window_s,
            cfg.code_failures_max,
        )
        if len(rows) < cfg.code_failures_max and caller.address is not None:
            # Many accounts guessing from one address are limited together.
            rows = await conn.fetch(
                "SELECT at FROM code_failures WHERE address = $1 AND at > now() - make_interval(secs => $2)"
                " ORDER BY at DESC LIMIT $3",
                caller.address,
                cfg.code_failure_window_s,
                cfg.code_failures_per_address_max,
            )
            if len(rows) < cfg.code_failures_per_address_max:
                return
        elif len(rows) < cfg.code_failures_max:
            return
        current = await conn.fetchval("SELECT now()")
    oldest = rows[-1]["at"]
    retry = max(1, int((oldest + timedelta(seconds=cfg.code_failure_window_s) - current).total_seconds()) + 1)
    message = f"too many wrong activation codes; try again in {retry} s"
    raise ProblemError(429, "Too many requests", message, [{"field": "code", "message": message}],
                       {"Retry-After": str(retry)})  # fmt: skip


async def record_code_failure(ctx: ServiceContext, caller: Caller) -> None:
    if caller.is_platform_admin:
        return
    async with ctx.system() as conn:
        await conn.execute(
            "INSERT INTO code_failures (user_id, address) VALUES ($1, $2)", caller.user_id, caller.address
        )
        # Keep the table small: failures older than a day count for nothing.
        await conn.execute(
            "DELETE FROM code_failures WHERE user_id = $1 AND at < now() - interval '1 day'", caller.user_id
        )


@contextlib.asynccontextmanager
async def counting_wrong_codes(ctx: ServiceContext, caller: Caller) -> AsyncIterator[None]:
    """Turn refusals into problems; an invalid code counts against the caller's limit."""
    try:
        yield
    except Refusal as refusal:
        if refusal.message == INVALID_CODE:
            await record_code_failure(ctx, caller)
        raise refused(refusal) from refusal


# -- the registry -----------------------------------------------------------------------------------


@contextlib.contextmanager
def as_system() -> Iterator[None]:
    """Ask the registry as this service, not as the caller of the request being served."""
    token = current_principal_header.set(None)
    try:
        yield
    finally:
        current_principal_header.reset(token)


def _unavailable(exc: BaseException | None = None) -> ProblemError:
    detail = "the registry is not reachable; retry shortly"
    if exc is not None:
        detail = f"{detail} ({type(exc).__name__})"
    return ProblemError(503, "Unavailable", detail)


async def registry(ctx: ServiceContext, method: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        answer = await ctx.call("registry", method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise _unavailable(exc) from exc
    if answer.status_code >= 500:
        raise _unavailable()
    return answer


def passed_on(answer: httpx.Response) -> ProblemError:
    """A registry refusal (4xx) as this service's own problem, with the same status and fields."""
    try:
        body = answer.json()
    except ValueError:
        body = {}
    return ProblemError(
        answer.status_code,
        str(body.get("title") or "Error"),
        str(body.get("detail") or answer.text[:500]),
        list(body.get("errors") or []),
    )


@dataclass
class Installation:
    id: int
    provider_id: int | None
    serial: str
    title: str
    owner_id: int | None
    members: list[dict[str, Any]]

    def member(self, user_id: int) -> dict[str, Any] | None:
        return next((m for m in self.members if m["user_id"] == user_id), None)

    @property
    def guests(self) -> frozenset[int]:
        return frozenset(m["user_id"] for m in self.members if m["role"] == "guest")


async def installations(
    ctx: ServiceContext, ids: list[int] | None = None, user_id: int | None = None
) -> dict[int, Installation]:
    """Installations by id (or those a user is a member of), as the system sees them."""
    params: dict[str, Any] = {"user_id": user_id} if user_id is not None else {"ids": ids or []}
    if user_id is None and not ids:
        return {}
    with as_system():
        answer = await registry(ctx, "GET", "/internal/ownership/instances", params=params)
    if answer.status_code != 200:
        raise _unavailable()
    return {row["id"]: Installation(**row) for row in answer.json()}


async def installation(ctx: ServiceContext, instance_id: int) -> Installation:
    found = (await installations(ctx, [instance_id])).get(instance_id)
    if found is None:
        raise problem(404, "id", f"device {instance_id} does not exist")
    return found


async def set_owner(
    ctx: ServiceContext, instance_id: int, user_id: int, *, keep_guests: bool, expected: int | None
) -> dict[str, Any] | None:
    """Make `user_id` the owner while `expected` owns it (None: while unowned); None when someone was faster."""
    body = {"user_id": user_id, "keep_guests": keep_guests, "expected_owner_id": expected}
    with as_system():
        answer = await registry(ctx, "PUT", f"/internal/instances/{instance_id}/owner", json=body)
    if answer.status_code == 409:
        return None
    if answer.status_code != 200:
        raise passed_on(answer)
    return dict(answer.json())


# -- claims and history -----------------------------------------------------------------------------


def claim_of(row: Any) -> Claim:
    return Claim(row["id"], row["claimant_id"], row["state"], row["reason"])


async def device_state(conn: Queryable, inst: Installation) -> Device:
    """The rules' view of a device: its owner and guests (registry) and its claims (here)."""
    pending = await conn.fetchrow(
        "SELECT * FROM device_claims WHERE instance_id = $1 AND state = 'transfer_pending'", inst.id
    )
    last = await conn.fetchrow(
        "SELECT * FROM device_claims WHERE instance_id = $1 AND state <> 'transfer_pending'"
        " ORDER BY decided_at DESC NULLS LAST, id DESC LIMIT 1",
        inst.id,
    )
    return Device(
        inst.id,
        inst.provider_id,
        inst.owner_id,
        inst.guests,
        claim_of(pending) if pending else None,
        claim_of(last) if last else None,
    )


async def lock_devices(conn: Queryable, instance_ids: list[int]) -> None:
    """Serialise every ownership step on these devices until the transaction ends (always in id order, and
    always before the code's row, so two steps never wait on each other)."""
    for instance_id in sorted(set(instance_ids)):
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('gridfleet-device:' || $1::bigint, 0))",
            instance_id,
        )


async def record(
    conn: Queryable,
    instance_id: int,
    action: str,
    actor: Caller | None,
    actor_name: str,
    detail: dict[str, Any] | None = None,
    license_id: int | None = None,
) -> None:
    """One step in a device's history (`GET /devices/{id}/history`)."""
    await conn.execute(
        "INSERT INTO device_history (instance_id, license_id, action, actor_id, actor_name, detail)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        instance_id,
        license_id,
        action,
        actor.user_id if actor else None,
        actor_name,
        detail or {},
    )

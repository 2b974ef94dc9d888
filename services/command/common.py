"""What the command service's routes share: the MyEMS envelope, times, and who is asking.

Arbitration (CONTRACTS.md §1, issue 9): several parties may steer one installation, and a documented priority
decides between them. From highest to lowest:

1. `operator`: the platform's and the service provider's staff (platform_admin, provider_admin, operator).
   They answer for grid safety, network constraints and faults, so nothing overrides them.
2. `provider:<id>`: an external signal provider onboarded to the installation. Its setpoints are a contract
   the owner signed up for (flexibility, tariff optimisation); an owner's app overriding them at will would
   make the contract worthless, so the owner ends the contract instead (offboarding).
3. `user:<uuid>`: the owner, or a guest allowed to write to devices (seed 000 "allow write to device").

A request may replace or remove a policy (or a plan) of the same or a lower priority; one of a higher priority
in force is not overwritten, and the request is refused with that reason (409).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Generic, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict

from libs.service import Principal, ProblemError, current_principal

T = TypeVar("T", bound=BaseModel)

OPERATOR, PROVIDER, USER = 3, 2, 1
STEERING_ROLES = frozenset({"platform_admin", "provider_admin", "operator"})
MEMBER_ROLES = frozenset({"owner", "guest"})
PRIORITY_NAMES = {OPERATOR: "operator", PROVIDER: "provider", USER: "user"}


class Body(BaseModel):
    """Request bodies refuse unknown fields, so a typo is a 400 naming it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Envelope(BaseModel, Generic[T]):
    """MyEMS wraps every request body as `{"data": {...}}`."""

    data: T


def now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with `Z`, as the platform always sends times."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def problem(status: int, title: str, field: str, message: str) -> ProblemError:
    return ProblemError(status, title, message, [{"field": field, "message": message}])


def invalid(field: str, message: str) -> ProblemError:
    return problem(400, "Invalid input", field, message)


def conflict(field: str, message: str) -> ProblemError:
    return problem(409, "Conflict", field, message)


def caller(request: Request) -> Principal | None:
    """The principal the gateway authenticated; None for an internal call (the system itself)."""
    return current_principal(request)


def priority_of(source: str) -> int:
    """The priority of a source as the contract names it (for requests arriving over MQTT, planned)."""
    if source == "operator":
        return OPERATOR
    if source.startswith("provider:"):
        return PROVIDER
    return USER


def who(principal: Principal | None) -> str:
    return principal.name if principal is not None else "system"

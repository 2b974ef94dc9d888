"""The rules of device ownership and licenses (seed 003), as pure decisions with no I/O.

The routes in `ownership.py` and `licenses.py` read a snapshot (the code, the installations with their owner,
the pending claim, the license), ask a function here what may happen, and then carry it out in one
transaction. Every refusal is a `Refusal` with the HTTP status, the field and a reason a user can act on. The
property tests in tests/unit/test_ownership_rules.py drive these functions with random sequences of actions.

Activation codes (`single`: one installation; `group`: every installation of a sales order):

- A code of another service provider, or one that does not exist, is invalid (and counts towards the
  caller's limit of wrong codes).
- An unused single code of an unowned installation makes the caller its owner and is used up. An unused
  single code of an installation someone else already owns (assigned by the provider, say) starts a claim
  instead; the code stays unused until the transfer is accepted.
- A used code never activates again. Entered again by the user it made owner (who still owns it), nothing
  changes; entered by anyone else it is a 409 that names the device and the claim route: claiming is always a
  deliberate second step (`POST /devices/{id}/claim`). This is also what the loser of two simultaneous
  activations of one code is told.
- An unused group code makes the caller owner of every installation of the order that has no owner yet;
  installations owned by others are reported as skipped. If none could be taken it is a 409.

Claims and transfers: a claim needs a valid code of the device and a device owned by someone else, with no
other claim pending. Only the owner accepts (ownership moves, guests are removed unless `keep_shares`) or
rejects (the claimant sees the state `rejected` and the reason); only the claimant cancels.

Licenses (types Basic < PRO < Elite, each for one service): a license code is used once, to activate,
extend or upgrade. Time starts at activation and never pauses: an extension adds its duration to the expiry
(even of an expired license), an upgrade raises the type and moves the expiry to the later of the current one
and now plus the code's duration. A device has at most one active license per service. Licenses stay with
their device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

CodeKind = Literal["single", "group", "license"]
ClaimState = Literal["transfer_pending", "accepted", "rejected", "cancelled"]
LICENSE_TYPES = ("Basic", "PRO", "Elite")
ADMIN_ROLES = frozenset({"platform_admin", "provider_admin"})

INVALID_CODE = "Invalid activation code: please check that the activation code typed is valid"


class Refusal(Exception):
    """A request the rules refuse: the HTTP status, the field at fault and the reason."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message


def invalid_code() -> Refusal:
    return Refusal(400, "code", INVALID_CODE)


@dataclass(frozen=True)
class Caller:
    user_id: int
    provider_id: int | None  # None: a platform administrator
    role: str
    address: str | None = None  # the client address the gateway saw, for limits per address

    @property
    def is_platform_admin(self) -> bool:
        return self.role == "platform_admin"

    def administers(self, provider_id: int | None) -> bool:
        """Administrators of the device's provider (platform administrators: every provider)."""
        return self.is_platform_admin or (self.role == "provider_admin" and self.provider_id == provider_id)

    def may_use(self, provider_id: int | None) -> bool:
        """A code of a provider is for that provider's users (a platform-wide code, provider None, for all)."""
        return self.is_platform_admin or provider_id is None or provider_id == self.provider_id


@dataclass(frozen=True)
class Code:
    id: int
    kind: CodeKind
    provider_id: int | None
    installations: tuple[int, ...] = ()
    used_by: int | None = None
    sales_order: str | None = None
    # license codes
    service: str | None = None
    license_type: str | None = None
    duration: timedelta | None = None


@dataclass(frozen=True)
class Claim:
    id: int
    claimant: int
    state: ClaimState
    reason: str | None = None


@dataclass(frozen=True)
class Device:
    id: int
    provider_id: int | None
    owner: int | None
    guests: frozenset[int] = frozenset()
    pending: Claim | None = None
    last_claim: Claim | None = None  # the latest decided claim, to explain a late accept or reject


@dataclass(frozen=True)
class ActivationPlan:
    take: tuple[int, ...] = ()  # installations the caller becomes owner of
    already: tuple[int, ...] = ()  # installations the caller owns already
    skipped: tuple[tuple[int, str], ...] = ()  # installations owned by others, with the reason
    claim: int | None = None  # an installation on which a claim starts
    use_code: bool = False  # mark the code used by the caller


def _device_named(device_id: int) -> str:
    return f"device {device_id}"


def plan_activation(code: Code | None, caller: Caller, devices: dict[int, Device]) -> ActivationPlan:
    """What entering `code` at `POST /devices/activate` does for `caller` (see the module's docstring)."""
    if code is None or not caller.may_use(code.provider_id):
        raise invalid_code()
    if code.kind == "license":
        raise Refusal(400, "code", "this is a license code: activate it with POST /licenses/activate")
    mine = tuple(i for i in code.installations if devices[i].owner == caller.user_id)
    if code.used_by is not None:
        if code.used_by == caller.user_id and mine:
            return ActivationPlan(already=mine)
        if code.kind == "single":
            device = devices[code.installations[0]]
            if device.owner is not None and device.owner != caller.user_id:
                raise Refusal(
                    409,
                    "code",
                    f"this activation code was already used: {_device_named(device.id)} is owned by another"
                    f" user; to ask for its ownership, claim it with POST /devices/{device.id}/claim",
                )
        raise Refusal(409, "code", "this activation code was already used and cannot activate again")
    if code.kind == "single":
        device = devices[code.installations[0]]
        if device.owner is None:
            return ActivationPlan(take=(device.id,), use_code=True)
        if device.owner == caller.user_id:
            return ActivationPlan(already=(device.id,), use_code=True)
        check_claim(device, caller)
        return ActivationPlan(claim=device.id)
    take = tuple(i for i in code.installations if devices[i].owner is None)
    skipped = tuple(
        (i, "owned by another user; claim it with its single activation code")
        for i in code.installations
        if devices[i].owner not in (None, caller.user_id)
    )
    if not take and not mine:
        raise Refusal(
            409, "code", f"every installation of sales order {code.sales_order} already has another owner"
        )
    return ActivationPlan(take=take, already=mine, skipped=skipped, use_code=True)


def check_claim_code(code: Code | None, caller: Caller, device_id: int) -> None:
    """A claim is made with a device code (single, or a group code of its sales order) of that device."""
    if code is None or not caller.may_use(code.provider_id) or code.kind == "license":
        raise invalid_code()
    if device_id not in code.installations:
        raise invalid_code()


def check_claim(device: Device, caller: Caller) -> None:
    """May `caller` claim `device` now? (The code was checked already.)"""
    if device.owner is None:
        raise Refusal(
            409, "id", f"{_device_named(device.id)} has no owner: activate it with POST /devices/activate"
        )
    if device.owner == caller.user_id:
        raise Refusal(409, "id", f"you already own {_device_named(device.id)}; there is nothing to claim")
    if device.pending is not None:
        if device.pending.claimant == caller.user_id:
            raise Refusal(
                409, "id", f"your claim {device.pending.id} on {_device_named(device.id)} is already pending"
            )
        raise Refusal(
            409,
            "id",
            f"another user's claim on {_device_named(device.id)} is pending; only one claim at a time",
        )


def _no_pending(device: Device) -> Refusal:
    last = device.last_claim
    if last is None:
        return Refusal(409, "id", f"no transfer is pending on {_device_named(device.id)}")
    return Refusal(
        409,
        "id",
        f"no transfer is pending on {_device_named(device.id)}: the last claim ({last.id}) was {last.state}",
    )


def check_decision(device: Device, caller: Caller) -> Claim:
    """The pending claim the owner may accept or reject."""
    if device.pending is None:
        raise _no_pending(device)
    if device.owner != caller.user_id:
        raise Refusal(
            403, "id", f"only the owner of {_device_named(device.id)} may accept or reject a claim on it"
        )
    return device.pending


def check_cancel(device: Device, caller: Caller) -> Claim:
    """The pending claim its claimant may withdraw."""
    if device.pending is None:
        raise _no_pending(device)
    if device.pending.claimant != caller.user_id:
        raise Refusal(403, "id", "only the user who made a claim may cancel it")
    return device.pending


def after_accept(device: Device, keep_shares: bool) -> Device:
    """The device once its pending claim is accepted: the claimant owns it, the old owner is gone."""
    assert device.pending is not None
    claimant = device.pending.claimant
    guests = device.guests - {claimant} if keep_shares else frozenset()
    decided = Claim(device.pending.id, claimant, "accepted")
    return Device(device.id, device.provider_id, claimant, guests, None, decided)


def check_share_change(device: Device, caller: Caller, target_user: int | None = None) -> None:
    """Owners (and the provider's administrators) change who shares a device; guests cannot change settings,
    except to leave (`target_user` is themselves)."""
    if device.owner == caller.user_id or caller.administers(device.provider_id):
        if target_user is not None and target_user == device.owner:
            raise Refusal(
                409, "user_id", "the owner is not a guest; ownership moves only by claim and transfer"
            )
        return
    if caller.user_id in device.guests:
        if target_user == caller.user_id:
            return
        raise Refusal(403, "id", "guests cannot change the settings of a device they are a guest of")
    raise Refusal(403, "id", f"only the owner of {_device_named(device.id)} may change who it is shared with")


# -- licenses ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class License:
    id: int
    device_id: int
    service: str
    type: str
    activated_at: datetime
    expires_at: datetime
    history: tuple[str, ...] = field(default=())

    def active(self, now: datetime) -> bool:
        return self.activated_at <= now < self.expires_at


LATEST_EXPIRY = datetime(9000, 1, 1, tzinfo=UTC)


def _plus(moment: datetime, duration: timedelta) -> datetime:
    if moment > LATEST_EXPIRY - duration:
        raise Refusal(409, "code", "the license would run past the year 9000")
    return moment + duration


def rank(license_type: str) -> int:
    return LICENSE_TYPES.index(license_type)


def _license_code(code: Code | None, caller: Caller) -> Code:
    if code is None or not caller.may_use(code.provider_id):
        raise invalid_code()
    if code.kind != "license":
        raise Refusal(400, "code", "this is a device activation code: enter it at POST /devices/activate")
    if code.used_by is not None:
        raise Refusal(409, "code", "this license code was already used; a license code works once")
    assert code.service and code.license_type and code.duration
    return code


def check_license_holder(device: Device, caller: Caller) -> None:
    """Licenses of a device are managed by its owner (or the provider's administrators)."""
    if device.owner != caller.user_id and not caller.administers(device.provider_id):
        raise Refusal(
            403, "device_id", f"only the owner of {_device_named(device.id)} may manage its licenses"
        )


def activate_license(
    code: Code | None, caller: Caller, device: Device, licenses: list[License], now: datetime, new_id: int
) -> License:
    """A new license on `device` from a license code; at most one active license per service."""
    code = _license_code(code, caller)
    if not caller.may_use(device.provider_id) or (
        code.provider_id is not None and device.provider_id != code.provider_id
    ):
        raise invalid_code()
    check_license_holder(device, caller)
    assert code.service and code.license_type and code.duration
    for existing in licenses:
        if existing.device_id == device.id and existing.service == code.service and existing.active(now):
            raise Refusal(
                409,
                "code",
                f"{_device_named(device.id)} already has an active {code.service} license ({existing.id},"
                f" {existing.type}): extend or upgrade it instead",
            )
    return License(
        new_id, device.id, code.service, code.license_type, now, _plus(now, code.duration), ("activated",)
    )


def extend_license(code: Code | None, caller: Caller, license: License) -> License:
    """An extension code of the same service and type adds its duration to the expiry (time never pauses)."""
    code = _license_code(code, caller)
    assert code.service and code.license_type and code.duration
    if code.service != license.service:
        raise Refusal(
            409,
            "code",
            f"this code is for the {code.service} service; license {license.id} is {license.service}",
        )
    if code.license_type != license.type:
        raise Refusal(
            409,
            "code",
            f"this code is of type {code.license_type} and license {license.id} is {license.type}: an extension"
            " needs a code of the same type (use POST /licenses/{id}/upgrade to change the type)",
        )
    return License(
        license.id,
        license.device_id,
        license.service,
        license.type,
        license.activated_at,
        _plus(license.expires_at, code.duration),
        (*license.history, "extended"),
    )


def upgrade_license(code: Code | None, caller: Caller, license: License, now: datetime) -> License:
    """An upgrade code of a higher type raises the type; the expiry becomes the later of the current one and
    now plus the code's duration (it never moves backwards)."""
    code = _license_code(code, caller)
    assert code.service and code.license_type and code.duration
    if code.service != license.service:
        raise Refusal(
            409,
            "code",
            f"this code is for the {code.service} service; license {license.id} is {license.service}",
        )
    if license.type == LICENSE_TYPES[-1]:
        raise Refusal(
            409, "code", f"license {license.id} is {license.type}, the highest type: it cannot be upgraded"
        )
    if not license.active(now):
        raise Refusal(409, "code", f"license {license.id} has expired: extend it or activate a new one")
    if rank(code.license_type) <= rank(license.type):
        raise Refusal(
            409,
            "code",
            f"an upgrade goes to a higher type: license {license.id} is {license.type}, this code is"
            f" {code.license_type}",
        )
    return License(
        license.id,
        license.device_id,
        license.service,
        code.license_type,
        license.activated_at,
        max(license.expires_at, _plus(now, code.duration)),
        (*license.history, "upgraded"),
    )


def check_move(license: License, device_id: int) -> None:
    """Licenses are not transferable between devices."""
    if device_id != license.device_id:
        raise Refusal(
            409,
            "device_id",
            f"license {license.id} belongs to device {license.device_id}; licenses are not transferable",
        )

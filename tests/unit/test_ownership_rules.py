"""The ownership and license rules (services/onboarding/ownership_rules.py) under random sequences of actions.

A small world of devices, users and codes is driven the way the routes drive it: ask the rules, and apply
the outcome only when they allow it. After every step the invariants must hold: at most one owner per device
and never an owner who is also a guest, at most one pending claim per device and never by its owner, a used
code keeps its first user and never activates again, a license never changes device, never loses type and its
expiry never moves backwards, and a device has at most one active license per service.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from services.onboarding.ownership_rules import (
    INVALID_CODE,
    LICENSE_TYPES,
    Caller,
    Claim,
    Code,
    Device,
    License,
    Refusal,
    activate_license,
    after_accept,
    check_cancel,
    check_claim,
    check_claim_code,
    check_decision,
    check_move,
    check_share_change,
    extend_license,
    plan_activation,
    rank,
    upgrade_license,
)

DEVICES = (1, 2, 3, 4)
USERS = (10, 11, 12)
PROVIDER = 7
START = datetime(2026, 1, 1, tzinfo=UTC)


def caller(user: int) -> Caller:
    return Caller(user, PROVIDER, "owner")


class Ownership(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.devices = {d: Device(d, PROVIDER, None) for d in DEVICES}
        self.codes: dict[int, Code] = {d: Code(d, "single", PROVIDER, (d,)) for d in DEVICES}
        self.codes[100] = Code(100, "group", PROVIDER, (2, 3, 4), sales_order="SO-1")
        self.first_use: dict[int, int] = {}
        self.claim_ids = 0
        self.now = START
        self.licenses: dict[int, License] = {}
        self.seen_licenses: dict[int, License] = {}
        self.license_codes = 1000
        # Device 1 starts owned by user 10 (through its code) with a license, so every rule has work at once.
        self.devices[1] = replace(self.devices[1], owner=10)
        self.codes[1] = replace(self.codes[1], used_by=10)
        self.first_use[1] = 10
        self.licenses[1] = License(1, 1, "dataapi", "Basic", START, START + timedelta(days=30))

    # -- devices ----------------------------------------------------------------------------------

    @rule(user=st.sampled_from(USERS), code_id=st.sampled_from((1, 2, 3, 4, 100)))
    def activate(self, user: int, code_id: int) -> None:
        code = self.codes[code_id]
        try:
            plan = plan_activation(code, caller(user), self.devices)
        except Refusal as refusal:
            assert refusal.status in (409, 400)
            return
        if code.used_by is not None:
            assert not plan.take and plan.claim is None, "a used code activated again"
        for device_id in plan.take:
            assert self.devices[device_id].owner is None
            self.devices[device_id] = replace(self.devices[device_id], owner=user)
        if plan.claim is not None:
            self._start_claim(user, plan.claim)
        if plan.use_code and (plan.take or plan.already):
            self.codes[code_id] = replace(code, used_by=user)
            self.first_use.setdefault(code_id, user)

    def _start_claim(self, user: int, device_id: int) -> None:
        device = self.devices[device_id]
        check_claim(device, caller(user))
        self.claim_ids += 1
        self.devices[device_id] = replace(device, pending=Claim(self.claim_ids, user, "transfer_pending"))

    @rule(
        user=st.sampled_from(USERS),
        device_id=st.sampled_from(DEVICES),
        code_id=st.sampled_from((0, 1, 2, 3, 4, 100)),
    )
    def claim(self, user: int, device_id: int, code_id: int) -> None:
        code_id = code_id or device_id  # 0: the device's own code
        try:
            check_claim_code(self.codes[code_id], caller(user), device_id)
            self._start_claim(user, device_id)
        except Refusal as refusal:
            assert refusal.status in (400, 409)
            if device_id not in self.codes[code_id].installations:
                assert refusal.message == INVALID_CODE

    @rule(
        user=st.sampled_from(USERS),
        as_owner=st.booleans(),
        device_id=st.sampled_from(DEVICES),
        verdict=st.sampled_from(("accept", "keep", "reject")),
    )
    def decide(self, user: int, as_owner: bool, device_id: int, verdict: str) -> None:
        pending = [d for d in DEVICES if self.devices[d].pending is not None]
        if as_owner and pending:  # mostly decide a claim that is pending, as its owner
            device_id = pending[device_id % len(pending)]
        device = self.devices[device_id]
        user = device.owner if as_owner and device.owner is not None else user
        try:
            claim = check_decision(device, caller(user))
        except Refusal as refusal:
            assert (refusal.status, device.pending is None) in ((409, True), (403, False))
            if refusal.status == 403:
                assert device.owner != user
            return
        assert device.owner == user
        if verdict == "reject":
            self.devices[device_id] = replace(
                device, pending=None, last_claim=replace(claim, state="rejected")
            )
        else:
            self.devices[device_id] = after_accept(device, keep_shares=verdict == "keep")
            assert self.devices[device_id].owner == claim.claimant

    @precondition(lambda self: any(d.pending is not None for d in self.devices.values()))
    @rule(data=st.data(), verdict=st.sampled_from(("accept", "keep", "reject")))
    def owner_decides(self, data: st.DataObject, verdict: str) -> None:
        pending = [d.id for d in self.devices.values() if d.pending is not None]
        device_id = data.draw(st.sampled_from(pending))
        owner = self.devices[device_id].owner
        assert owner is not None
        self.decide(owner, False, device_id, verdict)
        assert self.devices[device_id].pending is None

    @rule(user=st.sampled_from(USERS), device_id=st.sampled_from(DEVICES))
    def cancel(self, user: int, device_id: int) -> None:
        device = self.devices[device_id]
        try:
            claim = check_cancel(device, caller(user))
        except Refusal as refusal:
            assert refusal.status in (403, 409)
            return
        assert claim.claimant == user
        self.devices[device_id] = replace(device, pending=None, last_claim=replace(claim, state="cancelled"))

    @rule(user=st.sampled_from(USERS), device_id=st.sampled_from(DEVICES), guest=st.sampled_from(USERS))
    def share(self, user: int, device_id: int, guest: int) -> None:
        device = self.devices[device_id]
        try:
            check_share_change(device, caller(user), guest)
        except Refusal as refusal:
            assert refusal.status in (403, 409)
            if user in device.guests and guest != user:
                assert refusal.status == 403, "a guest changed the settings"
            return
        assert device.owner == user or (guest == user and user in device.guests)
        if guest != device.owner:
            self.devices[device_id] = replace(device, guests=device.guests ^ {guest})

    # -- licenses ---------------------------------------------------------------------------------

    def _license_code(self, service: str, kind: str, days: float) -> Code:
        self.license_codes += 1
        code = Code(self.license_codes, "license", PROVIDER, service=service, license_type=kind,
                    duration=timedelta(days=days))  # fmt: skip
        self.codes[code.id] = code
        return code

    @rule(
        user=st.sampled_from(USERS),
        as_owner=st.booleans(),
        device_id=st.sampled_from(DEVICES),
        service=st.sampled_from(("dataapi", "scheduling")),
        kind=st.sampled_from(LICENSE_TYPES),
        days=st.floats(0.01, 400),
    )
    def license_activate(
        self, user: int, as_owner: bool, device_id: int, service: str, kind: str, days: float
    ) -> None:
        owner = self.devices[device_id].owner
        user = owner if as_owner and owner is not None else user
        code = self._license_code(service, kind, days)
        new_id = len(self.licenses) + 1
        try:
            lic = activate_license(
                code, caller(user), self.devices[device_id], list(self.licenses.values()), self.now, new_id
            )
        except Refusal as refusal:
            assert refusal.status in (403, 409)
            return
        assert self.devices[device_id].owner == user
        self.licenses[lic.id] = lic
        self.codes[code.id] = replace(code, used_by=user)

    @precondition(lambda self: bool(self.licenses))
    @rule(data=st.data(), upgrade=st.booleans(), shift=st.integers(-1, 2), days=st.floats(0.01, 400),
          other_service=st.integers(0, 4))  # fmt: skip
    def license_change(
        self, data: st.DataObject, upgrade: bool, shift: int, days: float, other_service: int
    ) -> None:
        lic = self.licenses[data.draw(st.sampled_from(sorted(self.licenses)))]
        kind = LICENSE_TYPES[min(max(rank(lic.type) + shift, 0), len(LICENSE_TYPES) - 1)]
        service = "other" if other_service == 0 else lic.service
        code = self._license_code(service, kind, days)
        owner = caller(self.devices[lic.device_id].owner or USERS[0])
        try:
            changed = (
                upgrade_license(code, owner, lic, self.now) if upgrade else extend_license(code, owner, lic)
            )
        except Refusal as refusal:
            assert refusal.status == 409
            return
        if upgrade:
            assert rank(changed.type) > rank(lic.type)
        else:
            assert code.duration is not None and changed.expires_at == lic.expires_at + code.duration
        self.licenses[lic.id] = changed
        self.codes[code.id] = replace(code, used_by=owner.user_id)
        # the code is used now: it never works again
        with pytest.raises(Refusal):
            extend_license(self.codes[code.id], owner, changed)

    @precondition(lambda self: bool(self.licenses))
    @rule(data=st.data(), device_id=st.sampled_from(DEVICES))
    def license_move(self, data: st.DataObject, device_id: int) -> None:
        lic = self.licenses[data.draw(st.sampled_from(sorted(self.licenses)))]
        try:
            check_move(lic, device_id)
        except Refusal as refusal:
            assert refusal.status == 409 and device_id != lic.device_id

    @rule(hours=st.floats(0.1, 24 * 200))
    def time_passes(self, hours: float) -> None:
        self.now += timedelta(hours=hours)

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def one_owner_who_is_not_a_guest(self) -> None:
        for device in self.devices.values():
            assert device.owner is None or device.owner not in device.guests
            if device.pending is not None:
                assert device.pending.claimant != device.owner
                assert device.owner is not None

    @invariant()
    def used_codes_keep_their_first_user(self) -> None:
        for code_id, user in self.first_use.items():
            assert self.codes[code_id].used_by == user

    @invariant()
    def licenses_only_move_forward(self) -> None:
        for lic in self.licenses.values():
            before = self.seen_licenses.get(lic.id)
            if before is not None:
                assert lic.device_id == before.device_id
                assert lic.expires_at >= before.expires_at
                assert rank(lic.type) >= rank(before.type)
                assert lic.activated_at == before.activated_at
            self.seen_licenses[lic.id] = lic
        active: set[tuple[int, str]] = set()
        for lic in self.licenses.values():
            if lic.active(self.now):
                assert (lic.device_id, lic.service) not in active, "two active licenses of one service"
                active.add((lic.device_id, lic.service))


Ownership.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestOwnershipRules = Ownership.TestCase


def test_a_used_code_entered_by_someone_else_names_the_claim_route() -> None:
    devices = {1: Device(1, PROVIDER, 10)}
    code = Code(1, "single", PROVIDER, (1,), used_by=10)
    with pytest.raises(Refusal) as refused:
        plan_activation(code, caller(11), devices)
    assert refused.value.status == 409 and "POST /devices/1/claim" in refused.value.message


def test_a_code_of_another_provider_is_invalid() -> None:
    devices = {1: Device(1, PROVIDER, None)}
    with pytest.raises(Refusal) as refused:
        plan_activation(Code(1, "single", PROVIDER + 1, (1,)), caller(10), devices)
    assert refused.value.message == INVALID_CODE

"""Device ownership and licenses end to end, through the gateway (seed 003; docs/ownership.md).

One service provider with an administrator and a handful of customers; installations are created by the
administrator, codes are issued by them and entered by the customers. Every invalid transition is checked for
its status and its reason; two customers race for one code; wrong codes are limited; licenses are activated,
extended, upgraded, expire (a few seconds long) and are announced on the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from libs.service import INTERNAL_TOKEN_HEADER
from tests.support import Platform, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

PASSWORD = f"pw-{uuid.uuid4().hex}"
INVALID = "Invalid activation code: please check that the activation code typed is valid"


@dataclass
class User:
    id: int
    name: str
    api: httpx.AsyncClient

    async def post(self, path: str, data: dict[str, Any] | None = None) -> httpx.Response:
        return await self.api.post(path, json={"data": data} if data is not None else None)

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.api.get(path, params=params)


@dataclass
class World:
    provider_id: int
    admin: User
    alice: User
    bob: User
    carol: User
    dave: User
    zone: int
    internal: httpx.AsyncClient  # the onboarding service itself, as a sibling service calls it


@pytest.fixture(scope="module")
async def world(platform: Platform) -> AsyncIterator[World]:
    tag = uuid.uuid4().hex[:6]
    provider = await platform.api.post("/serviceproviders", json={"data": {"name": f"Devices {tag}"}})
    assert provider.status_code == 201, provider.text
    provider_id = provider.json()["id"]
    async with contextlib.AsyncExitStack() as stack:
        users: dict[str, User] = {}
        for key, role in (("admin", "provider_admin"), ("alice", "owner"), ("bob", "owner"), ("carol", "owner"),
                          ("dave", "guest")):  # fmt: skip
            name = f"{key}-{tag}"
            data = {
                "name": name,
                "display_name": key,
                "role": role,
                "provider_id": provider_id,
                "password": PASSWORD,
            }
            created = await platform.api.post("/users", json={"data": data})
            assert created.status_code == 201, created.text
            login = await platform.api.put(
                "/users/login", json={"data": {"name": name, "password": PASSWORD}}
            )
            assert login.status_code == 200, login.text
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=str(platform.api.base_url),
                    headers={"User-UUID": login.json()["uuid"], "Token": login.json()["token"]},
                    timeout=30,
                )
            )
            users[key] = User(created.json()["id"], name, client)
        internal = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=platform.processes.url("onboarding"),
                headers={INTERNAL_TOKEN_HEADER: platform.processes.env["GRIDFLEET_INTERNAL_TOKEN"]},
                timeout=30,
            )
        )
        zones = (await platform.api.get("/timezones")).json()
        zone = next(z["id"] for z in zones if z["name"] == "Europe/Amsterdam")
        yield World(provider_id, users["admin"], users["alice"], users["bob"], users["carol"], users["dave"], zone,
                    internal)  # fmt: skip


async def installation(world: World) -> int:
    tag = uuid.uuid4().hex[:8]
    answer = await world.admin.post(
        "/instances", {"title": f"Home {tag}", "serial": f"SN-{tag}", "timezone_id": world.zone}
    )
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


async def code(world: World, **data: Any) -> str:
    answer = await world.admin.post("/activationcodes", data)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["code"])


async def single(world: World) -> tuple[int, str]:
    device = await installation(world)
    return device, await code(world, kind="single", installation_id=device)


async def members(world: World, device: int) -> dict[int, str]:
    answer = await world.admin.get(f"/instances/{device}/users")
    assert answer.status_code == 200, answer.text
    return {m["user_id"]: m["role"] for m in answer.json()}


def reason(answer: httpx.Response) -> str:
    assert answer.headers["content-type"].startswith("application/problem+json"), answer.text
    return str(answer.json()["detail"])


async def owned(world: World) -> tuple[int, str]:
    """A device Alice owns through its single code."""
    device, typed = await single(world)
    answer = await world.alice.post("/devices/activate", {"code": typed})
    assert answer.status_code == 201, answer.text
    return device, typed


# -- activation codes and activation ----------------------------------------------------------------


async def test_a_code_is_shown_once_stored_hashed_and_only_administrators_issue_codes(
    platform: Platform, world: World
) -> None:
    device, typed = await single(world)
    assert len(typed) == 19 and typed.count("-") == 3
    listed = await world.admin.get("/activationcodes", installation_id=device)
    assert listed.status_code == 200 and listed.headers["x-total-count"] == "1"
    row = listed.json()[0]
    assert "code" not in row and row["kind"] == "single" and row["installations"][0]["id"] == device
    assert row["used"] is False
    stored = await platform.db.fetch(f'SELECT * FROM "{platform.schema("onboarding")}".activation_codes')
    assert not any(typed in str(dict(r)) or typed.replace("-", "") in str(dict(r)) for r in stored)
    refused = await world.alice.post("/activationcodes", {"kind": "single", "installation_id": device})
    assert refused.status_code == 403
    missing = await world.admin.post("/activationcodes", {"kind": "group", "installation_ids": [device]})
    assert missing.status_code == 400
    assert [e["field"] for e in missing.json()["errors"]] == ["sales_order"]
    # an unused code can be withdrawn; it then activates nothing
    withdrawn = await world.admin.api.delete(f"/activationcodes/{row['id']}")
    assert withdrawn.status_code == 204
    gone = await world.alice.post("/devices/activate", {"code": typed})
    assert gone.status_code == 400 and reason(gone) == INVALID


async def test_the_first_activation_makes_the_owner_and_a_used_code_never_activates_again(
    world: World,
) -> None:
    device, typed = await single(world)
    first = await world.alice.post("/devices/activate", {"code": typed.lower().replace("-", " ")})
    assert first.status_code == 201, first.text
    assert [d["id"] for d in first.json()["activated"]] == [device]
    assert await members(world, device) == {world.alice.id: "owner"}
    again = await world.alice.post("/devices/activate", {"code": typed})
    assert again.status_code == 200 and [d["id"] for d in again.json()["already_owned"]] == [device]
    other = await world.bob.post("/devices/activate", {"code": typed})
    assert other.status_code == 409
    assert f"POST /devices/{device}/claim" in reason(other)
    assert await members(world, device) == {world.alice.id: "owner"}
    mine = await world.alice.get("/devices")
    assert device in [d["id"] for d in mine.json()] and mine.headers["x-total-count"]
    used = (await world.admin.get("/activationcodes", installation_id=device)).json()[0]
    assert used["used"] and used["used_by"]["id"] == world.alice.id and used["used_for"] == "activation"
    kept = await world.admin.api.delete(f"/activationcodes/{used['id']}")
    assert kept.status_code == 409
    assert (await world.dave.get(f"/devices/{device}")).status_code == 404


async def test_a_group_code_takes_every_installation_of_the_order_not_yet_owned(world: World) -> None:
    devices = [await installation(world) for _ in range(3)]
    taken = await world.admin.post(
        f"/instances/{devices[2]}/users", {"user_id": world.carol.id, "role": "owner"}
    )
    assert taken.status_code == 201, taken.text
    typed = await code(
        world, kind="group", sales_order=f"SO-{uuid.uuid4().hex[:6]}", installation_ids=devices
    )
    answer = await world.alice.post("/devices/activate", {"code": typed})
    assert answer.status_code == 201, answer.text
    assert sorted(d["id"] for d in answer.json()["activated"]) == devices[:2]
    assert [d["id"] for d in answer.json()["skipped"]] == [devices[2]]
    assert await members(world, devices[2]) == {world.carol.id: "owner"}
    late = await world.bob.post("/devices/activate", {"code": typed})
    assert late.status_code == 409 and "already used" in reason(late)


async def test_an_unused_code_of_a_device_someone_else_owns_starts_a_claim(world: World) -> None:
    device, typed = await single(world)
    assigned = await world.admin.post(
        f"/instances/{device}/users", {"user_id": world.carol.id, "role": "owner"}
    )
    assert assigned.status_code == 201
    answer = await world.bob.post("/devices/activate", {"code": typed})
    assert answer.status_code == 202, answer.text
    assert answer.json()["claim"]["state"] == "transfer_pending"
    cancelled = await world.bob.post(f"/devices/{device}/claim/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"


async def test_two_users_activating_one_code_at_once_exactly_one_wins(world: World) -> None:
    for _ in range(3):
        device, typed = await single(world)
        answers = await asyncio.gather(
            world.alice.post("/devices/activate", {"code": typed}),
            world.bob.post("/devices/activate", {"code": typed}),
        )
        assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]
        loser = next(a for a in answers if a.status_code == 409)
        assert "owned by another user" in reason(loser) or "meanwhile" in reason(loser)
        roles = await members(world, device)
        assert list(roles.values()) == ["owner"]


async def test_two_claims_at_once_leave_exactly_one_pending(world: World) -> None:
    device, typed = await owned(world)
    answers = await asyncio.gather(
        world.bob.post(f"/devices/{device}/claim", {"code": typed}),
        world.carol.post(f"/devices/{device}/claim", {"code": typed}),
    )
    assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]
    pending = [
        d
        for d in (await world.alice.get("/devices", relation="claimed_by_others")).json()
        if d["id"] == device
    ]
    winner = next(a for a in answers if a.status_code == 201).json()
    assert pending[0]["claim"]["id"] == winner["id"]


async def test_wrong_codes_are_limited_per_user_with_retry_after(platform: Platform, world: World) -> None:
    tag = uuid.uuid4().hex[:6]
    data = {"name": f"erin-{tag}", "display_name": "erin", "role": "owner", "provider_id": world.provider_id,
            "password": PASSWORD}  # fmt: skip
    assert (await platform.api.post("/users", json={"data": data})).status_code == 201
    login = (
        await platform.api.put("/users/login", json={"data": {"name": data["name"], "password": PASSWORD}})
    ).json()
    async with httpx.AsyncClient(
        base_url=str(platform.api.base_url),
        headers={"User-UUID": login["uuid"], "Token": login["token"]},
        timeout=30,
    ) as erin:
        for attempt in range(5):
            wrong = "0000-0000-0000-000" + str(attempt) if attempt % 2 else "not a code"
            answer = await erin.post("/devices/activate", json={"data": {"code": wrong}})
            assert answer.status_code == 400 and reason(answer) == INVALID
            assert answer.json()["errors"][0]["field"] == "code"
        _, right = await single(world)
        paused = await erin.post("/devices/activate", json={"data": {"code": right}})
        assert paused.status_code == 429, paused.text
        assert 1 <= int(paused.headers["retry-after"]) <= 901
        also = await erin.post("/licenses/activate", json={"data": {"code": right, "device_id": 1}})
        assert also.status_code == 429
    unaffected = await world.carol.post("/devices/activate", {"code": right})
    assert unaffected.status_code == 201, unaffected.text


async def test_wrong_codes_from_one_address_are_limited_across_accounts(
    platform: Platform, world: World
) -> None:
    """Many accounts guessing from one client address share a limit (20 wrong codes per window)."""
    address = f"127.0.{uuid.uuid4().int % 200 + 20}.{uuid.uuid4().int % 250 + 2}"  # this test's own address
    _, right = await single(world)
    wrong_total = 0
    limited = None
    async with contextlib.AsyncExitStack() as stack:
        for account in range(8):
            tag = uuid.uuid4().hex[:6]
            data = {"name": f"guesser{account}-{tag}", "display_name": "guesser", "role": "owner",
                    "provider_id": world.provider_id, "password": PASSWORD}  # fmt: skip
            assert (await platform.api.post("/users", json={"data": data})).status_code == 201
            login = (
                await platform.api.put(
                    "/users/login", json={"data": {"name": data["name"], "password": PASSWORD}}
                )
            ).json()
            guesser = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=str(platform.api.base_url),
                    headers={"User-UUID": login["uuid"], "Token": login["token"]},
                    transport=httpx.AsyncHTTPTransport(local_address=address),
                    timeout=30,
                )
            )
            # Each account stays under its own limit of 5.
            for attempt in range(4):
                answer = await guesser.post(
                    "/devices/activate", json={"data": {"code": f"0000-0000-0000-00{attempt}"}}
                )
                if answer.status_code == 429:
                    limited = answer
                    break
                assert answer.status_code == 400 and reason(answer) == INVALID, answer.text
                wrong_total += 1
            if limited is not None:
                break
        assert limited is not None, "twenty wrong codes from one address were not limited"
        assert wrong_total == 20
        assert 1 <= int(limited.headers["retry-after"]) <= 901
        # A right code from that address waits too, while other addresses are unaffected.
        paused = await guesser.post("/devices/activate", json={"data": {"code": right}})
        assert paused.status_code == 429
    elsewhere = await world.carol.post("/devices/activate", {"code": right})
    assert elsewhere.status_code == 201, elsewhere.text


# -- claim and transfer -----------------------------------------------------------------------------


async def test_a_claim_accepted_by_the_owner_moves_ownership_and_clears_the_guests(world: World) -> None:
    device, typed = await owned(world)
    shared = await world.alice.post(
        f"/devices/{device}/shares", {"user_id": world.carol.id, "share_content": True}
    )
    assert shared.status_code == 201, shared.text

    claim = await world.bob.post(f"/devices/{device}/claim", {"code": typed})
    assert claim.status_code == 201, claim.text
    assert claim.json()["state"] == "transfer_pending"
    # both see it: the owner under "Claimed by others", the claimant in "My devices" as pending
    claimed = (await world.alice.get("/devices", relation="claimed_by_others")).json()
    assert [(d["id"], d["claim"]["claimant"]["id"]) for d in claimed if d["id"] == device] == [
        (device, world.bob.id)
    ]
    pending = [d for d in (await world.bob.get("/devices")).json() if d["id"] == device]
    assert pending and pending[0]["status"] == "transfer_pending" and pending[0]["relation"] == "claimant"

    # every invalid step is refused with its reason
    by_claimant = await world.bob.post(f"/devices/{device}/transfer/accept")
    assert by_claimant.status_code == 403 and "only the owner" in reason(by_claimant)
    by_guest = await world.carol.post(f"/devices/{device}/transfer/accept")
    assert by_guest.status_code == 403
    by_stranger = await world.dave.post(f"/devices/{device}/transfer/accept")
    assert by_stranger.status_code == 404
    own = await world.alice.post(f"/devices/{device}/claim", {"code": typed})
    assert own.status_code == 409 and "already own" in reason(own)
    second = await world.carol.post(f"/devices/{device}/claim", {"code": typed})
    assert second.status_code == 409 and "another user's claim" in reason(second)
    repeat = await world.bob.post(f"/devices/{device}/claim", {"code": typed})
    assert repeat.status_code == 409 and "already pending" in reason(repeat)

    accepted = await world.alice.post(f"/devices/{device}/transfer/accept")
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["state"] == "accepted" and accepted.json()["keep_shares"] is False
    assert await members(world, device) == {world.bob.id: "owner"}
    twice = await world.alice.post(f"/devices/{device}/transfer/accept")
    assert twice.status_code == 409 and "was accepted" in reason(twice)
    assert (await world.alice.get(f"/devices/{device}/shares")).status_code == 403
    assert device not in [d["id"] for d in (await world.alice.get("/devices")).json()]
    assert device in [d["id"] for d in (await world.bob.get("/devices")).json()]

    history = await world.bob.get(f"/devices/{device}/history")
    assert [h["action"] for h in history.json()][:3] == ["transfer_accepted", "claim_started", "share_added"]
    assert (await world.carol.get(f"/devices/{device}/history")).status_code == 404


async def test_keep_shares_keeps_the_guests_on_transfer(world: World) -> None:
    device, typed = await owned(world)
    await world.alice.post(f"/devices/{device}/shares", {"user_id": world.carol.id, "share_reports": True})
    assert (await world.bob.post(f"/devices/{device}/claim", {"code": typed})).status_code == 201
    accepted = await world.alice.post(f"/devices/{device}/transfer/accept", {"keep_shares": True})
    assert accepted.status_code == 200, accepted.text
    assert await members(world, device) == {world.bob.id: "owner", world.carol.id: "guest"}


async def test_a_rejected_claim_tells_the_claimant_why(world: World) -> None:
    device, typed = await owned(world)
    assert (await world.bob.post(f"/devices/{device}/claim", {"code": typed})).status_code == 201
    rejected = await world.alice.post(f"/devices/{device}/transfer/reject", {"reason": "not for sale"})
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"
    mine = [
        c for c in (await world.bob.get("/devices", relation="claims")).json() if c["device_id"] == device
    ]
    assert mine[0]["state"] == "rejected" and mine[0]["reason"] == "not for sale"
    assert await members(world, device) == {world.alice.id: "owner"}
    again = await world.alice.post(f"/devices/{device}/transfer/reject")
    assert again.status_code == 409 and "was rejected" in reason(again)
    cancel = await world.bob.post(f"/devices/{device}/claim/cancel")
    assert cancel.status_code == 409
    # a later claim may be made, and withdrawn by its claimant only
    assert (await world.bob.post(f"/devices/{device}/claim", {"code": typed})).status_code == 201
    assert (await world.alice.post(f"/devices/{device}/claim/cancel")).status_code == 403
    assert (await world.bob.post(f"/devices/{device}/claim/cancel")).json()["state"] == "cancelled"


async def test_a_claim_needs_that_devices_code_and_an_owner(world: World) -> None:
    device, _ = await owned(world)
    other, other_code = await single(world)
    wrong = await world.bob.post(f"/devices/{device}/claim", {"code": other_code})
    assert wrong.status_code == 400 and reason(wrong) == INVALID
    unowned = await world.bob.post(f"/devices/{other}/claim", {"code": other_code})
    assert unowned.status_code == 409 and "has no owner" in reason(unowned)
    blank = await world.bob.post(f"/devices/{device}/claim", {"code": ""})
    assert blank.status_code == 400 and blank.json()["errors"][0]["field"] == "data.code"


# -- shares -----------------------------------------------------------------------------------------


async def test_the_owner_shares_and_guests_cannot_change_settings(world: World) -> None:
    device, _ = await owned(world)
    added = await world.alice.post(
        f"/devices/{device}/shares", {"user_id": world.carol.id, "share_content": True, "allow_write": True}
    )
    assert added.status_code == 201, added.text
    listed = await world.carol.get(f"/devices/{device}/shares")
    assert listed.status_code == 200 and listed.json()[0]["allow_write"] is True
    assert device in [d["id"] for d in (await world.carol.get("/devices", relation="shared")).json()]
    changed_by_guest = await world.carol.api.put(
        f"/devices/{device}/shares/{world.carol.id}", json={"data": {"share_content": True}}
    )
    assert changed_by_guest.status_code == 403 and "guests cannot change" in reason(changed_by_guest)
    invite_by_guest = await world.carol.post(f"/devices/{device}/shares", {"user_id": world.dave.id})
    assert invite_by_guest.status_code == 403
    not_owner = await world.bob.post(f"/devices/{device}/shares", {"user_id": world.dave.id})
    assert not_owner.status_code == 404
    bad = await world.alice.post(f"/devices/{device}/shares", {"user_id": world.dave.id, "allow_write": True})
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "allow_write"
    owner_as_guest = await world.alice.post(f"/devices/{device}/shares", {"user_id": world.alice.id})
    assert owner_as_guest.status_code == 409
    updated = await world.alice.api.put(f"/devices/{device}/shares/{world.carol.id}", json={"data": {}})
    assert updated.status_code == 200 and updated.json()["allow_write"] is False
    left = await world.carol.api.delete(f"/devices/{device}/shares/{world.carol.id}")
    assert left.status_code == 204
    assert await members(world, device) == {world.alice.id: "owner"}


# -- licenses ---------------------------------------------------------------------------------------


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def license_code(world: World, service: str, kind: str, days: float) -> str:
    return await code(world, kind="license", service=service, type=kind, duration_days=days)


async def test_a_license_is_activated_extended_and_upgraded_once_per_code(world: World) -> None:
    device, _ = await owned(world)
    basic = await license_code(world, "dataapi", "Basic", 30)
    started = await world.alice.post("/licenses/activate", {"code": basic, "device_id": device})
    assert started.status_code == 201, started.text
    lic = started.json()
    assert lic["type"] == "Basic" and lic["status"] == "active"
    assert when(lic["expires_at"]) - when(lic["activated_at"]) == timedelta(days=30)
    reused = await world.alice.post("/licenses/activate", {"code": basic, "device_id": device})
    assert reused.status_code == 409 and "already used" in reason(reused)
    second = await world.alice.post(
        "/licenses/activate", {"code": await license_code(world, "dataapi", "PRO", 30), "device_id": device}
    )
    assert second.status_code == 409 and "extend or upgrade" in reason(second)
    by_other = await world.bob.post(
        "/licenses/activate",
        {"code": await license_code(world, "scheduling", "Basic", 1), "device_id": device},
    )
    assert by_other.status_code == 403

    extended = await world.alice.post(
        f"/licenses/{lic['id']}/extend", {"code": await license_code(world, "dataapi", "Basic", 10)}
    )
    assert extended.status_code == 200, extended.text
    assert when(extended.json()["expires_at"]) - when(lic["expires_at"]) == timedelta(days=10)
    wrong_type = await world.alice.post(
        f"/licenses/{lic['id']}/extend", {"code": await license_code(world, "dataapi", "PRO", 1)}
    )
    assert wrong_type.status_code == 409 and "same type" in reason(wrong_type)
    wrong_service = await world.alice.post(
        f"/licenses/{lic['id']}/extend", {"code": await license_code(world, "scheduling", "Basic", 1)}
    )
    assert wrong_service.status_code == 409 and "scheduling" in reason(wrong_service)

    down = await world.alice.post(
        f"/licenses/{lic['id']}/upgrade", {"code": await license_code(world, "dataapi", "Basic", 1)}
    )
    assert down.status_code == 409 and "higher type" in reason(down)
    pro = await world.alice.post(
        f"/licenses/{lic['id']}/upgrade", {"code": await license_code(world, "dataapi", "PRO", 5)}
    )
    assert pro.status_code == 200 and pro.json()["type"] == "PRO"
    assert pro.json()["expires_at"] == extended.json()["expires_at"]  # never earlier
    elite = await world.alice.post(
        f"/licenses/{lic['id']}/upgrade", {"code": await license_code(world, "dataapi", "Elite", 400)}
    )
    assert elite.status_code == 200 and elite.json()["type"] == "Elite"
    assert when(elite.json()["expires_at"]) > when(pro.json()["expires_at"])
    top = await world.alice.post(
        f"/licenses/{lic['id']}/upgrade", {"code": await license_code(world, "dataapi", "Elite", 1)}
    )
    assert top.status_code == 409 and "highest type" in reason(top)

    assert (await world.dave.get(f"/licenses/{lic['id']}")).status_code == 404
    other_device = await installation(world)
    moved = await world.alice.api.put(f"/licenses/{lic['id']}", json={"data": {"device_id": other_device}})
    assert moved.status_code == 409 and "not transferable" in reason(moved)
    rights = (await world.internal.get(f"/internal/devices/{device}/entitlements")).json()
    assert rights["services"]["dataapi"]["type"] == "Elite"
    detail = (await world.alice.get(f"/licenses/{lic['id']}")).json()
    assert [h["action"] for h in detail["history"]] == [
        "license_activated", "license_extended", "license_upgraded", "license_upgraded",
    ]  # fmt: skip


async def test_a_license_warns_expires_and_the_device_loses_the_service(world: World) -> None:
    device, _ = await owned(world)
    seconds = 4
    short = await license_code(world, "scheduling", "PRO", seconds / 86400)
    started = await world.alice.post("/licenses/activate", {"code": short, "device_id": device})
    assert started.status_code == 201, started.text
    lic = started.json()
    rights = (await world.internal.get(f"/internal/devices/{device}/entitlements")).json()
    assert rights["services"]["scheduling"]["type"] == "PRO"

    async def audited() -> set[str]:
        answer = await world.admin.get("/auditlogs", object=f"licenses/{lic['id']}")
        return {row["action"] for row in answer.json()}

    assert await eventually(audited, lambda seen: {"license.warning", "license.expired"} <= seen, within=40)
    rights = (await world.internal.get(f"/internal/devices/{device}/entitlements")).json()
    assert "scheduling" not in rights["services"]
    expired = (await world.alice.get("/licenses", status="expired", device_id=device)).json()
    assert [x["id"] for x in expired] == [lic["id"]]
    assert (await world.alice.get("/licenses", status="active", device_id=device)).json() == []
    # time never pauses: an extension counts from the old expiry, not from now
    extended = await world.alice.post(
        f"/licenses/{lic['id']}/extend", {"code": await license_code(world, "scheduling", "PRO", 1)}
    )
    assert when(extended.json()["expires_at"]) - when(lic["expires_at"]) == timedelta(days=1)
    assert extended.json()["status"] == "active"


async def test_a_license_stays_with_its_device_when_the_device_changes_owner(world: World) -> None:
    device, typed = await owned(world)
    lic = await world.alice.post(
        "/licenses/activate", {"code": await license_code(world, "dataapi", "Basic", 30), "device_id": device}
    )
    assert (await world.bob.post(f"/devices/{device}/claim", {"code": typed})).status_code == 201
    assert (await world.alice.post(f"/devices/{device}/transfer/accept")).status_code == 200
    seen = (await world.bob.get("/licenses", device_id=device)).json()
    assert [x["id"] for x in seen] == [lic.json()["id"]] and seen[0]["device_id"] == device
    rights = (await world.internal.get(f"/internal/devices/{device}/entitlements")).json()
    assert rights["services"]["dataapi"]["type"] == "Basic"

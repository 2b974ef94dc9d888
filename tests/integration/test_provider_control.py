"""External signal providers steer over MQTT (CONTRACTS.md §2.2): every request is accepted or rejected with the
reason, then applied when the controller confirms, and expired or removed when it ends; offboarding ends it all.

The links come as the onboarding service announces them: the test publishes `ProviderLinkChanged` on the bus
itself (that is the contract between the two services). The provider is a plain MQTT client on the
`gf/v1/ext/{provider_id}/inst/{installation_id}/…` topics; the controller is the simulated one of the command
tests, confirming every control state.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import orjson
import pytest

from proto_schemas import topics
from proto_schemas.onboarding import ProviderLinkChanged
from tests.integration.test_commands import Controller, controller, payload_bytes
from tests.integration.test_control import World, make_site, world  # noqa: F401  (the fixture)
from tests.support import Platform, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Provider:
    """An external signal provider's MQTT client for one installation."""

    platform: Platform
    provider_id: int
    installation_id: int
    client: aiomqtt.Client
    acks: list[dict[str, Any]] = field(default_factory=list)
    states: list[bytes] = field(default_factory=list)

    def topic(self, leaf: str) -> str:
        return self.platform.topic(topics.provider_topic(self.provider_id, self.installation_id, leaf))

    async def request(self, leaf: str, body: dict[str, Any]) -> str:
        request_id = body.setdefault("request_id", f"r-{uuid.uuid4().hex[:8]}")
        await self.client.publish(self.topic(leaf), orjson.dumps(body), qos=1)
        return str(request_id)

    async def answer(self, request_id: str, status: str, within: float = 15) -> dict[str, Any]:
        """The acknowledgement of a request with this status (waiting for it)."""

        async def find() -> dict[str, Any] | None:
            return next(
                (a for a in self.acks if a["request_id"] == request_id and a["status"] == status), None
            )

        found = await eventually(find, lambda a: a is not None, within=within, every=0.05)
        assert found is not None
        return found

    async def first(self, request_id: str, within: float = 15) -> dict[str, Any]:
        """The immediate answer: accepted or rejected."""

        async def find() -> dict[str, Any] | None:
            return next(
                (
                    a
                    for a in self.acks
                    if a["request_id"] == request_id and a["status"] in ("accepted", "rejected")
                ),
                None,
            )

        found = await eventually(find, lambda a: a is not None, within=within, every=0.05)
        assert found is not None
        return found


@contextlib.asynccontextmanager
async def provider(platform: Platform, provider_id: int, installation_id: int) -> AsyncIterator[Provider]:
    async with platform.mqtt(identifier=f"gf-test-provider-{uuid.uuid4().hex[:8]}") as client:
        p = Provider(platform, provider_id, installation_id, client)
        await client.subscribe(p.topic("ack"), qos=1)
        await client.subscribe(p.topic("state"), qos=1)

        async def listen() -> None:
            async for message in client.messages:
                body = payload_bytes(message.payload)
                if message.topic.value.endswith("/state"):
                    p.states.append(body)
                else:
                    p.acks.append(orjson.loads(body))

        task = asyncio.create_task(listen())
        try:
            yield p
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def link(
    platform: Platform, provider_id: int, installation_id: int, state: str, groups: list[str], at_ms: int
) -> None:
    """Announce a link change as the onboarding service does."""
    event = ProviderLinkChanged(
        provider_id=provider_id, installation_id=installation_id, state=state,
        device_groups=groups, changed_ms=at_ms,
    )  # fmt: skip
    async with platform.mqtt(identifier=f"gf-test-onboarding-{uuid.uuid4().hex[:8]}") as client:
        await client.publish(
            platform.topic(topics.ONBOARDING_EVENTS), event.model_dump_json().encode(), qos=1
        )


async def link_stored(platform: Platform, provider_id: int, installation_id: int, state: str) -> None:
    table = f'"{platform.schema("command")}".provider_links'
    await eventually(
        lambda: platform.db.fetchval(
            f"SELECT state FROM {table} WHERE provider_id = $1 AND installation_id = $2",
            provider_id,
            installation_id,
        ),
        lambda found: found == state,
    )


def battery_of(sim: Controller) -> dict[str, Any] | None:
    if not sim.controls:
        return None
    return next((p for p in sim.controls[-1][1]["policies"] if p["group"] == "battery"), None)


def interval(start: datetime, seconds: float, power: int) -> dict[str, Any]:
    return {
        "start": start.isoformat(),
        "end": (start + timedelta(seconds=seconds)).isoformat(),
        "setpoint": {"power_w": power},
    }


async def test_a_provider_steers_only_where_onboarded_and_every_request_is_answered(
    platform: Platform,
    world: World,  # noqa: F811
) -> None:
    site = await make_site(platform, world)
    elsewhere = await make_site(platform, world)
    pid = random.randint(10**6, 10**9)
    ms = int(time.time() * 1000)
    await link(platform, pid, site.instance_id, "active", ["battery", "solar"], ms)
    await link(platform, pid, elsewhere.instance_id, "pending", ["battery"], ms)
    await link_stored(platform, pid, site.instance_id, "active")
    await link_stored(platform, pid, elsewhere.instance_id, "pending")
    policies = f"/instances/{site.instance_id}/policies"

    async with controller(platform, site.gateway_uuid) as sim, provider(platform, pid, site.instance_id) as p:
        async with provider(platform, pid, elsewhere.instance_id) as pending:
            refused = await pending.first(
                await pending.request("live", {"group": "battery", "setpoint": {"power_w": 100}, "ttl_s": 60})
            )
        assert refused["status"] == "rejected"
        assert refused["reason"].startswith("not onboarded") and "pending" in refused["reason"]

        live: dict[str, Any] = {"group": "battery", "setpoint": {"power_w": 2000}, "ttl_s": 600}
        cases: list[tuple[dict[str, Any], str]] = [
            ({**live, "group": "hvac", "setpoint": {"mode": "heat"}}, "group not permitted"),
            ({**live, "setpoint": {"power_w": 9000}}, "setpoint outside capacity"),
            ({**live, "ttl_s": 0}, "ttl_s"),
            ({**live, "ttl_s": 86401}, "ttl_s"),
            ({**live, "ttl_s": None, "valid_until": (datetime.now(UTC) + timedelta(days=2)).isoformat()}, "ttl out of bounds"),
            ({"group": "battery", "setpoint": {"power_w": 1}}, "exactly one of ttl_s and valid_until"),
        ]  # fmt: skip
        for case, reason in cases:
            body = {k: v for k, v in case.items() if v is not None}
            answer = await p.first(await p.request("live", body))
            assert answer["status"] == "rejected", (body, answer)
            assert reason in answer["reason"], (reason, answer)
        # Malformed JSON has no request id to answer: it is a dead letter, and the service keeps going.
        await p.client.publish(p.topic("live"), b"{not json", qos=1)

        # Accepted, then applied once the controller confirms the control state holding it.
        first = await p.request("live", dict(live))
        accepted = await p.first(first)
        assert accepted["status"] == "accepted", accepted
        await p.answer(first, "applied")
        battery = battery_of(sim)
        assert battery is not None and battery["source"] == f"provider:{pid}"
        assert battery["setpoint"] == {"power_w": 2000}
        # A redelivered request is answered again, and applied once.
        await p.client.publish(p.topic("live"), orjson.dumps({**live, "request_id": first}), qos=1)
        await eventually(
            lambda: asyncio.sleep(
                0, [a for a in p.acks if a["request_id"] == first and a["status"] == "accepted"]
            ),
            lambda found: len(found) == 2,
        )
        listed = (await world.owner.get(policies)).json()
        assert [(x["group"], x["source"], x["priority"]) for x in listed] == [
            ("battery", f"provider:{pid}", "provider")
        ]

        # The owner (lower priority) cannot override the provider; the operator (higher) overrides it.
        assert (
            await world.owner.post(policies, {"group": "battery", "setpoint": {"power_w": 10}, "ttl_s": 60})
        ).status_code == 409
        assert (
            await world.staff.post(
                policies, {"group": "solar", "setpoint": {"max_power_w": 1000}, "ttl_s": 600}
            )
        ).status_code == 201
        lower = await p.first(
            await p.request("live", {"group": "solar", "setpoint": {"max_power_w": 500}, "ttl_s": 60})
        )
        assert lower["status"] == "rejected" and lower["reason"].startswith("lower priority"), lower

        # A new request replaces the old one (removed), and a short one expires.
        short = await p.request("live", {**live, "setpoint": {"power_w": -1500}, "ttl_s": 2})
        assert (await p.first(short))["status"] == "accepted"
        removed = await p.answer(first, "removed")
        assert "replaced" in removed["reason"]
        await p.answer(short, "applied")
        expired = await p.answer(short, "expired", within=20)
        assert expired["group"] == "battery"

        # Plans: overlapping intervals are refused, a good plan is accepted then applied (stored on the controller).
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
        overlapping = {"schedule_id": "day-ahead", "group": "battery",
                       "intervals": [interval(start, 600, 1000), interval(start + timedelta(seconds=300), 600, 2000)]}  # fmt: skip
        answer = await p.first(await p.request("schedule", overlapping))
        assert answer["status"] == "rejected" and answer["reason"].startswith("overlapping intervals"), answer
        over = {"schedule_id": "day-ahead", "group": "battery", "intervals": [interval(start, 600, 7000)]}
        answer = await p.first(await p.request("schedule", over))
        assert answer["status"] == "rejected" and "outside capacity" in answer["reason"], answer
        plan = {"schedule_id": "day-ahead", "group": "battery",
                "intervals": [interval(start, 600, 1000), interval(start + timedelta(seconds=600), 600, 2000)]}  # fmt: skip
        planned = await p.request("schedule", plan)
        assert (await p.first(planned))["status"] == "accepted"
        await p.answer(planned, "applied")
        assert any(
            s["schedule_id"] == "day-ahead" and s["source"] == f"provider:{pid}"
            for s in sim.schedules[-1]["schedules"]
        )
        clash = {
            "schedule_id": "other",
            "group": "battery",
            "intervals": [interval(start + timedelta(seconds=60), 60, 500)],
        }
        answer = await p.first(await p.request("schedule", clash))
        assert answer["status"] == "rejected" and answer["reason"].startswith("overlapping intervals"), answer

        # Removing: a plan and a live policy of its own; nothing of its own in force is a rejection.
        later = {
            "schedule_id": "tmp",
            "group": "battery",
            "intervals": [interval(start + timedelta(hours=2), 60, 100)],
        }
        temporary = await p.request("schedule", later)
        assert (await p.first(temporary))["status"] == "accepted"
        answer = await p.first(await p.request("schedule", {"schedule_id": "tmp", "remove": True}))
        assert answer["status"] == "accepted", answer
        assert "removed by provider" in (await p.answer(temporary, "removed"))["reason"]
        nothing = await p.first(await p.request("live", {"group": "battery", "remove": True}))
        assert nothing["status"] == "rejected" and "no battery policy" in nothing["reason"], nothing
        gone = await p.request("live", {**live, "setpoint": {"power_w": 300}})
        await p.answer(gone, "applied")
        assert (await p.first(await p.request("live", {"group": "battery", "remove": True})))[
            "status"
        ] == "accepted"
        assert "removed by provider" in (await p.answer(gone, "removed"))["reason"]

        # The retained state shows what is in force.
        kept = await p.request("live", {**live, "setpoint": {"power_w": 1200}})
        await p.answer(kept, "applied")

        async def latest_state() -> dict[str, Any] | None:
            return orjson.loads(p.states[-1]) if p.states and p.states[-1] else None

        shown = await eventually(
            latest_state,
            lambda s: s is not None and any(x["setpoint"] == {"power_w": 1200} for x in s["policies"]),
        )
        assert shown is not None and shown["device_groups"] == ["battery", "solar"]
        assert {x["source"] for x in shown["policies"]} == {f"provider:{pid}", "operator"}

        # The link narrowed to solar: the provider's battery policy and plan end at once.
        await link(platform, pid, site.instance_id, "active", ["solar"], int(time.time() * 1000))
        assert "no longer lists" in (await p.answer(kept, "removed"))["reason"]
        assert "no longer lists" in (await p.answer(planned, "removed"))["reason"]
        await eventually(lambda: asyncio.sleep(0, battery_of(sim)), lambda b: b is None)
        narrowed = await p.first(await p.request("live", dict(live)))
        assert narrowed["status"] == "rejected" and narrowed["reason"].startswith("group not permitted")

        # Offboarding ends the provider's policy and plan at once; the controller is told; requests are refused.
        await link(
            platform, pid, site.instance_id, "active", ["battery", "solar"], int(time.time() * 1000) + 1
        )
        await link_stored(platform, pid, site.instance_id, "active")
        again = await p.request("live", {**live, "setpoint": {"power_w": 800}})
        await p.answer(again, "applied")
        replanned = await p.request(
            "schedule", {"schedule_id": "day-ahead-2", "group": "battery", "intervals": plan["intervals"]}
        )
        await p.answer(replanned, "applied")
        await link(platform, pid, site.instance_id, "offboarded", [], int(time.time() * 1000) + 2)
        assert "link offboarded" in (await p.answer(again, "removed"))["reason"]
        assert "link offboarded" in (await p.answer(replanned, "removed"))["reason"]
        await eventually(lambda: asyncio.sleep(0, battery_of(sim)), lambda b: b is None)
        assert all(s["source"] != f"provider:{pid}" for s in sim.schedules[-1]["schedules"])
        assert [x["source"] for x in (await world.owner.get(policies)).json()] == ["operator"]
        await eventually(lambda: asyncio.sleep(0, p.states[-1:]), lambda s: s == [b""])
        after = await p.first(await p.request("live", dict(live)))
        assert after["status"] == "rejected" and after["reason"].startswith("not onboarded"), after
        # An older event arriving late does not bring the link back.
        await link(platform, pid, site.instance_id, "active", ["battery"], ms)
        await asyncio.sleep(0.5)
        late = await p.first(await p.request("live", dict(live)))
        assert late["status"] == "rejected", late
    assert not platform.processes.crashed()

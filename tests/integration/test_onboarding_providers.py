"""External signal providers: signed webhooks from a persisted outbox, the provider's answer, and who may add one.

A fake provider (tests/integration/fake_provider.py) receives the webhooks as a provider would: it checks each
signature, deduplicates on `Gridfleet-Delivery` and records what arrived in which order. The onboarding service
runs here with a short retry backoff (0.2 s doubling to 1.5 s) and a 2 s timeout so retries fit in a test.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt
import httpx
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from deploy.local.infra import STATE_DIR, Infra, free_port, free_port_block, start_secure_mosquitto
from deploy.local.processes import ServiceProcesses
from libs import dynsec
from libs.bus import Bus
from libs.settings import SERVICES, MqttTarget
from proto_schemas import topics
from proto_schemas.base import Message
from proto_schemas.onboarding import (
    HealthcheckWebhook,
    OffboardingWebhook,
    OnboardingWebhook,
    ProviderLinkChanged,
)
from proto_schemas.registry import DataSourceStatus, GatewaySeen
from tests.conftest import drop_schemas, platform_env
from tests.integration.fake_provider import FakeProvider, free_tcp_port
from tests.support import Platform, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST_OUTBOX = {
    "GRIDFLEET_WEBHOOK_BACKOFF_BASE_S": "0.2",
    "GRIDFLEET_WEBHOOK_BACKOFF_CAP_S": "1.5",
    "GRIDFLEET_WEBHOOK_TIMEOUT_S": "2",
}


@pytest.fixture(scope="module")
async def onboarding(platform: Platform) -> AsyncIterator[Platform]:
    """The platform, its onboarding service restarted with a short backoff."""
    processes = platform.processes
    await asyncio.to_thread(processes.kill, "onboarding")
    processes.env.update(FAST_OUTBOX)
    await asyncio.to_thread(processes.restart, "onboarding")
    yield platform
    for name in FAST_OUTBOX:  # a later restart gets the defaults again
        processes.env.pop(name, None)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    provider = FakeProvider(free_tcp_port())
    provider.start()
    yield provider
    provider.stop()


async def new_installation(api: httpx.AsyncClient, tag: str) -> dict[str, Any]:
    zone = next(z["id"] for z in (await api.get("/timezones")).json() if z["name"] == "Europe/Amsterdam")
    data = {
        "title": f"Home {tag}",
        "serial": f"SN-{tag}",
        "timezone_id": zone,
        "address": {"street": "Dorpsstraat 1", "postal_code": "1234 AB", "city": "Utrecht", "country": "NL"},
    }
    answer = await api.post("/instances", json={"data": data})
    assert answer.status_code == 201, answer.text
    installation = {"id": answer.json()["id"], "serial": data["serial"]}
    groups = [
        {
            "group": "battery",
            "devices": [{"id": f"bat-{tag}", "type": "battery", "vendor": "Acme", "model": "B10"}],
            "capacity_wh": 10000,
            "max_charge_w": 5000,
            "max_discharge_w": 4000,
        },
        {
            "group": "ev",
            "devices": [{"id": f"ev-{tag}", "type": "charger", "vendor": "Acme", "model": "E11"}],
        },
    ]
    for group in groups:
        made = await api.post(f"/instances/{installation['id']}/devicegroups", json={"data": group})
        assert made.status_code == 201, made.text
    return installation


async def new_provider(
    api: httpx.AsyncClient, fake: FakeProvider, mode: str = "accept", groups: tuple[str, ...] = ("battery",)
) -> dict[str, Any]:
    key = uuid.uuid4().hex[:10]
    secret = f"whsec-{uuid.uuid4().hex}"
    fake.add(key, secret, mode)  # type: ignore[arg-type]
    data = {
        "name": f"VPP {key}",
        "webhook_base_url": fake.base_url(key),
        "secret": secret,
        "device_groups": list(groups),
    }
    answer = await api.post("/providers", json={"data": data})
    assert answer.status_code == 201, answer.text
    assert "secret" not in answer.json()
    return {**answer.json(), "key": key, "secret": secret}


async def add(
    api: httpx.AsyncClient, installation_id: int, provider_id: int, contract: str = "C-1"
) -> httpx.Response:
    return await api.post(
        f"/instances/{installation_id}/providers",
        json={"data": {"provider_id": provider_id, "contract_number": contract}},
    )


async def link(api: httpx.AsyncClient, installation_id: int, provider_id: int) -> dict[str, Any]:
    answer = await api.get(f"/instances/{installation_id}/providers/{provider_id}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def state_becomes(
    api: httpx.AsyncClient, installation_id: int, provider_id: int, state: str
) -> dict[str, Any]:
    return await eventually(
        lambda: link(api, installation_id, provider_id), lambda found: found["state"] == state
    )


@asynccontextmanager
async def link_events(platform: Platform) -> AsyncIterator[list[ProviderLinkChanged]]:
    seen: list[ProviderLinkChanged] = []
    async with platform.mqtt(identifier=f"gf-test-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(platform.topic(topics.ONBOARDING_EVENTS), qos=1)

        async def collect() -> None:
            async for message in client.messages:
                seen.append(ProviderLinkChanged.model_validate_json(bytes(message.payload)))

        task = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            task.cancel()


async def internal(platform: Platform, path: str) -> httpx.Response:
    headers = {"X-Gridfleet-Internal": platform.settings.internal_token}
    async with httpx.AsyncClient(
        base_url=platform.processes.url("onboarding"), headers=headers, timeout=10
    ) as client:
        return await client.get(path)


async def test_a_signed_onboarding_accepted_by_the_provider_makes_the_installation_active(
    onboarding: Platform, fake: FakeProvider
) -> None:
    api = onboarding.api
    tag = uuid.uuid4().hex[:6]
    installation = await new_installation(api, tag)
    provider = await new_provider(api, fake, groups=("battery",))
    async with link_events(onboarding) as events:
        answer = await add(api, installation["id"], provider["id"], contract="NL-2231")
        assert answer.status_code == 201, answer.text
        assert answer.json()["state"] == "pending"
        found = await state_becomes(api, installation["id"], provider["id"], "active")
        await eventually(
            lambda: asyncio.sleep(0, [e.state for e in events]), lambda s: s[-2:] == ["pending", "active"]
        )

    [delivery] = fake.deliveries(provider["key"], "onboarding")
    assert fake.bad_signatures == 0
    assert delivery.headers["gridfleet-event"] == "onboarding"
    assert delivery.headers["gridfleet-signature"].startswith("t=")
    webhook = OnboardingWebhook.model_validate(delivery.body)
    assert webhook.installation.id == installation["id"]
    assert (webhook.installation.serial, webhook.installation.contract_number) == (
        installation["serial"],
        "NL-2231",
    )
    assert (webhook.installation.address.city, webhook.installation.timezone) == (
        "Utrecht",
        "Europe/Amsterdam",
    )
    # Only the groups the provider may steer, with their capacities.
    assert [(g.group, g.capacity_wh, g.max_charge_w) for g in webhook.device_groups] == [
        ("battery", 10000, 5000)
    ]
    base = f"{onboarding.settings.topic_prefix}gf/v1/ext/{provider['id']}/inst/{installation['id']}"
    assert webhook.control.topics.live == f"{base}/live" and webhook.control.topics.state == f"{base}/state"
    assert webhook.control.username == f"provider-{provider['id']}" and len(webhook.control.password) >= 16
    assert delivery.headers["gridfleet-delivery"] == found["last_delivery"]["id"]
    assert found["last_delivery"]["status"] == "delivered" and found["last_delivery"]["attempts"] == 1

    # The read model the command service loads.
    model = await internal(
        onboarding, f"/internal/providers/{provider['id']}/installations/{installation['id']}"
    )
    assert model.json() == {
        "provider_id": provider["id"],
        "installation_id": installation["id"],
        "state": "active",
        "device_groups": ["battery"],
    }
    assert model.json() in (await internal(onboarding, "/internal/links?state=active")).json()
    assert (
        await internal(onboarding, f"/internal/providers/{provider['id']}/installations/999999")
    ).status_code == 404


async def test_a_provider_rejecting_the_onboarding_leaves_the_installation_rejected_with_its_reason(
    onboarding: Platform, fake: FakeProvider
) -> None:
    api = onboarding.api
    installation = await new_installation(api, uuid.uuid4().hex[:6])
    provider = await new_provider(api, fake, mode="reject")
    assert (await add(api, installation["id"], provider["id"])).status_code == 201
    found = await state_becomes(api, installation["id"], provider["id"], "rejected")
    assert found["reason"] == "no contract for this address"
    listed = (await api.get(f"/instances/{installation['id']}/providers")).json()
    assert [(x["provider_id"], x["state"]) for x in listed] == [(provider["id"], "rejected")]
    # After a rejection the owner may try again: a new onboarding follows.
    fake.accounts[provider["key"]].mode = "accept"
    assert (await add(api, installation["id"], provider["id"], contract="C-2")).status_code == 201
    await state_becomes(api, installation["id"], provider["id"], "active")
    assert len(fake.deliveries(provider["key"], "onboarding")) == 2


async def test_a_failing_endpoint_is_retried_with_growing_delays_until_it_answers(
    onboarding: Platform, fake: FakeProvider
) -> None:
    api = onboarding.api
    installation = await new_installation(api, uuid.uuid4().hex[:6])
    provider = await new_provider(api, fake)
    fake.accounts[provider["key"]].fail_times = 4
    assert (await add(api, installation["id"], provider["id"])).status_code == 201
    found = await state_becomes(api, installation["id"], provider["id"], "active")
    tries = fake.tries(provider["key"], "onboarding")
    assert len(tries) == 5 and len({t.delivery_id for t in tries}) == 1  # one delivery id across retries
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(tries)]
    # 0.2, 0.4, 0.8, 1.5 (capped) seconds, give or take a busy machine
    assert gaps[0] >= 0.15 and gaps[2] >= 0.6 and gaps[3] >= 1.2
    assert gaps[3] > gaps[0]
    assert found["last_delivery"]["attempts"] == 5 and found["last_delivery"]["status"] == "delivered"


async def test_offboarding_waits_for_the_onboarding_before_it_and_stops_control_at_once(
    onboarding: Platform, fake: FakeProvider
) -> None:
    api = onboarding.api
    installation = await new_installation(api, uuid.uuid4().hex[:6])
    provider = await new_provider(api, fake, mode="fail")
    async with link_events(onboarding) as events:
        assert (await add(api, installation["id"], provider["id"])).status_code == 201
        await eventually(lambda: asyncio.sleep(0, fake.tries(provider["key"])), lambda t: len(t) >= 2)
        assert (
            await api.delete(f"/instances/{installation['id']}/providers/{provider['id']}")
        ).status_code == 204
        found = await link(api, installation["id"], provider["id"])
        assert found["state"] == "offboarded"
        await eventually(
            lambda: asyncio.sleep(0, [e.state for e in events]), lambda s: s[-1:] == ["offboarded"]
        )
    model = await internal(
        onboarding, f"/internal/providers/{provider['id']}/installations/{installation['id']}"
    )
    assert model.json()["state"] == "offboarded" and model.json()["device_groups"] == []

    await asyncio.sleep(2.0)
    assert {t.event for t in fake.tries(provider["key"])} == {
        "onboarding"
    }  # nothing overtakes the onboarding
    fake.accounts[provider["key"]].mode = "accept"
    await eventually(lambda: asyncio.sleep(0, fake.deliveries(provider["key"])), lambda d: len(d) == 2)
    assert [d.event for d in fake.deliveries(provider["key"])] == ["onboarding", "offboarding"]
    offboarding = OffboardingWebhook.model_validate(fake.deliveries(provider["key"])[1].body)
    assert offboarding.installation.serial == installation["serial"] and offboarding.reason
    # The late "accepted" does not bring back a removed provider.
    assert (await link(api, installation["id"], provider["id"]))["state"] == "offboarded"


@asynccontextmanager
async def second_replica(platform: Platform) -> AsyncIterator[None]:
    """Another onboarding process on the same schema and outbox (replica 1), as a second pod would be."""
    env = {k: v for k, v in platform.processes.env.items() if k != "GRIDFLEET_PORT_BASE"}
    env |= {"GRIDFLEET_REPLICA": "1", "GRIDFLEET_REGISTRY_URL": platform.processes.url("registry")}
    replica = ServiceProcesses(env, platform.processes.log_dir / "replica-1", free_port_block(len(SERVICES)))
    replica.start("onboarding")
    try:
        await asyncio.to_thread(replica.wait_ready, ["onboarding"])
        yield
    finally:
        await asyncio.to_thread(replica.stop_all)
        # A stopped replica's persistent session would keep taking its share of the shared subscriptions:
        # end it, as scaling a replica down for good does.
        settings = platform.settings.model_copy(update={"replica": "1"})
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0
        async with platform.mqtt(
            identifier=Bus(settings, "onboarding").client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=True,
            properties=properties,
        ):
            pass


async def test_every_webhook_arrives_exactly_once_across_a_down_endpoint_a_restart_and_a_lost_database(
    onboarding: Platform,
) -> None:
    api = onboarding.api
    endpoint = FakeProvider(free_tcp_port())
    endpoint.start()
    provider = await new_provider(api, endpoint)
    endpoint.stop()  # the provider's endpoint is down from here on
    key = provider["key"]

    def lifecycle() -> list[Any]:
        return [d for d in endpoint.deliveries(key) if d.event != "healthcheck"]

    async with second_replica(onboarding):  # two workers compete for the same outbox
        installations = [await new_installation(api, uuid.uuid4().hex[:6]) for _ in range(3)]
        for installation in installations:
            assert (await add(api, installation["id"], provider["id"])).status_code == 201
        removed = installations[0]["id"]
        assert (await api.delete(f"/instances/{removed}/providers/{provider['id']}")).status_code == 204

        async def attempts() -> list[int]:
            rows = await onboarding.db.fetch(
                f'SELECT attempts FROM "{onboarding.schema("onboarding")}".webhook_outbox'
                " WHERE signal_provider_id = $1",
                provider["id"],
            )
            return [row["attempts"] for row in rows]

        await eventually(attempts, lambda found: len(found) == 4 and max(found) >= 2)
        await asyncio.to_thread(onboarding.processes.kill, "onboarding")
        await asyncio.to_thread(onboarding.processes.restart, "onboarding")
        terminated = await onboarding.db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            f"gridfleet-{onboarding.schema('onboarding')}",
        )
        assert terminated >= 2  # both replicas lose their database connections
        await asyncio.sleep(1.0)

        endpoint.start()  # the endpoint comes back on the same address
        try:
            await eventually(lambda: asyncio.sleep(0, lifecycle()), lambda d: len(d) >= 4, within=60)
            for installation in installations[1:]:
                await state_becomes(api, installation["id"], provider["id"], "active")
            await asyncio.sleep(2.0)  # anything sent twice would arrive by now
        finally:
            endpoint.stop()
    delivered = lifecycle()
    assert endpoint.bad_signatures == 0
    assert sorted((d.event, d.body["installation"]["id"]) for d in delivered) == sorted(
        [("onboarding", i["id"]) for i in installations] + [("offboarding", removed)]
    )
    # Exactly once as the idempotent receiver sees it, and not even a redelivery for it to drop.
    assert len({d.delivery_id for d in delivered}) == 4
    assert endpoint.duplicates == 0
    in_removed = [d.event for d in delivered if d.body["installation"]["id"] == removed]
    assert in_removed == ["onboarding", "offboarding"]


async def test_a_webhook_failing_past_the_retry_window_is_marked_failed_and_raises_an_alert(
    onboarding: Platform, fake: FakeProvider
) -> None:
    api = onboarding.api
    installation = await new_installation(api, uuid.uuid4().hex[:6])
    provider = await new_provider(api, fake, mode="fail")
    assert (await add(api, installation["id"], provider["id"])).status_code == 201
    await eventually(lambda: asyncio.sleep(0, fake.tries(provider["key"])), lambda t: len(t) >= 1)
    # 72 hours pass (the row's age is what counts).
    await onboarding.db.execute(
        f"UPDATE \"{onboarding.schema('onboarding')}\".webhook_outbox SET created_at = now() - interval '73 hours'"
        " WHERE signal_provider_id = $1",
        provider["id"],
    )
    found = await eventually(
        lambda: link(api, installation["id"], provider["id"]),
        lambda f: f["last_delivery"]["status"] == "failed",
    )
    assert found["state"] == "pending" and "HTTP 500" in found["last_delivery"]["last_error"]
    prefix = f"instances/{installation['id']}/providers/{provider['id']}"
    audit = await eventually(
        lambda: api.get("/auditlogs", params={"object": prefix}),
        lambda a: any(e["action"] == "WEBHOOK_FAILED" for e in a.json()),
    )
    assert any(e["outcome"] == 500 for e in audit.json())
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{onboarding.processes.url('onboarding')}/metrics")).text
    assert 'gridfleet_webhook_failed_total{event="onboarding"}' in metrics


async def test_a_healthcheck_follows_activation_and_every_change_of_the_controllers_status(
    onboarding: Platform, fake: FakeProvider
) -> None:
    api = onboarding.api
    installation = await new_installation(api, uuid.uuid4().hex[:6])
    gateway = (await api.post("/gateways", json={"data": {"name": f"gw-{uuid.uuid4().hex[:6]}"}})).json()
    bound = await api.post(
        f"/instances/{installation['id']}/gateways", json={"data": {"gateway_id": gateway["id"]}}
    )
    assert bound.status_code == 201, bound.text
    provider = await new_provider(api, fake, groups=("battery", "ev"))
    assert (await add(api, installation["id"], provider["id"])).status_code == 201
    await state_becomes(api, installation["id"], provider["id"], "active")
    first = await eventually(lambda: asyncio.sleep(0, fake.deliveries(provider["key"], "healthcheck")), bool)
    check = HealthcheckWebhook.model_validate(first[0].body)
    assert check.system.online is False and check.system.status == "error"  # never heard from yet
    assert {(d.id, d.group) for d in check.devices} == {
        (f"bat-{installation['serial'][3:]}", "battery"),
        (f"ev-{installation['serial'][3:]}", "ev"),
    }

    source = await api.post(
        "/datasources",
        json={
            "data": {
                "name": f"inverter-{uuid.uuid4().hex[:6]}",
                "gateway_id": gateway["id"],
                "protocol": "mqtt",
            }
        },
    )
    assert source.status_code == 201, source.text
    now_ms = int(time.time() * 1000)
    changes: list[tuple[str, Message, tuple[str, bool]]] = [
        (topics.GATEWAYS_SEEN, GatewaySeen(gateway_uuid=gateway["uuid"], last_seen_ms=now_ms, status="online"), ("ok", True)),
        (
            topics.DATASOURCE_STATUS,
            DataSourceStatus(
                data_source_id=source.json()["id"], gateway_uuid=gateway["uuid"], status="offline", previous="online",
                changed_ms=now_ms, consecutive_failures=3, reason="connection refused",
            ),
            ("degraded", True),
        ),
        (topics.GATEWAYS_SEEN, GatewaySeen(gateway_uuid=gateway["uuid"], last_seen_ms=now_ms, status="offline"), ("error", False)),
    ]  # fmt: skip
    async with onboarding.mqtt(identifier=f"gf-test-{uuid.uuid4().hex[:8]}") as client:
        for count, (topic, change, (status, online)) in enumerate(changes, start=2):
            await client.publish(onboarding.topic(topic), change.model_dump_json(), qos=1)
            checks = await eventually(
                lambda: asyncio.sleep(0, fake.deliveries(provider["key"], "healthcheck")),
                lambda found, n=count: len(found) >= n,  # type: ignore[misc]
            )
            latest = HealthcheckWebhook.model_validate(checks[-1].body)
            assert (latest.system.status, latest.system.online) == (status, online)
            assert latest.installation.contract_number == "C-1"
            if status == "degraded":
                assert {d.status for d in latest.devices} == {"error"}
                assert all("connection refused" in (d.error or "") for d in latest.devices)


async def test_bad_input_and_callers_who_may_not_add_providers_get_a_clear_4xx(
    onboarding: Platform, fake: FakeProvider
) -> None:
    api = onboarding.api
    good = {
        "name": f"VPP {uuid.uuid4().hex[:6]}",
        "webhook_base_url": "https://vpp.example/hooks",
        "secret": "s" * 32,
    }
    for field, value, named in (
        ("webhook_base_url", "ftp://vpp.example/hooks", "data.webhook_base_url"),
        ("webhook_base_url", "not a url", "data.webhook_base_url"),
        ("device_groups", ["battery", "boiler"], "data.device_groups.1"),
        ("secret", "short", "data.secret"),
    ):
        answer = await api.post("/providers", json={"data": {**good, field: value}})
        assert answer.status_code == 400, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert named in [e["field"] for e in answer.json()["errors"]]
    assert (await api.get("/providers/999999999")).status_code == 404

    installation = await new_installation(api, uuid.uuid4().hex[:6])
    provider = await new_provider(api, fake)
    unknown = await add(api, installation["id"], 999_999_999)
    assert unknown.status_code == 400 and unknown.json()["errors"][0]["field"] == "provider_id"
    assert (await add(api, 999_999_999, provider["id"])).status_code == 404
    assert (await add(api, installation["id"], provider["id"])).status_code == 201
    again = await add(api, installation["id"], provider["id"])
    assert again.status_code == 409 and "already added" in again.json()["detail"]
    assert (await api.delete(f"/providers/{provider['id']}")).status_code == 409  # in use


async def test_only_the_installations_owner_or_an_administrator_adds_a_provider(
    onboarding: Platform, fake: FakeProvider
) -> None:
    api = onboarding.api
    tag = uuid.uuid4().hex[:6]
    tenant = (await api.post("/serviceproviders", json={"data": {"name": f"Installer {tag}"}})).json()["id"]
    password = f"pw-{uuid.uuid4().hex}"
    users: dict[str, dict[str, Any]] = {}
    for role in ("provider_admin", "owner", "guest"):
        data = {
            "name": f"{role}-{tag}",
            "display_name": role,
            "role": role,
            "provider_id": tenant,
            "password": password,
        }
        made = await api.post("/users", json={"data": data})
        assert made.status_code == 201, made.text
        users[role] = made.json()

    @asynccontextmanager
    async def logged_in(role: str) -> AsyncIterator[httpx.AsyncClient]:
        async with httpx.AsyncClient(base_url=str(api.base_url), timeout=30) as client:
            login = await client.put(
                "/users/login", json={"data": {"name": f"{role}-{tag}", "password": password}}
            )
            assert login.status_code == 200, login.text
            client.headers.update({"User-UUID": login.json()["uuid"], "Token": login.json()["token"]})
            yield client

    async with logged_in("provider_admin") as admin:
        installation = await new_installation(admin, tag)
        provider = await new_provider(admin, fake)
        for role in ("owner", "guest"):
            member = {"user_id": users[role]["id"], "role": role, "share_content": True}
            bound = await admin.post(f"/instances/{installation['id']}/users", json={"data": member})
            assert bound.status_code == 201, bound.text
    async with logged_in("guest") as guest:
        assert (await guest.get(f"/instances/{installation['id']}/providers")).status_code == 200
        refused = await add(guest, installation["id"], provider["id"])
        assert refused.status_code == 403 and refused.headers["content-type"].startswith(
            "application/problem+json"
        )
    async with logged_in("owner") as owner:
        assert (await add(owner, installation["id"], provider["id"])).status_code == 201
        await state_becomes(owner, installation["id"], provider["id"], "active")
        assert (
            await owner.delete(f"/instances/{installation['id']}/providers/{provider['id']}")
        ).status_code == 204
    # Another service provider's administrator sees neither the provider nor the installation.
    other = (await api.post("/serviceproviders", json={"data": {"name": f"Other {tag}"}})).json()["id"]
    data = {"name": f"other-{tag}", "display_name": "o", "role": "provider_admin", "provider_id": other}
    assert (await api.post("/users", json={"data": {**data, "password": password}})).status_code == 201
    async with logged_in("other") as outsider:
        assert provider["id"] not in [p["id"] for p in (await outsider.get("/providers")).json()]
        assert (await outsider.get(f"/providers/{provider['id']}")).status_code == 404
        assert (await add(outsider, installation["id"], provider["id"])).status_code == 404
    assert provider["id"] in [
        p["id"] for p in (await api.get("/providers")).json()
    ]  # platform administrators see all


# -- provider MQTT credentials on a broker that enforces accounts (as tests/integration/test_mqtt_security.py) --


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[MqttTarget]:
    port = free_port()
    password = secrets.token_urlsafe(16)
    state = STATE_DIR / "test" / f"secure-{uuid.uuid4().hex[:8]}"
    proc = start_secure_mosquitto(state, port, "admin", password)
    if proc is None:
        pytest.fail("the mosquitto binary with its dynamic security plugin is needed (make system-deps)")
    admin = MqttTarget(f"mqtt://admin:{password}@127.0.0.1:{port}")
    asyncio.run(dynsec.ensure_platform_account(admin, "gridfleet", password))
    yield MqttTarget(f"mqtt://gridfleet:{password}@127.0.0.1:{port}")
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
async def secure_platform(
    infra: Infra, secure_broker: MqttTarget
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, str]]:
    """A registry and an onboarding service of their own on the secure broker (no gateway: internal calls)."""
    run_id = f"p{uuid.uuid4().hex[:8]}"
    target = secure_broker
    url = f"mqtt://{target.username}:{target.password}@{target.host}:{target.port}"
    env = {
        **platform_env(Infra(database_url=infra.database_url, mqtt_url=url), run_id),
        "GRIDFLEET_MQTT_DYNSEC": "true",
        **FAST_OUTBOX,
    }
    processes = ServiceProcesses(env, STATE_DIR / "test-logs" / run_id, free_port_block(len(SERVICES)))
    try:
        await asyncio.to_thread(processes.start_all, ["registry", "onboarding"])
        headers = {"X-Gridfleet-Internal": env["GRIDFLEET_INTERNAL_TOKEN"]}
        async with (
            httpx.AsyncClient(base_url=processes.url("registry"), headers=headers, timeout=30) as registry,
            httpx.AsyncClient(
                base_url=processes.url("onboarding"), headers=headers, timeout=30
            ) as onboarding,
        ):
            yield registry, onboarding, env["GRIDFLEET_TOPIC_PREFIX"]
    finally:
        await asyncio.to_thread(processes.stop_all)
        await drop_schemas(infra.database_url, env["GRIDFLEET_SCHEMA_PREFIX"])


def mqtt_client(target: MqttTarget, username: str, password: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        target.host, target.port, username=username, password=password,
        identifier=f"gf-test-{uuid.uuid4().hex[:8]}", protocol=aiomqtt.ProtocolVersion.V5, timeout=10,
    )  # fmt: skip


async def test_a_providers_credentials_reach_only_its_onboarded_installations_until_offboarding(
    secure_broker: MqttTarget,
    secure_platform: tuple[httpx.AsyncClient, httpx.AsyncClient, str],
    fake: FakeProvider,
) -> None:
    registry, onboarding, prefix = secure_platform
    zone = next(z["id"] for z in (await registry.get("/timezones")).json() if z["name"] == "Europe/Amsterdam")
    ids = []
    for n in range(2):
        made = await registry.post(
            "/instances", json={"data": {"title": f"Secure {n}", "serial": f"SEC-{n}", "timezone_id": zone}}
        )
        assert made.status_code == 201, made.text
        ids.append(made.json()["id"])
    mine, other = ids
    provider = await new_provider(onboarding, fake)
    assert (await add(onboarding, mine, provider["id"])).status_code == 201
    [delivery] = await eventually(
        lambda: asyncio.sleep(0, fake.deliveries(provider["key"], "onboarding")), lambda d: len(d) == 1
    )
    control = OnboardingWebhook.model_validate(delivery.body).control
    own, foreign = control.topics.live, control.topics.live.replace(f"/inst/{mine}/", f"/inst/{other}/")

    async def published_and_seen(topics_to_try: list[str]) -> list[str]:
        seen: list[str] = []
        async with mqtt_client(
            secure_broker, secure_broker.username or "", secure_broker.password or ""
        ) as watcher:
            await watcher.subscribe(f"{prefix}gf/v1/ext/#", qos=1)
            async with mqtt_client(secure_broker, control.username, control.password) as provider_client:
                for topic in topics_to_try:
                    await provider_client.publish(
                        topic, b'{"request_id": "r1", "group": "battery", "remove": true}', qos=1
                    )
            try:
                async with asyncio.timeout(2):
                    async for message in watcher.messages:
                        seen.append(message.topic.value)
            except TimeoutError:
                pass
        return seen

    assert await published_and_seen([own, foreign]) == [own]
    async with mqtt_client(secure_broker, control.username, control.password) as provider_client:
        granted = await provider_client.subscribe(control.topics.ack, qos=1)
        assert [str(code) for code in granted] != ["Not authorized"]
        granted = await provider_client.subscribe(foreign.replace("/live", "/ack"), qos=1)
        assert [str(code) for code in granted] == ["Not authorized"]

    assert (await onboarding.delete(f"/instances/{mine}/providers/{provider['id']}")).status_code == 204
    assert await published_and_seen([own]) == []

"""The Data API through the gateway: the provider's account and key, scope x package, resolution, limits, audit.

One provider with two installations ("mine", whose owner a `user`-scope key stands for, and "other") and a
site of three meters (grid import, PV production, grid export) in Europe/Amsterdam. Telemetry covers the
local day 2026-03-29, on which clocks go forward, from 23:00 the evening before to 01:00 the morning after:
the grid register rises 0.1 kWh every five minutes, PV 0.2, export 0.05. A provider has one account at a time,
so every test creates the account it needs and deletes it at its end.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from proto_schemas import topics
from proto_schemas.registry import DataSourceStatus
from tests.integration.identity_matrix import expected
from tests.integration.test_api_fuzz import as_request, draw_cases, judge
from tests.integration.test_identity import (
    NO_SUCH_ID,
    Session,
    client,
    create_key,
    create_user,
    created,
    log_in,
    timezone_id,
)
from tests.support import Platform, Site, build_site, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

AT = 111  # the loopback address this module logs in from (see test_identity.loopback)
AMSTERDAM = ZoneInfo("Europe/Amsterdam")
DAY = date(2026, 3, 29)  # clocks go forward: 23 hours
STEP = {"grid": 0.1, "pv": 0.2, "export": 0.05}  # kWh per five minutes


@dataclass
class World:
    admin: Session
    owner_id: int
    site: Site
    mine: int
    other: int


async def _telemetry(platform: Platform, site: Site) -> None:
    start = datetime(2026, 3, 28, 23, tzinfo=AMSTERDAM).astimezone(UTC)
    end = datetime(2026, 3, 30, 1, tzinfo=AMSTERDAM).astimezone(UTC)
    readings = []
    for k in range(int((end - start) / timedelta(minutes=5)) + 1):
        ts = (start + k * timedelta(minutes=5)).isoformat()
        for name, step in STEP.items():
            readings.append({"point_id": site.points[name], "ts": ts, "value": 1000.0 + k * step})
    async with platform.mqtt() as mqtt:
        for i in range(0, len(readings), 300):
            await platform.publish_telemetry(mqtt, site.gateway_uuid, readings[i : i + 300])


@pytest.fixture(scope="module")
async def world(platform: Platform) -> AsyncIterator[World]:
    tag = uuid.uuid4().hex[:6]
    provider_id = await created(platform.api, "/serviceproviders", {"name": f"dataapi {tag}"})
    admin_account = await create_user(platform.api, "provider_admin", provider_id=provider_id)
    admin = await log_in(platform, admin_account.name, admin_account.password, at=AT)
    owner = await create_user(admin.api, "owner")
    site = await build_site(admin.api, f"dataapi {tag}", energy_points=tuple(STEP))
    tz = await timezone_id(admin.api)
    parameters = {
        "grid_import_meter_id": site.meters["grid"],
        "production_meter_id": site.meters["pv"],
        "grid_export_meter_id": site.meters["export"],
        "pv_peak_power_kw": 4,
    }
    mine = await created(
        admin.api,
        "/instances",
        {
            "title": f"mine {tag}",
            "serial": f"M-{tag}",
            "timezone_id": tz,
            "root_space_id": site.space_id,
            "parameters": parameters,
        },
    )
    other = await created(
        admin.api, "/instances", {"title": f"other {tag}", "serial": f"O-{tag}", "timezone_id": tz}
    )
    await created(admin.api, f"/instances/{mine}/gateways", {"gateway_id": site.gateway_id})
    await created(admin.api, f"/instances/{mine}/users", {"user_id": owner.id, "role": "owner"})
    await _telemetry(platform, site)
    try:
        yield World(admin, owner.id, site, mine, other)
    finally:
        await admin.api.delete("/dataapi/account")
        await admin.api.aclose()


@asynccontextmanager
async def account(world: World, scope: str, package: str, **extra: Any) -> AsyncIterator[dict[str, Any]]:
    data: dict[str, Any] = {"scope": scope, "package": package, **extra}
    if scope == "user":
        data.setdefault("user_id", world.owner_id)
    answer = await world.admin.api.post("/dataapi/account", json={"data": data})
    assert answer.status_code == 201, answer.text
    try:
        yield dict(answer.json())
    finally:
        await world.admin.api.delete("/dataapi/account")


def keyed(platform: Platform, key: str) -> httpx.AsyncClient:
    return client(platform, at=None, headers={"API-Key": key})


# -- the account ---------------------------------------------------------------------------------------------


async def test_an_account_is_created_once_shown_without_its_key_renewed_with_grace_and_deleted_at_once(
    platform: Platform, world: World
) -> None:
    api = world.admin.api
    async with account(world, "portal", "basic") as created_account:
        first = created_account["api_key"]
        assert first.startswith("gfd_") and created_account["key_prefix"] == first[:12]
        again = await api.post("/dataapi/account", json={"data": {"scope": "portal", "package": "advanced"}})
        assert again.status_code == 409, again.text
        shown = (await api.get("/dataapi/account")).json()
        assert "api_key" not in shown and all(first not in str(v) for v in shown.values())
        assert (shown["scope"], shown["package"], shown["expires_datetime_utc"]) == ("portal", "basic", None)
        async with keyed(platform, first) as caller:
            assert (await caller.get("/data/instances")).status_code == 200
            used = (await api.get("/dataapi/account")).json()["last_used_datetime_utc"]
            assert used is not None
            # Read-only, and only /data.
            assert (await caller.get("/gateways")).status_code == 403
            assert (await caller.delete("/dataapi/account")).status_code == 403

        renewed = await api.post("/dataapi/account/renew", json={"data": {"grace_seconds": 4}})
        assert renewed.status_code == 200, renewed.text
        second = renewed.json()["api_key"]
        assert second != first and renewed.json()["previous_key_prefix"] == first[:12]
        grace_end = datetime.fromisoformat(renewed.json()["previous_key_valid_until_utc"])
        assert timedelta(seconds=2) < grace_end - datetime.now(UTC) <= timedelta(seconds=4)
        async with keyed(platform, first) as old, keyed(platform, second) as new:
            assert (await old.get("/data/instances")).status_code == 200  # within the grace period
            assert (await new.get("/data/instances")).status_code == 200
            await asyncio.sleep(max(0.0, (grace_end - datetime.now(UTC)).total_seconds()) + 0.5)
            assert (await old.get("/data/instances")).status_code == 401
            assert (await new.get("/data/instances")).status_code == 200

            default = (await api.post("/dataapi/account/renew")).json()
            grace = datetime.fromisoformat(default["previous_key_valid_until_utc"]) - datetime.now(UTC)
            assert timedelta(hours=23, minutes=59) < grace <= timedelta(hours=24)
            third = default["api_key"]
            assert (await new.get("/data/instances")).status_code == 200  # the 24 h grace has begun
            assert (await api.delete("/dataapi/account")).status_code == 204
            assert (await new.get("/data/instances")).status_code == 401
        async with keyed(platform, third) as newest:
            assert (await newest.get("/data/instances")).status_code == 401
        assert (await api.get("/dataapi/account")).status_code == 404


async def test_a_user_scope_needs_a_user_of_the_provider_and_bad_input_is_named(world: World) -> None:
    api = world.admin.api
    cases = [
        ({"scope": "user", "package": "basic"}, "data"),
        ({"scope": "portal", "package": "gold"}, "data.package"),
        ({"scope": "portal", "package": "basic", "expires_at": "2020-01-01T00:00:00Z"}, "data"),
        ({"scope": "user", "package": "basic", "user_id": 987654321}, "user_id"),
    ]
    for body, field in cases:
        answer = await api.post("/dataapi/account", json={"data": body})
        assert answer.status_code == 400, (body, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert field in [e["field"] for e in answer.json()["errors"]], answer.json()
    assert (await api.get("/dataapi/account")).status_code == 404  # nothing stored


# -- scope x package (seed 004's function matrix, §1.5.2) ----------------------------------------------------

ALLOWED, PACKAGE, SCOPE = "allowed", "package", "scope"
ROUTES = ("totals", "components", "events", "values", "kpis")
# (scope, package, route, installation) -> expected answer, written out by hand from the seed's matrix:
# basic = plant totals, component overview, events; advanced adds component values and KPIs; scope `user`
# sees only the installations its user is a member of ("mine"). The installation is checked before the package.
EXPECTED: dict[tuple[str, str, str, str], str] = {
    ("user", "basic", "totals", "mine"): ALLOWED,
    ("user", "basic", "components", "mine"): ALLOWED,
    ("user", "basic", "events", "mine"): ALLOWED,
    ("user", "basic", "values", "mine"): PACKAGE,
    ("user", "basic", "kpis", "mine"): PACKAGE,
    ("user", "basic", "totals", "other"): SCOPE,
    ("user", "basic", "components", "other"): SCOPE,
    ("user", "basic", "events", "other"): SCOPE,
    ("user", "basic", "values", "other"): SCOPE,
    ("user", "basic", "kpis", "other"): SCOPE,
    ("user", "advanced", "totals", "mine"): ALLOWED,
    ("user", "advanced", "components", "mine"): ALLOWED,
    ("user", "advanced", "events", "mine"): ALLOWED,
    ("user", "advanced", "values", "mine"): ALLOWED,
    ("user", "advanced", "kpis", "mine"): ALLOWED,
    ("user", "advanced", "totals", "other"): SCOPE,
    ("user", "advanced", "components", "other"): SCOPE,
    ("user", "advanced", "events", "other"): SCOPE,
    ("user", "advanced", "values", "other"): SCOPE,
    ("user", "advanced", "kpis", "other"): SCOPE,
    ("portal", "basic", "totals", "mine"): ALLOWED,
    ("portal", "basic", "components", "mine"): ALLOWED,
    ("portal", "basic", "events", "mine"): ALLOWED,
    ("portal", "basic", "values", "mine"): PACKAGE,
    ("portal", "basic", "kpis", "mine"): PACKAGE,
    ("portal", "basic", "totals", "other"): ALLOWED,
    ("portal", "basic", "components", "other"): ALLOWED,
    ("portal", "basic", "events", "other"): ALLOWED,
    ("portal", "basic", "values", "other"): PACKAGE,
    ("portal", "basic", "kpis", "other"): PACKAGE,
    ("portal", "advanced", "totals", "mine"): ALLOWED,
    ("portal", "advanced", "components", "mine"): ALLOWED,
    ("portal", "advanced", "events", "mine"): ALLOWED,
    ("portal", "advanced", "values", "mine"): ALLOWED,
    ("portal", "advanced", "kpis", "mine"): ALLOWED,
    ("portal", "advanced", "totals", "other"): ALLOWED,
    ("portal", "advanced", "components", "other"): ALLOWED,
    ("portal", "advanced", "events", "other"): ALLOWED,
    ("portal", "advanced", "values", "other"): ALLOWED,  # (no meter: 404, but past scope and package)
    ("portal", "advanced", "kpis", "other"): ALLOWED,
}
INSTANCE_LISTS = {"user": ("mine",), "portal": ("mine", "other")}


def _path(route: str, instance_id: int, meter_id: int) -> str:
    if route == "values":
        return f"/data/instances/{instance_id}/components/{meter_id}/values"
    return f"/data/instances/{instance_id}/{route}"


async def test_every_key_of_scope_and_package_gets_the_routes_the_function_matrix_gives(
    platform: Platform, world: World
) -> None:
    instances = {"mine": world.mine, "other": world.other}
    wrong: list[str] = []
    for scope in ("user", "portal"):
        for package in ("basic", "advanced"):
            async with account(world, scope, package) as made, keyed(platform, made["api_key"]) as caller:
                listed = await caller.get("/data/instances")
                assert listed.status_code == 200, listed.text
                visible = {i["id"] for i in listed.json()} & set(instances.values())
                if visible != {instances[n] for n in INSTANCE_LISTS[scope]}:
                    wrong.append(f"{scope}/{package} lists {sorted(visible)}")
                for (s, p, route, which), expected in EXPECTED.items():
                    if (s, p) != (scope, package):
                        continue
                    instance_id = instances[which]
                    answer = await caller.get(
                        _path(route, instance_id, world.site.meters["grid"]),
                        params={"period": "month", "date": DAY.isoformat()} if route != "events" else {},
                    )
                    detail = answer.json().get("detail", "") if answer.status_code >= 400 else ""
                    got = (
                        PACKAGE
                        if answer.status_code == 403 and f"the {package} package does not include" in detail
                        else SCOPE
                        if answer.status_code == 403
                        and detail == f"this key's {scope} scope does not include installation {instance_id}"
                        else ALLOWED
                        if answer.status_code in (200, 404) and "scope" not in detail
                        else f"{answer.status_code} {detail}"
                    )
                    if got != expected:
                        wrong.append(f"{scope}/{package} {route} on {which}: expected {expected}, got {got}")
    assert not wrong, "\n".join(wrong)


async def test_logged_in_owners_read_their_own_installations_with_the_basic_package(
    platform: Platform, world: World
) -> None:
    guest = await create_user(world.admin.api, "guest")
    await created(world.admin.api, f"/instances/{world.mine}/users", {"user_id": guest.id, "role": "guest"})
    session = await log_in(platform, guest.name, guest.password, at=AT)
    async with session:
        assert {i["id"] for i in (await session.api.get("/data/instances")).json()} == {world.mine}
        assert (await session.api.get(f"/data/instances/{world.mine}/components")).status_code == 200
        kpi = await session.api.get(f"/data/instances/{world.mine}/kpis")
        assert kpi.status_code == 403 and kpi.json()["detail"] == "the basic package does not include KPIs"
        other = await session.api.get(f"/data/instances/{world.other}/totals")
        assert other.status_code == 404, other.text  # as /instances answers for an installation not theirs
    staff = await world.admin.api.get(f"/data/instances/{world.other}/kpis")  # staff: portal, advanced
    assert staff.status_code == 200, staff.text


async def test_sessions_and_personal_keys_get_what_the_identity_access_table_gives_for_data_routes(
    platform: Platform, world: World
) -> None:
    """The identity matrix's view of /data and /dataapi (tests/integration/identity_matrix.py): a 403 only where
    the role may not call the route at all; narrowing inside the service is a 404 for an unseen installation."""
    document = (await platform.api.get(f"{platform.processes.url('gateway')}/openapi.json")).json()
    routes = [
        (method.upper(), path.removeprefix("/api/v1/"))
        for path, item in document["paths"].items()
        if path.startswith(("/api/v1/data/", "/api/v1/dataapi/"))
        for method in item
    ]
    callers: list[tuple[str, bool, httpx.AsyncClient]] = [("platform_admin", False, platform.api)]
    callers.append(("provider_admin", False, world.admin.api))
    sessions = []
    for role in ("operator", "owner", "guest"):
        user = await create_user(world.admin.api, role)
        sessions.append(await log_in(platform, user.name, user.password, at=AT))
        callers.append((role, False, sessions[-1].api))
    key = await create_key(sessions[1].api)
    callers.append(("owner", True, keyed(platform, key["api_key"])))
    wrong = []
    try:
        for role, via_key, api in callers:
            for method, template in routes:
                path = re.sub(r"\{\w+\}", str(NO_SUCH_ID), template)
                body: dict[str, Any] | None = None if method in ("GET", "DELETE") else {"data": {}}
                answer = await api.request(method, f"/{path}", json=body)
                got = {401: "unauthenticated", 403: "denied"}.get(answer.status_code, "allowed")
                want = expected(role=role, via_key=via_key, user_id=None, method=method, path=path)
                if got != want or answer.status_code >= 500:
                    wrong.append(
                        f"{role} key={via_key} {method} /{path}: want {want}, got {answer.status_code}"
                    )
    finally:
        for session in sessions:
            await session.api.aclose()
        await callers[-1][2].aclose()
    assert not wrong, "\n".join(wrong)


# -- resolution and values -----------------------------------------------------------------------------------


async def test_resolution_follows_the_period_in_local_time_across_the_dst_change(
    platform: Platform, world: World
) -> None:
    async with account(world, "portal", "advanced") as made, keyed(platform, made["api_key"]) as caller:
        values = f"/data/instances/{world.mine}/components/{world.site.meters['grid']}/values"

        async def month() -> dict[str, Any]:
            answer = await caller.get(values, params={"period": "month", "date": DAY.isoformat()})
            assert answer.status_code == 200, answer.text
            return dict(answer.json())

        # Once the aggregation has taken in every reading: 1 h of the 28th, the 23 h of the 29th, 1 h of the 30th.
        by_month = await eventually(month, lambda m: abs(m["total"] - 30.0) < 1e-6, within=60)
        assert by_month["resolution"] == "day" and len(by_month["timestamps"]) == 31
        assert by_month["timestamps"][28:30] == ["2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00"]
        assert by_month["values"][27] == pytest.approx(1.2) and by_month["values"][29] == pytest.approx(1.2)
        assert by_month["qualities"][0] == "missing" and by_month["total"] == pytest.approx(30.0)

        day = (await caller.get(values, params={"period": "day", "date": DAY.isoformat()})).json()
        assert day["resolution"] == "5min" and len(day["timestamps"]) == 276
        assert (day["timestamps"][0], day["timestamps"][-1]) == (
            "2026-03-29T00:00:00+01:00",
            "2026-03-29T23:55:00+02:00",
        )
        assert day["timestamps"][23:25] == ["2026-03-29T01:55:00+01:00", "2026-03-29T03:00:00+02:00"]
        assert day["values"] == pytest.approx([0.1] * 276) and set(day["qualities"]) == {"good"}
        assert day["total"] == pytest.approx(27.6)

        year = (await caller.get(values, params={"period": "year", "date": DAY.isoformat()})).json()
        assert year["resolution"] == "month" and len(year["timestamps"]) == 12
        assert year["values"][2] == pytest.approx(30.0) and year["qualities"][3] == "missing"

        total = (await caller.get(values, params={"period": "total", "date": "2026-12-31"})).json()
        assert (total["resolution"], total["timestamps"]) == ("year", ["2026-01-01T00:00:00+01:00"])
        assert total["values"] == pytest.approx([30.0])

        async def kpi_of_the_day() -> dict[str, Any]:
            answer = await caller.get(
                f"/data/instances/{world.mine}/kpis", params={"period": "day", "date": "2026-03-29"}
            )
            assert answer.status_code == 200, answer.text
            return dict(answer.json())

        # Every meter's day is in (the three registers were sent together, but are taken in one by one).
        day_energy = {"grid_import": 27.6, "production": 55.2, "grid_export": 13.8}
        kpi = await eventually(
            kpi_of_the_day,
            lambda k: all(abs((k["energy"].get(r) or 0) - e) < 1e-6 for r, e in day_energy.items()),
            within=60,
        )
        assert kpi["energy"] == pytest.approx(day_energy)
        assert kpi["kpis"]["self_consumption_rate"] == pytest.approx(0.75)
        assert kpi["kpis"]["autarky_rate"] == pytest.approx(0.6)
        assert kpi["kpis"]["specific_yield_kwh_per_kwp"] == pytest.approx(13.8)

        totals = (
            await caller.get(
                f"/data/instances/{world.mine}/totals", params={"period": "day", "date": "2026-03-29"}
            )
        ).json()
        assert len(totals["timestamps"]) == 276
        electricity = next(c for c in totals["categories"] if c["category"] == "Electricity")
        assert electricity["total"] == pytest.approx(27.6 * 3.5)  # grid + pv + export, all counted
        assert totals["roles"]["production"]["total"] == pytest.approx(55.2)

        bad = await caller.get(values, params={"period": "week"})
        assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "period"


async def test_events_list_controllers_and_data_sources_going_online_and_offline(
    platform: Platform, world: World
) -> None:
    site = world.site
    changed = datetime.now(UTC) - timedelta(hours=1)
    status = DataSourceStatus(
        data_source_id=site.datasource_id,
        gateway_uuid=site.gateway_uuid,
        status="offline",
        previous="online",
        changed_ms=int(changed.timestamp() * 1000),
        consecutive_failures=3,
    )
    async with platform.mqtt() as mqtt:
        await mqtt.publish(platform.topic(topics.DATASOURCE_STATUS), status.model_dump_json(), qos=1)
        gateway_status = platform.topic(topics.gateway_topic(site.gateway_uuid, "status"))
        await mqtt.publish(gateway_status, b"online", qos=1, retain=True)
        await mqtt.publish(gateway_status, b"", qos=1, retain=True)
    async with account(world, "user", "basic") as made, keyed(platform, made["api_key"]) as caller:
        path = f"/data/instances/{world.mine}/events"

        async def events() -> list[dict[str, Any]]:
            answer = await caller.get(path)
            assert answer.status_code == 200, answer.text
            return list(answer.json())

        found = await eventually(
            events, lambda e: {x["type"] for x in e} >= {"datasource_offline", "gateway_online"}
        )
        source = next(e for e in found if e["type"] == "datasource_offline")
        assert source["component"] == {
            "kind": "data_source",
            "id": site.datasource_id,
            "name": source["component"]["name"],
        }
        assert abs(datetime.fromisoformat(source["at"]) - changed) < timedelta(seconds=1)
        assert [datetime.fromisoformat(e["at"]) for e in found] == sorted(
            datetime.fromisoformat(e["at"]) for e in found
        )
        page = await caller.get(path, params={"limit": 1, "type": "gateway_online"})
        assert page.headers["X-Total-Count"] == "1" and page.json()[0]["component"]["kind"] == "gateway"
        naive = await caller.get(path, params={"since": "2026-01-01T00:00:00"})
        assert naive.status_code == 400 and naive.json()["errors"][0]["field"] == "since"


async def test_the_example_client_prints_a_days_totals(platform: Platform, world: World) -> None:
    async def day_total() -> float:
        answer = await world.admin.api.get(
            f"/data/instances/{world.mine}/totals", params={"period": "day", "date": DAY.isoformat()}
        )
        assert answer.status_code == 200, answer.text
        return float(sum(c["total"] for c in answer.json()["categories"]))

    await eventually(day_total, lambda total: abs(total - 27.6 * 3.5) < 1e-6, within=60)
    async with account(world, "user", "basic") as made:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).parents[2] / "examples" / "dataapi_client.py"),
            "--url",
            platform.processes.url("gateway"),
            "--date",
            DAY.isoformat(),
            env={**os.environ, "GRIDFLEET_DATA_API_KEY": made["api_key"]},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    rows = [line.split() for line in out.decode().splitlines()[1:]]
    assert [(r[0], r[-5], r[-2]) for r in rows] == [(str(world.mine), "Electricity", "276")], out.decode()
    assert float(rows[0][-4]) == pytest.approx(27.6 * 3.5, abs=1e-3)


# -- limits and audit ----------------------------------------------------------------------------------------


async def test_each_key_has_its_own_rate_limit_answered_with_retry_after(
    platform: Platform, world: World
) -> None:
    async with account(world, "portal", "basic") as made, keyed(platform, made["api_key"]) as caller:
        assert (await caller.get("/data/instances")).status_code == 200  # the key is verified and cached
        answers = await asyncio.gather(*(caller.get("/data/instances") for _ in range(50)))
        assert {a.status_code for a in answers} == {200, 429}
        assert sum(a.status_code == 200 for a in answers) < 45
        limited = next(a for a in answers if a.status_code == 429)
        retry = int(limited.headers["Retry-After"])
        assert 1 <= retry <= 2 and limited.headers["content-type"].startswith("application/problem+json")
        # Another caller is not held back by this key's bucket.
        assert (await world.admin.api.get("/data/instances")).status_code == 200
        await asyncio.sleep(retry + 0.2)
        assert (await caller.get("/data/instances")).status_code == 200


async def test_every_data_api_call_is_in_the_audit_log(platform: Platform, world: World) -> None:
    async with account(world, "portal", "basic") as made, keyed(platform, made["api_key"]) as caller:
        actor = f"dataapi:{made['key_prefix']}"
        started = datetime.now(UTC) - timedelta(seconds=1)
        assert (await caller.get("/data/instances")).status_code == 200
        refused = await caller.get(f"/data/instances/{world.mine}/kpis")
        assert refused.status_code == 403

        async def entries() -> list[dict[str, Any]]:
            answer = await world.admin.api.get(
                "/auditlogs", params={"actor": actor, "since": started.isoformat()}
            )
            assert answer.status_code == 200, answer.text
            return list(answer.json())

        found = await eventually(entries, lambda e: len(e) >= 2)
        assert {(e["action"], e["object"], e["outcome"]) for e in found} >= {
            ("GET", "data/instances", 200),
            ("GET", f"data/instances/{world.mine}/kpis", 403),
        }
        assert all(e["actor_kind"] == "api_key" for e in found)


# -- generated requests (schemathesis) ----------------------------------------------------------------------


async def test_generated_requests_to_the_data_api_get_no_5xx(platform: Platform, world: World) -> None:
    root = platform.processes.url("gateway")
    document = (await platform.api.get(f"{root}/openapi.json")).json()
    document["paths"] = {
        path: item
        for path, item in document["paths"].items()
        if path.startswith(("/api/v1/data/", "/api/v1/dataapi/"))
    }
    assert len(document["paths"]) == 8, sorted(document["paths"])
    schema = schemathesis.openapi.from_dict(document)
    schema.config.generation.update(with_security_parameters=False)
    operations = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]
    findings: list[str] = []
    sent = 0
    async with (
        account(world, "portal", "advanced") as made,
        httpx.AsyncClient(base_url=root, timeout=60) as http,
    ):
        key_headers = {"API-Key": made["api_key"]}
        admin_headers = {
            k: v for k, v in world.admin.api.headers.items() if k.lower() in ("user-uuid", "token")
        }
        for operation in operations:
            is_data = "/api/v1/data/" in operation.path
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                for n, case in enumerate(await asyncio.to_thread(draw_cases, operation, mode, 4)):
                    if is_data and "instance_id" in case.path_parameters and n % 2:
                        case.path_parameters["instance_id"] = world.mine
                    try:
                        request = as_request(case, _Run(key_headers if is_data else admin_headers, root))  # type: ignore[arg-type]
                    except Exception:
                        continue
                    for _ in range(10):
                        answer = await http.request(**request)
                        if answer.status_code != 429:
                            break
                        await asyncio.sleep(float(answer.headers.get("Retry-After", "1")))
                    sent += 1
                    verdict = judge(answer, mode is GenerationMode.POSITIVE, root)
                    if verdict:
                        findings.append(
                            f"{operation.label} [{mode.value}] {verdict}: {request['url']} -> {answer.text[:200]}"
                        )
        # The generated writes may have replaced or ended the account; leave none behind.
        await world.admin.api.delete("/dataapi/account")
    assert sent >= 40
    assert not findings, "\n".join(findings[:30])


@dataclass
class _Run:
    """What test_api_fuzz.as_request reads of its run: the credentials to send and the gateway's root."""

    headers: dict[str, str]
    root: str

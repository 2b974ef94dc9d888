"""End to end over MQTT: a spike held as SUSPECT stops being suspect once it is confirmed (MANUAL) or once later
readings replace it (their own quality), and a rejected spike replaced later takes back no energy it never gave.

Hourly energy and quality are read from aggregation's `meter_energy_hourly`; figures worked out by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from proto_schemas.quality import Quality
from tests.integration.test_normalisation_scenarios import energy_site, hourly, internal, iso, publish
from tests.support import Platform, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

G, S, M = (int(q) for q in (Quality.GOOD, Quality.SUSPECT, Quality.MANUAL))


async def test_a_confirmed_spike_is_manual_not_suspect(platform: Platform) -> None:
    site = await energy_site(platform, "held-confirm", higher_limit=50.0)
    t = datetime(2026, 5, 2, tzinfo=UTC)
    # 40 kWh, then 1 000 kWh in an hour (at most 50 an hour: held, counted 0, suspect), then 40 kWh.
    await publish(
        platform, site, [[(t + timedelta(hours=i), v) for i, v in enumerate([0.0, 40.0, 1_040.0, 1_080.0])]]
    )
    hours = [iso(t + timedelta(hours=i)) for i in range(3)]
    await eventually(
        lambda: hourly(platform, site.meters["main"]),
        lambda h: h == {hours[0]: (40.0, G), hours[1]: (0.0, S), hours[2]: (40.0, G)},
    )
    async with internal(platform) as client:
        (held,) = (await client.get("/internal/held", params={"point_id": site.points["main"]})).json()
        assert (await client.post(f"/internal/held/{held['id']}/confirm")).status_code == 200
    # The SUSPECT interval is withdrawn with the confirmation: the hour is MANUAL with the 1 000 kWh.
    await eventually(
        lambda: hourly(platform, site.meters["main"]),
        lambda h: h == {hours[0]: (40.0, G), hours[1]: (1_000.0, M), hours[2]: (40.0, G)},
    )


async def test_a_spike_replaced_by_later_readings_takes_their_quality(platform: Platform) -> None:
    site = await energy_site(platform, "held-supersede", higher_limit=100.0)
    t = datetime(2026, 5, 2, tzinfo=UTC)
    # 150 kWh in half an hour: more than the 100 an interval may carry: held, 0 and suspect.
    await publish(platform, site, [[(t, 1_000.0), (t + timedelta(minutes=30), 1_150.0)]])
    await eventually(lambda: hourly(platform, site.meters["main"]), lambda h: h == {iso(t): (0.0, S)})
    # The 00:15 reading arrives late: 75 + 75, both plausible and good. Nothing suspect is left.
    await publish(platform, site, [[(t + timedelta(minutes=15), 1_075.0)]])
    await eventually(lambda: hourly(platform, site.meters["main"]), lambda h: h == {iso(t): (150.0, G)})


async def test_a_rejected_spike_replaced_later_gives_the_readings_energy(platform: Platform) -> None:
    site = await energy_site(platform, "held-reject", higher_limit=100.0)
    t = datetime(2026, 5, 2, tzinfo=UTC)
    await publish(platform, site, [[(t, 1_000.0), (t + timedelta(minutes=30), 1_150.0)]])
    await eventually(lambda: hourly(platform, site.meters["main"]), lambda h: h == {iso(t): (0.0, S)})
    async with internal(platform) as client:
        (held,) = (await client.get("/internal/held", params={"point_id": site.points["main"]})).json()
        assert (await client.post(f"/internal/held/{held['id']}/reject")).status_code == 200
        # Rejected: still 0 and suspect (the reading is judged wrong, nothing is counted for it).
        await publish(platform, site, [[(t + timedelta(minutes=45), 1_160.0)]])
        await eventually(lambda: hourly(platform, site.meters["main"]), lambda h: h == {iso(t): (10.0, S)})
        # A late 00:15 reading replaces the rejected interval with 75 + 75 good kWh: 160 in the hour, and
        # nothing of the rejected 150 is taken back (it was never counted).
        await publish(platform, site, [[(t + timedelta(minutes=15), 1_075.0)]])
        await eventually(lambda: hourly(platform, site.meters["main"]), lambda h: h == {iso(t): (160.0, G)})
        (after,) = (await client.get("/internal/held", params={"point_id": site.points["main"]})).json()
        assert after["status"] == "superseded"

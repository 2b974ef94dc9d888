"""The demo site `make run` starts: provisioned through the API, simulated over MQTT, visible in reports."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from deploy.demo.__main__ import run as run_simulator
from deploy.demo.provision import provision
from tests.support import Platform, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_demo_site_energy_by_hour_appears_in_the_report(platform: Platform, tmp_path: Path) -> None:
    state = tmp_path / "demo.json"
    demo = await asyncio.to_thread(
        provision, platform.processes.url("gateway"), "administrator", platform.settings.admin_password, state
    )
    # Provisioning twice reuses what exists.
    again = await asyncio.to_thread(
        provision, platform.processes.url("gateway"), "administrator", platform.settings.admin_password, state
    )
    assert again["meters"] == demo["meters"] and again["points"] == demo["points"]

    simulator = asyncio.create_task(
        run_simulator(demo, backfill_hours=3, interval_s=1, settings=platform.settings)
    )
    try:
        now = datetime.now(ZoneInfo("Europe/Amsterdam")).replace(
            minute=0, second=0, microsecond=0, tzinfo=None
        )
        params = {
            "meterid": demo["meters"]["heat_pump"],
            "periodtype": "hourly",
            "reportingperiodstartdatetime": (now - timedelta(hours=3)).isoformat(),
            "reportingperiodenddatetime": now.isoformat(),
        }

        async def hourly() -> dict[str, Any]:
            return dict((await platform.api.get("/reports/meterenergy", params=params)).json())

        seen: list[list[float]] = []

        def settled(report: dict[str, Any]) -> bool:
            # The backfill is in once two reports a moment apart agree and the last two hours are good.
            period = report["reporting_period"]
            seen.append(period["values"])
            return period["qualities"][-2:] == ["good", "good"] and len(seen) > 1 and seen[-2] == seen[-1]

        result = await eventually(hourly, settled, within=60, every=0.5)
    finally:
        simulator.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await simulator
    values = result["reporting_period"]["values"]
    # The heat pump draws 0.15 to 1.65 kW in the model: every full hour lies in that band.
    assert all(0.15 <= value <= 1.65 for value in values[-2:]), result["reporting_period"]
    gateways = (await platform.api.get(f"/gateways/{demo['gateway_id']}")).json()
    assert gateways["status"] == "online"

"""Create the demo site through the public API, as a user would: gateway, points, meters, a space.

Idempotent: objects are looked up by name first. The gateway's token is shown only once, so it is kept in
`.gridfleet/demo.json` beside the ids the simulator needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from deploy.demo.site import ANALOG_POINTS, ENERGY_POINTS

GATEWAY_NAME = "Demo site controller"
DATASOURCE_NAME = "Demo site MQTT"
SPACE_NAME = "Demo site"
TIMEZONE = "Europe/Amsterdam"
METER_NAMES = {
    "grid_import": "Demo grid import",
    "grid_export": "Demo grid export",
    "pv": "Demo PV yield",
    "battery_charge": "Demo battery charge",
    "battery_discharge": "Demo battery discharge",
    "heat_pump": "Demo heat pump",
}
UNITS = {"grid_power": "W", "pv_power": "W", "battery_power": "W", "battery_soc": "%", "heat_pump_power": "W"}


class Api:
    def __init__(self, base_url: str, user: str, password: str) -> None:
        self.client = httpx.Client(base_url=f"{base_url}/api/v1", timeout=30)
        answer = self.client.put("/users/login", json={"data": {"name": user, "password": password}})
        answer.raise_for_status()
        body = answer.json()
        self.client.headers.update({"User-UUID": body["uuid"], "Token": body["token"]})

    def find(self, collection: str, name: str) -> dict[str, Any] | None:
        answer = self.client.get(f"/{collection}")
        answer.raise_for_status()
        return next((row for row in answer.json() if row["name"] == name), None)

    def create(self, collection: str, data: dict[str, Any]) -> dict[str, Any]:
        answer = self.client.post(f"/{collection}", json={"data": data})
        if answer.status_code != 201:
            raise RuntimeError(f"POST /{collection} failed: {answer.status_code} {answer.text}")
        return dict(answer.json())

    def ensure(self, collection: str, data: dict[str, Any]) -> int:
        found = self.find(collection, data["name"])
        return int(found["id"]) if found else int(self.create(collection, data)["id"])


def provision(base_url: str, user: str, password: str, state_file: Path) -> dict[str, Any]:
    api = Api(base_url, user, password)
    saved = json.loads(state_file.read_text()) if state_file.exists() else {}
    gateway = api.find("gateways", GATEWAY_NAME)
    if gateway is None or saved.get("gateway_uuid") != gateway["uuid"]:
        if gateway is not None:
            # The token of an existing gateway cannot be shown again: start the demo afresh.
            api.client.put(
                f"/gateways/{gateway['id']}", json={"data": {"name": f"{GATEWAY_NAME} (old {gateway['id']})"}}
            )
        created = api.create("gateways", {"name": GATEWAY_NAME, "description": "Simulated demo controller"})
        saved = {
            "gateway_id": created["id"],
            "gateway_uuid": created["uuid"],
            "gateway_token": created["token"],
        }
    # A fresh token every start: the broker's account for the demo controller is (re)made to match.
    rotated = api.client.post(f"/gateways/{saved['gateway_id']}/token")
    if rotated.status_code != 200:
        raise RuntimeError(
            f"could not issue the demo controller's token: {rotated.status_code} {rotated.text}"
        )
    saved["gateway_token"] = rotated.json()["token"]
    datasource_id = api.ensure(
        "datasources", {"name": DATASOURCE_NAME, "gateway_id": saved["gateway_id"], "protocol": "mqtt"}
    )
    category = api.find("energycategories", "Electricity")
    category_id = (
        int(category["id"])
        if category
        else api.create(
            "energycategories",
            {"name": "Electricity", "unit_of_measure": "kWh", "kgce": 0.1229, "kgco2e": 0.8825},
        )["id"]
    )
    existing = {p["name"]: p["id"] for p in api.client.get(f"/datasources/{datasource_id}/points").json()}
    points: dict[str, int] = {}
    for key in ENERGY_POINTS + ANALOG_POINTS:
        if key in existing:
            points[key] = int(existing[key])
            continue
        energy = key in ENERGY_POINTS
        points[key] = int(
            api.create(
                "points",
                {
                    "name": key,
                    "data_source_id": datasource_id,
                    "object_type": "ENERGY_VALUE" if energy else "ANALOG_VALUE",
                    "units": "kWh" if energy else UNITS[key],
                    "low_limit": 0 if energy or key == "battery_soc" else -50_000,
                    "high_limit": 99_999_999 if energy else (100 if key == "battery_soc" else 50_000),
                    "ratio": 1,
                },
            )["id"]
        )
    timezones = api.client.get("/timezones").json()
    timezone_id = next(tz["id"] for tz in timezones if tz["name"] == TIMEZONE)
    space_id = api.ensure("spaces", {"name": SPACE_NAME, "timezone_id": timezone_id, "area": 140})
    meters: dict[str, int] = {}
    for key, name in METER_NAMES.items():
        meters[key] = api.ensure("meters", {"name": name, "energy_category_id": category_id})
        api.client.post(f"/meters/{meters[key]}/points", json={"data": {"point_id": points[key]}})
        api.client.post(f"/spaces/{space_id}/meters", json={"data": {"meter_id": meters[key]}})
    saved.update({"points": points, "meters": meters, "space_id": space_id, "timezone": TIMEZONE})
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(saved, indent=2))
    state_file.chmod(0o600)
    return saved

"""The demo site's physics: a house with PV, a battery and a heat pump behind a grid meter.

Deterministic: every register value is a function of time alone (integrated minute by minute from a fixed
origin), so a restarted simulator republishes exactly the values it published before and the platform's
deduplication sees them as the same readings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ORIGIN_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE_MS = 60_000
BATTERY_CAPACITY_WH = 10_000.0
BATTERY_MAX_W = 3_000.0

# Energy registers (kWh) and instantaneous values, by point key.
ENERGY_POINTS = ("grid_import", "grid_export", "pv", "battery_charge", "battery_discharge", "heat_pump")
ANALOG_POINTS = ("grid_power", "pv_power", "battery_power", "battery_soc", "heat_pump_power")


def powers_at(ts_ms: int, utc_offset_h: float = 1.0) -> tuple[float, float, float]:
    """(pv W, house load W, heat pump W) at a moment; a smooth day curve with some weather."""
    minutes = (ts_ms - ORIGIN_MS) / MINUTE_MS
    local_hour = ((ts_ms / 3_600_000) + utc_offset_h) % 24
    day = int((ts_ms - ORIGIN_MS) // 86_400_000)
    clouds = 0.55 + 0.45 * math.sin(day * 1.7) ** 2
    pv = (
        max(0.0, 4_500.0 * math.sin(math.pi * (local_hour - 7.0) / 10.0)) * clouds
        if 7 <= local_hour <= 17
        else 0.0
    )
    house = 350.0 + 250.0 * math.sin(math.pi * local_hour / 12.0) ** 2 + 40.0 * math.sin(minutes / 7.0)
    heat_pump = 900.0 + 600.0 * math.cos(math.pi * local_hour / 12.0) + 150.0 * math.sin(minutes / 13.0)
    return pv, house, max(0.0, heat_pump)


@dataclass
class SiteState:
    ts_ms: int = ORIGIN_MS
    soc_wh: float = BATTERY_CAPACITY_WH / 2
    grid_import_wh: float = 1_234_000.0
    grid_export_wh: float = 456_000.0
    pv_wh: float = 789_000.0
    battery_charge_wh: float = 12_000.0
    battery_discharge_wh: float = 11_000.0
    heat_pump_wh: float = 345_000.0
    grid_w: float = 0.0
    pv_w: float = 0.0
    battery_w: float = 0.0
    heat_pump_w: float = 0.0

    def step_minute(self) -> None:
        """Advance one minute: the battery soaks up PV surplus and covers deficits, the grid the rest."""
        pv, house, heat_pump = powers_at(self.ts_ms)
        surplus = pv - house - heat_pump
        hours = 1 / 60
        if surplus > 0:
            battery = min(surplus, BATTERY_MAX_W, (BATTERY_CAPACITY_WH - self.soc_wh) / hours)
        else:
            battery = -min(-surplus, BATTERY_MAX_W, self.soc_wh / hours)
        grid = -(surplus - battery)  # positive imports
        self.soc_wh += battery * hours
        self.battery_charge_wh += max(battery, 0.0) * hours
        self.battery_discharge_wh += max(-battery, 0.0) * hours
        self.grid_import_wh += max(grid, 0.0) * hours
        self.grid_export_wh += max(-grid, 0.0) * hours
        self.pv_wh += pv * hours
        self.heat_pump_wh += heat_pump * hours
        self.grid_w, self.pv_w, self.battery_w, self.heat_pump_w = grid, pv, battery, heat_pump
        self.ts_ms += MINUTE_MS

    def values(self) -> dict[str, float]:
        """Every point's value now: registers in kWh, powers in W, state of charge in %."""
        return {
            "grid_import": round(self.grid_import_wh / 1000, 4),
            "grid_export": round(self.grid_export_wh / 1000, 4),
            "pv": round(self.pv_wh / 1000, 4),
            "battery_charge": round(self.battery_charge_wh / 1000, 4),
            "battery_discharge": round(self.battery_discharge_wh / 1000, 4),
            "heat_pump": round(self.heat_pump_wh / 1000, 4),
            "grid_power": round(self.grid_w, 1),
            "pv_power": round(self.pv_w, 1),
            "battery_power": round(self.battery_w, 1),
            "battery_soc": round(100 * self.soc_wh / BATTERY_CAPACITY_WH, 2),
            "heat_pump_power": round(self.heat_pump_w, 1),
        }


def state_at(ts_ms: int) -> SiteState:
    """The site as it was at the minute `ts_ms` falls in."""
    state = SiteState()
    target = ORIGIN_MS + ((ts_ms - ORIGIN_MS) // MINUTE_MS) * MINUTE_MS
    while state.ts_ms < target:
        state.step_minute()
    return state

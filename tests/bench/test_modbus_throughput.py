"""`make bench`: Modbus TCP points polled and decoded per second against the pymodbus simulator."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.ingestion.modbus.poller import ModbusSource, SourcePoller
from services.simulator.modbus_server import point_addresses
from tests.integration.test_modbus import FAST, Collector, simulator_process, source_row

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_modbus_points_polled_per_second() -> None:
    """A rough figure for the bench: the whole map (17 points, 4 requests) polled back to back by N data
    sources against one simulator running as its own process (as `make run` starts it)."""
    seconds = 2.0
    figures: dict[int, float] = {}
    async with simulator_process() as port:
        for sources in (1, 8, 32):
            pollers = []
            for index in range(sources):
                row = {**source_row(port, point_addresses()), "data_source_id": index + 1}
                pollers.append(SourcePoller(ModbusSource.from_row(row), FAST, Collector().publish))
            points = 0

            async def hammer(poller: SourcePoller, until: float) -> None:
                nonlocal points
                while time.monotonic() < until:
                    read = len(
                        await poller.poll_once()
                    )  # not `points += await ...`: that reads before awaiting
                    points += read

            # Warm up (connections, the split of the refused batch), then measure.
            await asyncio.gather(*(hammer(p, time.monotonic() + 0.3) for p in pollers))
            points = 0
            started = time.monotonic()
            await asyncio.gather(*(hammer(p, started + seconds) for p in pollers))
            figures[sources] = points / (time.monotonic() - started)
            assert all(p.state.polls_failed == 0 for p in pollers)
            for poller in pollers:
                poller.close()
    print(
        "\nmodbus points polled and decoded per second (whole map, 17 points in 4 requests per poll, one "
        "pymodbus server process): " + ", ".join(f"{n} source(s): {rate:,.0f}" for n, rate in figures.items())
    )
    assert min(figures.values()) > 100

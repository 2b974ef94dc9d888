"""A Modbus TCP inverter/meter: a pymodbus server whose registers evolve with time.

Run it: `python -m services.simulator.modbus_server --port 5020` (Ctrl-C stops it). In tests:

    async with ModbusSimulator(port=0) as sim:   # a free port, in sim.port
        ...

The same measurements are served as holding registers (function code 3) and input registers (4):

    offset  format   order (byte/word)  field
    0       uint32   big/big            energy_total_wh: cumulative energy, Wh (rolls over at 2**32)
    2       float32  big/big            active_power_w
    4       uint16   big/big            voltage_dv: voltage in 0.1 V
    5       int16    big/big            current_ca: current in 0.01 A
    6       float32  big/big            frequency_hz
    8       int64    big/big            energy_total_mwh: cumulative energy, mWh
    12      float64  big/big            active_power_w_f64
    16      uint32   big/little         energy_total_wh_ws: energy, word-swapped
    18      float32  little/little      active_power_w_sw: power, byte- and word-swapped
    20      int16    big/big            temperature_dc: inverter temperature in 0.1 °C
    21      int32    big/big            reactive_power_var (negative: the inverter absorbs)
    23      uint16   big/big            status_code (2 = producing)
    24-29   -        -                  unmapped: reading them is an illegal-address error
    30      uint32   little/big         serial_number (byte-swapped)

Coils (1): 0 running, 1 fault. Discrete inputs (2): 0 grid_connected, 1 door_open.

Power follows a smooth cycle (`period_s`, default 10 minutes) between 10 % and 100 % of `rated_w`; energy is
its exact integral, so a meter read twice never goes down (except at the uint32 rollover).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from services.ingestion.modbus.decoding import Order, encode_registers

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RegisterField:
    name: str
    offset: int
    data_format: str
    byte_order: Order = "big"
    word_order: Order = "big"

    @property
    def count(self) -> int:
        return {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}.get(self.data_format, 4)


REGISTERS: tuple[RegisterField, ...] = (
    RegisterField("energy_total_wh", 0, "uint32"),
    RegisterField("active_power_w", 2, "float32"),
    RegisterField("voltage_dv", 4, "uint16"),
    RegisterField("current_ca", 5, "int16"),
    RegisterField("frequency_hz", 6, "float32"),
    RegisterField("energy_total_mwh", 8, "int64"),
    RegisterField("active_power_w_f64", 12, "float64"),
    RegisterField("energy_total_wh_ws", 16, "uint32", word_order="little"),
    RegisterField("active_power_w_sw", 18, "float32", byte_order="little", word_order="little"),
    RegisterField("temperature_dc", 20, "int16"),
    RegisterField("reactive_power_var", 21, "int32"),
    RegisterField("status_code", 23, "uint16"),
    RegisterField("serial_number", 30, "uint32", byte_order="little"),
)
COILS: tuple[str, ...] = ("running", "fault")
DISCRETE_INPUTS: tuple[str, ...] = ("grid_connected", "door_open")
UNMAPPED = range(24, 30)
SERIAL_NUMBER = 20_260_001


def point_addresses(slave_id: int = 1, function_code: int = 3) -> dict[str, dict[str, Any]]:
    """Every field of the map as a point address the registry accepts (registers via `function_code`)."""
    out: dict[str, dict[str, Any]] = {}
    for f in REGISTERS:
        out[f.name] = {
            "slave_id": slave_id,
            "function_code": function_code,
            "offset": f.offset,
            "number_of_registers": f.count,
            "data_format": f.data_format,
            "byte_order": f.byte_order,
            "word_order": f.word_order,
        }
    for code, names in ((1, COILS), (2, DISCRETE_INPUTS)):
        for index, name in enumerate(names):
            out[name] = {
                "slave_id": slave_id,
                "function_code": code,
                "offset": index,
                "number_of_registers": 1,
            }
    return out


class InverterModel:
    """The inverter's state as a pure function of (scaled) elapsed time."""

    def __init__(
        self,
        *,
        rated_w: float = 10_000.0,
        period_s: float = 600.0,
        energy_start_wh: float = 1_234_567.0,
        speed: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rated_w = rated_w
        self.period_s = period_s
        self.energy_start_wh = energy_start_wh
        self.speed = speed
        self.clock = clock
        self.started = clock()

    def elapsed(self) -> float:
        return max(0.0, (self.clock() - self.started) * self.speed)

    def values(self, elapsed: float | None = None) -> dict[str, float | int | bool]:
        """Every field of the register map, coils and inputs included, as the device encodes them."""
        tau = self.elapsed() if elapsed is None else elapsed
        omega = 2 * math.pi / self.period_s
        # Power between 10 % and 100 % of rated; energy is its exact integral from the start.
        power = self.rated_w * (0.55 - 0.45 * math.cos(omega * tau))
        energy_wh = (
            self.energy_start_wh + self.rated_w * (0.55 * tau - 0.45 * math.sin(omega * tau) / omega) / 3600
        )
        voltage = 230.0 + 4.0 * math.sin(2 * math.pi * tau / 97.0)
        frequency = 50.0 + 0.05 * math.sin(2 * math.pi * tau / 31.0)
        return {
            "energy_total_wh": int(energy_wh) % 2**32,
            "active_power_w": power,
            "voltage_dv": round(voltage * 10),
            "current_ca": round(power / voltage * 100),
            "frequency_hz": frequency,
            "energy_total_mwh": int(energy_wh * 1000),
            "active_power_w_f64": power,
            "energy_total_wh_ws": int(energy_wh) % 2**32,
            "active_power_w_sw": power,
            "temperature_dc": round((25.0 + 20.0 * power / self.rated_w) * 10),
            "reactive_power_var": -round(0.1 * power),
            "status_code": 2,
            "serial_number": SERIAL_NUMBER,
            "running": True,
            "fault": False,
            "grid_connected": True,
            "door_open": False,
        }

    def registers(self, values: dict[str, float | int | bool] | None = None) -> dict[int, int]:
        """Register address -> 16-bit value for the whole map."""
        current = self.values() if values is None else values
        out: dict[int, int] = {}
        for f in REGISTERS:
            value = current[f.name]
            assert not isinstance(value, bool)
            for index, register in enumerate(
                encode_registers(value, f.data_format, f.byte_order, f.word_order)
            ):
                out[f.offset + index] = register
        return out


def expected_reading(name: str, values: dict[str, float | int | bool]) -> float:
    """The value a correct poller publishes for a field: floats as the device's float32 rounds them."""
    value = values[name]
    field = next((f for f in REGISTERS if f.name == name), None)
    if field is not None and field.data_format == "float32":
        return float(struct.unpack(">f", struct.pack(">f", value))[0])
    return float(value)


def _bits_register(bits: list[bool]) -> int:
    return sum(1 << index for index, bit in enumerate(bits) if bit)


class ModbusSimulator:
    """A pymodbus TCP server for `InverterModel`; an async context manager (port 0 picks a free port)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        model: InverterModel | None = None,
        device_ids: tuple[int, ...] = (1,),
    ) -> None:
        self.host = host
        self.port = port
        self.model = model or InverterModel()
        self.device_ids = device_ids
        self.reads = 0
        self._server: ModbusTcpServer | None = None

    def _device(self, device_id: int) -> SimDevice:
        registers = [
            SimData(f.offset, count=f.count, values=0, datatype=DataType.REGISTERS, readonly=True)
            for f in REGISTERS
        ]
        input_registers = [
            SimData(f.offset, count=f.count, values=0, datatype=DataType.REGISTERS, readonly=True)
            for f in REGISTERS
        ]
        coils = [SimData(0, values=[False] * 16, datatype=DataType.BITS, readonly=True)]
        inputs = [SimData(0, values=[False] * 16, datatype=DataType.BITS, readonly=True)]
        return SimDevice(
            id=device_id, simdata=(coils, inputs, registers, input_registers), action=self._on_access
        )

    async def _on_access(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Called by pymodbus before every access: bring the addressed block up to the model's now."""
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # the map is read-only
        self.reads += 1
        values = self.model.values()
        if function_code in (1, 2):
            names = COILS if function_code == 1 else DISCRETE_INPUTS
            registers[0] = _bits_register([bool(values[name]) for name in names])
            return None
        for register_address, value in self.model.registers(values).items():
            index = register_address - start_address
            if 0 <= index < len(registers):
                registers[index] = value
        return None

    async def start(self) -> ModbusSimulator:
        if self._server is not None:
            return self
        server = ModbusTcpServer([self._device(i) for i in self.device_ids], address=(self.host, self.port))
        await server.serve_forever(background=True)
        listener: Any = server.transport
        self.port = int(listener.sockets[0].getsockname()[1])
        self._server = server
        log.info("modbus simulator listening", extra={"fields": {"host": self.host, "port": self.port}})
        return self

    async def stop(self) -> None:
        """Stop listening and drop every client connection. `start()` again serves on the same port."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()

    @property
    def running(self) -> bool:
        return self._server is not None

    async def __aenter__(self) -> ModbusSimulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _serve(args: argparse.Namespace) -> None:
    model = InverterModel(
        rated_w=args.rated_w, period_s=args.period_s, energy_start_wh=args.energy_start_wh, speed=args.speed
    )
    device_ids = tuple(range(args.device_id, args.device_id + args.devices))
    async with ModbusSimulator(args.host, args.port, model=model, device_ids=device_ids) as sim:
        print(f"modbus simulator on {sim.host}:{sim.port}, device id(s) {', '.join(map(str, device_ids))}")
        for f in REGISTERS:
            order = f"{f.byte_order}/{f.word_order}"
            print(f"  {f.offset:>3}  {f.data_format:<8} {order:<14} {f.name}")
        print(f"  coils: {', '.join(COILS)}; discrete inputs: {', '.join(DISCRETE_INPUTS)}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A Modbus TCP inverter/meter simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020)
    parser.add_argument("--device-id", type=int, default=1, help="first Modbus device (slave) id")
    parser.add_argument("--devices", type=int, default=1, help="how many device ids to serve")
    parser.add_argument("--rated-w", type=float, default=10_000.0)
    parser.add_argument("--period-s", type=float, default=600.0, help="length of one power cycle")
    parser.add_argument("--energy-start-wh", type=float, default=1_234_567.0)
    parser.add_argument("--speed", type=float, default=1.0, help="time runs this many times faster")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()

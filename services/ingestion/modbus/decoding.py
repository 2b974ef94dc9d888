"""Modbus register and bit decoding (pure: no I/O).

A register is a 16-bit unsigned integer as a Modbus response carries it. Multi-register values are assembled
from their registers, then interpreted with `struct`:

- `byte_order` is the order of the two bytes inside each register: `big` (the Modbus standard: high byte
  first) or `little` (bytes swapped);
- `word_order` is the order of the registers: `big` (most significant register first, at the lowest
  address) or `little` (least significant register first, "word swapped").

So the four combinations of a 32-bit value with bytes A B C D (A most significant) read as registers:
big/big `AB CD`, big/little `CD AB`, little/big `BA DC`, little/little `DC BA`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Literal

Order = Literal["big", "little"]

# data format -> (struct code, number of registers). Names as the registry accepts them (aliases included).
FORMATS: dict[str, tuple[str, int]] = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "int64": ("q", 4),
    "uint64": ("Q", 4),
    "float": ("f", 2),
    "float32": ("f", 2),
    "double": ("d", 4),
    "float64": ("d", 4),
}
BIT_FORMATS = ("bool", "bit")
ORDERS: tuple[Order, ...] = ("big", "little")


class DecodeError(ValueError):
    """The registers cannot be read as the point's data format says."""


def register_count(data_format: str) -> int:
    """How many registers a data format takes."""
    try:
        return FORMATS[data_format][1]
    except KeyError:
        raise DecodeError(f"unknown data format {data_format!r}") from None


def _check_order(name: str, order: str) -> None:
    if order not in ORDERS:
        raise DecodeError(f"{name} must be big or little, not {order!r}")


def registers_to_bytes(
    registers: Sequence[int], byte_order: Order = "big", word_order: Order = "big"
) -> bytes:
    """The registers as one big-endian byte string, undoing the device's byte and word order."""
    _check_order("byte_order", byte_order)
    _check_order("word_order", word_order)
    ordered = reversed(registers) if word_order == "little" else registers
    out = bytearray()
    for register in ordered:
        if not 0 <= register <= 0xFFFF:
            raise DecodeError(f"register value {register} is not a 16-bit unsigned integer")
        out += register.to_bytes(2, "big" if byte_order == "big" else "little")
    return bytes(out)


def decode_registers(
    registers: Sequence[int],
    data_format: str,
    byte_order: Order = "big",
    word_order: Order = "big",
) -> int | float:
    """The value the registers hold in the given data format and byte/word order."""
    code, count = FORMATS.get(data_format, ("", 0))
    if not count:
        raise DecodeError(f"unknown data format {data_format!r}")
    if len(registers) != count:
        raise DecodeError(f"{data_format} takes {count} register(s), got {len(registers)}")
    value: int | float = struct.unpack(f">{code}", registers_to_bytes(registers, byte_order, word_order))[0]
    return value


def encode_registers(
    value: int | float,
    data_format: str,
    byte_order: Order = "big",
    word_order: Order = "big",
) -> list[int]:
    """The inverse of `decode_registers`: the registers a device would serve for `value`."""
    code, count = FORMATS.get(data_format, ("", 0))
    if not count:
        raise DecodeError(f"unknown data format {data_format!r}")
    _check_order("byte_order", byte_order)
    _check_order("word_order", word_order)
    try:
        raw = struct.pack(f">{code}", value)
    except struct.error as exc:
        raise DecodeError(f"{value!r} does not fit {data_format}: {exc}") from exc
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    registers = [int.from_bytes(word, "big" if byte_order == "big" else "little") for word in words]
    return registers[::-1] if word_order == "little" else registers


def decode_bits(bits: Sequence[bool | int]) -> int:
    """Coils or discrete inputs as a number: one bit reads 0 or 1; several pack the first bit lowest."""
    if not bits:
        raise DecodeError("no bits to decode")
    value = 0
    for index, bit in enumerate(bits):
        if bit:
            value |= 1 << index
    return value

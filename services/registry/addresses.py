"""Point addresses, validated per protocol (seed 001's point model).

Pure: no I/O. Each validator returns the problems found as `(field, message)` pairs, so an API can name
every offending field at once.
"""

from __future__ import annotations

from typing import Any

# Register-based formats and how many 16-bit registers each needs.
DATA_FORMATS: dict[str, int] = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
    "float": 2, "float32": 2, "double": 4, "float64": 4,
}  # fmt: skip
BIT_FUNCTIONS = (1, 2)  # read coils, read discrete inputs
REGISTER_FUNCTIONS = (3, 4)  # read holding registers, read input registers
ORDERS = ("big", "little")


def _int(
    address: dict[str, Any], key: str, low: int, high: int, problems: list[tuple[str, str]]
) -> int | None:
    value = address.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append((f"address.{key}", f"{key} must be an integer {low}-{high}"))
        return None
    if not low <= value <= high:
        problems.append((f"address.{key}", f"{key} must be {low}-{high}"))
        return None
    return value


def modbus_tcp_problems(address: dict[str, Any]) -> list[tuple[str, str]]:
    """Modbus TCP: slave_id, function_code 1-4, offset, number_of_registers, data_format, byte/word order."""
    problems: list[tuple[str, str]] = []
    _int(address, "slave_id", 0, 255, problems)
    function = _int(address, "function_code", 1, 4, problems)
    offset = _int(address, "offset", 0, 65535, problems)
    count = _int(address, "number_of_registers", 1, 2000, problems)
    data_format = address.get("data_format", address.get("format"))
    if function in REGISTER_FUNCTIONS:
        if data_format not in DATA_FORMATS:
            problems.append(("address.data_format", f"data_format must be one of {', '.join(DATA_FORMATS)}"))
        elif count is not None and count != DATA_FORMATS[data_format]:
            problems.append(
                (
                    "address.number_of_registers",
                    f"{data_format} takes {DATA_FORMATS[data_format]} register(s), not {count}",
                )
            )
        if count is not None and count > 125:
            problems.append(("address.number_of_registers", "at most 125 registers can be read at once"))
    elif function in BIT_FUNCTIONS and data_format not in (None, "bool", "bit"):
        problems.append(("address.data_format", "coils and discrete inputs are read as bool"))
    if offset is not None and count is not None and offset + count > 65536:
        problems.append(("address.offset", "offset + number_of_registers runs past register 65535"))
    for key in ("byte_order", "word_order"):
        if key in address and address[key] not in ORDERS:
            problems.append((f"address.{key}", f"{key} must be big or little"))
    unknown = set(address) - {
        "slave_id",
        "function_code",
        "offset",
        "number_of_registers",
        "data_format",
        "format",
        "byte_order",
        "word_order",
    }
    problems.extend((f"address.{key}", "unknown field for a modbus-tcp address") for key in sorted(unknown))
    return problems


def mqtt_problems(address: dict[str, Any]) -> list[tuple[str, str]]:
    """MQTT-fed points: readings arrive by point id; an optional `json_path` names the value in a payload."""
    problems: list[tuple[str, str]] = []
    path = address.get("json_path")
    if path is not None and (not isinstance(path, str) or not path or len(path) > 255):
        problems.append(("address.json_path", "json_path must be a non-empty string"))
    return problems


def address_problems(protocol: str, address: dict[str, Any]) -> list[tuple[str, str]]:
    """What is wrong with a point's address for its data source's protocol (other protocols: free JSON)."""
    if protocol == "modbus-tcp":
        return modbus_tcp_problems(address)
    if protocol == "mqtt":
        return mqtt_problems(address)
    return []

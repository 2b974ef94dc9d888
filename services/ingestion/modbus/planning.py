"""Read planning (pure): a data source's points grouped into as few Modbus read requests as reasonable.

Points are grouped per (slave id, function code). Within a group, sorted by address, a point joins the
current request when it overlaps or follows it closely (a gap of at most `max_gap` registers, or
`max_bit_gap` coils/inputs) and the request stays within the protocol's limit: 125 registers for function
codes 3 and 4, 2000 bits for 1 and 2. Every point is covered by exactly one request.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from services.ingestion.modbus.decoding import BIT_FORMATS, FORMATS, ORDERS, Order

MAX_REGISTERS = 125  # function codes 3 and 4
MAX_BITS = 2000  # function codes 1 and 2
BIT_FUNCTIONS = (1, 2)
REGISTER_FUNCTIONS = (3, 4)


class AddressError(ValueError):
    """A point's address cannot be polled."""


@dataclass(frozen=True, slots=True)
class PointRead:
    """What to read for one point and how to decode it."""

    point_id: int
    slave_id: int
    function_code: int
    offset: int
    count: int  # registers for 3/4, bits for 1/2
    data_format: str | None = None  # None for coils and discrete inputs
    byte_order: Order = "big"
    word_order: Order = "big"

    @property
    def end(self) -> int:
        return self.offset + self.count

    @property
    def is_bits(self) -> bool:
        return self.function_code in BIT_FUNCTIONS


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: `count` registers (or bits) from `start` of one slave, serving `points`."""

    slave_id: int
    function_code: int
    start: int
    count: int
    points: tuple[PointRead, ...]

    @property
    def end(self) -> int:
        return self.start + self.count

    @property
    def is_bits(self) -> bool:
        return self.function_code in BIT_FUNCTIONS

    def window(self, point: PointRead) -> slice:
        """Where `point`'s registers (or bits) sit in this request's response."""
        return slice(point.offset - self.start, point.end - self.start)


def _int(address: Mapping[str, Any], key: str, low: int, high: int, default: int | None = None) -> int:
    value = address.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AddressError(f"{key} must be an integer {low}-{high}, not {value!r}")
    return value


def parse_point(point_id: int, address: Mapping[str, Any]) -> PointRead:
    """A point's modbus-tcp address (as the registry validates it) as a `PointRead`."""
    slave_id = _int(address, "slave_id", 0, 255)
    function_code = _int(address, "function_code", 1, 4)
    offset = _int(address, "offset", 0, 65535)
    data_format = address.get("data_format", address.get("format"))
    orders = {}
    for key in ("byte_order", "word_order"):
        order = address.get(key, "big")
        if order not in ORDERS:
            raise AddressError(f"{key} must be big or little, not {order!r}")
        orders[key] = cast(Order, order)
    if function_code in BIT_FUNCTIONS:
        if data_format not in (None, *BIT_FORMATS):
            raise AddressError("coils and discrete inputs are read as bool")
        count = _int(address, "number_of_registers", 1, MAX_BITS, default=1)
        data_format = None
    else:
        if data_format not in FORMATS:
            raise AddressError(f"data_format must be one of {', '.join(FORMATS)}, not {data_format!r}")
        count = FORMATS[data_format][1]
        declared = address.get("number_of_registers", count)
        if declared != count:
            raise AddressError(f"{data_format} takes {count} register(s), not {declared!r}")
    if offset + count > 65536:
        raise AddressError("offset + number_of_registers runs past address 65535")
    return PointRead(point_id, slave_id, function_code, offset, count, data_format, **orders)


def parse_points(points: Iterable[Mapping[str, Any]]) -> tuple[list[PointRead], dict[int, str]]:
    """`[{"point_id", "address"}]` as reads, and the reason for every point that cannot be polled."""
    reads: list[PointRead] = []
    problems: dict[int, str] = {}
    for point in points:
        point_id = int(point["point_id"])
        address = point.get("address")
        if not isinstance(address, Mapping):
            problems[point_id] = "address is not an object"
            continue
        try:
            reads.append(parse_point(point_id, address))
        except AddressError as exc:
            problems[point_id] = str(exc)
    return reads, problems


def limit_of(function_code: int) -> int:
    return MAX_BITS if function_code in BIT_FUNCTIONS else MAX_REGISTERS


def plan_reads(points: Iterable[PointRead], *, max_gap: int = 8, max_bit_gap: int = 64) -> list[ReadRequest]:
    """Batch the points into read requests; requests come ordered by slave, function code and address."""
    groups: dict[tuple[int, int], list[PointRead]] = defaultdict(list)
    for point in points:
        if point.count > limit_of(point.function_code):
            raise AddressError(f"point {point.point_id} spans more than one request can read")
        groups[(point.slave_id, point.function_code)].append(point)
    requests: list[ReadRequest] = []
    for (slave_id, function_code), members in sorted(groups.items()):
        limit = limit_of(function_code)
        gap = max_bit_gap if function_code in BIT_FUNCTIONS else max_gap
        members.sort(key=lambda p: (p.offset, p.end, p.point_id))
        batch: list[PointRead] = []
        start = end = 0
        for point in members:
            if batch and point.offset <= end + gap and max(end, point.end) - start <= limit:
                batch.append(point)
                end = max(end, point.end)
                continue
            if batch:
                requests.append(ReadRequest(slave_id, function_code, start, end - start, tuple(batch)))
            batch, start, end = [point], point.offset, point.end
        if batch:
            requests.append(ReadRequest(slave_id, function_code, start, end - start, tuple(batch)))
    return requests


def split(request: ReadRequest) -> list[ReadRequest]:
    """Smaller reads for a device that refused `request` (e.g. a gap holds unmapped registers).

    First the contiguous runs of its points (no gaps read at all); a request that is already contiguous
    becomes one read per point. A single-point request cannot be split and comes back as it is.
    """
    contiguous = plan_reads(request.points, max_gap=0, max_bit_gap=0)
    if len(contiguous) > 1:
        return contiguous
    return [ReadRequest(p.slave_id, p.function_code, p.offset, p.count, (p,)) for p in request.points]

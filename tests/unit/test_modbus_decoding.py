"""Modbus acquisition, pure parts: register decoding in every format and order, and read planning."""

from __future__ import annotations

import itertools
import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client import ModbusTcpClient

from services.ingestion.modbus.decoding import (
    FORMATS,
    DecodeError,
    decode_bits,
    decode_registers,
    encode_registers,
    register_count,
)
from services.ingestion.modbus.planning import (
    MAX_BITS,
    MAX_REGISTERS,
    AddressError,
    PointRead,
    parse_point,
    parse_points,
    plan_reads,
    split,
)
from services.registry.addresses import DATA_FORMATS, modbus_tcp_problems

PROPERTY = settings(max_examples=300, deadline=None)
ORDERS = ("big", "little")
INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
FLOAT32 = ("float", "float32")
FLOAT64 = ("double", "float64")


def device_registers(raw: bytes, byte_order: str, word_order: str) -> list[int]:
    """How a device lays out a big-endian value: bytes swapped in each register, registers reversed."""
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if byte_order == "little":
        words = [word[::-1] for word in words]
    if word_order == "little":
        words.reverse()
    return [int.from_bytes(word, "big") for word in words]


def test_the_registry_and_the_decoder_agree_on_formats() -> None:
    assert {name: register_count(name) for name in FORMATS} == DATA_FORMATS


@PROPERTY
@given(st.data(), st.sampled_from(sorted(INT_RANGES)), st.sampled_from(ORDERS), st.sampled_from(ORDERS))
def test_integers_round_trip_in_every_order(
    data: st.DataObject, fmt: str, byte_order: str, word_order: str
) -> None:
    low, high = INT_RANGES[fmt]
    value = data.draw(st.integers(low, high))
    registers = device_registers(struct.pack(f">{FORMATS[fmt][0]}", value), byte_order, word_order)
    assert len(registers) == register_count(fmt)
    assert decode_registers(registers, fmt, byte_order, word_order) == value  # type: ignore[arg-type]
    assert encode_registers(value, fmt, byte_order, word_order) == registers  # type: ignore[arg-type]


@PROPERTY
@given(
    st.floats(allow_nan=False, allow_infinity=False, min_value=-3.4e38, max_value=3.4e38),
    st.sampled_from(FLOAT32),
    st.sampled_from(ORDERS),
    st.sampled_from(ORDERS),
)
def test_float32_round_trips_within_float32_precision(
    value: float, fmt: str, byte_order: str, word_order: str
) -> None:
    registers = device_registers(struct.pack(">f", value), byte_order, word_order)
    decoded = decode_registers(registers, fmt, byte_order, word_order)  # type: ignore[arg-type]
    assert math.isclose(decoded, value, rel_tol=2**-23, abs_tol=1.2e-38)


@PROPERTY
@given(st.floats(width=32, allow_nan=False), st.sampled_from(ORDERS), st.sampled_from(ORDERS))
def test_a_float32_value_comes_back_exactly(value: float, byte_order: str, word_order: str) -> None:
    registers = device_registers(struct.pack(">f", value), byte_order, word_order)
    assert decode_registers(registers, "float32", byte_order, word_order) == value  # type: ignore[arg-type]


@PROPERTY
@given(st.floats(allow_nan=False), st.sampled_from(FLOAT64), st.sampled_from(ORDERS), st.sampled_from(ORDERS))
def test_float64_round_trips_exactly(value: float, fmt: str, byte_order: str, word_order: str) -> None:
    registers = device_registers(struct.pack(">d", value), byte_order, word_order)
    decoded = decode_registers(registers, fmt, byte_order, word_order)  # type: ignore[arg-type]
    assert decoded == value and math.copysign(1, decoded) == math.copysign(1, value)
    assert encode_registers(value, fmt, byte_order, word_order) == registers  # type: ignore[arg-type]


def test_nan_decodes_as_nan() -> None:
    assert math.isnan(decode_registers([0x7FC0, 0x0000], "float32"))


@pytest.mark.parametrize(
    ("byte_order", "word_order", "registers"),
    [
        ("big", "big", [0x1234, 0x5678]),  # AB CD: the Modbus standard
        ("big", "little", [0x5678, 0x1234]),  # CD AB: word swapped
        ("little", "big", [0x3412, 0x7856]),  # BA DC: byte swapped
        ("little", "little", [0x7856, 0x3412]),  # DC BA: both
    ],
)
def test_the_four_layouts_of_a_32_bit_value(byte_order: str, word_order: str, registers: list[int]) -> None:
    assert decode_registers(registers, "uint32", byte_order, word_order) == 0x12345678  # type: ignore[arg-type]


@PROPERTY
@given(
    st.sampled_from(["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]),
    st.sampled_from(ORDERS),
    st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4),
)
def test_agrees_with_pymodbus_for_big_endian_registers(
    fmt: str, word_order: str, registers: list[int]
) -> None:
    registers = registers[: register_count(fmt)]
    theirs = ModbusTcpClient.convert_from_registers(
        registers,
        getattr(ModbusTcpClient.DATATYPE, fmt.upper()),
        word_order=word_order,  # type: ignore[arg-type]
    )
    ours = decode_registers(registers, fmt, "big", word_order)  # type: ignore[arg-type]
    assert (math.isnan(ours) and math.isnan(theirs)) if ours != ours else ours == theirs  # type: ignore[arg-type]


def test_bits_decode_to_0_or_1_and_several_pack_lowest_first() -> None:
    assert decode_bits([True]) == 1
    assert decode_bits([False]) == 0
    assert decode_bits([1, 0, 1]) == 5
    with pytest.raises(DecodeError):
        decode_bits([])


@pytest.mark.parametrize(
    ("registers", "fmt", "byte_order"),
    [
        ([1], "uint32", "big"),  # too few
        ([1, 2, 3], "float32", "big"),  # too many
        ([70000], "uint16", "big"),  # not a register
        ([-1], "int16", "big"),
        ([1], "string", "big"),  # unknown format
        ([1], "uint16", "middle"),  # unknown order
    ],
)
def test_registers_that_do_not_fit_are_refused(registers: list[int], fmt: str, byte_order: str) -> None:
    with pytest.raises(DecodeError):
        decode_registers(registers, fmt, byte_order)  # type: ignore[arg-type]


# -- planning ----------------------------------------------------------------------------------------


@st.composite
def registry_addresses(draw: st.DrawFn) -> dict[str, Any]:
    """Any modbus-tcp address the registry accepts."""
    function_code = draw(st.integers(1, 4))
    if function_code in (1, 2):
        count = draw(st.integers(1, 40))
        address: dict[str, Any] = {"number_of_registers": count}
        if draw(st.booleans()):
            address["data_format"] = draw(st.sampled_from(["bool", "bit"]))
    else:
        data_format = draw(st.sampled_from(sorted(DATA_FORMATS)))
        count = DATA_FORMATS[data_format]
        address = {"number_of_registers": count, "data_format": data_format}
        for key in ("byte_order", "word_order"):
            if draw(st.booleans()):
                address[key] = draw(st.sampled_from(ORDERS))
    address.update(
        slave_id=draw(st.integers(0, 255)),
        function_code=function_code,
        offset=draw(st.integers(0, 65536 - count)),
    )
    return address


@PROPERTY
@given(registry_addresses())
def test_every_address_the_registry_accepts_can_be_polled(address: dict[str, Any]) -> None:
    assert modbus_tcp_problems(address) == []
    read = parse_point(7, address)
    assert (read.slave_id, read.function_code, read.offset) == (
        address["slave_id"],
        address["function_code"],
        address["offset"],
    )
    assert read.count == address["number_of_registers"]
    assert read.byte_order == address.get("byte_order", "big")
    assert read.word_order == address.get("word_order", "big")


@pytest.mark.parametrize(
    "address",
    [
        {"function_code": 3, "offset": 0, "data_format": "uint16"},  # no slave
        {"slave_id": 1, "function_code": 5, "offset": 0, "data_format": "uint16"},
        {"slave_id": 1, "function_code": 3, "offset": 0, "data_format": "string"},
        {"slave_id": 1, "function_code": 3, "offset": 0, "data_format": "uint32", "number_of_registers": 1},
        {"slave_id": 1, "function_code": 3, "offset": 65535, "data_format": "uint32"},
        {"slave_id": 1, "function_code": 3, "offset": 0, "data_format": "uint16", "byte_order": "mixed"},
        {"slave_id": 1, "function_code": 1, "offset": 0, "data_format": "float32"},
    ],
)
def test_addresses_that_cannot_be_polled_are_named(address: dict[str, Any]) -> None:
    with pytest.raises(AddressError):
        parse_point(1, address)
    reads, problems = parse_points([{"point_id": 1, "address": address}, {"point_id": 2, "address": None}])
    assert reads == [] and set(problems) == {1, 2}


_REGISTER_FORMATS = sorted(DATA_FORMATS)
_point_fields = st.tuples(
    st.integers(1, 2),  # slave
    st.integers(1, 4),  # function code
    st.integers(0, 5000),  # offset (folded into the drawn span)
    st.integers(0, len(_REGISTER_FORMATS) - 1),  # format, for registers
    st.sampled_from([1, 1, 2, 3, MAX_BITS]),  # bits, for coils and inputs
)


@st.composite
def point_sets(draw: st.DrawFn) -> list[PointRead]:
    """Points crowded into a few slaves and a small address range, so batching has work to do."""
    span = draw(st.sampled_from([60, 400, 5000]))
    points = []
    for point_id, (slave_id, function_code, offset, fmt, bits) in enumerate(
        draw(st.lists(_point_fields, max_size=50)), start=1
    ):
        if function_code in (1, 2):
            count, data_format = bits, None
        else:
            data_format = _REGISTER_FORMATS[fmt]
            count = DATA_FORMATS[data_format]
        points.append(PointRead(point_id, slave_id, function_code, offset % (span + 1), count, data_format))
    return points


def limit(function_code: int) -> int:
    return MAX_BITS if function_code in (1, 2) else MAX_REGISTERS


def largest_hole(request_start: int, request_end: int, points: tuple[PointRead, ...]) -> int:
    """The longest run of addresses in the request that no point needs."""
    covered = sorted((p.offset, p.end) for p in points)
    hole, reached = 0, request_start
    for begin, end in covered:
        hole = max(hole, begin - reached)
        reached = max(reached, end)
    return max(hole, request_end - reached)


@PROPERTY
@given(point_sets(), st.integers(0, 16), st.integers(0, 100))
def test_every_point_is_read_by_exactly_one_request_within_the_limits(
    points: list[PointRead], max_gap: int, max_bit_gap: int
) -> None:
    plan = plan_reads(points, max_gap=max_gap, max_bit_gap=max_bit_gap)
    served = [p.point_id for request in plan for p in request.points]
    assert sorted(served) == sorted(p.point_id for p in points)
    for request in plan:
        assert 1 <= request.count <= limit(request.function_code)
        assert request.start >= 0 and request.end <= 65536
        for point in request.points:
            assert (point.slave_id, point.function_code) == (request.slave_id, request.function_code)
            assert request.start <= point.offset and point.end <= request.end
            window = request.window(point)
            assert window.stop - window.start == point.count
        # The request starts and ends at a point, and never reads a hole wider than the allowed gap.
        assert request.start == min(p.offset for p in request.points)
        assert request.end == max(p.end for p in request.points)
        gap = max_bit_gap if request.is_bits else max_gap
        assert largest_hole(request.start, request.end, request.points) <= gap


@PROPERTY
@given(point_sets(), st.integers(0, 16))
def test_requests_are_merged_when_they_could_be(points: list[PointRead], max_gap: int) -> None:
    plan = plan_reads(points, max_gap=max_gap, max_bit_gap=max_gap)
    for before, after in itertools.pairwise(plan):
        if (before.slave_id, before.function_code) != (after.slave_id, after.function_code):
            continue
        assert before.start <= after.start
        # Kept apart only for a reason: too far apart, or together too long for one request.
        first = min(after.points, key=lambda p: (p.offset, p.end, p.point_id))
        assert first.offset == after.start
        too_far = after.start > before.end + max_gap
        too_long = max(before.end, first.end) - before.start > limit(before.function_code)
        assert too_far or too_long


def test_adjacent_registers_become_one_read_and_distant_ones_two() -> None:
    points = [
        PointRead(1, 1, 3, 0, 2, "uint32"),
        PointRead(2, 1, 3, 2, 2, "float32"),
        PointRead(3, 1, 3, 10, 1, "uint16"),  # a gap of 6: still batched
        PointRead(4, 1, 3, 200, 4, "float64"),  # far: its own read
        PointRead(5, 1, 4, 0, 1, "uint16"),  # another function: its own read
        PointRead(6, 2, 3, 0, 1, "uint16"),  # another slave: its own read
        PointRead(7, 1, 3, 1, 2, "int32"),  # overlaps 1 and 2
    ]
    plan = plan_reads(points)
    summary = [
        (r.slave_id, r.function_code, r.start, r.count, sorted(p.point_id for p in r.points)) for r in plan
    ]
    assert summary == [
        (1, 3, 0, 11, [1, 2, 3, 7]),
        (1, 3, 200, 4, [4]),
        (1, 4, 0, 1, [5]),
        (2, 3, 0, 1, [6]),
    ]


def test_a_request_never_passes_125_registers() -> None:
    points = [PointRead(i + 1, 1, 3, 2 * i, 2, "float32") for i in range(100)]  # 200 contiguous registers
    plan = plan_reads(points)
    assert [r.count for r in plan] == [124, 76]


@PROPERTY
@given(point_sets())
def test_a_refused_request_splits_into_gapless_reads_of_the_same_points(points: list[PointRead]) -> None:
    for request in plan_reads(points, max_gap=16, max_bit_gap=100):
        parts = split(request)
        assert sorted(p.point_id for part in parts for p in part.points) == sorted(
            p.point_id for p in request.points
        )
        for part in parts:
            assert largest_hole(part.start, part.end, part.points) == 0
            assert part.count <= request.count
        if len(request.points) > 1:
            assert len(parts) > 1

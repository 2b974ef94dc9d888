"""Point address validation per protocol: the whole valid space is accepted, everything else is named."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.registry.addresses import DATA_FORMATS, address_problems, modbus_tcp_problems

PROPERTY = settings(max_examples=300, deadline=None)


@st.composite
def valid_register_addresses(draw: st.DrawFn) -> dict[str, object]:
    data_format = draw(st.sampled_from(sorted(DATA_FORMATS)))
    count = DATA_FORMATS[data_format]
    return {
        "slave_id": draw(st.integers(0, 255)),
        "function_code": draw(st.sampled_from([3, 4])),
        "offset": draw(st.integers(0, 65536 - count)),
        "number_of_registers": count,
        "data_format": data_format,
        "byte_order": draw(st.sampled_from(["big", "little"])),
        "word_order": draw(st.sampled_from(["big", "little"])),
    }


@PROPERTY
@given(valid_register_addresses())
def test_every_well_formed_register_address_is_accepted(address: dict[str, object]) -> None:
    assert modbus_tcp_problems(address) == []


@PROPERTY
@given(valid_register_addresses(), st.sampled_from(["slave_id", "function_code", "offset", "number_of_registers"]),
       st.one_of(st.integers(-5, -1), st.integers(70000, 10**9), st.text(max_size=3), st.booleans(), st.none()))  # fmt: skip
def test_a_broken_field_is_named(address: dict[str, object], key: str, bad: object) -> None:
    address[key] = bad
    assert f"address.{key}" in [field for field, _ in modbus_tcp_problems(address)]


def test_myems_example_address_is_valid() -> None:
    example = {
        "slave_id": 1,
        "function_code": 3,
        "offset": 1,
        "number_of_registers": 2,
        "data_format": "float",
    }
    assert address_problems("modbus-tcp", example) == []


def test_register_count_must_fit_the_format() -> None:
    problems = modbus_tcp_problems(
        {"slave_id": 1, "function_code": 3, "offset": 0, "number_of_registers": 1, "data_format": "float"}
    )
    assert problems == [("address.number_of_registers", "float takes 2 register(s), not 1")]


def test_write_function_codes_are_refused() -> None:
    problems = modbus_tcp_problems(
        {"slave_id": 1, "function_code": 6, "offset": 0, "number_of_registers": 1, "data_format": "int16"}
    )
    assert ("address.function_code", "function_code must be 1-4") in problems


def test_unknown_keys_are_named_and_other_protocols_take_free_json() -> None:
    problems = modbus_tcp_problems(
        {"slave_id": 1, "function_code": 1, "offset": 0, "number_of_registers": 8, "colour": "red"}
    )
    assert ("address.colour", "unknown field for a modbus-tcp address") in problems
    assert address_problems("bacnet-ip", {"object_type": "analogValue"}) == []

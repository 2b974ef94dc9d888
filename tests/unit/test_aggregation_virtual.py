"""Virtual meters evaluated per quarter from their variables."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.expressions import ExpressionError
from proto_schemas.quality import Quality
from services.aggregation.virtual import (
    METER,
    OFFLINE,
    VIRTUAL,
    VirtualMeter,
    evaluate,
    evaluation_order,
    parse_definition,
    plan,
)

Q = 900_000


def definition(equation: str, *variables: tuple[str, str, int]) -> dict[str, object]:
    return {
        "equation": equation,
        "variables": [{"name": n, "meter_type": k, "meter_id": i} for n, k, i in variables],
    }


def test_net_consumption_per_quarter_with_the_worst_quality() -> None:
    vm = parse_definition(1, definition("x1 - x2", ("x1", METER, 10), ("x2", OFFLINE, 20)))
    inputs = {
        (METER, 10): {0: (5.0, Quality.GOOD), Q: (6.0, Quality.ESTIMATED), 2 * Q: (1.0, Quality.GOOD)},
        (OFFLINE, 20): {0: (1.5, Quality.MANUAL), Q: (2.0, Quality.MANUAL)},
    }
    values, errors = evaluate(vm, inputs)
    assert values == {0: (3.5, Quality.MANUAL), Q: (4.0, Quality.ESTIMATED)}
    assert errors == {}


def test_a_quarter_missing_an_input_gets_no_value_rather_than_a_zero() -> None:
    vm = parse_definition(1, definition("a + b", ("a", METER, 1), ("b", METER, 2)))
    values, _ = evaluate(
        vm, {(METER, 1): {0: (1.0, 0), Q: (1.0, 0)}, (METER, 2): {Q: (2.0, 0)}}, [0, Q, 2 * Q]
    )
    assert values == {Q: (3.0, 0)}


def test_a_quarter_that_divides_by_zero_is_reported_not_stored() -> None:
    vm = parse_definition(1, definition("a / b", ("a", METER, 1), ("b", METER, 2)))
    values, errors = evaluate(
        vm, {(METER, 1): {0: (1.0, 0), Q: (1.0, 0)}, (METER, 2): {0: (0.0, 0), Q: (4.0, 0)}}
    )
    assert values == {Q: (0.25, 0)}
    assert list(errors) == [0] and "division by zero" in errors[0]


def test_declared_but_unused_variables_are_not_required() -> None:
    vm = parse_definition(1, definition("2 * a", ("a", METER, 1), ("b", METER, 2)))
    assert vm.inputs == {(METER, 1)}
    assert evaluate(vm, {(METER, 1): {0: (1.5, 0)}})[0] == {0: (3.0, 0)}


def test_definitions_stored_as_text_are_read_too() -> None:
    text = orjson.dumps(definition("x", ("x", VIRTUAL, "3"))).decode()  # type: ignore[arg-type]
    assert parse_definition(4, text).variables == {"x": (VIRTUAL, 3)}


@pytest.mark.parametrize(
    "expression",
    [
        definition("x1 + x3", ("x1", METER, 1)),
        definition("__import__('os')", ("x1", METER, 1)),
        {"equation": "x1", "variables": [{"name": "x1", "meter_type": "sensor", "meter_id": 1}]},
        {"equation": 5, "variables": []},
        [],
    ],
)
def test_definitions_that_cannot_be_evaluated_are_refused(expression: object) -> None:
    with pytest.raises((ExpressionError, ValueError)):
        parse_definition(1, expression)


def meters(**equations: tuple[str, list[tuple[str, str, int]]]) -> dict[int, VirtualMeter]:
    return {
        int(ident[1:]): parse_definition(int(ident[1:]), definition(eq, *variables))
        for ident, (eq, variables) in equations.items()
    }


def test_virtual_meters_are_evaluated_after_those_they_use_and_cycles_never() -> None:
    defined = meters(
        v1=("a", [("a", METER, 1)]),
        v2=("v + 1", [("v", VIRTUAL, 1)]),
        v3=("v + w", [("v", VIRTUAL, 2), ("w", VIRTUAL, 1)]),
        v4=("x", [("x", VIRTUAL, 5)]),
        v5=("x", [("x", VIRTUAL, 4)]),
        v6=("x", [("x", VIRTUAL, 5)]),
        v7=("x", [("x", VIRTUAL, 99)]),  # an unknown virtual meter: evaluated, never has values
    )
    order, cyclic = evaluation_order(defined)
    assert order.index(1) < order.index(2) < order.index(3)
    assert cyclic == {4, 5, 6}
    assert 7 in order


def test_only_the_quarters_a_change_touched_are_recomputed_and_everything_after_a_redefinition() -> None:
    defined = meters(
        v1=("a - b", [("a", METER, 1), ("b", METER, 2)]),
        v2=("v * 2", [("v", VIRTUAL, 1)]),
        v3=("c", [("c", OFFLINE, 3)]),
    )
    order, _ = evaluation_order(defined)
    steps = dict(plan(defined, order, set(), {(METER, 1): {0}, (METER, 2): {Q}, (METER, 9): {2 * Q}}))
    assert steps == {1: {0, Q}, 2: {0, Q}}
    steps = dict(plan(defined, order, {(OFFLINE, 3), (VIRTUAL, 1)}, {}))
    assert steps == {1: None, 2: None, 3: None}
    steps = dict(plan(defined, order, {(METER, 2)}, {}))
    assert steps == {1: None, 2: None}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.integers(0, 40), st.tuples(st.floats(-1e6, 1e6), st.integers(0, 5)), max_size=40),
        min_size=1,
        max_size=5,
    )
)
def test_a_sum_of_meters_is_their_sum_where_all_have_energy(
    series: list[dict[int, tuple[float, int]]],
) -> None:
    names = [f"x{i}" for i in range(len(series))]
    vm = parse_definition(1, definition("+".join(names), *[(n, METER, i) for i, n in enumerate(names)]))
    values, errors = evaluate(vm, {(METER, i): s for i, s in enumerate(series)})
    common = set.intersection(*(set(s) for s in series))
    assert values.keys() == common and not errors
    for quarter, (value, quality) in values.items():
        assert math.isclose(value, sum(s[quarter][0] for s in series), rel_tol=1e-9, abs_tol=1e-6)
        assert quality == max(s[quarter][1] for s in series)

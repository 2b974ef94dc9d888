"""Safe arithmetic expressions for virtual meters and points, and cycles between virtual meters."""

from __future__ import annotations

import graphlib
import math
import pickle
import time
from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.expressions import Expression, ExpressionError, dependency_cycle, parse

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


# --- parse and evaluate ------------------------------------------------------------------------------------


def test_myems_virtual_meter_equation_adds_and_subtracts_meters() -> None:
    expression = parse("x1+x2-x3", allowed=["x1", "x2", "x3"])
    assert expression.text == "x1+x2-x3"
    assert expression.variables == frozenset({"x1", "x2", "x3"})
    assert expression.evaluate({"x1": 10.0, "x2": 5.5, "x3": 2.0}) == 13.5


def test_subtraction_is_left_associative() -> None:
    assert parse("x1-x2-x3").evaluate({"x1": 10, "x2": 3, "x3": 2}) == 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1+2*3", 7),
        ("(1+2)*3", 9),
        ("2*3+1", 7),
        ("8/4/2", 1),
        ("8/(4/2)", 4),
        ("10-4+3", 9),
        ("10-(4+3)", 3),
        ("2*(3+(4-1))*2", 24),
        (" 1 +\t2 ", 3),
        ("1.5*2", 3),
        (".5+1.", 1.5),
        ("2e3/1E-1", 20000),
    ],
)
def test_precedence_and_parentheses_follow_arithmetic(text: str, expected: float) -> None:
    assert parse(text).evaluate({}) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-x", -4),
        ("--x", 4),
        ("-x*2", -8),
        ("2*-x", -8),
        ("-(x-1)", -3),
        ("+x", 4),
        ("1- -x", 5),
        ("-2-x", -6),
    ],
)
def test_unary_minus_and_plus(text: str, expected: float) -> None:
    assert parse(text).evaluate({"x": 4}) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("min(x, y)", 2),
        ("max(x, y)", 7),
        ("min(x, y, 1)", 1),
        ("max(x)", 2),
        ("abs(x-y)", 5),
        ("abs(-x)", 2),
        ("max(0, min(x, y) - 5) + abs(y * -1)", 7),
        ("min (x , y)", 2),
    ],
)
def test_min_max_abs(text: str, expected: float) -> None:
    assert parse(text).evaluate({"x": 2, "y": 7}) == expected


def test_variables_are_collected_once_each() -> None:
    assert parse("a + a*b - min(b, _c9)").variables == frozenset({"a", "b", "_c9"})


def test_unknown_variable_is_named_when_allowed_is_given() -> None:
    with pytest.raises(ExpressionError) as caught:
        parse("x1+x2-x4 + x5", allowed=("x1", "x2", "x3"))
    assert caught.value.message == "unknown variable x4"
    assert caught.value.position == 6


def test_allowed_accepts_a_subset_and_a_generator() -> None:
    assert parse("x1", allowed=(f"x{i}" for i in range(1, 4))).variables == frozenset({"x1"})


def test_evaluate_rejects_a_missing_variable() -> None:
    with pytest.raises(ExpressionError, match="no value for variable x3") as caught:
        parse("x1+x2-x3").evaluate({"x1": 1.0, "x2": 2.0})
    assert caught.value.position == 6


@pytest.mark.parametrize("bad", ["1.5", None, [1.0], math.nan, math.inf])
def test_evaluate_rejects_values_that_are_not_finite_numbers(bad: object) -> None:
    with pytest.raises(ExpressionError, match="value of x"):
        parse("x").evaluate({"x": bad})  # type: ignore[dict-item]


@pytest.mark.parametrize("text", ["x/0", "x/(y-y)", "1/(0*x)", "x/-0.0"])
def test_division_by_zero_is_an_expression_error(text: str) -> None:
    with pytest.raises(ExpressionError, match=r"^division by zero at 1$") as caught:
        parse(text).evaluate({"x": 1.0, "y": 3.0})
    assert caught.value.position == 1
    assert isinstance(caught.value, ValueError)


def test_non_finite_result_is_an_expression_error() -> None:
    with pytest.raises(ExpressionError, match="not finite"):
        parse("x*x*x").evaluate({"x": 1e200})
    with pytest.raises(ExpressionError, match="not finite"):
        parse("min(1, x*x*0)").evaluate({"x": 1e200})  # inf*0 is nan, which min() would hide


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os')", "unknown function __import__ at 0"),
        ("x.y", "unexpected '.' at 1"),
        ("x[0]", "unexpected '[' at 1"),
        ("x**2", "unexpected '**' at 1"),
        ("x1 + **", "unexpected '**' at 5"),
        ("1 if x else 2", "unexpected 'if' at 2"),
        ('"s"', "unexpected '\"' at 0"),
        ("'s'", 'unexpected "\'" at 0'),
        ("x == 1", "unexpected '==' at 2"),
        ("x < 1", "unexpected '<' at 2"),
        ("x and y", "unexpected 'and' at 2"),
        ("not x", "unexpected 'not' at 0"),
        ("lambda: 1", "unexpected 'lambda' at 0"),
        ("f(x)", "unknown function f at 0"),
        ("x(1)", "unknown function x at 0"),
        ("(x)(1)", "unexpected '(' at 3"),
        ("min(x, y=1)", "unexpected '=' at 8"),
        ("max(*x)", "unexpected '*' at 4"),
        ("x // 2", "unexpected '//' at 2"),
        ("x % 2", "unexpected '%' at 2"),
        ("1j", "invalid number '1j' at 0"),
        ("0x1F", "invalid number '0x1F' at 0"),
        ("1.2.3", "invalid number '1.2.3' at 0"),
        ("1e999", "number too large '1e999' at 0"),
        ("x y", "unexpected 'y' at 2"),
        ("x +", "unexpected end of expression at 3"),
        ("(x", "unclosed '(' at 0"),
        ("x)", "unexpected ')' at 1"),
        ("x, y", "unexpected ',' at 1"),
        ("(x, y)", "unexpected ',' at 2"),
        ("min", "expected '(' after min at 3"),
        ("min()", "min needs an argument at 4"),
        ("min(x,)", "unexpected ')' at 6"),
        ("abs(x, y)", "abs takes exactly one argument at 0"),
        ("x" * 65, "name too long (at most 64 characters) at 0"),
        ("x\u00e9", "unexpected '\u00e9' at 1"),
        ("\u0661", "unexpected '\u0661' at 0"),
        ("True", "unexpected 'True' at 0"),
    ],
)
def test_everything_outside_the_grammar_is_rejected_with_a_position(text: str, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse(text)
    assert caught.value.message == message
    assert str(caught.value) == message
    assert caught.value.position == int(message.rsplit(" ", 1)[1])


def test_name_of_exactly_64_characters_is_accepted() -> None:
    name = "x" * 64
    assert parse(name).evaluate({name: 2.0}) == 2.0


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_blank_text_is_an_empty_expression(text: str) -> None:
    with pytest.raises(ExpressionError, match=r"^empty expression$") as caught:
        parse(text)
    assert caught.value.position is None


def test_text_longer_than_max_length_is_rejected() -> None:
    assert parse("x+1", max_length=3).variables == frozenset({"x"})
    with pytest.raises(ExpressionError, match="expression too long") as caught:
        parse("x + 1", max_length=3)
    assert caught.value.position is None
    with pytest.raises(ExpressionError, match="expression too long"):
        parse("(" * 10_000)


@pytest.mark.parametrize("opener", ["(", "abs(", "min(1,", "-("])
def test_deep_nesting_is_an_expression_error_not_a_recursion_error(opener: str) -> None:
    text = opener * 10_000 + "1" + ")" * 10_000
    with pytest.raises(ExpressionError, match=r"nested too deeply \(more than 50 levels\)"):
        parse(text, max_length=len(text))
    with pytest.raises(ExpressionError, match="nested too deeply"):
        parse("(" * 10_000, max_length=10_000)


def test_nesting_up_to_max_depth_is_accepted() -> None:
    assert parse("(" * 50 + "x" + ")" * 50).evaluate({"x": 3}) == 3
    assert parse("(" * 3 + "x" + ")" * 3, max_depth=3).evaluate({"x": 3}) == 3
    with pytest.raises(ExpressionError, match="more than 3 levels"):
        parse("(" * 4 + "x" + ")" * 4, max_depth=3)


def test_huge_inputs_never_exhaust_the_stack_when_limits_are_raised() -> None:
    # CPython's own parser fails on these (MemoryError / RecursionError); this one only loops.
    n = 100_000
    assert parse("-" * n + "x", max_length=n + 1).evaluate({"x": 2}) == 2
    chain = "+".join(["x"] * n)
    assert parse(chain, max_length=len(chain)).evaluate({"x": 1}) == n
    nested = "(" * n + "x" + ")" * n
    assert parse(nested, max_length=len(nested), max_depth=n).evaluate({"x": 5}) == 5


def test_expressions_compare_by_text_and_variables_and_survive_pickling() -> None:
    expression = parse("x1 + 2")
    assert expression == Expression("x1 + 2", frozenset({"x1"}))
    assert hash(expression) == hash(Expression("x1 + 2", frozenset({"x1"})))
    assert pickle.loads(pickle.dumps(expression)).evaluate({"x1": 1}) == 3
    assert "_program" not in repr(expression)


def test_constructing_an_expression_directly_checks_it() -> None:
    assert Expression("a*b", frozenset({"a", "b"})).evaluate({"a": 2, "b": 3}) == 6
    with pytest.raises(ValueError, match="do not match"):
        Expression("a*b", frozenset({"a"}))
    with pytest.raises(ExpressionError):
        Expression("a**b", frozenset({"a", "b"}))


# --- property: parse(render(tree)) agrees with the tree ----------------------------------------------------

VARIABLES = ("x1", "x2", "x3", "_tmp", "Meter_7")


@dataclass(frozen=True)
class Leaf:
    value: int | str  # a literal or a variable name


@dataclass(frozen=True)
class Negate:
    operand: Node


@dataclass(frozen=True)
class Binary:
    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Call:
    function: str
    args: tuple[Node, ...]


Node = Leaf | Negate | Binary | Call

PRECEDENCE = {"+": 1, "-": 1, "*": 2}


def reference(node: Node, values: dict[str, int]) -> int:
    """Exact integer evaluation of the tree."""
    if isinstance(node, Leaf):
        return values[node.value] if isinstance(node.value, str) else node.value
    if isinstance(node, Negate):
        return -reference(node.operand, values)
    if isinstance(node, Call):
        args = [reference(arg, values) for arg in node.args]
        return {"min": min, "max": max}[node.function](args) if node.function != "abs" else abs(args[0])
    left, right = reference(node.left, values), reference(node.right, values)
    return left + right if node.op == "+" else left - right if node.op == "-" else left * right


def render(node: Node, *, minimal: bool) -> str:
    """Text for the tree: fully parenthesised, or with only the parentheses precedence requires."""
    if isinstance(node, Leaf):
        return str(node.value)
    if isinstance(node, Negate):
        inner = render(node.operand, minimal=minimal)
        return f"-({inner})" if isinstance(node.operand, Binary) or not minimal else f"-{inner}"
    if isinstance(node, Call):
        return f"{node.function}({', '.join(render(arg, minimal=minimal) for arg in node.args)})"
    left, right = render(node.left, minimal=minimal), render(node.right, minimal=minimal)
    if not minimal:
        return f"({left} {node.op} {right})"
    precedence = PRECEDENCE[node.op]
    if isinstance(node.left, Binary) and PRECEDENCE[node.left.op] < precedence:
        left = f"({left})"
    if isinstance(node.right, Binary) and PRECEDENCE[node.right.op] <= precedence:
        right = f"({right})"
    return f"{left}{node.op}{right}"


def extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    return st.one_of(
        st.builds(Binary, st.sampled_from(sorted(PRECEDENCE)), children, children),
        st.builds(Negate, children),
        st.builds(
            Call, st.sampled_from(["min", "max"]), st.lists(children, min_size=1, max_size=3).map(tuple)
        ),
        st.builds(Call, st.just("abs"), st.tuples(children)),
    )


# Literals 0..9 and at most 12 leaves keep every intermediate below 9**12, far inside float's exact range.
trees: st.SearchStrategy[Node] = st.recursive(
    st.builds(Leaf, st.integers(0, 9) | st.sampled_from(VARIABLES)), extend, max_leaves=12
)
variable_values = st.fixed_dictionaries({name: st.integers(-9, 9) for name in VARIABLES})


@PROPERTY_SETTINGS
@given(tree=trees, values=variable_values, minimal=st.booleans())
def test_parsed_rendering_evaluates_like_the_tree(tree: Node, values: dict[str, int], minimal: bool) -> None:
    expression = parse(render(tree, minimal=minimal), allowed=VARIABLES)
    assert expression.evaluate({name: float(value) for name, value in values.items()}) == reference(
        tree, values
    )


# --- property: arbitrary text --------------------------------------------------------------------------------

near_grammar = st.text(alphabet=st.sampled_from(list("x1_23.e+-*/(),  minaxbs*=[]'\"")), max_size=60)


@PROPERTY_SETTINGS
@given(text=st.one_of(st.text(), near_grammar))
def test_parse_only_ever_raises_expression_error_and_is_fast(text: str) -> None:
    started = time.perf_counter()
    try:
        expression = parse(text)
    except ExpressionError as error:
        assert error.message
        assert error.position is None or 0 <= error.position <= len(text)
    else:
        try:
            result = expression.evaluate(dict.fromkeys(expression.variables, 1.5))
        except ExpressionError:
            pass
        else:
            assert math.isfinite(result)
    assert time.perf_counter() - started < 0.5


# --- dependency_cycle ----------------------------------------------------------------------------------------


def test_chain_of_virtual_meters_has_no_cycle() -> None:
    assert dependency_cycle({"total": ["hall", "pump"], "hall": ["lights"], "pump": []}) is None
    assert dependency_cycle({}) is None


def test_cycle_is_returned_with_its_first_node_repeated() -> None:
    assert dependency_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert dependency_cycle({"start": ["a"], "a": ["b"], "b": ["a"]}) == ["a", "b", "a"]


def test_self_reference_is_a_cycle() -> None:
    assert dependency_cycle({"a": ["a"]}) == ["a", "a"]


def test_long_chain_does_not_hit_the_recursion_limit() -> None:
    n = 100_000
    chain = {f"m{i}": [f"m{i + 1}"] for i in range(n)}
    assert dependency_cycle(chain) is None
    chain[f"m{n}"] = ["m0"]
    cycle = dependency_cycle(chain)
    assert cycle is not None
    assert len(cycle) == n + 2


def test_references_may_be_generators() -> None:
    assert dependency_cycle({"a": iter(["b"]), "b": (x for x in ["a"])}) == ["a", "b", "a"]


graphs = st.dictionaries(
    st.sampled_from("abcdefgh"), st.lists(st.sampled_from("abcdefghij"), max_size=3), max_size=8
)


@PROPERTY_SETTINGS
@given(graph=graphs)
def test_a_cycle_is_found_exactly_when_the_graph_has_one(graph: dict[str, list[str]]) -> None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
        has_cycle = False
    except graphlib.CycleError:
        has_cycle = True
    cycle = dependency_cycle(graph)
    assert (cycle is not None) == has_cycle
    if cycle is not None:
        assert len(cycle) >= 2
        assert cycle[0] == cycle[-1]
        assert len(set(cycle[:-1])) == len(cycle) - 1
        for source, target in pairwise(cycle):
            assert target in graph[source]

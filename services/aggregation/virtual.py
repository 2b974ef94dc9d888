"""Virtual meters: energy per quarter computed from other meters by an equation (libs/expressions.py, no eval).

A virtual meter is defined in the registry as ``{"equation": "x1+x2-x3", "variables": [{"name": "x1",
"meter_type": "meter" | "offline_meter" | "virtual_meter", "meter_id": 7}, ...]}``. Its value in a quarter is the
equation over its variables' energy in that quarter, with the worst of their qualities.

A quarter in which any variable the equation uses has no energy gets no value (rather than treating the gap
as zero: nothing is silently zeroed); the report then shows that gap. A quarter where the equation cannot be
evaluated (division by zero) gets no value either, and is reported to the caller to log.

Virtual meters may use other virtual meters; they are evaluated in dependency order, and a meter caught in a
cycle (the registry refuses them, but the data is not ours) is never evaluated.

Pure functions only: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from libs.expressions import Expression, ExpressionError, parse

METER = "meter"
OFFLINE = "offline_meter"
VIRTUAL = "virtual_meter"
KINDS = (METER, OFFLINE, VIRTUAL)

# (kind, id): one input series, e.g. ("meter", 7)
Source = tuple[str, int]
# quarter start (epoch ms) -> (energy, quality code)
Series = Mapping[int, tuple[float, int]]


@dataclass(frozen=True)
class VirtualMeter:
    id: int
    expression: Expression
    variables: Mapping[str, Source]  # only the names the equation uses

    @property
    def inputs(self) -> frozenset[Source]:
        return frozenset(self.variables.values())


def parse_definition(virtual_meter_id: int, expression: Any) -> VirtualMeter:
    """A registry definition, checked: raises ExpressionError or ValueError when it cannot be evaluated."""
    if isinstance(expression, str | bytes):
        expression = orjson.loads(expression)
    if not isinstance(expression, Mapping):
        raise ValueError("the expression must be an object with an equation and variables")
    equation, declared = expression.get("equation"), expression.get("variables")
    if not isinstance(equation, str) or not isinstance(declared, list):
        raise ValueError("the expression needs an equation (text) and variables (a list)")
    sources: dict[str, Source] = {}
    for variable in declared:
        if not isinstance(variable, Mapping):
            raise ValueError("each variable is an object with name, meter_type and meter_id")
        name, kind, ident = variable.get("name"), variable.get("meter_type"), variable.get("meter_id")
        if isinstance(ident, str) and ident.isdigit():
            ident = int(ident)
        if (
            not isinstance(name, str)
            or kind not in KINDS
            or not isinstance(ident, int)
            or isinstance(ident, bool)
        ):
            raise ValueError(
                f"variable {variable!r} needs a name, a meter_type in {KINDS} and an integer meter_id"
            )
        sources[name] = (str(kind), ident)
    parsed = parse(equation, allowed=sources)
    return VirtualMeter(virtual_meter_id, parsed, {name: sources[name] for name in sorted(parsed.variables)})


def evaluation_order(meters: Mapping[int, VirtualMeter]) -> tuple[list[int], set[int]]:
    """The virtual meters in an order where each comes after the virtual meters it uses, and those that
    cannot be ordered (in a cycle, or using one that is)."""
    uses = {
        ident: {source for kind, source in meter.inputs if kind == VIRTUAL and source in meters}
        for ident, meter in meters.items()
    }
    users: dict[int, set[int]] = {ident: set() for ident in meters}
    for ident, needed in uses.items():
        for source in needed:
            users[source].add(ident)
    waiting = {ident: len(needed) for ident, needed in uses.items()}
    ready = sorted(ident for ident, count in waiting.items() if count == 0)
    order: list[int] = []
    while ready:
        ident = ready.pop(0)
        order.append(ident)
        for user in sorted(users[ident]):
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    return order, set(meters) - set(order)


def plan(
    meters: Mapping[int, VirtualMeter],
    order: Iterable[int],
    rebuilt: set[Source],
    touched: Mapping[Source, set[int]],
) -> list[tuple[int, set[int] | None]]:
    """What to recompute, in evaluation order: (virtual meter, its quarters) or (virtual meter, None) for all.

    ``rebuilt`` are sources whose every quarter may have changed (a meter rebound to other points, an offline
    meter's values replaced, a virtual meter redefined); ``touched`` the quarters that changed in the others.
    A virtual meter is recomputed wholly when it is redefined or uses a rebuilt source, otherwise in the union
    of the quarters its inputs changed in (including, transitively, its virtual inputs).
    """
    full: set[int] = set()
    partial: dict[int, set[int]] = {}
    out: list[tuple[int, set[int] | None]] = []
    for ident in order:
        meter = meters[ident]
        if (VIRTUAL, ident) in rebuilt or any(
            source in rebuilt or (source[0] == VIRTUAL and source[1] in full) for source in meter.inputs
        ):
            full.add(ident)
            out.append((ident, None))
            continue
        quarters: set[int] = set()
        for source in meter.inputs:
            quarters |= touched.get(source, set())
            if source[0] == VIRTUAL:
                quarters |= partial.get(source[1], set())
        if quarters:
            partial[ident] = quarters
            out.append((ident, quarters))
    return out


def evaluate(
    meter: VirtualMeter, inputs: Mapping[Source, Series], quarters: Iterable[int] | None = None
) -> tuple[dict[int, tuple[float, int]], dict[int, str]]:
    """The virtual meter's (energy, worst quality) per quarter, and the quarters whose evaluation failed.

    ``quarters`` defaults to every quarter in which all the inputs the equation uses have energy.
    """
    series = [(name, inputs.get(source, {})) for name, source in meter.variables.items()]
    if quarters is None:
        common: set[int] | None = None
        for _, known in series:
            common = set(known) if common is None else common & known.keys()
        quarters = sorted(common or ())
    results: dict[int, tuple[float, int]] = {}
    errors: dict[int, str] = {}
    for quarter in quarters:
        values: dict[str, float] = {}
        worst = 0
        for name, known in series:
            found = known.get(quarter)
            if found is None:
                break
            values[name] = found[0]
            worst = max(worst, found[1])
        else:
            try:
                results[quarter] = (meter.expression.evaluate(values), worst)
            except ExpressionError as exc:
                errors[quarter] = exc.message
    return results, errors

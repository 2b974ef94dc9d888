"""Which output sources a space, equipment or combined equipment adds up (services/aggregation/subjects.py):
a hand-worked case and a property against a breadth-first oracle."""

from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from services.aggregation.subjects import OUTPUT_KINDS, Binding, Ref, Subject, members, output_members


def subject(
    kind: str, ident: int, parent: int | None = None, *, inputs: bool = True, outputs: bool
) -> Subject:
    return Subject(kind, ident, parent, inputs, "Europe/Brussels", outputs)


def test_outputs_count_upwards_only_where_is_output_counted() -> None:
    subjects = [
        subject("space", 1, outputs=False),  # its own flag says nothing about its children
        subject("space", 2, parent=1, outputs=True),
        subject("space", 3, parent=1, outputs=False),
        subject("equipment", 10, outputs=True),  # chiller
        subject("equipment", 11, outputs=False),  # boiler
        subject("equipment", 12, outputs=True),  # in the space that does not pass outputs up
        subject("combined_equipment", 20, outputs=True),
        subject("shopfloor", 30, outputs=True),
    ]
    bindings = [
        Binding(("space", 1), ("meter", 1)),  # a space's own meter is an input
        Binding(("equipment", 10), ("meter", 2)),
        Binding(("equipment", 10), ("meter", 3), is_output=True),
        Binding(("equipment", 11), ("meter", 4)),
        Binding(("equipment", 11), ("meter", 5), is_output=True),
        Binding(("equipment", 12), ("meter", 6), is_output=True),
        Binding(("equipment", 10), ("meter", 9), is_output=True),  # not counted
        Binding(("combined_equipment", 20), ("equipment", 10)),
        Binding(("combined_equipment", 20), ("equipment", 11)),
        Binding(("combined_equipment", 20), ("virtual_meter", 7), is_output=True),
        Binding(("space", 2), ("equipment", 10)),
        Binding(("space", 1), ("equipment", 11)),
        Binding(("space", 1), ("combined_equipment", 20)),
        Binding(("space", 3), ("equipment", 12)),
        Binding(("space", 1), ("shopfloor", 30)),
        Binding(("shopfloor", 30), ("equipment", 12)),  # shopfloors have no outputs
    ]
    counted = {("meter", i): i != 9 for i in range(1, 10)} | {("virtual_meter", 7): True}
    out = output_members(subjects, bindings, counted)
    assert set(out) == {(s.kind, s.id) for s in subjects if s.kind in OUTPUT_KINDS}
    assert out[("equipment", 10)] == {("meter", 3)}
    assert out[("equipment", 11)] == {("meter", 5)}  # its own, whatever its flag says upwards
    assert out[("combined_equipment", 20)] == {("virtual_meter", 7), ("meter", 3)}
    assert out[("space", 2)] == {("meter", 3)}
    assert out[("space", 3)] == {("meter", 6)}
    # space 1: space 2 (meter 3) and the combined equipment (virtual meter 7, meter 3 again); not space 3,
    # not the boiler, not its own meter.
    assert out[("space", 1)] == {("meter", 3), ("virtual_meter", 7)}
    # Inputs are unchanged by outputs: the chiller's input is meter 2 only.
    assert members(subjects, bindings, counted)[("equipment", 10)] == {("meter", 2)}


@st.composite
def plants(draw: st.DrawFn) -> tuple[list[Subject], list[Binding], dict[Ref, bool]]:
    n_spaces = draw(st.integers(1, 6))
    subjects = [
        subject(
            "space",
            i,
            parent=None if i == 0 else draw(st.integers(0, i - 1)),
            inputs=draw(st.booleans()),
            outputs=draw(st.booleans()),
        )
        for i in range(n_spaces)
    ]
    kinds = ["equipment", "combined_equipment", "shopfloor", "tenant"]
    others = [
        subject(kind, 100 + i, inputs=draw(st.booleans()), outputs=draw(st.booleans()))
        for i, kind in enumerate(draw(st.lists(st.sampled_from(kinds), max_size=7)))
    ]
    sources: list[Ref] = [("meter", i) for i in range(draw(st.integers(1, 10)))]
    counted = {s: draw(st.booleans()) for s in sources}
    parents = [(s.kind, s.id) for s in subjects + others]
    bindings = [
        Binding(draw(st.sampled_from(parents)), s, draw(st.booleans()))
        for s in sources
        for _ in range(draw(st.integers(0, 2)))
    ]
    holders = [
        (s.kind, s.id) for s in subjects + others if s.kind in ("space", "combined_equipment", "shopfloor")
    ]
    for other in others:
        for _ in range(draw(st.integers(0, 2))):
            bindings.append(Binding(draw(st.sampled_from(holders)), (other.kind, other.id)))
    return subjects + others, bindings, counted


def reachable_outputs(
    subjects: list[Subject], bindings: list[Binding], counted: dict[Ref, bool], start: Ref
) -> set[Ref]:
    """The oracle: a breadth-first walk as the rules read."""
    by_ref = {(s.kind, s.id): s for s in subjects}
    edges: dict[Ref, list[Binding]] = {}
    for b in bindings:
        edges.setdefault(b.parent, []).append(b)
    for s in subjects:
        if s.kind == "space" and s.parent_id is not None:
            edges.setdefault(("space", s.parent_id), []).append(
                Binding(("space", s.parent_id), ("space", s.id))
            )
    passes = {"space": {"space", "equipment", "combined_equipment"}, "combined_equipment": {"equipment"}}
    found, seen, queue = set(), {start}, deque([start])
    while queue:
        here = queue.popleft()
        for b in edges.get(here, []):
            if b.child[0] == "meter":
                if here[0] in ("equipment", "combined_equipment") and b.is_output and counted[b.child]:
                    found.add(b.child)
            elif (
                b.child not in seen
                and b.child[0] in passes.get(here[0], set())
                and by_ref[b.child].is_output_counted
            ):
                seen.add(b.child)
                queue.append(b.child)
    return found


@settings(max_examples=300, deadline=None)
@given(plant=plants(), energy=st.lists(st.floats(0, 1000), min_size=10, max_size=10))
def test_a_subjects_output_is_the_sum_of_the_counted_outputs_it_reaches(
    plant: tuple[list[Subject], list[Binding], dict[Ref, bool]], energy: list[float]
) -> None:
    subjects, bindings, counted = plant
    out = output_members(subjects, bindings, counted)
    inputs = members(subjects, bindings, counted)
    assert set(out) == {(s.kind, s.id) for s in subjects if s.kind in OUTPUT_KINDS}
    for ref, got in out.items():
        expected = reachable_outputs(subjects, bindings, counted, ref)
        assert got == expected
        assert sum(energy[m[1]] for m in got) == sum(energy[m[1]] for m in expected)
        assert all(counted[m] for m in got)
        # A source only ever bound as an output never shows up in any input energy.
        outputs_only = {b.child for b in bindings if b.is_output} - {
            b.child for b in bindings if not b.is_output
        }
        assert not (inputs[ref] & outputs_only)

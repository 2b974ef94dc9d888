"""Which meters a subject adds up (services/aggregation/subjects.py) and the quality ledger's counts
(services/aggregation/hourly.py): hand-worked cases and properties."""

from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from proto_schemas.quality import Quality
from services.aggregation.hourly import QUARTER_MS, quality_counts
from services.aggregation.subjects import Binding, Ref, Subject, members


def space(ident: int, parent: int | None = None, counted: bool = True) -> Subject:
    return Subject("space", ident, parent, counted, "Europe/Brussels")


def test_a_space_adds_its_counted_meters_its_counted_children_and_its_equipments_inputs_once() -> None:
    subjects = [
        space(1),
        space(2, parent=1),
        space(3, parent=1, counted=False),  # its energy stays out of space 1
        Subject("equipment", 10, None, True, "UTC"),
        Subject("equipment", 11, None, False, "UTC"),
        Subject("shopfloor", 20, None, True, "UTC"),
    ]
    bindings = [
        Binding(("space", 1), ("meter", 1)),
        Binding(("space", 1), ("meter", 9)),  # not counted
        Binding(("space", 2), ("meter", 2)),
        Binding(("space", 3), ("meter", 3)),
        Binding(("space", 1), ("equipment", 10)),
        Binding(("equipment", 10), ("meter", 4)),
        Binding(("equipment", 10), ("meter", 5), is_output=True),
        Binding(("space", 1), ("equipment", 11)),
        Binding(("equipment", 11), ("meter", 6)),
        Binding(("space", 1), ("shopfloor", 20)),
        Binding(("shopfloor", 20), ("meter", 1)),  # also bound to the space: counted once
        Binding(("space", 2), ("virtual_meter", 7)),
    ]
    counted = {("meter", i): i != 9 for i in range(1, 10)} | {("virtual_meter", 7): True}
    got = members(subjects, bindings, counted)
    assert got[("space", 1)] == {("meter", 1), ("meter", 2), ("meter", 4), ("virtual_meter", 7)}
    assert got[("space", 2)] == {("meter", 2), ("virtual_meter", 7)}
    assert got[("space", 3)] == {("meter", 3)}
    assert got[("equipment", 10)] == {("meter", 4)}
    assert got[("equipment", 11)] == {("meter", 6)}
    assert got[("virtual_meter", 7)] == {("virtual_meter", 7)}
    energy = {("meter", i): float(i) for i in range(1, 10)} | {("virtual_meter", 7): 7.0}
    assert sum(energy[m] for m in got[("space", 1)]) == 1 + 2 + 4 + 7


def test_a_cycle_in_the_tree_is_cut() -> None:
    subjects = [space(1, parent=2), space(2, parent=1)]
    bindings = [Binding(("space", 1), ("meter", 1)), Binding(("space", 2), ("meter", 2))]
    got = members(subjects, bindings, {("meter", 1): True, ("meter", 2): True})
    assert got[("space", 1)] == got[("space", 2)] == {("meter", 1), ("meter", 2)}


@st.composite
def trees(draw: st.DrawFn) -> tuple[list[Subject], list[Binding], dict[Ref, bool]]:
    n_spaces = draw(st.integers(1, 8))
    subjects = [
        space(i, parent=None if i == 0 else draw(st.integers(0, i - 1)), counted=draw(st.booleans()))
        for i in range(n_spaces)
    ]
    kinds = ["equipment", "combined_equipment", "tenant", "store", "shopfloor"]
    others = [
        Subject(kind, 100 + i, None, draw(st.booleans()), "UTC")
        for i, kind in enumerate(draw(st.lists(st.sampled_from(kinds), max_size=6)))
    ]
    meters = [("meter", i) for i in range(draw(st.integers(1, 10)))]
    counted = {m: draw(st.booleans()) for m in meters}
    parents = [(s.kind, s.id) for s in subjects + others]
    bindings = [
        Binding(draw(st.sampled_from(parents)), m, draw(st.booleans()))
        for m in meters
        for _ in range(draw(st.integers(0, 2)))
    ]
    for other in others:
        if draw(st.booleans()):
            bindings.append(Binding(("space", draw(st.integers(0, n_spaces - 1))), (other.kind, other.id)))
    return subjects + others, bindings, counted


def reachable(
    subjects: list[Subject], bindings: list[Binding], counted: dict[Ref, bool], start: Ref
) -> set[Ref]:
    """The oracle: a breadth-first walk over the bindings, as the rules read."""
    by_ref = {(s.kind, s.id): s for s in subjects}
    edges: dict[Ref, list[Binding]] = {}
    for b in bindings:
        edges.setdefault(b.parent, []).append(b)
    for s in subjects:
        if s.kind == "space" and s.parent_id is not None:
            edges.setdefault(("space", s.parent_id), []).append(
                Binding(("space", s.parent_id), ("space", s.id))
            )
    found, seen, queue = set(), {start}, deque([start])
    while queue:
        here = queue.popleft()
        for b in edges.get(here, []):
            if b.child[0] == "meter":
                if not b.is_output and counted[b.child]:
                    found.add(b.child)
            elif (
                b.child not in seen
                and by_ref[b.child].is_input_counted
                and here[0] not in ("store", "tenant")
            ):
                seen.add(b.child)
                queue.append(b.child)
    return found


@settings(max_examples=300, deadline=None)
@given(tree=trees(), energy=st.lists(st.floats(0, 1000), min_size=10, max_size=10))
def test_a_subjects_energy_is_the_sum_of_the_counted_meters_it_reaches(
    tree: tuple[list[Subject], list[Binding], dict[Ref, bool]], energy: list[float]
) -> None:
    subjects, bindings, counted = tree
    got = members(subjects, bindings, counted)
    for s in subjects:
        ref = (s.kind, s.id)
        expected = reachable(subjects, bindings, counted, ref)
        assert got[ref] == expected
        assert sum(energy[m[1]] for m in got[ref]) == sum(energy[m[1]] for m in expected)
        assert all(counted[m] for m in got[ref])


# --- quality counts --------------------------------------------------------------------------------------


def test_a_withdrawn_estimate_nets_to_zero_and_the_good_intervals_remain() -> None:
    E, G = int(Quality.ESTIMATED), int(Quality.GOOD)
    q = QUARTER_MS
    counts = quality_counts([1, 1, 1], [0, 0, q], [2 * q, q, 2 * q], [-20.0, 10.0, 10.0], [E, G, G])
    assert counts == {(1, 0, E): -1, (1, q, E): -1, (1, 0, G): 1, (1, q, G): 1}
    # An interval of zero energy withdrawn is sent as -0.0: still a withdrawal.
    assert quality_counts([1], [0], [q], [-0.0], [E]) == {(1, 0, E): -1}


@settings(max_examples=200, deadline=None)
@given(
    intervals=st.lists(
        st.tuples(
            st.integers(0, 40), st.integers(1, 12), st.floats(0, 100), st.sampled_from(list(Quality)[:6])
        ),
        max_size=20,
    )
)
def test_sending_intervals_and_withdrawing_them_leaves_no_quality(
    intervals: list[tuple[int, int, float, Quality]],
) -> None:
    step = QUARTER_MS // 3  # edges off the quarter too
    starts = [a * step for a, _, _, _ in intervals]
    ends = [(a + n) * step for a, n, _, _ in intervals]
    energy = [e for _, _, e, _ in intervals]
    codes = [int(c) for _, _, _, c in intervals]
    points = [1] * len(intervals)
    counts = quality_counts(points * 2, starts * 2, ends * 2, energy + [-e for e in energy], codes * 2)
    assert all(n == 0 for n in counts.values())
    added = quality_counts(points, starts, ends, energy, codes)
    assert all(n > 0 for n in added.values())

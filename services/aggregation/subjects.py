"""Which sources (meters, offline and virtual meters) a subject adds up. Pure: no I/O.

A subject's energy is the sum over the *set* of sources it reaches, so a meter bound both to a space and to an
equipment in that space counts once. The rules (MyEMS's counting flags):

* a source counts in a subject only when its ``is_counted`` is true;
* an **equipment** or **combined equipment** adds its input sources (bound with ``is_output`` false); output
  sources are never added to input energy. A combined equipment also adds the inputs of its equipment whose
  ``is_input_counted`` is true;
* a **shopfloor** adds its own sources and the inputs of its equipment (``is_input_counted``);
* a **store** and a **tenant** add their own sources;
* a **space** adds its own sources, and what each bound equipment, combined equipment, tenant, store and
  shopfloor adds when that child's ``is_input_counted`` is true, and likewise each child space (the tree);
* a **virtual meter** and an **offline meter** are subjects of their own: themselves, counted or not.

**Output energy** (what an equipment delivers: heat, cold, steam...) is rolled up separately, under the
subject kinds ``equipment_output``, ``combined_equipment_output`` and ``space_output``:

* an **equipment** or **combined equipment** outputs its counted sources bound with ``is_output`` true; a
  combined equipment also outputs what its equipment whose ``is_output_counted`` is true output;
* a **space** outputs what each bound equipment, combined equipment and child space outputs when that child's
  ``is_output_counted`` is true (its own meters are inputs, never outputs);
* tenants, stores and shopfloors have no output energy.

A cycle in the space tree (the registry refuses them) is cut: each space is visited once per walk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SOURCE_KINDS = frozenset({"meter", "virtual_meter", "offline_meter"})
SUBJECT_KINDS = ("space", "equipment", "combined_equipment", "tenant", "store", "shopfloor")
#: subjects with output energy, stored under ``{kind}_output``
OUTPUT_KINDS = ("space", "equipment", "combined_equipment")
#: which children pass their outputs up to which parents (when the child's ``is_output_counted`` is true)
_OUTPUT_CHILDREN = {
    "space": frozenset({"space", "equipment", "combined_equipment"}),
    "combined_equipment": frozenset({"equipment"}),
}

Ref = tuple[str, int]


@dataclass(frozen=True)
class Subject:
    kind: str
    id: int
    parent_id: int | None  # spaces only
    is_input_counted: bool
    timezone: str
    is_output_counted: bool = False


@dataclass(frozen=True)
class Binding:
    parent: Ref
    child: Ref
    is_output: bool = False


def output_kind(kind: str) -> str:
    """The subject kind a subject's output rollups are stored under."""
    return f"{kind}_output"


def _children(
    subjects: Iterable[Subject], bindings: Iterable[Binding]
) -> tuple[dict[Ref, Subject], dict[Ref, list[Binding]]]:
    by_ref = {(s.kind, s.id): s for s in subjects}
    children: dict[Ref, list[Binding]] = {}
    for binding in bindings:
        children.setdefault(binding.parent, []).append(binding)
    for subject in by_ref.values():
        if subject.kind == "space" and subject.parent_id is not None:
            children.setdefault(("space", subject.parent_id), []).append(
                Binding(("space", subject.parent_id), ("space", subject.id))
            )
    return by_ref, children


def output_members(
    subjects: Iterable[Subject], bindings: Iterable[Binding], counted: Mapping[Ref, bool]
) -> dict[Ref, frozenset[Ref]]:
    """Every space's, equipment's and combined equipment's counted output sources, keyed by the subject."""
    by_ref, children = _children(subjects, bindings)
    memo: dict[Ref, frozenset[Ref]] = {}

    def walk(ref: Ref, visiting: frozenset[Ref]) -> frozenset[Ref]:
        if ref in memo:
            return memo[ref]
        found: set[Ref] = set()
        passes = _OUTPUT_CHILDREN.get(ref[0], frozenset())
        for binding in children.get(ref, ()):
            child = binding.child
            if child[0] in SOURCE_KINDS:
                if (
                    ref[0] in ("equipment", "combined_equipment")
                    and binding.is_output
                    and counted.get(child, False)
                ):
                    found.add(child)
                continue
            sub = by_ref.get(child)
            if sub is None or child in visiting or child[0] not in passes or not sub.is_output_counted:
                continue
            found |= walk(child, visiting | {child})
        result = frozenset(found)
        if not (visiting - {ref}):
            memo[ref] = result
        return result

    return {ref: walk(ref, frozenset({ref})) for ref in by_ref if ref[0] in OUTPUT_KINDS}


def members(
    subjects: Iterable[Subject], bindings: Iterable[Binding], counted: Mapping[Ref, bool]
) -> dict[Ref, frozenset[Ref]]:
    """Every subject's counted sources. ``counted`` maps each known source to its ``is_counted``."""
    by_ref, children = _children(subjects, bindings)
    memo: dict[Ref, frozenset[Ref]] = {}

    def walk(ref: Ref, visiting: frozenset[Ref]) -> frozenset[Ref]:
        if ref in memo:
            return memo[ref]
        found: set[Ref] = set()
        for binding in children.get(ref, ()):
            child = binding.child
            if child[0] in SOURCE_KINDS:
                if not binding.is_output and counted.get(child, False):
                    found.add(child)
                continue
            sub = by_ref.get(child)
            if sub is None or child in visiting or not sub.is_input_counted:
                continue
            if ref[0] in ("store", "tenant"):
                continue  # stores and tenants bind sources only
            found |= walk(child, visiting | {child})
        result = frozenset(found)
        if not (visiting - {ref}):
            memo[ref] = result  # only walks from the top are complete (cycles cut elsewhere otherwise)
        return result

    out: dict[Ref, frozenset[Ref]] = {}
    for ref in by_ref:
        out[ref] = walk(ref, frozenset({ref}))
    for source in counted:
        if source[0] in ("virtual_meter", "offline_meter"):
            out[source] = frozenset({source})
    return out

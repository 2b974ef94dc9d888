"""The plan limit per scheduling license (services/command/entitlements.py): pure logic."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.command.entitlements import PLANS_BY_TYPE, PlanLimit, limit_for, scheduling_settings
from services.onboarding.ownership_rules import LICENSE_TYPES


def test_every_license_type_has_a_limit_and_a_higher_type_never_allows_fewer_plans() -> None:
    assert set(PLANS_BY_TYPE) == set(LICENSE_TYPES)
    ordered = [limit_for(None)] + [limit_for(kind) for kind in LICENSE_TYPES]
    as_numbers = [float("inf") if plans is None else plans for plans in ordered]
    assert as_numbers == sorted(as_numbers)
    assert limit_for("Elite") is None


@given(st.sampled_from([None, *LICENSE_TYPES]), st.integers(min_value=0, max_value=10_000))
def test_a_new_plan_is_allowed_exactly_while_fewer_than_the_limit_are_held(
    kind: str | None, held: int
) -> None:
    plans = limit_for(kind)
    limit = PlanLimit(plans, kind, None, 0.0, 30.0)
    assert limit.allows(held) == (plans is None or held < plans)
    if kind is None:
        assert plans == scheduling_settings().plans_without_license
        assert limit.label == "no scheduling license"
    else:
        assert kind in limit.label
    assert "did not answer" in PlanLimit(plans, None, None, 0.0, 5.0, reachable=False).label

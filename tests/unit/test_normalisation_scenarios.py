"""The named scenarios of issue 7, at the level of the pure logic, each with its numbers worked out by hand.

Each scenario feeds readings of one ENERGY_VALUE point through the normalisation consumer's algorithm
(tests/unit/normalisation_sim.py: the consumer's pure functions with lists for its tables) and checks the
intervals sent downstream, their quality, and where it matters how aggregation splits them into UTC hours
(services/aggregation/hourly.py). Values are in the point's unit (kWh), after its ratio.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from proto_schemas.quality import Quality
from services.aggregation.hourly import hourly_contributions, split_interval
from services.normalisation.energy import EnergyInterval, Register, register_from_address
from tests.unit.normalisation_sim import SimulatedPoint

G, E, RS, RO, S, M = (
    Quality.GOOD,
    Quality.ESTIMATED,
    Quality.RESET,
    Quality.ROLLOVER,
    Quality.SUSPECT,
    Quality.MANUAL,
)
DAY0 = datetime(2026, 3, 2, tzinfo=UTC)


def at(hours: float, day: int = 0) -> int:
    """Epoch ms of DAY0 + day + hours."""
    return int((DAY0 + timedelta(days=day, hours=hours)).timestamp() * 1000)


def sent(point: SimulatedPoint) -> list[tuple[int, int, float, Quality]]:
    return [(iv.start_ms, iv.end_ms, iv.energy, iv.quality) for iv in point.sent]


def hourly(point: SimulatedPoint) -> dict[int, tuple[float, int]]:
    """What aggregation makes of everything sent: {UTC hour start ms: (energy, worst quality code)}."""
    totals = hourly_contributions(
        [1] * len(point.sent),
        [iv.start_ms for iv in point.sent],
        [iv.end_ms for iv in point.sent],
        [iv.energy for iv in point.sent],
        [int(iv.quality) for iv in point.sent],
    )
    return {hour: value for (_, hour), value in sorted(totals.items())}


# --- rollover --------------------------------------------------------------------------------------------


def test_rollover_at_2_16() -> None:
    point = SimulatedPoint(register=register_from_address({"data_format": "uint16"}, 1.0))
    point.deliver([(at(10), 65_500.0), (at(10.25), 65_530.0), (at(10.5), 10.0), (at(10.75), 40.0)])
    # 65 530 -> 10 across the top of 2^16 = 65 536: (65 536 - 65 530) + 10 = 16.
    assert sent(point) == [
        (at(10), at(10.25), 30.0, G),
        (at(10.25), at(10.5), 16.0, RO),
        (at(10.5), at(10.75), 30.0, G),
    ]
    assert hourly(point) == {at(10): (76.0, int(RO))}  # 30 + 16 + 30 = (65 536 + 40) - 65 500


def test_rollover_at_2_16_of_a_scaled_register_needs_the_data_format() -> None:
    # The same register read with a ratio of 0.5: values top at 32 768, which no guess knows.
    readings = [(at(10), 32_750.0), (at(10.25), 32_765.0), (at(10.5), 5.0), (at(10.75), 20.0)]
    declared = SimulatedPoint(register=register_from_address({"data_format": "uint16"}, 0.5))
    declared.deliver(readings)
    # (32 768 - 32 765) + 5 = 8: half of the 16 above.
    assert [(e, q) for _, _, e, q in sent(declared)] == [(15.0, G), (8.0, RO), (15.0, G)]
    guessed = SimulatedPoint()
    guessed.deliver(readings)
    # Without the format the drop looks like a reset to near zero: 5 counted, the 3 before the top lost.
    assert [(e, q) for _, _, e, q in sent(guessed)] == [(15.0, G), (5.0, RS), (15.0, G)]


def test_rollover_at_2_32() -> None:
    readings = [(at(10), 4_294_967_000.0), (at(10.25), 4_294_967_290.0), (at(10.5), 200.0)]
    for register in (register_from_address({"data_format": "uint32"}, 1.0), None):  # declared and guessed
        point = SimulatedPoint(register=register)
        point.deliver(readings)
        # (4 294 967 296 - 4 294 967 290) + 200 = 206
        assert sent(point) == [(at(10), at(10.25), 290.0, G), (at(10.25), at(10.5), 206.0, RO)]


def test_rollover_at_2_32_of_a_signed_register() -> None:
    point = SimulatedPoint(register=register_from_address({"data_format": "int32"}, 1.0))
    point.deliver([(at(10), 2_147_483_600.0), (at(10.25), -2_147_483_548.0)])
    # int32 runs from -2^31 to 2^31 - 1: (2 147 483 648 - 2 147 483 600) + (-2 147 483 548 + 2 147 483 648)
    assert sent(point) == [(at(10), at(10.25), 48.0 + 100.0, RO)]


@pytest.mark.parametrize("register", [None, Register(0.0, 100_000.0)], ids=["guessed", "max_value"])
def test_rollover_of_a_decimal_register(register: Register | None) -> None:
    point = SimulatedPoint(register=register)
    point.deliver([(at(10), 99_999.5), (at(10.25), 99_999.9), (at(10.5), 0.4)])
    # A five-digit register with one decimal wraps at 100 000: (100 000 - 99 999.9) + 0.4 = 0.5.
    (_, _, first, q1), (_, _, wrapped, q2) = sent(point)
    assert (first, q1) == (pytest.approx(0.4, abs=1e-9), G)
    assert (wrapped, q2) == (pytest.approx(0.5, abs=1e-9), RO)


# --- reset and replaced meter ----------------------------------------------------------------------------


def test_reset_to_zero_counts_the_energy_after_the_reset() -> None:
    point = SimulatedPoint()
    point.deliver([(at(10), 5_000.0), (at(10.25), 5_002.5), (at(10.5), 1.5), (at(10.75), 4.0)])
    # The counter went back to 0 and counted 1.5 since: that 1.5 is energy, nothing is negative.
    assert sent(point) == [
        (at(10), at(10.25), 2.5, G),
        (at(10.25), at(10.5), 1.5, RS),
        (at(10.5), at(10.75), 2.5, G),
    ]
    assert hourly(point) == {at(10): (6.5, int(RS))}


def test_meter_replaced_by_one_starting_at_an_arbitrary_value() -> None:
    point = SimulatedPoint()
    point.deliver([(at(10), 12_000.0), (at(10.25), 12_010.0), (at(10.5), 7_345.0), (at(10.75), 7_350.0)])
    # 7 345 is no reset (above 10 % of 12 010) and no wrap: the interval counts 0, and the new counter's
    # readings go on from 7 345. Neither -4 665 nor +7 345 is invented.
    assert sent(point) == [
        (at(10), at(10.25), 10.0, G),
        (at(10.25), at(10.5), 0.0, RS),
        (at(10.5), at(10.75), 5.0, G),
    ]
    assert hourly(point) == {at(10): (15.0, int(RS))}


def test_meter_replaced_by_one_starting_higher_is_held_when_the_point_has_a_limit() -> None:
    # A new counter above the old one looks like consumption; the point's limit (100 kWh/h) exposes it.
    point = SimulatedPoint(max_per_hour=100.0)
    point.deliver([(at(10), 12_000.0), (at(10.25), 12_010.0), (at(10.5), 48_000.0), (at(10.75), 48_005.0)])
    assert sent(point) == [
        (at(10), at(10.25), 10.0, G),
        (at(10.25), at(10.5), 0.0, S),  # 35 990 held back
        (at(10.5), at(10.75), 5.0, G),
    ]
    assert point.pending() == 35_990.0


# --- gaps ------------------------------------------------------------------------------------------------


def test_3_hour_gap_is_estimated_and_spread_over_its_hours() -> None:
    point = SimulatedPoint()
    point.deliver([(at(9.75), 97.5), (at(10), 100.0), (at(13), 130.0), (at(13.25), 132.5)])
    assert sent(point) == [
        (at(9.75), at(10), 2.5, G),
        (at(10), at(13), 30.0, E),
        (at(13), at(13.25), 2.5, G),
    ]
    # 30 kWh over 3 hours: 10 in each.
    assert split_interval(at(10), at(13), 30.0) == [(at(10), 10.0), (at(11), 10.0), (at(12), 10.0)]
    assert hourly(point) == {
        at(9): (2.5, int(G)),
        at(10): (10.0, int(E)),
        at(11): (10.0, int(E)),
        at(12): (10.0, int(E)),
        at(13): (2.5, int(G)),
    }


def test_3_day_gap_is_estimated_and_spread_over_its_hours() -> None:
    point = SimulatedPoint()
    point.deliver([(at(0.5), 1_000.0), (at(0.5, day=3), 1_720.0)])
    assert sent(point) == [(at(0.5), at(0.5, day=3), 720.0, E)]
    # 720 kWh over 72 hours is 10 an hour: half an hour in the first and the last bucket (5 each), and 71
    # whole hours from 01:00 on day 0 to 23:00 on day 2.
    expected = [(at(0), 5.0)] + [(at(1 + h), 10.0) for h in range(71)] + [(at(0, day=3), 5.0)]
    assert split_interval(at(0.5), at(0.5, day=3), 720.0) == expected
    assert hourly(point) == {hour: (energy, int(E)) for hour, energy in expected}


# --- spikes ----------------------------------------------------------------------------------------------


def test_spike_is_held_until_confirmed() -> None:
    point = SimulatedPoint(max_per_hour=50.0)
    point.deliver([(at(0), 1_000.0), (at(1), 1_040.0), (at(2), 2_040.0), (at(3), 2_080.0)])
    # 1 000 kWh in an hour against at most 50: sent as 0, suspect; its energy held, not dropped.
    assert sent(point) == [
        (at(0), at(1), 40.0, G),
        (at(1), at(2), 0.0, S),
        (at(2), at(3), 40.0, G),
    ]
    assert point.pending() == 1_000.0
    assert point.confirm((at(1), at(2))) == EnergyInterval(at(1), at(2), 1_000.0, M)
    assert point.pending() == 0.0
    assert point.confirm((at(1), at(2))) is None  # confirming again sends nothing more
    # Aggregation adds the confirmed energy to the hour. (Its quality then becomes manual: the service also
    # withdraws the suspect interval, which aggregation's quality ledger honours; this simulator models the
    # energy only, and tests/integration/test_held_quality.py checks the quality end to end.)
    assert {hour: energy for hour, (energy, _) in hourly(point).items()} == {
        at(0): 40.0,
        at(1): 1_000.0,
        at(2): 40.0,
    }


def test_a_short_interval_may_carry_an_hour_of_energy() -> None:
    point = SimulatedPoint(max_per_hour=50.0)
    # 1 kWh steps read every minute show 60 kWh/h over one minute; judged over an hour, that is no spike.
    point.deliver([(at(0), 7.0), (at(1 / 60), 8.0)])
    assert sent(point) == [(at(0), at(1 / 60), 1.0, G)]


@pytest.mark.parametrize("confirm_first", [False, True])
def test_late_reading_supersedes_a_held_spike(confirm_first: bool) -> None:
    point = SimulatedPoint(max_per_hour=100.0)
    point.deliver([(at(0), 1_000.0), (at(0.5), 1_150.0)])  # 150 in half an hour: more than 100 -> held
    assert sent(point) == [(at(0), at(0.5), 0.0, S)]
    if confirm_first:
        point.confirm((at(0), at(0.5)))
    # The reading at 00:15 shows 75 + 75: each plausible. The held interval no longer exists.
    later = point.deliver([(at(0.25), 1_075.0)])
    withdrawn = [(at(0), at(0.5), -150.0, M)] if confirm_first else []
    assert [(iv.start_ms, iv.end_ms, iv.energy, iv.quality) for iv in later] == [
        *withdrawn,
        (at(0), at(0.25), 75.0, G),
        (at(0.25), at(0.5), 75.0, G),
    ]
    assert point.held[(at(0), at(0.5))].status == "superseded"
    assert point.pending() == 0.0
    assert point.confirm((at(0), at(0.5))) is None
    assert sum(iv.energy for iv in point.sent) == 150.0


# --- late and out of order -------------------------------------------------------------------------------


def quarter_hour_series() -> list[tuple[int, float]]:
    """Readings every 15 minutes for 3 days; hour h consumes (h mod 5) + 1 kWh, a quarter in each quarter."""
    readings, value = [], 500.0
    for k in range(3 * 24 * 4 + 1):
        readings.append((at(k / 4), value))
        value += ((k // 4) % 5 + 1) / 4
    return readings


def test_readings_2_days_late_and_out_of_order_give_the_in_order_result() -> None:
    readings = quarter_hour_series()
    expected_hours = {at(h): (float(h % 5 + 1), int(G)) for h in range(72)}

    in_order = SimulatedPoint()
    in_order.deliver(readings)
    assert hourly(in_order) == expected_hours

    # Day 3 arrives first; days 1 and 2 two days late, shuffled, in batches of 10.
    late = SimulatedPoint()
    batches = [readings[192:]]
    old = readings[:192]
    random.Random(7).shuffle(old)
    batches += [old[i : i + 10] for i in range(0, len(old), 10)]
    for batch in batches:
        late.deliver(batch)
    assert any(iv.energy < 0 for iv in late.sent)  # intervals were split and withdrawn on the way
    # What is left once the withdrawals cancel is exactly the in-order intervals...
    assert late.net() == in_order.net()
    # ...so every hour holds the same energy (to rounding: withdrawn gap intervals were split pro rata).
    got = hourly(late)
    assert got.keys() == expected_hours.keys()
    for hour, (energy, _) in expected_hours.items():
        assert got[hour][0] == pytest.approx(energy, abs=1e-9)
    # Replaying every batch sends nothing.
    assert all(late.deliver(batch) == [] for batch in batches)

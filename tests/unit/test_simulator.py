"""The controller simulator's registers and messages (services/simulator/controllers.py)."""

from __future__ import annotations

import math

import aiomqtt
import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from proto_schemas.health import Health
from proto_schemas.quality import Quality
from proto_schemas.telemetry import Telemetry
from services.normalisation.energy import Register, register_from_address, step_energy
from services.registry.api.acquisition import PointIn
from services.simulator.controllers import (
    DAY_MS,
    HOUR_MS,
    KINDS,
    ORIGIN_MS,
    BrokerTarget,
    FleetStats,
    GatewayConfig,
    GatewayRunner,
    Meter,
    PointConfig,
    SimulatedGateway,
    aligned_timestamps,
    load_config,
    point_body,
)

PROPERTIES = settings(max_examples=300, deadline=None)
MESSAGE_PROPERTIES = settings(max_examples=100, deadline=None)  # each example builds whole messages
YEAR_MS = 365 * DAY_MS
GATEWAY = "3f0c6d1e-8a2b-4c5d-9e7f-0a1b2c3d4e5f"

moduli = st.sampled_from([2**16, 2**32, 10**5, 10**6, None])
resolutions = st.sampled_from([1.0, 10.0, 100.0])
mean_powers = st.floats(50.0, 20_000.0)
reset_periods = st.one_of(st.none(), st.floats(60.0, 7 * 86_400.0))
moments = st.integers(ORIGIN_MS, ORIGIN_MS + 10 * YEAR_MS)


@st.composite
def meters(draw: st.DrawFn, modulus: st.SearchStrategy[int | None] = moduli) -> Meter:
    daily = draw(st.floats(0.0, 0.6))
    return Meter(
        mean_w=draw(mean_powers),
        resolution_wh=draw(resolutions),
        modulus=draw(modulus),
        reset_every_s=draw(reset_periods),
        reset_phase_s=draw(st.floats(0.0, 86_400.0)),
        start=draw(st.integers(0, 2**40)),
        daily=daily,
        ripple=draw(st.floats(0.0, 0.99 - daily)),
        ripple_period_h=draw(st.floats(0.1, 3.0)),
        phase_daily=draw(st.floats(0.0, 2 * math.pi)),
        phase_ripple=draw(st.floats(0.0, 2 * math.pi)),
    )


def max_counts(meter: Meter, duration_ms: int) -> float:
    """An upper bound of the counts a meter can add in `duration_ms` (its power stays below 2 x mean)."""
    return 2 * meter.mean_w * duration_ms / HOUR_MS / meter.resolution_wh + 1


@PROPERTIES
@given(meters(), moments, moments)
def test_a_register_only_goes_down_at_a_declared_reset_or_rollover(meter: Meter, a: int, b: int) -> None:
    earlier, later = min(a, b), max(a, b)
    before, after = meter.value(earlier), meter.value(later)
    if meter.modulus:
        assert 0 <= before < meter.modulus and 0 <= after < meter.modulus
    if meter.resets_between(earlier, later) == 0:
        assert meter.total(later) >= meter.total(earlier)
        if meter.wraps(later) == meter.wraps(earlier):
            assert after >= before
    if after < before:
        assert meter.resets_between(earlier, later) > 0 or meter.wraps(later) > meter.wraps(earlier)


@PROPERTIES
@given(meters(), moments)
def test_the_consumption_is_strictly_increasing_and_the_power_positive(meter: Meter, t: int) -> None:
    assert meter.power_w(t) > 0
    assert meter.consumption_wh(t + 60_000) > meter.consumption_wh(t)


@PROPERTIES
@given(
    meters(modulus=st.sampled_from([2**16, 2**32, 10**5, 10**6])),
    moments,
    st.integers(60_000, 7 * DAY_MS),
    st.integers(1, 500),
)
def test_the_energy_across_a_rollover_equals_the_simulated_consumption(
    meter: Meter, t1: int, gap_ms: int, below_top: int
) -> None:
    """Put the register `below_top` counts under its top at t1, read again after `gap_ms`."""
    modulus = meter.modulus
    assert modulus is not None
    meter.reset_every_ms = None
    t2 = t1 + gap_ms
    assume(max_counts(meter, gap_ms) < 0.1 * modulus)  # the platform trusts a wrap only within 10 % bands
    meter.start = (modulus - below_top - meter.counts(t1)) % modulus
    assert meter.value(t1) == modulus - below_top
    consumed_counts = meter.counts(t2) - meter.counts(t1)
    assume(consumed_counts >= below_top)  # it did roll over
    first, second = meter.value(t1), meter.value(t2)
    assert second < first and meter.wraps(t2) == meter.wraps(t1) + 1

    energy, quality = step_energy(first, second, Register(0.0, float(modulus)))
    assert quality is Quality.ROLLOVER
    assert energy == consumed_counts == (second - first) % modulus
    simulated_wh = meter.consumption_wh(t2) - meter.consumption_wh(t1)
    assert abs(energy * meter.resolution_wh - simulated_wh) <= meter.resolution_wh * (1 + 1e-9)


@PROPERTIES
@given(meters(modulus=st.sampled_from([2**16, 2**32, 10**6, None])), moments, st.integers(1, 30 * DAY_MS))
def test_the_energy_between_two_readings_equals_the_consumption_when_nothing_was_reset(
    meter: Meter, t1: int, gap_ms: int
) -> None:
    meter.reset_every_ms = None
    t2 = t1 + gap_ms
    if meter.modulus:
        assume(max_counts(meter, gap_ms) < meter.modulus)
        counted = (meter.value(t2) - meter.value(t1)) % meter.modulus
    else:
        counted = meter.value(t2) - meter.value(t1)
    simulated_wh = meter.consumption_wh(t2) - meter.consumption_wh(t1)
    assert abs(counted * meter.resolution_wh - simulated_wh) <= meter.resolution_wh * (1 + 1e-9)


@PROPERTIES
@given(meters(modulus=st.sampled_from([2**32, None])), moments, st.integers(0, 7 * DAY_MS))
def test_after_a_reset_the_register_holds_what_was_consumed_since(
    meter: Meter, t: int, since_ms: int
) -> None:
    meter.reset_every_ms = DAY_MS
    reset = meter.last_reset(t)
    assert reset is not None and reset <= t < reset + DAY_MS
    assert meter.value(reset) == 0
    simulated_wh = meter.consumption_wh(t) - meter.consumption_wh(reset)
    assert abs(meter.value(t) * meter.resolution_wh - simulated_wh) <= meter.resolution_wh * (1 + 1e-9)
    assert meter.resets_between(reset - 1, reset) == 1
    assert meter.resets_between(reset, reset + DAY_MS - 1) == 0


def test_a_daily_register_resets_at_midnight_utc_and_the_platform_counts_it_from_zero() -> None:
    gateway = SimulatedGateway(GatewayConfig(GATEWAY, "t", (PointConfig(7, "energy_daily"),)), seed=3)
    meter = gateway.models[0][1]
    assert isinstance(meter, Meter)
    midnight = ORIGIN_MS + 2000 * DAY_MS
    before, after = meter.value(midnight - 60_000), meter.value(midnight + 60_000)
    assert after < before
    energy, quality = step_energy(float(before), float(after))
    assert quality is Quality.RESET
    assert energy == after == meter.counts(midnight + 60_000) - meter.counts(midnight)


@pytest.mark.parametrize("kind", ["energy16", "energy_decimal"])
def test_rollover_every_s_sets_the_rate_of_rollovers(kind: str) -> None:
    point = PointConfig(1, kind, {"rollover_every_s": 3600})
    meter = SimulatedGateway(GatewayConfig(GATEWAY, "t", (point,))).models[0][1]
    assert isinstance(meter, Meter)
    start = ORIGIN_MS + 100 * DAY_MS
    assert meter.wraps(start + DAY_MS) - meter.wraps(start) in (23, 24, 25)


def gateway_config(kinds: list[str]) -> GatewayConfig:
    return GatewayConfig(GATEWAY, "token", tuple(PointConfig(100 + i, k) for i, k in enumerate(kinds)))


@MESSAGE_PROPERTIES
@given(st.integers(0, 2**31), st.lists(st.sampled_from(list(KINDS)), min_size=1, max_size=12), moments)
def test_the_same_seed_gives_the_same_messages_and_a_different_seed_other_values(
    seed: int, kinds: list[str], t: int
) -> None:
    config = gateway_config(kinds)
    stamps = aligned_timestamps(t, t + 30 * 60_000, 60_000)
    first = SimulatedGateway(config, seed).telemetry(stamps, 50)
    again = SimulatedGateway(config, seed).telemetry(stamps, 50)
    assert first == again
    this, other = SimulatedGateway(config, seed), SimulatedGateway(config, seed + 1)
    assert [this.readings(ts) for ts in stamps] != [other.readings(ts) for ts in stamps]


def test_a_restart_with_a_later_start_repeats_the_complete_messages_it_sent_before() -> None:
    gateway = SimulatedGateway(gateway_config(["energy", "power", "voltage", "energy16"]), seed=11)
    start = ORIGIN_MS + 1234 * DAY_MS
    full = gateway.telemetry(aligned_timestamps(start, start + 6 * HOUR_MS, 60_000), 100)
    restarted = SimulatedGateway(gateway.config, seed=11).telemetry(
        aligned_timestamps(start + 2 * HOUR_MS, start + 6 * HOUR_MS, 60_000), 100
    )
    complete = [m for m in restarted if m.readings == 100]
    assert len(complete) >= 8
    assert set(complete) <= set(full)  # blocks are aligned in absolute time: same bytes, same msg_id


@MESSAGE_PROPERTIES
@given(
    st.lists(st.sampled_from(list(KINDS)), min_size=1, max_size=20),
    st.integers(1, 300),
    st.integers(1, 400),
    st.sampled_from([1_000, 10_000, 60_000, 900_000]),
    moments,
)
def test_telemetry_messages_follow_the_protocol_and_carry_every_reading_once(
    kinds: list[str], per_message: int, count: int, step: int, t: int
) -> None:
    gateway = SimulatedGateway(gateway_config(kinds), seed=5)
    stamps = aligned_timestamps(t, t + count * step, step)
    messages = gateway.telemetry(stamps, per_message)
    seen: list[tuple[int, int]] = []
    ids = set()
    for message in messages:
        parsed = Telemetry.model_validate_json(message.payload)
        assert parsed.msg_id is not None and parsed.msg_id not in ids
        ids.add(parsed.msg_id)
        assert message.readings == len(parsed.readings) <= max(per_message, len(kinds))
        seen.extend((r.point_id, int(r.ts.timestamp() * 1000)) for r in parsed.readings)
        body = orjson.loads(message.payload)
        assert all(isinstance(r["ts"], int) for r in body["readings"])
    expected = [(100 + i, ts) for ts in stamps for i in range(len(kinds))]
    assert sorted(seen) == sorted(expected)


@PROPERTIES
@given(st.sampled_from([k for k, v in KINDS.items() if not v.energy]), st.integers(0, 1000), moments)
def test_analog_values_stay_within_their_kinds_limits(kind: str, seed: int, t: int) -> None:
    gateway = SimulatedGateway(gateway_config([kind]), seed)
    value = gateway.readings(t)[0]["value"]
    spec = KINDS[kind]
    assert not spec.energy and spec.low <= value <= spec.high  # type: ignore[union-attr]
    assert value == SimulatedGateway(gateway_config([kind]), seed).readings(t)[0]["value"]


def test_a_health_report_fills_every_field_of_the_schema() -> None:
    gateway = SimulatedGateway(gateway_config(["energy"]), seed=1)
    now = ORIGIN_MS + 2500 * DAY_MS
    payload = gateway.health(
        now, booted_ms=now - HOUR_MS, unpublished=3, last_message_ms=now - 5000, ping_ms=4.2
    )
    report = Health.model_validate_json(payload)
    missing = [name for name in Health.model_fields if getattr(report, name) is None]
    assert missing == []
    assert report.unpublished_messages == 3 and report.ping_ms == 4.2
    assert payload == gateway.health(
        now, booted_ms=now - HOUR_MS, unpublished=3, last_message_ms=now - 5000, ping_ms=4.2
    )


def test_aligned_timestamps_are_multiples_of_the_step_from_the_origin() -> None:
    assert aligned_timestamps(ORIGIN_MS + 1, ORIGIN_MS + 181_000, 60_000) == [
        ORIGIN_MS + 60_000,
        ORIGIN_MS + 120_000,
        ORIGIN_MS + 180_000,
    ]
    assert aligned_timestamps(ORIGIN_MS, ORIGIN_MS, 60_000) == []
    with pytest.raises(ValueError):
        aligned_timestamps(0, 1, 0)


def test_the_config_round_trips_and_keeps_per_point_overrides() -> None:
    data = {
        "gateways": [
            {
                "uuid": GATEWAY,
                "token": "secret",
                "points": [
                    {"id": 1, "kind": "energy16", "rollover_every_s": 600},
                    {"id": 2, "kind": "power"},
                ],
            }
        ]
    }
    (config,) = load_config(data)
    assert config.points[0].options == {"rollover_every_s": 600}
    assert load_config([config.to_json()]) == [config]
    with pytest.raises(ValueError, match="unknown point kind"):
        PointConfig(1, "nonsense")


@pytest.mark.parametrize("kind", list(KINDS))
def test_provisioned_points_are_valid_registry_points_that_declare_their_register(kind: str) -> None:
    body = point_body(kind, f"{kind}-000", 42)
    point = PointIn.model_validate(body)
    spec = KINDS[kind]
    if spec.energy:
        assert point.object_type == "ENERGY_VALUE"
        register = register_from_address(body.get("address"), point.ratio)
        modulus = getattr(spec, "modulus", None)
        assert register is not None and modulus is not None
        assert math.isclose(register.top, modulus * point.ratio)
    else:
        assert point.object_type == "ANALOG_VALUE"


class FlakyClient:
    """Stands in for aiomqtt.Client: records publishes, refuses the n-th one."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.published: list[tuple[str, bytes]] = []
        self.calls = 0

    async def publish(self, topic: str, payload: bytes, qos: int = 0, **_: object) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise aiomqtt.MqttError("connection lost")
        self.published.append((topic, payload))


async def test_a_message_leaves_the_buffer_only_once_acknowledged_and_is_resent_unchanged() -> None:
    gateway = SimulatedGateway(gateway_config(["energy", "power"]), seed=2)
    runner = GatewayRunner(gateway, BrokerTarget("127.0.0.1", 1883, "run1/"), FleetStats(), window=4)
    start = ORIGIN_MS + 3000 * DAY_MS
    messages = gateway.telemetry(aligned_timestamps(start, start + 20 * 60_000, 60_000), per_message=4)
    runner.enqueue(messages)
    assert len(messages) == 10

    flaky = FlakyClient(fail_at=7)  # the second window of four fails
    with pytest.raises(aiomqtt.MqttError):
        await runner._flush(flaky)  # type: ignore[arg-type]
    assert list(runner.pending) == messages[4:]
    assert runner.stats.messages == 4

    steady = FlakyClient()
    await runner._flush(steady)  # type: ignore[arg-type]
    assert not runner.pending
    assert [payload for _, payload in steady.published] == [m.payload for m in messages[4:]]
    assert {topic for topic, _ in steady.published} == {f"run1/gf/v1/gw/{GATEWAY}/telemetry"}
    assert runner.stats.readings == sum(m.readings for m in messages)

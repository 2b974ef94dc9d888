"""An MQTT controller simulator: N gateways x M points speaking device protocol v1 (docs/device-protocol.md).

Each simulated gateway holds one MQTT connection of its own, logging in with username = its uuid and password =
its token (the account the registry made for it on a broker with per-gateway accounts). After every connect it
publishes `online` (QoS 1, retained; its last will says `offline`), subscribes to `cmd/#` (No Local), `control` and
`schedule` topics (and acknowledges what arrives there), sends a health report, then its buffered telemetry,
oldest first. Telemetry is batched (many readings per message), published at QoS 1 with a window of messages in
flight, and kept until the broker's PUBACK: after a lost connection the same bytes, with the same `msg_id`, are
sent again, so the platform stores them once.

Values are a pure function of (seed, gateway uuid, point id, time):

* **meters** (`energy`, `energy16`, `energy_decimal`, `energy_daily`): a cumulative register in raw counts. The
  energy consumed is the exact integral of a positive power profile (a daily cycle plus a faster ripple), so the
  register only goes up, except where it is declared to: it **rolls over** at its modulus (2^32, 2^16, or a
  decimal maximum such as 10^6 for a six-digit display), and it is **reset** to zero every `reset_every_s`
  (`energy_daily`: at midnight UTC). The energy between two readings is `(later - earlier) mod modulus` counts
  across rollovers, the later value itself across a reset.
* **analog values** (`power`, `voltage`, `temperature`, `soc`): a daily cycle, a ripple and hashed noise.

Messages are cut at timestamp blocks aligned in absolute time and their `msg_id` is derived from the seed, the
gateway and the block, so a restarted simulator republishes exactly the messages it published before.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import httpx
import orjson
from paho.mqtt.subscribeoptions import SubscribeOptions

from proto_schemas import topics

log = logging.getLogger("gridfleet.simulator")

ORIGIN_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z: profiles and resets are anchored here
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
_TAU = 2 * math.pi
_MASK64 = 2**64 - 1
MSG_NAMESPACE = uuid.UUID("6f1d3c8e-2b4a-5e7f-9a10-3c5d7e9f1b2a")


# -- point kinds -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeterKind:
    """A cumulative energy register, published as raw counts (the point's ratio turns counts into kWh)."""

    modulus: int | None  # the register wraps to 0 at this many counts (None: never)
    resolution_wh: float  # energy per count
    mean_w: tuple[float, float]  # the point's mean power is drawn from this range
    reset_every_s: float | None = None
    reset_phase_s: float = 0.0  # resets happen at ORIGIN + phase + k * every

    @property
    def energy(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class AnalogKind:
    """An instantaneous value around a mean: daily cycle, ripple and noise, relative to the mean."""

    units: str
    mean: tuple[float, float]
    daily: float
    ripple: float
    noise: float
    low: float
    high: float
    decimals: int

    @property
    def energy(self) -> bool:
        return False


KINDS: dict[str, MeterKind | AnalogKind] = {
    "energy": MeterKind(modulus=2**32, resolution_wh=1.0, mean_w=(300.0, 5_000.0)),
    "energy16": MeterKind(modulus=2**16, resolution_wh=1.0, mean_w=(300.0, 5_000.0)),
    "energy_decimal": MeterKind(modulus=10**6, resolution_wh=100.0, mean_w=(300.0, 5_000.0)),
    "energy_daily": MeterKind(
        modulus=2**32, resolution_wh=1.0, mean_w=(300.0, 5_000.0), reset_every_s=86_400.0
    ),
    "power": AnalogKind("W", (300.0, 5_000.0), 0.4, 0.15, 0.05, 0.0, 50_000.0, 1),
    "voltage": AnalogKind("V", (228.0, 232.0), 0.005, 0.003, 0.002, 0.0, 300.0, 1),
    "temperature": AnalogKind("°C", (12.0, 24.0), 0.15, 0.02, 0.01, -40.0, 85.0, 2),
    "soc": AnalogKind("%", (30.0, 70.0), 0.5, 0.05, 0.005, 0.0, 100.0, 1),
}


# -- value models ----------------------------------------------------------------------------------------


def _mix(x: int) -> int:
    """splitmix64: a fast, well-spread 64-bit hash (the noise of the analog values)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _rng(seed: int, gateway_uuid: str, point_id: int) -> random.Random:
    # A string seed is hashed with SHA-512: the same in every process, whatever PYTHONHASHSEED says.
    return random.Random(f"{seed}/{gateway_uuid}/{point_id}")


class Meter:
    """A cumulative register over a strictly increasing consumption (Wh since ORIGIN_MS, closed form).

    `counts(t)` is the consumption in whole counts; `total(t)` what the register would show if it never
    wrapped (`start + counts(t)`, or counts since the last reset); `value(t)` is `total(t) mod modulus`.
    """

    def __init__(
        self,
        *,
        mean_w: float,
        resolution_wh: float = 1.0,
        modulus: int | None = 2**32,
        reset_every_s: float | None = None,
        reset_phase_s: float = 0.0,
        start: int = 0,
        daily: float = 0.35,
        ripple: float = 0.15,
        ripple_period_h: float = 0.75,
        phase_daily: float = 0.0,
        phase_ripple: float = 0.0,
    ) -> None:
        if mean_w <= 0 or resolution_wh <= 0:
            raise ValueError("mean_w and resolution_wh must be positive")
        if daily < 0 or ripple < 0 or daily + ripple >= 1:
            raise ValueError("daily + ripple must stay below 1 so the power never reaches 0")
        if modulus is not None and modulus < 2:
            raise ValueError("modulus must be at least 2")
        if reset_every_s is not None and reset_every_s < 0.001:
            raise ValueError("reset_every_s must be at least 1 ms")
        self.mean_w = mean_w
        self.resolution_wh = resolution_wh
        self.modulus = modulus
        self.reset_every_ms = None if reset_every_s is None else round(reset_every_s * 1000)
        self.reset_phase_ms = round(reset_phase_s * 1000)
        self.start = start % modulus if modulus else start
        self.daily, self.ripple = daily, ripple
        self._w_daily = _TAU / 24.0
        self._w_ripple = _TAU / ripple_period_h
        self._phase_daily, self._phase_ripple = phase_daily, phase_ripple

    @classmethod
    def from_kind(cls, kind: MeterKind, rng: random.Random, options: Mapping[str, Any]) -> Meter:
        modulus = options.get("modulus", kind.modulus)
        resolution_wh = float(options.get("resolution_wh", kind.resolution_wh))
        mean_w = rng.uniform(*kind.mean_w)
        daily, ripple = rng.uniform(0.2, 0.5), rng.uniform(0.05, 0.3)
        ripple_period_h = rng.uniform(0.25, 1.5)
        phases = rng.uniform(0, _TAU), rng.uniform(0, _TAU)
        start = rng.randrange(int(modulus)) if modulus else rng.randrange(10**6, 10**7)
        if "mean_w" in options:
            mean_w = float(options["mean_w"])
        elif "rollover_every_s" in options and modulus:
            # The mean power that fills the register once per `rollover_every_s`.
            mean_w = int(modulus) * resolution_wh / (float(options["rollover_every_s"]) / 3600.0)
        reset_every_s = options.get("reset_every_s", kind.reset_every_s)
        return cls(
            mean_w=mean_w,
            resolution_wh=resolution_wh,
            modulus=None if modulus is None else int(modulus),
            reset_every_s=None if reset_every_s is None else float(reset_every_s),
            reset_phase_s=float(options.get("reset_phase_s", kind.reset_phase_s)),
            start=int(options.get("start", start)),
            daily=daily,
            ripple=ripple,
            ripple_period_h=ripple_period_h,
            phase_daily=phases[0],
            phase_ripple=phases[1],
        )

    def power_w(self, ts_ms: int) -> float:
        h = (ts_ms - ORIGIN_MS) / HOUR_MS
        return self.mean_w * (
            1.0
            + self.daily * math.sin(self._w_daily * h + self._phase_daily)
            + self.ripple * math.sin(self._w_ripple * h + self._phase_ripple)
        )

    def consumption_wh(self, ts_ms: int) -> float:
        """The integral of `power_w` from ORIGIN_MS (negative before it); strictly increasing."""
        h = (ts_ms - ORIGIN_MS) / HOUR_MS
        daily = (
            self.daily
            / self._w_daily
            * (math.cos(self._phase_daily) - math.cos(self._w_daily * h + self._phase_daily))
        )
        ripple = (
            self.ripple
            / self._w_ripple
            * (math.cos(self._phase_ripple) - math.cos(self._w_ripple * h + self._phase_ripple))
        )
        return self.mean_w * (h + daily + ripple)

    def counts(self, ts_ms: int) -> int:
        return math.floor(self.consumption_wh(ts_ms) / self.resolution_wh)

    def last_reset(self, ts_ms: int) -> int | None:
        """The latest declared reset at or before `ts_ms` (None for a register that is never reset)."""
        if self.reset_every_ms is None:
            return None
        anchor = ORIGIN_MS + self.reset_phase_ms
        return anchor + ((ts_ms - anchor) // self.reset_every_ms) * self.reset_every_ms

    def resets_between(self, earlier_ms: int, later_ms: int) -> int:
        """How many declared resets fall in (earlier, later]."""
        if self.reset_every_ms is None or later_ms <= earlier_ms:
            return 0
        anchor = ORIGIN_MS + self.reset_phase_ms
        return (later_ms - anchor) // self.reset_every_ms - (earlier_ms - anchor) // self.reset_every_ms

    def total(self, ts_ms: int) -> int:
        """The register's count had it never wrapped."""
        reset = self.last_reset(ts_ms)
        if reset is None:
            return self.start + self.counts(ts_ms)
        return self.counts(ts_ms) - self.counts(reset)

    def wraps(self, ts_ms: int) -> int:
        """How often the register has wrapped since its start (or its last reset)."""
        return self.total(ts_ms) // self.modulus if self.modulus else 0

    def value(self, ts_ms: int) -> int:
        total = self.total(ts_ms)
        return total % self.modulus if self.modulus else total


class Analog:
    """An instantaneous value: mean * (1 + daily cycle + ripple + noise), clipped and rounded."""

    def __init__(self, kind: AnalogKind, rng: random.Random, options: Mapping[str, Any]) -> None:
        self.kind = kind
        self.mean = float(options.get("mean", rng.uniform(*kind.mean)))
        self._phase_daily = rng.uniform(0, _TAU)
        self._phase_ripple = rng.uniform(0, _TAU)
        self._w_ripple = _TAU / rng.uniform(0.25, 1.5)
        self._key = rng.getrandbits(64)

    def value(self, ts_ms: int) -> float:
        k = self.kind
        h = (ts_ms - ORIGIN_MS) / HOUR_MS
        noise = 2.0 * _mix(self._key ^ (ts_ms & _MASK64)) / _MASK64 - 1.0
        x = self.mean * (
            1.0
            + k.daily * math.sin(_TAU / 24.0 * h + self._phase_daily)
            + k.ripple * math.sin(self._w_ripple * h + self._phase_ripple)
            + k.noise * noise
        )
        return round(min(max(x, k.low), k.high), k.decimals)


# -- gateways --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PointConfig:
    id: int
    kind: str = "energy"
    options: Mapping[str, Any] = field(default_factory=dict)  # per-point overrides (modulus, mean_w, …)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown point kind {self.kind!r}; one of {', '.join(KINDS)}")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, **self.options}


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    uuid: str
    token: str
    points: tuple[PointConfig, ...]
    name: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GatewayConfig:
        points = tuple(
            PointConfig(
                id=int(p["id"]),
                kind=str(p.get("kind", "energy")),
                options={k: v for k, v in p.items() if k not in ("id", "kind")},
            )
            for p in data["points"]
        )
        return cls(uuid=str(data["uuid"]), token=str(data["token"]), points=points, name=data.get("name"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uuid": self.uuid, "token": self.token}
        if self.name:
            out["name"] = self.name
        out["points"] = [p.to_json() for p in self.points]
        return out


def load_config(data: Any) -> list[GatewayConfig]:
    """`{"gateways": [...]}` or a bare list of `{uuid, token, points: [{id, kind}]}`."""
    rows = data["gateways"] if isinstance(data, dict) else data
    return [GatewayConfig.from_json(row) for row in rows]


def aligned_timestamps(start_ms: int, until_ms: int, step_ms: int) -> list[int]:
    """Every multiple of `step_ms` (counted from ORIGIN_MS) in [start_ms, until_ms)."""
    if step_ms <= 0:
        raise ValueError("step must be positive")
    first = ORIGIN_MS + -(-(start_ms - ORIGIN_MS) // step_ms) * step_ms
    return list(range(first, until_ms, step_ms))


@dataclass(frozen=True, slots=True)
class Message:
    payload: bytes
    readings: int


class SimulatedGateway:
    """The values, telemetry and health messages of one controller; no I/O."""

    def __init__(self, config: GatewayConfig, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        self.uuid = config.uuid
        self.models: list[tuple[int, Meter | Analog]] = []
        for point in config.points:
            kind = KINDS[point.kind]
            rng = _rng(seed, config.uuid, point.id)
            model: Meter | Analog = (
                Meter.from_kind(kind, rng, point.options)
                if isinstance(kind, MeterKind)
                else Analog(kind, rng, point.options)
            )
            self.models.append((point.id, model))
        rng = random.Random(f"{seed}/{config.uuid}/health")
        self._health_key = rng.getrandbits(64)
        self.serial = f"SIM-{rng.randrange(1000, 9999)}-{rng.randrange(10**5):05d}"

    def readings(self, ts_ms: int) -> list[dict[str, Any]]:
        return [{"point_id": pid, "ts": ts_ms, "value": model.value(ts_ms)} for pid, model in self.models]

    def msg_id(self, timestamps: Sequence[int]) -> str:
        return str(uuid.uuid5(MSG_NAMESPACE, f"{self.seed}/{self.uuid}/{timestamps[0]}/{timestamps[-1]}"))

    def message(self, timestamps: Sequence[int]) -> Message:
        """One telemetry message: every point at each of `timestamps`."""
        readings = [r for ts in timestamps for r in self.readings(ts)]
        body = {"msg_id": self.msg_id(timestamps), "readings": readings}
        return Message(orjson.dumps(body), len(readings))

    def telemetry(self, timestamps: Sequence[int], per_message: int = 100) -> list[Message]:
        """Messages of about `per_message` readings, cut at timestamp blocks aligned in absolute time."""
        if not self.models or not timestamps:
            return []
        if len(timestamps) == 1:
            return [self.message(timestamps)]
        step = timestamps[1] - timestamps[0]
        block = max(1, per_message // len(self.models)) * step
        return [
            self.message(list(group))
            for _, group in itertools.groupby(timestamps, key=lambda ts: (ts - ORIGIN_MS) // block)
        ]

    def health(
        self,
        now_ms: int,
        *,
        booted_ms: int,
        unpublished: int = 0,
        last_message_ms: int | None = None,
        ping_ms: float | None = None,
    ) -> bytes:
        """A health report with every field of proto_schemas.health.Health."""
        h = (now_ms - ORIGIN_MS) / HOUR_MS
        noise = _mix(self._health_key ^ (now_ms & _MASK64)) / _MASK64
        report = {
            "ts": _iso(now_ms),
            "serial": self.serial,
            "sw_version": "4.12.1-sim",
            "types_version": "2026.01",
            "init_phase": "running",
            "last_reboot": _iso(booted_ms),
            "cpu_temp_c": round(48.0 + 6.0 * math.sin(_TAU / 24.0 * h) + 2.0 * noise, 1),
            "mem_available_mb": round(310.0 - 40.0 * noise, 1),
            "unpublished_messages": unpublished,
            "db_status": "ok",
            "ping_ms": round(ping_ms if ping_ms is not None else 20.0 + 30.0 * noise, 1),
            "last_message_at": _iso(last_message_ms if last_message_ms is not None else now_ms),
        }
        return orjson.dumps(report)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- MQTT ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerTarget:
    host: str
    port: int
    topic_prefix: str = ""
    keepalive: int = 60
    timeout_s: float = 60.0


@dataclass(slots=True)
class FleetStats:
    messages: int = 0
    readings: int = 0
    connects: int = 0
    connect_failures: int = 0


def _quiet_logger() -> logging.Logger:
    # aiomqtt warns on every publish once more than 10 are pending; that logging alone costs throughput.
    quiet = logging.getLogger("gridfleet.simulator.mqtt")
    quiet.setLevel(logging.ERROR)
    return quiet


class GatewayRunner:
    """One gateway's connection: online/last will, commands acknowledged, health, buffered telemetry."""

    def __init__(
        self,
        gateway: SimulatedGateway,
        broker: BrokerTarget,
        stats: FleetStats,
        *,
        window: int = 20,
        interval_s: float | None = None,
        health_interval_s: float = 60.0,
        connect_slots: asyncio.Semaphore | None = None,
    ) -> None:
        self.gateway = gateway
        self.broker = broker
        self.stats = stats
        self.window = max(1, window)
        self.interval_s = interval_s
        self.health_interval_s = health_interval_s
        self.connect_slots = connect_slots or asyncio.Semaphore(1)
        self.pending: deque[Message] = deque()
        self.connected = asyncio.Event()
        self.drained = asyncio.Event()
        self._wake = asyncio.Event()
        self.booted_ms = int(time.time() * 1000)
        self.last_message_ms: int | None = None
        self.ping_ms: float | None = None
        self._last_tick: int | None = None
        self.resume_ms: int | None = None  # live readings start here (the end of a backfill)

    def topic(self, leaf: str) -> str:
        return self.broker.topic_prefix + topics.gateway_topic(self.gateway.uuid, leaf)

    def enqueue(self, messages: Iterable[Message]) -> None:
        self.pending.extend(messages)
        if self.pending:
            self.drained.clear()
        self._wake.set()

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            username=self.gateway.uuid,
            password=self.gateway.config.token,
            identifier=self.gateway.uuid,
            will=aiomqtt.Will(self.topic("status"), b"offline", qos=1, retain=True),
            clean_session=False,
            keepalive=self.broker.keepalive,
            timeout=self.broker.timeout_s,
            logger=_quiet_logger(),
            max_inflight_messages=self.window,
        )

    async def run(self, go: asyncio.Event, stop: asyncio.Event) -> None:
        """Stay connected until `stop` (reconnecting with backoff); publish the buffer once `go` is set."""
        ticker = asyncio.create_task(self._ticker(stop)) if self.interval_s else None
        backoff = 0.5
        try:
            while not stop.is_set():
                try:
                    await self._session(go, stop)
                    return
                except (aiomqtt.MqttError, OSError) as exc:
                    self.connected.clear()
                    self.stats.connect_failures += 1
                    log.warning("gateway %s: connection lost (%s); retrying", self.gateway.uuid, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 30.0)
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker

    async def _session(self, go: asyncio.Event, stop: asyncio.Event) -> None:
        client = self._client()
        async with self.connect_slots:
            await client.__aenter__()
        try:
            self.stats.connects += 1
            started = time.perf_counter()
            await client.publish(self.topic("status"), b"online", qos=1, retain=True)
            self.ping_ms = (time.perf_counter() - started) * 1000
            # Commands may use sub-topics of `cmd`; No Local keeps this controller's own acks away.
            await client.subscribe(self.topic("cmd/#"), options=SubscribeOptions(qos=1, noLocal=True))
            for leaf in ("control", "schedule"):
                await client.subscribe(self.topic(leaf), qos=1)
            listener = asyncio.create_task(self._listen(client))
            try:
                await self._publish_health(client)
                self.connected.set()
                await _first(go.wait(), stop.wait())
                next_health = time.monotonic() + self.health_interval_s
                while not stop.is_set():
                    await self._flush(client)
                    if not self.pending:
                        self.drained.set()
                    if time.monotonic() >= next_health:
                        await self._publish_health(client)
                        next_health = time.monotonic() + self.health_interval_s
                    self._wake.clear()
                    if self.pending:
                        continue
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            _first(self._wake.wait(), stop.wait()),
                            max(0.0, next_health - time.monotonic()),
                        )
                # A deliberate disconnect: say so, since a 3.1.1 broker never sends the will after DISCONNECT.
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.publish(self.topic("status"), b"offline", qos=1, retain=True, timeout=5)
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await listener
        finally:
            self.connected.clear()
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

    async def _flush(self, client: aiomqtt.Client) -> None:
        """Publish the buffer oldest first, `window` messages in flight; a message leaves only once acked."""
        while self.pending:
            batch = list(itertools.islice(self.pending, self.window))
            telemetry = self.topic("telemetry")
            outcomes = await asyncio.gather(
                *(client.publish(telemetry, m.payload, qos=1) for m in batch), return_exceptions=True
            )
            failed = next((o for o in outcomes if isinstance(o, BaseException)), None)
            if failed is not None:
                # Nothing of this window leaves the buffer: it is sent again, unchanged, after a reconnect.
                if isinstance(failed, aiomqtt.MqttError | asyncio.CancelledError):
                    raise failed
                raise aiomqtt.MqttError(repr(failed)) from failed
            for message in batch:
                self.pending.popleft()
                self.stats.messages += 1
                self.stats.readings += message.readings
            self.last_message_ms = int(time.time() * 1000)

    async def _publish_health(self, client: aiomqtt.Client) -> None:
        now = int(time.time() * 1000)
        report = self.gateway.health(
            now,
            booted_ms=self.booted_ms,
            unpublished=len(self.pending),
            last_message_ms=self.last_message_ms,
            ping_ms=self.ping_ms,
        )
        started = time.perf_counter()
        await client.publish(self.topic("health"), report, qos=1)
        self.ping_ms = (time.perf_counter() - started) * 1000

    async def _listen(self, client: aiomqtt.Client) -> None:
        """Acknowledge commands, control and schedules (the simulator applies nothing)."""
        async for message in client.messages:
            try:
                body = orjson.loads(message.payload) if isinstance(message.payload, bytes) else {}
            except orjson.JSONDecodeError:
                continue
            if not isinstance(body, dict):
                continue
            rest = message.topic.value.removeprefix(self.topic(""))
            leaf = "cmd" if rest == "cmd" or (rest.startswith("cmd/") and rest != "cmd/ack") else rest
            if leaf == "cmd" and "command_id" in body:
                for status in ("delivered", "succeeded"):
                    ack = {"command_id": body["command_id"], "status": status}
                    await client.publish(self.topic("cmd/ack"), orjson.dumps(ack), qos=1)
            elif leaf in ("control", "schedule") and "version" in body:
                status = "applied" if leaf == "control" else "stored"
                ack = {"version": body["version"], "status": status}
                await client.publish(self.topic(f"{leaf}/ack"), orjson.dumps(ack), qos=1)

    async def _ticker(self, stop: asyncio.Event) -> None:
        """Every `interval_s`, the readings of every point at the aligned tick (buffered while offline)."""
        assert self.interval_s
        step = max(1, round(self.interval_s * 1000))
        while not stop.is_set():
            now = int(time.time() * 1000)
            # Carry on where the history ended (at most a day back), else from the latest tick.
            if self._last_tick is not None:
                start = max(self._last_tick + 1, now - DAY_MS)
            elif self.resume_ms is not None:
                start = max(self.resume_ms, now - DAY_MS)
            else:
                start = now - step + 1
            due = aligned_timestamps(start, now + 1, step)
            if due:
                self._last_tick = due[-1]
                self.enqueue(self.gateway.message([ts]) for ts in due)
            nxt = (self._last_tick or now) + step
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.01, (nxt - time.time() * 1000) / 1000))


async def _first(*aws: Any) -> None:
    """Wait until the first of several awaitables is done; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Fleet:
    """Many simulated gateways in one process: one connection and one asyncio task per gateway."""

    def __init__(
        self,
        configs: Sequence[GatewayConfig],
        broker: BrokerTarget,
        *,
        seed: int = 0,
        window: int = 20,
        interval_s: float | None = None,
        health_interval_s: float = 60.0,
        connect_concurrency: int = 50,
    ) -> None:
        self.stats = FleetStats()
        self.go = asyncio.Event()
        self.stop = asyncio.Event()
        slots = asyncio.Semaphore(connect_concurrency)
        self.runners = [
            GatewayRunner(
                SimulatedGateway(config, seed),
                broker,
                self.stats,
                window=window,
                interval_s=interval_s,
                health_interval_s=health_interval_s,
                connect_slots=slots,
            )
            for config in configs
        ]
        self._tasks: list[asyncio.Task[None]] = []

    def backfill(self, start_ms: int, until_ms: int, step_ms: int, per_message: int = 100) -> tuple[int, int]:
        """Queue the history [start, until) at `step_ms` on every gateway; returns (messages, readings)."""
        stamps = aligned_timestamps(start_ms, until_ms, step_ms)
        messages = readings = 0
        for runner in self.runners:
            batch = runner.gateway.telemetry(stamps, per_message)
            runner.enqueue(batch)
            runner.resume_ms = until_ms
            messages += len(batch)
            readings += sum(m.readings for m in batch)
        return messages, readings

    def start(self) -> None:
        self._tasks = [asyncio.create_task(r.run(self.go, self.stop)) for r in self.runners]

    async def wait_connected(self) -> None:
        await asyncio.gather(*(r.connected.wait() for r in self.runners))

    async def wait_drained(self) -> None:
        await asyncio.gather(*(r.drained.wait() for r in self.runners))

    async def close(self, timeout_s: float = 30.0) -> None:
        """Publish `offline` and disconnect every gateway."""
        self.stop.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._tasks.clear()


# -- provisioning through the REST API -------------------------------------------------------------------


def point_body(kind_name: str, name: str, datasource_id: int) -> dict[str, Any]:
    """The `POST /points` body for a simulated point of a kind."""
    kind = KINDS[kind_name]
    if isinstance(kind, MeterKind):
        body: dict[str, Any] = {
            "name": name,
            "data_source_id": datasource_id,
            "object_type": "ENERGY_VALUE",
            "units": "kWh",
            "ratio": kind.resolution_wh / 1000.0,
            "description": f"simulated {kind_name} register (raw counts)",
        }
        if kind.modulus:
            body["address"] = {"max_value": kind.modulus}
        return body
    return {
        "name": name,
        "data_source_id": datasource_id,
        "object_type": "ANALOG_VALUE",
        "units": kind.units,
        "low_limit": kind.low,
        "high_limit": kind.high,
        "description": f"simulated {kind_name}",
    }


class ApiClient:
    """The gateway REST API as an administrator, retrying what a busy platform refuses for a moment."""

    def __init__(self, base_url: str, *, concurrency: int = 16, timeout_s: float = 60.0) -> None:
        self.http = httpx.AsyncClient(
            base_url=f"{base_url.rstrip('/')}/api/v1",
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self.slots = asyncio.Semaphore(concurrency)

    async def login(self, user: str, password: str) -> None:
        answer = await self.http.put("/users/login", json={"data": {"name": user, "password": password}})
        answer.raise_for_status()
        body = answer.json()
        self.http.headers.update({"User-UUID": body["uuid"], "Token": body["token"]})

    async def post(self, path: str, data: dict[str, Any], attempts: int = 8) -> dict[str, Any]:
        delay = 0.5
        for attempt in range(attempts):
            async with self.slots:
                try:
                    answer = await self.http.post(path, json={"data": data})
                except httpx.TransportError:
                    if attempt == attempts - 1:
                        raise
                    answer = None
            if answer is not None and answer.status_code == 201:
                return dict(answer.json())
            if answer is not None and answer.status_code not in (429, 502, 503, 504):
                raise RuntimeError(f"POST {path} failed: {answer.status_code} {answer.text}")
            retry_after = answer.headers.get("Retry-After") if answer is not None else None
            await asyncio.sleep(float(retry_after) if retry_after else delay)
            delay = min(delay * 2, 10.0)
        raise RuntimeError(f"POST {path} still refused after {attempts} attempts")

    async def aclose(self) -> None:
        await self.http.aclose()


async def provision(
    api_url: str,
    user: str,
    password: str,
    gateways: int,
    points_per_gateway: int,
    kinds: Sequence[str] = ("energy",),
    *,
    name: str | None = None,
    concurrency: int = 16,
) -> list[GatewayConfig]:
    """Create `gateways` gateways, each with one MQTT data source and `points_per_gateway` points.

    Point kinds cycle through `kinds`. Every object is created through the public API, so the registry makes
    each gateway's broker account as it would for a real controller. Returns the simulator's configuration.
    """
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown point kind {kind!r}; one of {', '.join(KINDS)}")
    prefix = name or f"sim-{uuid.uuid4().hex[:6]}"
    api = ApiClient(api_url, concurrency=concurrency)
    try:
        await api.login(user, password)

        async def one(index: int) -> GatewayConfig:
            label = f"{prefix}-{index:05d}"
            gateway = await api.post("/gateways", {"name": label, "description": "simulated controller"})
            source = await api.post(
                "/datasources", {"name": label, "gateway_id": gateway["id"], "protocol": "mqtt"}
            )
            point_kinds = [kinds[j % len(kinds)] for j in range(points_per_gateway)]
            created = await asyncio.gather(
                *(
                    api.post("/points", point_body(kind, f"{kind}-{j:03d}", int(source["id"])))
                    for j, kind in enumerate(point_kinds)
                )
            )
            points = tuple(
                PointConfig(id=int(p["id"]), kind=kind) for p, kind in zip(created, point_kinds, strict=True)
            )
            return GatewayConfig(uuid=gateway["uuid"], token=gateway["token"], points=points, name=label)

        return list(await asyncio.gather(*(one(i) for i in range(gateways))))
    finally:
        await api.aclose()

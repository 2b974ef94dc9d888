"""Modbus TCP polling: every modbus-tcp data source read on a schedule and published as device telemetry.

One task per data source (one TCP connection each). Every `interval_s` it reads the source's points in
batched requests (see `planning`), decodes them (see `decoding`) and publishes ONE telemetry message
`{"msg_id", "readings": [{"point_id", "ts", "value"}]}` on `gf/v1/gw/{gateway_uuid}/telemetry`, the same
message a controller sends, so ingestion, normalisation and everything after it treat both alike. All
readings of one poll carry the poll's time (whole milliseconds); `msg_id` is `modbus-{source}-{ms}`, so a
resent message is stored once.

Failures: every request has a timeout (`timeout_s`) and `retries` retries with exponential backoff
(`backoff_s`, doubling, at most `backoff_max_s`), reconnecting each time. A device that refuses a batched
read (illegal address: a gap holds unmapped registers) gets it split into contiguous runs, then into one
read per point; the split plan is kept. A poll is good when it yields at least one reading.

Status: a data source starts `unknown`, becomes `online` on a good poll, and `offline` after `offline_after`
consecutive failed polls (or, with `stale_after_s`, when the last good poll is older than that); the next
good poll makes it `online` again. Each change is passed to `on_status` (a `StatusChange`) and the current
state of every source is served by `ModbusPoller.status()`.

Use: `poller = ModbusPoller(ctx, registry_sources(ctx)); ctx.background(poller.run, "modbus-poller")`;
call `poller.refresh()` when the registry's data sources or points change (else it reloads every
`reload_s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from prometheus_client import Counter, Histogram
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from libs.service import ServiceContext
from proto_schemas import topics
from proto_schemas.telemetry import MAX_READINGS_PER_MESSAGE, Reading, Telemetry
from services.ingestion.modbus.decoding import DecodeError, decode_bits, decode_registers
from services.ingestion.modbus.planning import PointRead, ReadRequest, parse_points, plan_reads, split

log = logging.getLogger(__name__)

POLLS = Counter("gridfleet_modbus_polls_total", "Modbus polls of a data source, by outcome", ["outcome"])
POINTS_READ = Counter("gridfleet_modbus_points_read_total", "Modbus point values read and published")
POINT_ERRORS = Counter(
    "gridfleet_modbus_point_errors_total", "Modbus points not read although the device answered"
)
STATUS_CHANGES = Counter(
    "gridfleet_modbus_status_changes_total", "Data sources gone online/offline", ["status"]
)
POLL_SECONDS = Histogram("gridfleet_modbus_poll_seconds", "Time one poll of a data source took")

Status = Literal["unknown", "online", "offline"]
SourcesLoader = Callable[[], Awaitable[Sequence[Mapping[str, Any]]]]
StatusListener = Callable[["StatusChange"], Awaitable[None]]
Publisher = Callable[[str, Telemetry], Awaitable[None]]

# Exception codes after which a batched read is split: the device refuses the range, not the request.
_SPLIT_ON = (ExcCodes.ILLEGAL_ADDRESS, ExcCodes.ILLEGAL_VALUE)


@dataclass(frozen=True, slots=True)
class PollerConfig:
    interval_s: float = 10.0
    timeout_s: float = 3.0  # per connect and per request
    retries: int = 2  # per request, after the first attempt
    backoff_s: float = 0.25  # before the first retry; doubles per retry
    backoff_max_s: float = 4.0
    offline_after: int = 3  # consecutive failed polls
    stale_after_s: float | None = None  # also offline when the last good poll is older than this
    reload_s: float = 60.0  # reload the data sources at least this often
    max_gap: int = 8  # registers read in between two points to batch them
    max_bit_gap: int = 64  # coils/inputs read in between
    start_spread_s: float = 2.0  # start each source at a random moment within this (at most one interval)
    shard_index: int = 0  # with several replicas: this one polls the sources whose id % shard_count is this
    shard_count: int = 1
    quiet_pymodbus: bool = True  # pymodbus logs every failed attempt; the poller reports what matters


@dataclass(frozen=True, slots=True)
class ModbusSource:
    """A modbus-tcp data source as the registry's `/internal/modbussources` serves it."""

    data_source_id: int
    gateway_uuid: str
    host: str
    port: int
    points: tuple[PointRead, ...]
    unpollable: tuple[tuple[int, str], ...] = ()  # (point id, why) for addresses that cannot be read

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ModbusSource:
        points = row.get("points") or []
        if isinstance(points, str | bytes):
            points = orjson.loads(points)
        prepared = []
        for point in points:
            address = point.get("address")
            if isinstance(address, str | bytes):
                with contextlib.suppress(orjson.JSONDecodeError):
                    address = orjson.loads(address)
            prepared.append({"point_id": point["point_id"], "address": address})
        reads, problems = parse_points(prepared)
        return cls(
            data_source_id=int(row["data_source_id"]),
            gateway_uuid=str(row["gateway_uuid"]),
            host=str(row["host"]),
            port=int(row.get("port") or 502),
            points=tuple(reads),
            unpollable=tuple(sorted(problems.items())),
        )


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A data source went online or offline (the event to publish)."""

    data_source_id: int
    gateway_uuid: str
    status: Literal["online", "offline"]
    previous: Status
    changed_ms: int
    consecutive_failures: int
    last_good_ms: int | None
    reason: str | None = None


@dataclass
class SourceState:
    """What the poller knows about one data source (served by `ModbusPoller.status()`)."""

    data_source_id: int
    gateway_uuid: str
    status: Status = "unknown"
    since_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    consecutive_failures: int = 0
    polls_ok: int = 0
    polls_failed: int = 0
    polls_skipped: int = 0  # schedule ticks missed because a poll ran past them
    readings_published: int = 0
    read_errors: int = 0  # points not read although their device answered
    last_good_ms: int | None = None
    last_error: str | None = None
    requests: int = 0  # read requests per poll in the current plan
    unpollable: dict[int, str] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        return asdict(self)


class DeviceUnreachable(Exception):
    """No answer from the device after every retry (refused, timed out, connection lost)."""


class DeviceRefused(Exception):
    """The device answered a read with a Modbus exception."""

    def __init__(self, code: int) -> None:
        super().__init__(f"modbus exception {code}")
        self.code = code


def decode_point(point: PointRead, request: ReadRequest, response: ModbusPDU) -> float:
    """`point`'s value from `request`'s response; DecodeError when it cannot be read as a finite number."""
    window = request.window(point)
    if point.is_bits:
        bits = list(response.bits)[window]
        if len(bits) != point.count:
            raise DecodeError(f"expected {point.count} bit(s), got {len(bits)}")
        value: float = float(decode_bits(bits))
    else:
        assert point.data_format is not None
        registers = list(response.registers)[window]
        value = float(decode_registers(registers, point.data_format, point.byte_order, point.word_order))
    if not math.isfinite(value):
        raise DecodeError(f"{point.data_format} value is not a finite number")
    return value


def _now_ms() -> int:
    return int(time.time() * 1000)


class SourcePoller:
    """Polls one data source until cancelled."""

    def __init__(
        self,
        source: ModbusSource,
        config: PollerConfig,
        publish: Publisher,
        on_status: StatusListener | None = None,
        state: SourceState | None = None,
    ) -> None:
        self.source = source
        self.config = config
        self._publish = publish
        self._on_status = on_status
        self.plan: list[ReadRequest] = plan_reads(
            source.points, max_gap=config.max_gap, max_bit_gap=config.max_bit_gap
        )
        self.state = state or SourceState(source.data_source_id, source.gateway_uuid)
        self.state.gateway_uuid = source.gateway_uuid
        self.state.requests = len(self.plan)
        self.state.unpollable = dict(source.unpollable)
        self._started = time.monotonic()
        self._client: AsyncModbusTcpClient | None = None
        self._errors: list[str] = []  # what went wrong in the current poll

    # -- schedule -------------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.interval_s
        # Sources started together (a reload) are spread so they do not all poll in the same instant.
        await asyncio.sleep(random.uniform(0.0, min(self.config.start_spread_s, interval)))
        next_at = loop.time()
        try:
            while True:
                await self.poll_once()
                next_at += interval
                now = loop.time()
                if now > next_at:  # the poll ran past one or more ticks: count them, keep the phase
                    missed = math.floor((now - next_at) / interval) + 1 if interval > 0 else 0
                    self.state.polls_skipped += missed
                    next_at += missed * interval
                await asyncio.sleep(max(0.0, next_at - now))
        finally:
            self.close()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- one poll -------------------------------------------------------------------------------------
    async def poll_once(self) -> list[Reading]:
        """Read every point once, publish what was read, update the status. Returns the readings."""
        started = time.perf_counter()
        ts_ms = _now_ms()
        ts = datetime.fromtimestamp(ts_ms / 1000, UTC)
        readings: list[Reading] = []
        failure: str | None = None
        self._errors = []
        try:
            if not self.plan:
                await self._connected()  # no points: reachable is good enough
            else:
                readings = await self._read_all(ts)
                if not readings:
                    failure = "; ".join(self._errors[:3]) or "no point could be read"
        except DeviceUnreachable as exc:
            failure = str(exc)
            self.close()
        if readings:
            await self._send(readings, ts_ms)
        POLL_SECONDS.observe(time.perf_counter() - started)
        POLLS.labels("ok" if failure is None else "failed").inc()
        if failure is None:
            await self._succeeded(ts_ms)
        else:
            await self._failed(failure)
        return readings

    async def _read_all(self, ts: datetime) -> list[Reading]:
        readings: list[Reading] = []
        plan: list[ReadRequest] = []  # the plan after this poll (refused batches split)
        for index, request in enumerate(self.plan):
            planned = len(plan)
            try:
                await self._read_request(request, ts, readings, plan)
            except DeviceUnreachable:
                if not readings:
                    raise  # nothing read: the plan stays as it was
                del plan[planned:]
                plan.extend(self.plan[index:])
                self.close()
                break  # the device stopped answering: keep what this poll already read
        self.plan = plan
        self.state.requests = len(plan)
        return readings

    async def _read_request(
        self, request: ReadRequest, ts: datetime, readings: list[Reading], plan: list[ReadRequest]
    ) -> None:
        """Read one request into `readings`; a refused batch is split and the parts read instead."""
        try:
            response = await self._read(request)
        except DeviceRefused as exc:
            if exc.code in _SPLIT_ON and len(request.points) > 1:
                log.info(
                    "modbus device refused a batched read; splitting it",
                    extra={"fields": self._fields(start=request.start, count=request.count, code=exc.code)},
                )
                for part in split(request):
                    await self._read_request(part, ts, readings, plan)
                return
            plan.append(request)
            self._error(
                f"{exc} reading {request.count} from {request.start} (fc {request.function_code})",
                request.points,
            )
            return
        plan.append(request)
        for point in request.points:
            try:
                value = decode_point(point, request, response)
            except DecodeError as exc:
                self._error(f"point {point.point_id}: {exc}", (point,))
                continue
            readings.append(Reading(point_id=point.point_id, ts=ts, value=value))

    def _error(self, message: str, points: Sequence[PointRead]) -> None:
        POINT_ERRORS.inc(len(points))
        self.state.read_errors += len(points)
        self.state.last_error = message
        self._errors.append(message)

    async def _connected(self) -> AsyncModbusTcpClient:
        client = self._client
        if client is not None and client.connected:
            return client
        self.close()
        client = AsyncModbusTcpClient(
            self.source.host,
            port=self.source.port,
            timeout=self.config.timeout_s,
            retries=0,  # retries (with backoff and a fresh connection) are ours
            reconnect_delay=0,  # no reconnecting in the background either
            name=f"modbus-{self.source.data_source_id}",
        )
        try:
            ok = await asyncio.wait_for(client.connect(), self.config.timeout_s + 1.0)
        except (TimeoutError, OSError, ModbusException) as exc:
            client.close()
            raise DeviceUnreachable(
                f"cannot connect to {self.source.host}:{self.source.port}: {exc!r}"
            ) from exc
        if not ok:
            client.close()
            raise DeviceUnreachable(f"cannot connect to {self.source.host}:{self.source.port}")
        self._client = client
        return client

    async def _read(self, request: ReadRequest) -> ModbusPDU:
        """One read with timeout and retries (exponential backoff, a fresh connection for each retry)."""
        last: BaseException | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                await asyncio.sleep(
                    min(self.config.backoff_max_s, self.config.backoff_s * 2 ** (attempt - 1))
                )
            try:
                client = await self._connected()
                response = await asyncio.wait_for(self._call(client, request), self.config.timeout_s + 1.0)
            except DeviceUnreachable as exc:
                last = exc
                continue
            except (TimeoutError, OSError, ModbusException) as exc:
                last = exc
                self.close()  # a late answer must not be taken for the next request's
                continue
            if response.isError():
                raise DeviceRefused(int(getattr(response, "exception_code", 0)))
            return response
        raise DeviceUnreachable(
            f"no answer from {self.source.host}:{self.source.port} after {self.config.retries + 1} attempt(s): {last}"
        )

    @staticmethod
    async def _call(client: AsyncModbusTcpClient, request: ReadRequest) -> ModbusPDU:
        read = {
            1: client.read_coils,
            2: client.read_discrete_inputs,
            3: client.read_holding_registers,
            4: client.read_input_registers,
        }[request.function_code]
        return await read(request.start, count=request.count, device_id=request.slave_id)

    async def _send(self, readings: list[Reading], ts_ms: int) -> None:
        topic = topics.gateway_topic(self.source.gateway_uuid, "telemetry")
        for part, begin in enumerate(range(0, len(readings), MAX_READINGS_PER_MESSAGE)):
            chunk = readings[begin : begin + MAX_READINGS_PER_MESSAGE]
            msg_id = f"modbus-{self.source.data_source_id}-{ts_ms}" + (f"-{part}" if part else "")
            await self._publish(topic, Telemetry(msg_id=msg_id, readings=chunk))
        self.state.readings_published += len(readings)
        POINTS_READ.inc(len(readings))

    # -- status ---------------------------------------------------------------------------------------
    async def _succeeded(self, ts_ms: int) -> None:
        state = self.state
        state.polls_ok += 1
        state.consecutive_failures = 0
        state.last_good_ms = ts_ms
        if state.status != "online":
            await self._change("online", None)

    async def _failed(self, reason: str) -> None:
        state = self.state
        state.polls_failed += 1
        state.consecutive_failures += 1
        state.last_error = reason
        stale_after = self.config.stale_after_s
        stale = False
        if stale_after is not None:
            if state.last_good_ms is None:
                stale = time.monotonic() - self._started > stale_after
            else:
                stale = _now_ms() - state.last_good_ms > stale_after * 1000
        if state.status != "offline" and (state.consecutive_failures >= self.config.offline_after or stale):
            await self._change("offline", reason)

    async def _change(self, status: Literal["online", "offline"], reason: str | None) -> None:
        state = self.state
        change = StatusChange(
            data_source_id=state.data_source_id,
            gateway_uuid=state.gateway_uuid,
            status=status,
            previous=state.status,
            changed_ms=_now_ms(),
            consecutive_failures=state.consecutive_failures,
            last_good_ms=state.last_good_ms,
            reason=reason,
        )
        state.status, state.since_ms = status, change.changed_ms
        STATUS_CHANGES.labels(status).inc()
        log.log(
            logging.WARNING if status == "offline" else logging.INFO,
            f"modbus data source {status}",
            extra={"fields": self._fields(previous=change.previous, reason=reason)},
        )
        if self._on_status is not None:
            try:
                await self._on_status(change)
            except Exception:
                log.exception("modbus status listener failed", extra={"fields": self._fields()})

    def _fields(self, **extra: Any) -> dict[str, Any]:
        return {
            "data_source_id": self.source.data_source_id,
            "host": self.source.host,
            "port": self.source.port,
            **extra,
        }


def registry_sources(ctx: ServiceContext) -> SourcesLoader:
    """Load every modbus-tcp data source from the registry's `/internal/modbussources`."""

    async def load() -> Sequence[Mapping[str, Any]]:
        response = await ctx.call("registry", "GET", "/internal/modbussources")
        response.raise_for_status()
        rows: list[Mapping[str, Any]] = response.json()
        return rows

    return load


class ModbusPoller:
    """Keeps one `SourcePoller` running per modbus-tcp data source the loader returns."""

    def __init__(
        self,
        ctx: ServiceContext | None,
        sources_loader: SourcesLoader | None = None,
        *,
        config: PollerConfig | None = None,
        on_status: StatusListener | None = None,
        publish: Publisher | None = None,
    ) -> None:
        if sources_loader is None:
            if ctx is None:
                raise ValueError("a sources loader or a service context is needed")
            sources_loader = registry_sources(ctx)
        if publish is None:
            if ctx is None:
                raise ValueError("a publisher or a service context is needed")
            bus_ctx = ctx

            async def publish_on_bus(topic: str, message: Telemetry) -> None:
                await bus_ctx.mqtt.publish(topic, message)

            publish = publish_on_bus
        self.config = config or PollerConfig()
        if self.config.quiet_pymodbus:
            logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        self._load = sources_loader
        self._publish = publish
        self._on_status = on_status
        self._pollers: dict[int, tuple[SourcePoller, asyncio.Task[None]]] = {}
        self._reload = asyncio.Event()
        self.loaded = asyncio.Event()  # set after the first successful load

    def refresh(self) -> None:
        """Reload the data sources now (call on registry change events)."""
        self._reload.set()

    async def run(self) -> None:
        """Poll until cancelled (suitable for `ctx.background`)."""
        delay = 0.5
        try:
            while True:
                self._reload.clear()
                try:
                    rows = await self._load()
                except Exception as exc:
                    log.warning("modbus data sources not loaded", extra={"fields": {"error": repr(exc)}})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.config.reload_s)
                    continue
                delay = 0.5
                self.apply(rows)
                self.loaded.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._reload.wait(), self.config.reload_s)
        finally:
            await self.stop()

    def apply(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Start pollers for new data sources, restart changed ones (keeping their status), stop removed."""
        wanted: dict[int, ModbusSource] = {}
        for row in rows:
            try:
                source = ModbusSource.from_row(row)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning(
                    "modbus data source skipped",
                    extra={"fields": {"row": repr(row)[:500], "error": repr(exc)}},
                )
                continue
            if source.data_source_id % max(1, self.config.shard_count) != self.config.shard_index:
                continue  # another replica's
            wanted[source.data_source_id] = source
            for point_id, why in source.unpollable:
                log.warning(
                    "modbus point cannot be polled",
                    extra={
                        "fields": {
                            "data_source_id": source.data_source_id,
                            "point_id": point_id,
                            "error": why,
                        }
                    },
                )
        for source_id in list(self._pollers):
            poller, task = self._pollers[source_id]
            if source_id not in wanted or wanted[source_id] != poller.source:
                task.cancel()
                del self._pollers[source_id]
                if source_id in wanted:
                    self._start(wanted.pop(source_id), poller.state)
            else:
                wanted.pop(source_id)
        for source in wanted.values():
            self._start(source, None)

    def _start(self, source: ModbusSource, state: SourceState | None) -> None:
        poller = SourcePoller(source, self.config, self._publish, self._on_status, state)
        task = asyncio.create_task(self._supervise(poller), name=f"modbus-{source.data_source_id}")
        self._pollers[source.data_source_id] = (poller, task)

    async def _supervise(self, poller: SourcePoller) -> None:
        while True:
            try:
                await poller.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("modbus poller crashed; restarting", extra={"fields": poller._fields()})
                await asyncio.sleep(max(1.0, self.config.interval_s))

    async def stop(self) -> None:
        pollers, self._pollers = self._pollers, {}
        for _, task in pollers.values():
            task.cancel()
        for _, task in pollers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def status(self) -> dict[int, dict[str, Any]]:
        """Every polled data source's state, by data source id."""
        return {source_id: poller.state.snapshot() for source_id, (poller, _) in self._pollers.items()}

    def sources(self) -> dict[int, ModbusSource]:
        return {source_id: poller.source for source_id, (poller, _) in self._pollers.items()}


__all__ = [
    "ModbusPoller",
    "ModbusSource",
    "PollerConfig",
    "SourcePoller",
    "SourceState",
    "StatusChange",
    "registry_sources",
]

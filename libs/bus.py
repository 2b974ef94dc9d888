"""The MQTT bus every gridfleet service talks through.

A thin layer over aiomqtt that gives each service at-least-once delivery:

- MQTT v5, QoS 1, a persistent session (stable client id, `clean_start` off, a session expiry), so messages
  published while a service is down wait for it at the broker;
- **manual acknowledgement**: a message is acknowledged only after its handler returned, i.e. after what it
  caused was committed and published. A service killed mid-batch gets the batch again on reconnect, which is
  why every consumer is idempotent;
- shared subscriptions (`$share/<service>/<topic>`) so replicas of a service split the load;
- typed payloads: a subscription names its `proto_schemas` model; a payload that does not validate goes to
  the service's dead-letter topic with the reason, is acknowledged, and the service carries on;
- reconnection with backoff; publishes wait for the connection instead of failing;
- batching: a handler receives every message already waiting (up to `batch_max`), so consumers can write to
  the database in bulk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import aiomqtt
import asyncpg
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ValidationError

from libs.logs import correlation_id
from libs.settings import Settings
from proto_schemas import topics
from proto_schemas.deadletter import DeadLetter, error_list

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

MESSAGES = Counter(
    "gridfleet_bus_messages_total",
    "Messages handled from the bus, by subscription and outcome",
    ["service", "subscription", "outcome"],
)
PUBLISHED = Counter("gridfleet_bus_published_total", "Messages published", ["service"])
HANDLER_SECONDS = Histogram(
    "gridfleet_bus_handler_seconds", "Time a handler took for one batch", ["service", "subscription"]
)

# Failures a retry can cure: the database or the broker is away for a moment.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    aiomqtt.MqttError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)


class Rejected(Exception):
    """Raised by a handler for a message that can never be processed; it goes to the dead-letter topic."""

    def __init__(self, reason: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errors = errors or []


@dataclass(slots=True)
class Delivery(Generic[T]):
    """One message handed to a handler, validated against its subscription's model (or decoded by its
    subscription's decoder)."""

    topic: str  # without the run's topic prefix
    payload: bytes
    model: T
    received_at: float
    _rejection: Rejected | None = field(default=None, repr=False)

    def reject(self, reason: str, errors: list[dict[str, str]] | None = None) -> None:
        """Send this message (only) to the dead-letter topic; the rest of the batch is processed."""
        self._rejection = Rejected(reason, errors)

    @property
    def rejected(self) -> bool:
        return self._rejection is not None


Handler = Callable[[list[Delivery[Any]]], Awaitable[None]]


@dataclass(slots=True)
class _Subscription:
    name: str
    topic_filter: str  # without prefix
    model: type[BaseModel]
    handler: Handler
    shared: bool
    batch_max: int
    decode: Callable[[bytes], Any] | None = None
    prefetch: bool = False
    queue: asyncio.Queue[tuple[aiomqtt.Message, int]] = field(default_factory=asyncio.Queue)


class Bus:
    """A service's connection to the broker. Use as `async with Bus(...) as bus:`."""

    def __init__(
        self,
        settings: Settings,
        service: str,
        *,
        client_id: str | None = None,
        persistent: bool = True,
        session_expiry_s: int | None = None,
        receive_maximum: int = 1000,
    ) -> None:
        self.settings = settings
        self.service = service
        self.prefix = settings.topic_prefix
        run_key = hashlib.sha256(f"{settings.schema_prefix}|{settings.topic_prefix}".encode()).hexdigest()[:8]
        self.client_id = client_id or f"gf-{service}-{settings.replica}-{run_key}"
        self._persistent = persistent
        self._session_expiry_s = (
            settings.mqtt_session_expiry_s if session_expiry_s is None else session_expiry_s
        )
        self._receive_maximum = receive_maximum
        self._subscriptions: list[_Subscription] = []
        self._client: aiomqtt.Client | None = None
        self._generation = 0
        self.connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.dead_letters = 0

    # -- topics ---------------------------------------------------------------------------------------
    def full_topic(self, topic: str) -> str:
        return f"{self.prefix}{topic}"

    def local_topic(self, topic: str) -> str:
        return topic[len(self.prefix) :] if self.prefix and topic.startswith(self.prefix) else topic

    # -- registration ---------------------------------------------------------------------------------
    def subscribe(
        self,
        topic_filter: str,
        model: type[M],
        handler: Callable[[list[Delivery[M]]], Awaitable[None]],
        *,
        shared: bool = True,
        batch_max: int = 1,
        name: str | None = None,
    ) -> None:
        """Register a handler before `start()`; it is (re)subscribed on every connection."""
        self._subscriptions.append(
            _Subscription(
                name=name or topic_filter,
                topic_filter=topic_filter,
                model=model,
                handler=handler,
                shared=shared,
                batch_max=batch_max,
            )
        )

    def subscribe_decoded(
        self,
        topic_filter: str,
        model: type[BaseModel],
        decode: Callable[[bytes], T],
        handler: Callable[[list[Delivery[T]]], Awaitable[None]],
        *,
        shared: bool = True,
        batch_max: int = 1,
        name: str | None = None,
        prefetch: bool = False,
    ) -> None:
        """Like `subscribe`, with a faster decoder standing in for `model` (a hot path): `decode` must accept
        what `model` accepts and raise `model`'s ValidationError for the rest (dead-lettered as invalid).
        `prefetch` decodes the next batch while the handler works on the current one."""
        self._subscriptions.append(
            _Subscription(
                name=name or topic_filter,
                topic_filter=topic_filter,
                model=model,
                handler=handler,
                shared=shared,
                batch_max=batch_max,
                decode=decode,
                prefetch=prefetch,
            )
        )

    # -- lifecycle ------------------------------------------------------------------------------------
    async def __aenter__(self) -> Bus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, wait_connected: float | None = 30.0) -> None:
        self._stopping = False
        self._tasks.append(asyncio.create_task(self._connection_loop(), name=f"bus-{self.service}"))
        for sub in self._subscriptions:
            self._tasks.append(asyncio.create_task(self._consume(sub), name=f"bus-{self.service}-{sub.name}"))
        if wait_connected:
            await asyncio.wait_for(self.connected.wait(), wait_connected)

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self.connected.clear()

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry_s if self._persistent else 0
        props.ReceiveMaximum = self._receive_maximum
        return props

    async def _connection_loop(self) -> None:
        target = self.settings.mqtt
        backoff = 0.2
        quiet = logging.getLogger(f"gridfleet.mqtt.{self.service}")
        quiet.setLevel(logging.ERROR)  # aiomqtt warns on every publish once >10 are pending
        while not self._stopping:
            client = aiomqtt.Client(
                target.host,
                target.port,
                username=target.username,
                password=target.password,
                identifier=self.client_id,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=not self._persistent,
                properties=self._connect_properties(),
                logger=quiet,
                keepalive=30,
                timeout=30,
                max_inflight_messages=1000,
                # Nagle's algorithm off: a small packet written while an earlier one is unacknowledged would
                # otherwise wait for the broker's delayed ACK (~40 ms per exchange).
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            )
            # Acknowledge only after the handler is done (at-least-once end to end).
            client._client.manual_ack_set(True)
            try:
                async with client:
                    self._client = client
                    self._generation += 1
                    for sub in self._subscriptions:
                        await client.subscribe(self._wire_filter(sub), qos=1)
                    self.connected.set()
                    backoff = 0.2
                    log.info("bus connected", extra={"fields": {"client_id": self.client_id}})
                    generation = self._generation
                    async for message in client.messages:
                        self._route(message, generation)
            except aiomqtt.MqttError as exc:
                if self._stopping:
                    break
                log.warning("bus disconnected", extra={"fields": {"error": str(exc), "retry_in_s": backoff}})
            finally:
                self.connected.clear()
                self._client = None
            if self._stopping:
                break
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    def _wire_filter(self, sub: _Subscription) -> str:
        full = self.full_topic(sub.topic_filter)
        return f"$share/{self.service}/{full}" if sub.shared else full

    def _route(self, message: aiomqtt.Message, generation: int) -> None:
        topic = message.topic
        for sub in self._subscriptions:
            if topic.matches(self.full_topic(sub.topic_filter)):
                sub.queue.put_nowait((message, generation))
                return
        # Not ours (an overlapping retained message, say): acknowledge so the broker does not resend it.
        self._ack(message, generation)

    def _ack(self, message: aiomqtt.Message, generation: int) -> None:
        # An ack belongs to the connection the message came on; after a reconnect the broker resends it.
        if message.qos > 0 and self._client is not None and generation == self._generation:
            self._client._client.ack(message.mid, message.qos)

    # -- consuming ------------------------------------------------------------------------------------
    async def _next_batch(self, sub: _Subscription) -> list[tuple[aiomqtt.Message, int]]:
        first = await sub.queue.get()
        batch = [first]
        while len(batch) < sub.batch_max and not sub.queue.empty():
            batch.append(sub.queue.get_nowait())
        return batch

    async def _consume(self, sub: _Subscription) -> None:
        if sub.prefetch:
            return await self._consume_prefetching(sub)
        while True:
            await self._handle_batch(sub, await self._next_batch(sub))

    async def _consume_prefetching(self, sub: _Subscription) -> None:
        """Decode the next batch while the handler works on this one (it mostly waits for the database).
        Handler calls stay one at a time and in order; at most one decoded batch waits beside the running one."""
        running: asyncio.Task[None] | None = None
        try:
            while True:
                deliveries, carriers = await self._decode_batch(sub, await self._next_batch(sub))
                if running is not None:
                    await running
                running = asyncio.create_task(self._finish_batch(sub, deliveries, carriers))
        finally:
            if running is not None:
                running.cancel()

    async def _handle_batch(self, sub: _Subscription, batch: list[tuple[aiomqtt.Message, int]]) -> None:
        await self._finish_batch(sub, *await self._decode_batch(sub, batch))

    async def _decode_batch(
        self, sub: _Subscription, batch: list[tuple[aiomqtt.Message, int]]
    ) -> tuple[list[Delivery[Any]], list[tuple[aiomqtt.Message, int]]]:
        """Validate each message; an invalid one goes to the dead-letter topic and is acknowledged at once."""
        deliveries: list[Delivery[Any]] = []
        carriers: list[tuple[aiomqtt.Message, int]] = []
        now = time.time()
        for message, generation in batch:
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            topic = self.local_topic(message.topic.value)
            try:
                decode = sub.decode or getattr(sub.model, "from_wire", None)
                model = decode(payload) if decode else sub.model.model_validate_json(payload)
            except ValidationError as exc:
                await self.dead_letter(topic, payload, f"invalid {sub.model.__name__}", error_list(exc))
                MESSAGES.labels(self.service, sub.name, "invalid").inc()
                self._ack(message, generation)
                continue
            deliveries.append(Delivery(topic=topic, payload=payload, model=model, received_at=now))
            carriers.append((message, generation))
        return deliveries, carriers

    async def _finish_batch(
        self,
        sub: _Subscription,
        deliveries: list[Delivery[Any]],
        carriers: list[tuple[aiomqtt.Message, int]],
    ) -> None:
        """Run the handler, dead-letter what it rejected, then acknowledge (at-least-once)."""
        if deliveries:
            await self._run_handler(sub, deliveries)
        for delivery in deliveries:
            if delivery._rejection is not None:
                rejection = delivery._rejection
                await self.dead_letter(delivery.topic, delivery.payload, rejection.reason, rejection.errors)
                MESSAGES.labels(self.service, sub.name, "rejected").inc()
            else:
                MESSAGES.labels(self.service, sub.name, "ok").inc()
        for message, generation in carriers:
            self._ack(message, generation)

    async def _run_handler(self, sub: _Subscription, deliveries: list[Delivery[Any]]) -> None:
        attempt = 0
        while True:
            attempt += 1
            token = correlation_id.set(None)
            started = time.perf_counter()
            try:
                await sub.handler(deliveries)
                HANDLER_SECONDS.labels(self.service, sub.name).observe(time.perf_counter() - started)
                return
            except Rejected as exc:
                for delivery in deliveries:
                    delivery.reject(exc.reason, exc.errors)
                return
            except TRANSIENT_ERRORS as exc:
                # Nothing was acknowledged: retry until the database or broker is back.
                delay = min(0.2 * 2 ** min(attempt, 6), 10.0)
                log.warning(
                    "handler failed, retrying",
                    extra={"fields": {"subscription": sub.name, "error": repr(exc), "retry_in_s": delay}},
                )
                await asyncio.sleep(delay)
            except Exception as exc:
                if attempt < 3:
                    log.exception("handler error, retrying", extra={"fields": {"subscription": sub.name}})
                    await asyncio.sleep(0.5 * attempt)
                    continue
                # A bug or a message that keeps breaking the handler: park it, keep the service running.
                for delivery in deliveries:
                    delivery.reject(f"internal error after {attempt} attempts: {exc!r}")
                return
            finally:
                correlation_id.reset(token)

    # -- publishing -----------------------------------------------------------------------------------
    async def publish(
        self,
        topic: str,
        payload: BaseModel | bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        wait_s: float = math.inf,
    ) -> None:
        """Publish and, at QoS 1, wait for the broker's acknowledgement; waits for a connection if needed."""
        if isinstance(payload, BaseModel):
            body: bytes | str = payload.model_dump_json(by_alias=True).encode()
        else:
            body = payload
        deadline = time.monotonic() + wait_s
        while True:
            client = self._client
            if client is not None and self.connected.is_set():
                try:
                    await client.publish(self.full_topic(topic), body, qos=qos, retain=retain, timeout=30)
                    PUBLISHED.labels(self.service).inc()
                    return
                except aiomqtt.MqttError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
                    continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise aiomqtt.MqttError("not connected to the broker")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.connected.wait(), min(remaining, 5.0))

    async def dead_letter(
        self, topic: str, payload: bytes, reason: str, errors: Sequence[dict[str, str]] = ()
    ) -> None:
        """Park a message with the reason on this service's dead-letter topic (counted, logged)."""
        self.dead_letters += 1
        text = payload[:65536].decode("utf-8", errors="replace")
        letter = DeadLetter(
            service=self.service,
            topic=topic,
            reason=reason,
            errors=list(errors),
            payload=text,
            truncated=len(payload) > 65536,
            received_at=time.time(),
        )
        log.warning("dead letter", extra={"fields": {"topic": topic, "reason": reason}})
        await self.publish(topics.dead_letter(self.service), letter)

    @property
    def paho(self) -> paho.Client | None:
        return self._client._client if self._client is not None else None

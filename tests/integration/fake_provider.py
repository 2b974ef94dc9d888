"""A fake external signal provider: a small FastAPI app receiving gridfleet's webhooks, as a provider would.

It serves several providers at once (`/p/{key}/{event}`), each with its own secret. It verifies every
signature, deduplicates on `Gridfleet-Delivery` (a repeated delivery is answered as the first time and not
counted again), records the order of arrival, and can be told to answer accepted or rejected, to fail with a
500, or to hang past the platform's timeout. It runs in a thread of its own and can be stopped and started
on the same port, so the platform sees the endpoint go away and come back.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

from services.onboarding.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, verify_signature

Mode = Literal["accept", "reject", "fail", "hang"]


@dataclass
class Received:
    key: str
    event: str
    delivery_id: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float


@dataclass
class Account:
    secret: str
    mode: Mode = "accept"
    reason: str = "no contract for this address"
    fail_times: int = 0  # fail this many more times (500), then behave as `mode`


@dataclass
class FakeProvider:
    port: int
    accounts: dict[str, Account] = field(default_factory=dict)
    attempts: list[Received] = field(default_factory=list)  # every request, duplicates and failures too
    delivered: dict[str, Received] = field(default_factory=dict)  # first successful request per delivery id
    order: list[Received] = field(default_factory=list)  # successful deliveries, in order of arrival
    duplicates: int = 0
    bad_signatures: int = 0
    _answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    def base_url(self, key: str) -> str:
        return f"http://127.0.0.1:{self.port}/p/{key}"

    def add(self, key: str, secret: str, mode: Mode = "accept") -> None:
        self.accounts[key] = Account(secret, mode)

    def deliveries(self, key: str, event: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.order if r.key == key and (event is None or r.event == event)]

    def tries(self, key: str, event: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.attempts if r.key == key and (event is None or r.event == event)]

    # -- the app ---------------------------------------------------------------------------------------

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/p/{key}/{event}")
        async def receive(key: str, event: str, request: Request) -> Response:
            raw = await request.body()
            account = self.accounts.get(key)
            if account is None:
                return Response(status_code=404)
            headers = {k.lower(): v for k, v in request.headers.items()}
            if not verify_signature(
                account.secret, headers.get(SIGNATURE_HEADER.lower(), ""), raw, int(time.time())
            ):
                with self._lock:
                    self.bad_signatures += 1
                return Response(status_code=401)
            delivery_id = headers.get(DELIVERY_HEADER.lower(), "")
            record = Received(key, event, delivery_id, orjson.loads(raw), headers, time.monotonic())
            with self._lock:
                self.attempts.append(record)
                if delivery_id in self._answers:  # a redelivery: same answer, counted once
                    self.duplicates += 1
                    status, body = self._answers[delivery_id]
                    return Response(body, status_code=status, media_type="application/json")
                failing = account.fail_times > 0 or account.mode == "fail"
                if account.fail_times > 0:
                    account.fail_times -= 1
            if failing:
                return Response(b'{"error": "try later"}', status_code=500, media_type="application/json")
            if account.mode == "hang":
                await asyncio.sleep(60)  # past the platform's timeout: it gives up and retries later
                return Response(status_code=504)
            answer: dict[str, Any] = {}
            if headers.get(EVENT_HEADER.lower()) == "onboarding":
                answer = (
                    {"status": "accepted"}
                    if account.mode == "accept"
                    else {"status": "rejected", "reason": account.reason}
                )
            body = orjson.dumps(answer)
            with self._lock:
                self._answers[delivery_id] = (200, body)
                self.delivered[delivery_id] = record
                self.order.append(record)
            return Response(body, status_code=200, media_type="application/json")

        return app

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        config = uvicorn.Config(
            self.app(),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"fake-provider-{self.port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake provider did not start")
            time.sleep(0.05)
        self._server, self._thread = server, thread

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(15)
        self._server = self._thread = None


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

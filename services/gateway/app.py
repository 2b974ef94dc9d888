"""The gateway: gridfleet's one public HTTP surface.

`/api/v1/...` is authenticated here and forwarded to the service that owns the path (services/gateway/
routing.py) with the internal token, the caller's principal and the correlation id. `/docs` shows one OpenAPI
document assembled from every service's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.background import BackgroundTask

from libs.bus import Bus, Delivery
from libs.logs import configure_logging, correlation_id
from libs.service import (
    CLIENT_ADDRESS_HEADER,
    ProblemError,
    ServiceContext,
    install_observability,
    install_problem_handlers,
    sibling_client,
)
from libs.settings import SERVICES, Settings, get_settings
from proto_schemas import topics
from proto_schemas.audit import AuditEvent
from proto_schemas.registry import RegistryChange
from services.gateway.auth import DATA_API_BURST, DATA_API_RATE_PER_S, Authenticator, RateLimiter, credentials
from services.gateway.policy import Denied, authorize
from services.gateway.routing import PUBLIC, ROUTES, service_for

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
_IDENTITY_HEADS = {"users", "apikeys", "serviceproviders", "privileges", "dataapi"}
_UNSAFE_PATH = re.compile(r"%(2f|3f|23|5c|00)", re.IGNORECASE)
# Hop-by-hop and credential headers never forwarded to services.
_DROP_REQUEST = {
    "host", "content-length", "connection", "token", "user-uuid", "authorization", "api-key",
    "x-gridfleet-internal", "x-gridfleet-principal", "x-gridfleet-client-address",
}  # fmt: skip
_DROP_RESPONSE = {"content-length", "connection", "transfer-encoding", "content-encoding", "server", "date"}
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def _is_json_body(content_type: str, body: bytes) -> bool:
    # MyEMS clients send JSON as text/plain, or with no content type at all.
    return bool(body) and not content_type.startswith(("multipart/", "application/octet-stream"))


async def merged_openapi(ctx: ServiceContext) -> dict[str, Any]:
    """One OpenAPI document for /api/v1, built from each service's document (paths prefixed)."""
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "gridfleet API",
            "version": "1.0.0",
            "description": "Authenticate with PUT /api/v1/users/login, then send `User-UUID` and `Token` "
            'headers (or `Authorization: Bearer <token>`). Bodies are wrapped as {"data": {...}}. '
            "Errors are application/problem+json with the offending fields named.",
        },
        "servers": [{"url": "/"}],
        "paths": {},
        "components": {
            "schemas": {},
            "securitySchemes": {
                "Token": {"type": "apiKey", "in": "header", "name": "Token"},
                "UserUUID": {"type": "apiKey", "in": "header", "name": "User-UUID"},
                "Bearer": {"type": "http", "scheme": "bearer"},
                "ApiKey": {"type": "apiKey", "in": "header", "name": "API-Key"},
            },
        },
        "security": [{"Token": [], "UserUUID": []}, {"Bearer": []}, {"ApiKey": []}],
    }
    owners = sorted(set(ROUTES.values()))
    answers = await asyncio.gather(
        *(ctx.call(service, "GET", "/openapi.json") for service in owners), return_exceptions=True
    )
    for service, answer in zip(owners, answers, strict=True):
        if isinstance(answer, BaseException) or answer.status_code != 200:
            log.warning("no OpenAPI from service", extra={"fields": {"service": service}})
            continue
        part = answer.json()
        for path, item in part.get("paths", {}).items():
            if path.startswith("/internal") or service_for(path.lstrip("/")) != service:
                continue
            item = copy.deepcopy(item)
            for method, operation in item.items():
                if (method.upper(), path.lstrip("/")) in PUBLIC:
                    operation["security"] = []
            doc["paths"][f"{API_PREFIX}{path}"] = item
        doc["components"]["schemas"].update(part.get("components", {}).get("schemas", {}))
        # Calls gridfleet makes to others (the signed provider webhooks) are documented as OpenAPI webhooks.
        doc.setdefault("webhooks", {}).update(part.get("webhooks", {}))
    return doc


def _login_name(body: bytes) -> str:
    """The name tried at login, for the audit log (never the password)."""
    try:
        data = orjson.loads(body).get("data", {})
        return str(data.get("name") or data.get("email") or "?")[:255]
    except (orjson.JSONDecodeError, AttributeError):
        return "?"


def create_app(settings: Settings | None = None) -> FastAPI:
    cfg = settings or get_settings()
    ctx = ServiceContext(name="gateway", settings=cfg)
    authenticator = Authenticator(ctx)
    per_principal = RateLimiter(cfg.rate_limit_per_s, cfg.rate_limit_burst)
    per_address = RateLimiter(cfg.login_rate_per_min / 60.0, max(1, int(cfg.login_rate_per_min)))
    per_data_key = RateLimiter(DATA_API_RATE_PER_S, DATA_API_BURST)
    audit_tasks: set[asyncio.Task[None]] = set()

    async def on_change(deliveries: list[Delivery[RegistryChange]]) -> None:
        if any(d.model.entity in ("user", "api_key", "provider") for d in deliveries):
            authenticator.forget_all()

    async def audit(event: AuditEvent, answered: asyncio.Event) -> None:
        # The publish waits for the answer to have gone out so it never delays it; should the answer never go
        # out (the client went away), it is published after a second all the same.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answered.wait(), 1.0)
        try:
            await ctx.mqtt.publish(topics.AUDIT, event, wait_s=10)
        except Exception:
            log.error("audit event not published", extra={"fields": {"object": event.object}})

    async def mark_answered(answered: asyncio.Event) -> None:
        answered.set()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging("gateway", cfg.log_level, cfg.log_json)
        ctx.http = sibling_client(max_connections=200)
        ctx.bus = Bus(cfg, "gateway")
        ctx.bus.subscribe(topics.CONFIG_CHANGED, RegistryChange, on_change, shared=False, batch_max=100)
        await ctx.bus.start()
        try:
            yield
        finally:
            if audit_tasks:
                await asyncio.wait(audit_tasks, timeout=5)
            await ctx.bus.stop()
            await ctx.http.aclose()

    app = FastAPI(
        title="gridfleet gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.ctx = ctx
    install_problem_handlers(app)
    install_observability(app, "gateway")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": "gateway"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        others = [s for s in SERVICES if s != "gateway"]
        answers = await asyncio.gather(
            *(ctx.call(s, "GET", "/readyz") for s in others), return_exceptions=True
        )
        checks = {
            s: "ok" if not isinstance(a, BaseException) and a.status_code == 200 else "not ready"
            for s, a in zip(others, answers, strict=True)
        }
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503
        )

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(await merged_openapi(ctx))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="gridfleet API")

    @app.api_route(f"{API_PREFIX}/{{path:path}}", methods=_METHODS, include_in_schema=False)
    async def forward(path: str, request: Request) -> Response:
        raw = request.scope.get("raw_path", b"").decode("latin-1")
        if _UNSAFE_PATH.search(raw) or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
            # An encoded separator or a control character would change which resource is hit downstream.
            raise ProblemError(404, "Not found", "no resource at this address")
        path = path.rstrip("/")  # /gateways/ is /gateways (services never redirect)
        service = service_for(path)
        if service is None or path.startswith("internal") or "/internal" in path:
            raise ProblemError(404, "Not found", f"no resource at {API_PREFIX}/{path}")
        address = request.client.host if request.client else "unknown"
        principal = None
        if (request.method, path.rstrip("/")) in PUBLIC:
            per_address.check(address, "this address")
        else:
            principal = await authenticator.authenticate(request)
            if principal.data_scope is not None:
                per_data_key.check(credentials(request).cache_key, "this Data API key")
            else:
                per_principal.check(
                    f"{principal.user_id}:{principal.via_key}",
                    "this user" if not principal.via_key else "this key",
                )
            try:
                authorize(principal, request.method, path)
            except Denied as exc:
                raise ProblemError(403, "Forbidden", exc.reason) from exc
        if (request.method, path.rstrip("/")) == ("PUT", "users/logout"):
            authenticator.forget(request)
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        if _is_json_body(headers.get("content-type", ""), body):
            headers["content-type"] = "application/json"
        # The logout route needs the caller's own token to end the session.
        if path.rstrip("/") == "users/logout":
            headers["Token"] = request.headers.get("Token") or request.headers.get("Authorization", "")[7:]
        headers.update(ctx.internal_headers(principal))
        headers[CLIENT_ADDRESS_HEADER] = address
        attempts = 2 if request.method in ("GET", "HEAD") else 1
        for attempt in range(attempts):
            try:
                upstream = await ctx.call(
                    service,
                    request.method,
                    f"/{path}",
                    params=request.query_params,
                    content=body,
                    headers=headers,
                )
                break
            except httpx.TransportError as exc:
                # A kept-alive connection the service just closed: a read is safe to send once more.
                if attempt + 1 < attempts:
                    continue
                log.warning("service unreachable", extra={"fields": {"service": service, "error": repr(exc)}})
                raise ProblemError(
                    503, "Unavailable", f"the {service} service is not reachable; retry shortly"
                ) from exc
        if (
            request.method != "GET"
            and upstream.status_code < 300
            and path.split("/", 1)[0] in _IDENTITY_HEADS
        ):
            # Passwords, users and keys changed through this gateway end cached sessions at once; other gateway
            # replicas hear of it on the bus a moment later.
            authenticator.forget_all()
        background: BackgroundTask | None = None
        if request.method != "GET" or path.split("/", 1)[0] == "data":  # Data API reads are audited too
            event = AuditEvent(
                event_key=uuid.uuid4().hex,
                at=datetime.now(UTC),
                actor=principal.name if principal else _login_name(body),
                actor_kind="anonymous" if principal is None else ("api_key" if principal.via_key else "user"),
                provider_id=principal.provider_id if principal else None,
                action=request.method,
                object=path[:1024],
                outcome=upstream.status_code,
                source_address=address[:64],
                correlation_id=correlation_id.get(),
            )
            # Tracked from now on (a stopping gateway waits for it); published once the response is sent.
            answered = asyncio.Event()
            task = asyncio.create_task(audit(event, answered))
            audit_tasks.add(task)
            task.add_done_callback(audit_tasks.discard)
            background = BackgroundTask(mark_answered, answered)
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROP_RESPONSE}
        if "location" in out_headers and out_headers["location"].startswith("/"):
            out_headers["location"] = f"{API_PREFIX}{out_headers['location']}"
        return Response(
            content=upstream.content,
            status_code=upstream.status_code,
            headers=out_headers,
            background=background,
        )

    return app

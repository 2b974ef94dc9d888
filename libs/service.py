"""The service kit: what makes a gridfleet service a service.

`create_service_app()` builds a FastAPI app with the parts every service shares: settings, JSON logs with a
correlation id, its database pool and migrations, its bus connection, `/healthz`, `/readyz` (database and
broker), Prometheus `/metrics`, errors as `application/problem+json`, and the internal-token check that lets
only the gateway and sibling services call it. `run_service()` serves it with uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import asyncpg
import httpx
import orjson
from asyncpg.pool import PoolConnectionProxy
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.auth import constant_time_equals
from libs.bus import Bus
from libs.db import SYSTEM, Scope, ScopedDB, create_pool, migrate, scoped
from libs.logs import configure_logging, correlation_id, new_correlation_id
from libs.settings import Settings, get_settings

log = logging.getLogger(__name__)

INTERNAL_TOKEN_HEADER = "X-Gridfleet-Internal"
PRINCIPAL_HEADER = "X-Gridfleet-Principal"
# The client address the gateway saw (it drops any such header a client sends).
CLIENT_ADDRESS_HEADER = "X-Gridfleet-Client-Address"
CORRELATION_HEADER = "X-Correlation-ID"

# The principal header of the request being served, forwarded on calls to sibling services.
current_principal_header: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "principal", default=None
)

REQUESTS = Counter("gridfleet_http_requests_total", "HTTP requests", ["service", "method", "status"])
REQUEST_SECONDS = Histogram("gridfleet_http_request_seconds", "HTTP request time", ["service"])


class ProblemError(Exception):
    """An error a caller can act on, answered as `application/problem+json` (RFC 9457)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        errors: Sequence[dict[str, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail or title
        self.errors = list(errors)
        self.headers = headers


def bad_request(field_name: str, message: str) -> ProblemError:
    return ProblemError(400, "Invalid input", message, [{"field": field_name, "message": message}])


def not_found(what: str, ident: object) -> ProblemError:
    return ProblemError(404, "Not found", f"{what} {ident} does not exist")


def problem_response(
    status: int,
    title: str,
    detail: str,
    errors: Sequence[dict[str, str]] = (),
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = list(errors)
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/problem+json", headers=headers
    )


def _field_of(loc: Sequence[Any]) -> str:
    parts = [str(part) for part in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "(body)"


@dataclass
class Principal:
    """Who the gateway authenticated. Services trust it because it came with the internal token."""

    user_id: int
    user_uuid: str
    name: str
    is_admin: bool = False
    privileges: list[str] = field(default_factory=list)
    provider_id: int | None = None
    role: str = "platform_admin"
    via_key: bool = False  # authenticated by an API key (read-only)
    expires_at: float | None = None  # epoch seconds when the credential stops working
    data_scope: str | None = None  # a Data API key: "user" or "portal" (services/registry/api/dataapi.py)
    data_package: str | None = None  # a Data API key: "basic" or "advanced"

    @property
    def scope(self) -> Scope:
        spaces = next((p.removeprefix("spaces:") for p in self.privileges if p.startswith("spaces:")), None)
        return Scope(
            admin=self.is_admin,
            provider_id=self.provider_id,
            user_id=self.user_id,
            role=self.role,
            spaces=None if spaces is None else tuple(int(s) for s in spaces.split(",") if s),
        )

    @classmethod
    def from_header(cls, raw: str | None) -> Principal | None:
        if not raw:
            return None
        data = orjson.loads(raw)
        return cls(**data)

    def to_header(self) -> str:
        return orjson.dumps(self.__dict__).decode()


@dataclass
class ServiceContext:
    """What a service's routes and workers share: settings, pool, bus, an HTTP client to siblings."""

    name: str
    settings: Settings
    pool: asyncpg.Pool | None = None
    bus: Bus | None = None
    http: httpx.AsyncClient | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)

    tenancy: bool = False
    scoped_db: ScopedDB | None = None

    @property
    def db(self) -> asyncpg.Pool:
        """The request's scoped connection where the service has tenancy, else the pool."""
        if self.scoped_db is not None:
            return cast(asyncpg.Pool, self.scoped_db)  # same query methods, one scoped connection
        assert self.pool is not None, f"{self.name} has no database"
        return self.pool

    def system(self) -> AbstractAsyncContextManager[PoolConnectionProxy]:
        """A connection that sees every provider's rows, for the service's own background work."""
        assert self.pool is not None
        return scoped(self.pool, SYSTEM)

    @property
    def mqtt(self) -> Bus:
        assert self.bus is not None, f"{self.name} has no bus"
        return self.bus

    def background(self, factory: Callable[[], Awaitable[Any]], name: str) -> None:
        """Run a long-lived task for the life of the service; if it crashes it is logged and restarted."""

        async def supervised() -> None:
            while True:
                try:
                    await factory()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("background task crashed; restarting", extra={"fields": {"task": name}})
                    await asyncio.sleep(1.0)

        self.tasks.append(asyncio.create_task(supervised(), name=name))

    def internal_headers(self, principal: Principal | None = None) -> dict[str, str]:
        """Headers for a sibling call: the internal token, the correlation id, and who is asking.

        Without an explicit principal the caller's own (from the request being served) travels on, so the
        sibling applies the same tenancy; background work has none and acts as the system.
        """
        headers = {INTERNAL_TOKEN_HEADER: self.settings.internal_token}
        cid = correlation_id.get()
        if cid:
            headers[CORRELATION_HEADER] = cid
        if principal is not None:
            headers[PRINCIPAL_HEADER] = principal.to_header()
        elif (forwarded := current_principal_header.get()) is not None:
            headers[PRINCIPAL_HEADER] = forwarded
        return headers

    async def call(self, service: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Call a sibling service's internal API with the internal token and the current correlation id."""
        assert self.http is not None
        headers = {**self.internal_headers(), **kwargs.pop("headers", {})}
        return await self.http.request(
            method, f"{self.settings.url_for(service)}{path}", headers=headers, **kwargs
        )


def sibling_client(max_connections: int = 100) -> httpx.AsyncClient:
    """HTTP client for calls between services: pooled connections kept 30 s."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(30.0, connect=5.0),
        limits=httpx.Limits(max_connections=max_connections, keepalive_expiry=30.0),
    )


async def get_context(request: Request) -> AsyncIterator[ServiceContext]:
    """The service context; with tenancy, bound for this request to a connection scoped to the caller.

    A call carrying a principal sees what that principal may see; an internal call without one (a sibling
    service reading a read model) works as the system.
    """
    ctx: ServiceContext = request.app.state.ctx
    if not ctx.tenancy or ctx.pool is None:
        yield ctx
        return
    principal = current_principal(request)
    async with scoped(ctx.pool, principal.scope if principal else SYSTEM) as conn:
        yield replace(ctx, scoped_db=ScopedDB(conn))


def require_internal(request: Request) -> None:
    """Every service route except health is for the gateway and sibling services only."""
    ctx: ServiceContext = request.app.state.ctx
    supplied = request.headers.get(INTERNAL_TOKEN_HEADER, "")
    if not supplied or not constant_time_equals(supplied, ctx.settings.internal_token):
        raise ProblemError(401, "Unauthorized", "this service is reached through the gridfleet gateway")


def current_principal(request: Request) -> Principal | None:
    return Principal.from_header(request.headers.get(PRINCIPAL_HEADER))


SetupHook = Callable[[ServiceContext], Awaitable[None]]


def install_problem_handlers(app: FastAPI) -> None:
    """Every error leaves as problem+json: 400 with the offending fields for bad input, never a bare 500."""

    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> Response:
        return problem_response(exc.status, exc.title, exc.detail, exc.errors, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        errors = [{"field": _field_of(err["loc"]), "message": err["msg"]} for err in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem_response(400, "Invalid input", detail, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        title = {404: "Not found", 405: "Method not allowed", 401: "Unauthorized"}.get(
            exc.status_code, "Error"
        )
        return problem_response(
            exc.status_code, title, str(exc.detail), headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(ValidationError)
    async def _invalid_inside(_: Request, exc: ValidationError) -> Response:
        # A body re-validated inside a route (an import, say) is bad input too, not a server error.
        errors = [
            {"field": _field_of(err["loc"]), "message": err["msg"]} for err in exc.errors(include_url=False)
        ]
        return problem_response(
            400, "Invalid input", "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5]), errors
        )

    @app.exception_handler(asyncpg.NotNullViolationError)
    async def _missing(_: Request, exc: asyncpg.NotNullViolationError) -> Response:
        column = exc.column_name or "(value)"
        return problem_response(
            400, "Invalid input", f"{column} may not be null", [{"field": column, "message": "required"}]
        )

    @app.exception_handler(asyncpg.DataError)
    async def _unstorable(_: Request, exc: asyncpg.DataError) -> Response:
        return problem_response(
            400,
            "Invalid input",
            _storage_reason(exc),
            [{"field": "(request)", "message": _storage_reason(exc)}],
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return problem_response(500, "Internal error", "the request could not be completed; it was logged")


def _storage_reason(exc: Exception) -> str:
    text = str(exc)
    if "0x00" in text or "nul" in text.lower():
        return "text may not contain NUL characters"
    if "out of" in text and "range" in text:
        return "a number is out of range (ids are at most 9223372036854775807)"
    return "a value cannot be stored as given"


_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def install_problem_openapi(app: FastAPI) -> None:
    """Document bad input as it is answered: 400 application/problem+json (not FastAPI's default 422)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                responses = operation.get("responses", {})
                if responses.pop("422", None) is not None:
                    responses["400"] = {
                        "description": "Invalid input: the offending fields are named in `errors`",
                        "content": {"application/problem+json": {"schema": _PROBLEM_SCHEMA}},
                    }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_observability(app: FastAPI, service: str) -> None:
    @app.middleware("http")
    async def _correlate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        cid = request.headers.get(CORRELATION_HEADER) or new_correlation_id()
        token = correlation_id.set(cid)
        # Only a caller holding the internal token may speak for someone (the gateway, a sibling service).
        supplied = request.headers.get(INTERNAL_TOKEN_HEADER, "")
        trusted = bool(supplied) and constant_time_equals(
            supplied, request.app.state.ctx.settings.internal_token
        )
        principal_token = current_principal_header.set(
            request.headers.get(PRINCIPAL_HEADER) if trusted else None
        )
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:
            # Answered here rather than by Starlette's outer handler, which re-raises and makes the server drop
            # the connection: a keep-alive client (the gateway) would then fail its next, unrelated request.
            log.exception("unhandled error")
            response = problem_response(
                500, "Internal error", "the request could not be completed; it was logged"
            )
        finally:
            correlation_id.reset(token)
            current_principal_header.reset(principal_token)
        REQUEST_SECONDS.labels(service).observe(time.perf_counter() - started)
        REQUESTS.labels(service, request.method, str(response.status_code)).inc()
        response.headers[CORRELATION_HEADER] = cid
        return response

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def create_service_app(
    name: str,
    *,
    routers: Sequence[APIRouter] = (),
    migrations: Path | None = None,
    setup: SetupHook | None = None,
    teardown: SetupHook | None = None,
    use_bus: bool = True,
    settings: Settings | None = None,
    internal_only: bool = True,
    title: str | None = None,
    tenancy: bool = False,
) -> FastAPI:
    """A gridfleet service app. `setup` registers subscriptions and background tasks before the bus starts."""
    cfg = settings or get_settings()
    ctx = ServiceContext(name=name, settings=cfg, tenancy=tenancy)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(name, cfg.log_level, cfg.log_json)
        schema = cfg.schema_for(name)
        ctx.http = sibling_client()
        if migrations is not None:
            ctx.pool = await _connect_db(cfg, schema, tenancy)
            await migrate(ctx.pool, schema, migrations)
        if use_bus:
            ctx.bus = Bus(cfg, name)
        if setup is not None:
            await setup(ctx)
        if ctx.bus is not None:
            await ctx.bus.start()
        log.info("service started", extra={"fields": {"schema": schema}})
        try:
            yield
        finally:
            if teardown is not None:
                await teardown(ctx)
            for task in ctx.tasks:
                task.cancel()
            for task in ctx.tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            ctx.tasks.clear()
            if ctx.bus is not None:
                await ctx.bus.stop()
            if ctx.pool is not None:
                await ctx.pool.close()
            await ctx.http.aclose()

    app = FastAPI(
        title=title or f"gridfleet {name}",
        version="1.0.0",
        lifespan=lifespan,
        default_response_class=JSONResponse,
        redirect_slashes=False,  # a redirect would point past the gateway, at this service's own address
    )
    install_problem_openapi(app)
    app.state.ctx = ctx
    install_problem_handlers(app)
    install_observability(app, name)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": name}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        checks: dict[str, str] = {}
        if ctx.pool is not None:
            try:
                await asyncio.wait_for(ctx.pool.fetchval("SELECT 1"), 2.0)
                checks["database"] = "ok"
            except Exception as exc:
                checks["database"] = f"error: {exc!r}"
        if ctx.bus is not None:
            checks["broker"] = "ok" if ctx.bus.connected.is_set() else "error: not connected"
        ready = all(value == "ok" for value in checks.values())
        body = {"status": "ready" if ready else "not ready", "checks": checks}
        return JSONResponse(body, status_code=200 if ready else 503)

    dependencies = [Depends(require_internal)] if internal_only else []
    for router in routers:
        app.include_router(router, dependencies=dependencies)
    return app


async def _connect_db(cfg: Settings, schema: str, tenancy: bool) -> asyncpg.Pool:
    """Connect, waiting for a database that is still starting (up to a minute)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return await create_pool(
                cfg.database_url, schema, min_size=cfg.db_pool_min, max_size=cfg.db_pool_max, tenancy=tenancy
            )
        except (OSError, asyncpg.CannotConnectNowError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("database not reachable yet", extra={"fields": {"error": repr(exc)}})
            await asyncio.sleep(1.0)


def run_service(app: FastAPI, name: str) -> None:
    """Serve a service app with uvicorn (uvloop where available)."""
    import uvicorn

    cfg = get_settings()
    configure_logging(name, cfg.log_level, cfg.log_json)
    port = cfg.http_port or cfg.port_for(name)
    uvicorn.run(
        app,
        host=cfg.http_host,
        port=port,
        log_config=None,
        loop="uvloop" if _has_uvloop() else "asyncio",
        timeout_graceful_shutdown=5,
        # Longer than any client's keep-alive (sibling_client keeps 30 s), so a server never closes a
        # connection at the instant a client reuses it.
        timeout_keep_alive=75,
        # Not behind a trusted proxy by default: X-Forwarded-For from any local client must not choose the
        # address the rate limiter and the audit log see.
        proxy_headers=False,
    )


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True

"""The gateway: gridfleet's one public HTTP surface.

`/api/v1/...` is authenticated here and forwarded to the service that owns the path (services/gateway/
routing.py) with the internal token, the caller's principal and the correlation id. `/docs` shows one OpenAPI
document assembled from every service's own.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from libs.logs import configure_logging
from libs.service import (
    ProblemError,
    ServiceContext,
    install_observability,
    install_problem_handlers,
    sibling_client,
)
from libs.settings import SERVICES, Settings, get_settings
from services.gateway.auth import Authenticator
from services.gateway.routing import PUBLIC, ROUTES, service_for

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
# Hop-by-hop and credential headers never forwarded to services.
_DROP_REQUEST = {
    "host", "content-length", "connection", "token", "user-uuid", "authorization", "api-key",
    "x-gridfleet-internal", "x-gridfleet-principal",
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
            },
        },
        "security": [{"Token": [], "UserUUID": []}, {"Bearer": []}],
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
    return doc


def create_app(settings: Settings | None = None) -> FastAPI:
    cfg = settings or get_settings()
    ctx = ServiceContext(name="gateway", settings=cfg)
    authenticator = Authenticator(ctx)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging("gateway", cfg.log_level, cfg.log_json)
        ctx.http = sibling_client(max_connections=200)
        try:
            yield
        finally:
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
        service = service_for(path)
        if service is None or path.startswith("internal") or "/internal" in path:
            raise ProblemError(404, "Not found", f"no resource at {API_PREFIX}/{path}")
        principal = None
        if (request.method, path.rstrip("/")) not in PUBLIC:
            principal = await authenticator.authenticate(request)
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
        try:
            upstream = await ctx.call(
                service,
                request.method,
                f"/{path}",
                params=request.query_params,
                content=body,
                headers=headers,
            )
        except httpx.HTTPError as exc:
            log.warning("service unreachable", extra={"fields": {"service": service, "error": repr(exc)}})
            raise ProblemError(
                503, "Unavailable", f"the {service} service is not reachable; retry shortly"
            ) from exc
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROP_RESPONSE}
        if "location" in out_headers and out_headers["location"].startswith("/"):
            out_headers["location"] = f"{API_PREFIX}{out_headers['location']}"
        return Response(content=upstream.content, status_code=upstream.status_code, headers=out_headers)

    return app

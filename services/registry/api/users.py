"""Users: login, logout, and the token check the gateway runs on every call."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from libs.auth import hash_password, new_token, token_digest, verify_password
from libs.service import Principal, ProblemError, ServiceContext, get_context
from services.registry.api.common import Body, Envelope, Name

router = APIRouter(tags=["users"])

SESSION_LIFETIME = timedelta(hours=8)


class LoginData(Body):
    name: Name
    password: str


class LoginResult(BaseModel):
    id: int
    name: str
    uuid: str
    display_name: str
    email: str | None
    is_admin: bool
    token: str


@router.put("/users/login", response_model=LoginResult)
async def login(body: Envelope[LoginData], ctx: ServiceContext = Depends(get_context)) -> LoginResult:
    """Exchange a name and password for a session token (send it as `User-UUID` + `Token`, or Bearer)."""
    row = await ctx.db.fetchrow("SELECT * FROM users WHERE name = $1", body.data.name)
    if row is None or not verify_password(row["password_hash"], body.data.password):
        raise ProblemError(400, "Invalid credentials", "the user name or password is wrong")
    token = new_token(64)  # 128 hex characters, as MyEMS issues
    await ctx.db.execute(
        "INSERT INTO user_sessions (token_digest, user_id, expires_at) VALUES ($1, $2, $3)",
        token_digest(token),
        row["id"],
        datetime.now(UTC) + SESSION_LIFETIME,
    )
    await ctx.db.execute("DELETE FROM user_sessions WHERE expires_at < now()")
    return LoginResult(
        id=row["id"],
        name=row["name"],
        uuid=str(row["uuid"]),
        display_name=row["display_name"],
        email=row["email"],
        is_admin=row["is_admin"],
        token=token,
    )


@router.put("/users/logout", status_code=204)
async def logout(request: Request, ctx: ServiceContext = Depends(get_context)) -> Response:
    token = request.headers.get("Token") or request.headers.get("Authorization", "").removeprefix("Bearer ")
    await ctx.db.execute("DELETE FROM user_sessions WHERE token_digest = $1", token_digest(token.strip()))
    return Response(status_code=204)


class VerifyRequest(BaseModel):
    token: str
    user_uuid: str | None = None


@router.post("/internal/auth/verify", include_in_schema=False)
async def verify(body: VerifyRequest, ctx: ServiceContext = Depends(get_context)) -> dict[str, object]:
    """The principal behind a session token, or 401. With `user_uuid` the token must belong to that user."""
    row = await ctx.db.fetchrow(
        "SELECT u.id, u.uuid, u.name, u.is_admin FROM user_sessions s JOIN users u ON u.id = s.user_id"
        " WHERE s.token_digest = $1 AND s.expires_at > now()",
        token_digest(body.token),
    )
    if row is None or (body.user_uuid is not None and str(row["uuid"]) != body.user_uuid.strip().lower()):
        raise ProblemError(401, "Unauthorized", "the token is unknown or expired")
    principal = Principal(
        user_id=row["id"], user_uuid=str(row["uuid"]), name=row["name"], is_admin=row["is_admin"]
    )
    return principal.__dict__


async def ensure_admin(ctx: ServiceContext) -> None:
    """The first administrator, created at start with the configured password (kept if it exists)."""
    await ctx.db.execute(
        "INSERT INTO users (uuid, name, display_name, password_hash, is_admin)"
        " VALUES ($1, 'administrator', 'Administrator', $2, true) ON CONFLICT (name) DO NOTHING",
        uuid.uuid4(),
        hash_password(ctx.settings.admin_password),
    )

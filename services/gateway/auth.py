"""Authentication at the gateway: every call but login and health carries a credential the registry knows.

Accepted: MyEMS's `User-UUID` + `Token` headers, or `Authorization: Bearer <token>`. Verified principals
are cached briefly (by the token's digest) so the registry is not asked on every call.
"""

from __future__ import annotations

import time

from starlette.requests import Request

from libs.auth import token_digest
from libs.service import Principal, ProblemError, ServiceContext

CACHE_SECONDS = 30.0
_CACHE_LIMIT = 10_000


class Authenticator:
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def authenticate(self, request: Request) -> Principal:
        token, user_uuid = _credentials(request)
        key = token_digest(f"{user_uuid}|{token}")
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        response = await self._ctx.call(
            "registry", "POST", "/internal/auth/verify", json={"token": token, "user_uuid": user_uuid}
        )
        if response.status_code == 401:
            raise ProblemError(401, "Unauthorized", "the token is unknown or expired; log in again")
        if response.status_code != 200:
            raise ProblemError(503, "Unavailable", "identity service unavailable; retry shortly")
        principal = Principal(**response.json())
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = (now + CACHE_SECONDS, principal)
        return principal

    def forget(self, request: Request) -> None:
        try:
            token, user_uuid = _credentials(request)
        except ProblemError:
            return
        self._cache.pop(token_digest(f"{user_uuid}|{token}"), None)


def _credentials(request: Request) -> tuple[str, str | None]:
    headers = request.headers
    token = headers.get("Token")
    if token:
        user_uuid = headers.get("User-UUID")
        if not user_uuid:
            raise ProblemError(
                401,
                "Unauthorized",
                "send User-UUID with Token",
                [{"field": "User-UUID", "message": "required"}],
            )
        return token.strip(), user_uuid.strip()
    authorization = headers.get("Authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip(), None
    if headers.get("API-Key"):
        raise ProblemError(
            401, "Unauthorized", "API keys are not accepted on this route yet; log in for a token"
        )
    raise ProblemError(
        401,
        "Unauthorized",
        "log in with PUT /api/v1/users/login and send User-UUID + Token, or Authorization: Bearer",
        headers={"WWW-Authenticate": "Bearer"},
    )

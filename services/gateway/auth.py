"""Authentication and rate limits at the gateway.

Accepted credentials: MyEMS's `User-UUID` + `Token` headers, `Authorization: Bearer <token>`, or `API-Key`.
The registry verifies them; verified principals are cached briefly by the credential's digest, and the cache
is emptied whenever a user, key or provider changes (config_changed on the bus), so a revocation takes
effect at once. Each principal (and each address, for unauthenticated calls such as login) has a token
bucket; an empty bucket is a 429 with `Retry-After`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from starlette.requests import Request

from libs.auth import token_digest
from libs.service import Principal, ProblemError, ServiceContext

CACHE_SECONDS = 30.0
# Data API keys have a bucket each (by the key itself), smaller than a logged-in user's.
DATA_API_RATE_PER_S = 5.0
DATA_API_BURST = 30
_CACHE_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Credential:
    token: str | None = None
    user_uuid: str | None = None
    api_key: str | None = None

    @property
    def cache_key(self) -> str:
        return token_digest(f"{self.user_uuid}|{self.token}|{self.api_key}")


class Authenticator:
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def authenticate(self, request: Request) -> Principal:
        credential = credentials(request)
        key = credential.cache_key
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        response = await self._ctx.call(
            "registry",
            "POST",
            "/internal/auth/verify",
            json={
                "token": credential.token,
                "user_uuid": credential.user_uuid,
                "api_key": credential.api_key,
            },
        )
        if response.status_code == 401:
            detail = response.json().get("detail", "the credential is not valid")
            raise ProblemError(
                401, "Unauthorized", f"{detail}; log in again", headers={"WWW-Authenticate": "Bearer"}
            )
        if response.status_code != 200:
            raise ProblemError(503, "Unavailable", "identity service unavailable; retry shortly")
        principal = Principal(**response.json())
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        keep = CACHE_SECONDS
        if principal.expires_at is not None:
            keep = min(keep, principal.expires_at - time.time())  # never past the credential's own expiry
        if keep > 0:
            self._cache[key] = (now + keep, principal)
        return principal

    def forget(self, request: Request) -> None:
        try:
            self._cache.pop(credentials(request).cache_key, None)
        except ProblemError:
            return

    def forget_all(self) -> None:
        """Called when users, keys or providers change: the next call of everyone is verified afresh."""
        self._cache.clear()


def credentials(request: Request) -> Credential:
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
        return Credential(token=token.strip(), user_uuid=user_uuid.strip())
    authorization = headers.get("Authorization", "")
    if authorization.lower().startswith("bearer "):
        return Credential(token=authorization[7:].strip())
    api_key = headers.get("API-Key")
    if api_key:
        return Credential(api_key=api_key.strip())
    raise ProblemError(
        401,
        "Unauthorized",
        "log in with PUT /api/v1/users/login and send User-UUID + Token, Authorization: Bearer, or API-Key",
        headers={"WWW-Authenticate": "Bearer"},
    )


class RateLimiter:
    """Token buckets by key: `rate` requests a second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._max_keys = max_keys

    def check(self, key: str, what: str) -> None:
        now = time.monotonic()
        tokens, stamp = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
        if tokens < 1.0:
            retry = max(1, math.ceil((1.0 - tokens) / self.rate))
            self._buckets[key] = (tokens, now)
            raise ProblemError(
                429,
                "Too many requests",
                f"rate limit for {what} reached; retry in {retry} s",
                headers={"Retry-After": str(retry)},
            )
        if len(self._buckets) >= self._max_keys:
            self._buckets.clear()
        self._buckets[key] = (tokens - 1.0, now)

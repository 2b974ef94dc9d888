"""Auth primitives: password hashing, opaque tokens and their stored digests."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """An argon2id hash, safe to store."""
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_token(nbytes: int = 32) -> str:
    """A random secret shown once to its owner (hex, `2 * nbytes` characters)."""
    return secrets.token_hex(nbytes)


def token_digest(token: str) -> str:
    """The stored form of a high-entropy token.

    Tokens are random, so a fast keyed-free SHA-256 is enough (no dictionary to attack) and lets the
    platform look a token up by its digest instead of scanning argon2 hashes.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def sign_payload(secret: str, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 over `<t>.<body>`, the signature gridfleet puts on every webhook."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()

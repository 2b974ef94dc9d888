"""Webhook signatures and the retry schedule (CONTRACTS.md §2.1), as pure logic."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.onboarding.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    installation_health,
    next_attempt,
    retry_delay_s,
    signature_header,
    verify_signature,
    webhook_headers,
)

secrets_ = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=16, max_size=64)
bodies = st.binary(max_size=2048)
moments = st.integers(min_value=1_600_000_000, max_value=4_000_000_000)


@given(secrets_, moments, bodies)
def test_the_signature_is_hmac_sha256_over_timestamp_dot_body(secret: str, t: int, body: bytes) -> None:
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert signature_header(secret, t, body) == f"t={t},v1={expected}"
    assert verify_signature(secret, signature_header(secret, t, body), body, now=t)


@given(secrets_, moments, bodies, st.binary(min_size=1, max_size=16))
def test_a_changed_body_or_another_secret_fails_verification(
    secret: str, t: int, body: bytes, extra: bytes
) -> None:
    header = signature_header(secret, t, body)
    assert not verify_signature(secret, header, body + extra, now=t)
    assert not verify_signature(secret + "x", header, body, now=t)


@given(secrets_, moments, st.integers(min_value=301, max_value=10**6))
def test_a_signature_older_than_five_minutes_is_refused(secret: str, t: int, age: int) -> None:
    header = signature_header(secret, t, b"{}")
    assert verify_signature(secret, header, b"{}", now=t + 300)
    assert not verify_signature(secret, header, b"{}", now=t + age)


def test_malformed_signature_headers_are_refused() -> None:
    for header in ("", "t=1", "v1=ab", "t=x,v1=" + "0" * 64, "t=1,v1=" + "g" * 64, "t=1,v2=" + "0" * 64):
        assert not verify_signature("0123456789abcdef", header, b"{}", now=1)


def test_every_webhook_carries_event_delivery_and_signature_headers() -> None:
    headers = webhook_headers("onboarding", "d-1", "0123456789abcdef", 1_700_000_000, b'{"a":1}')
    assert headers[EVENT_HEADER] == "onboarding"
    assert headers[DELIVERY_HEADER] == "d-1"
    assert verify_signature("0123456789abcdef", headers[SIGNATURE_HEADER], b'{"a":1}', now=1_700_000_000)
    assert headers["Content-Type"] == "application/json"


def test_backoff_starts_at_one_second_and_doubles_to_an_hour() -> None:
    delays = [retry_delay_s(n, 1.0, 3600.0) for n in range(1, 16)]
    assert delays[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert delays[-1] == 3600.0
    assert max(delays) == 3600.0


@given(st.integers(min_value=1, max_value=10_000), st.floats(0.01, 10), st.floats(1, 10_000))
def test_backoff_never_shrinks_and_never_passes_the_cap(attempts: int, base: float, cap: float) -> None:
    assert retry_delay_s(attempts, base, cap) <= cap
    assert retry_delay_s(attempts + 1, base, cap) >= retry_delay_s(attempts, base, cap)


def test_retries_stop_once_the_72_hour_window_is_spent() -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    window = 72 * 3600.0
    assert next_attempt(created, 1, created, 1.0, 3600.0, window) == created + timedelta(seconds=1)
    late = created + timedelta(hours=71, minutes=30)
    assert next_attempt(late, 30, created, 1.0, 3600.0, window) is None
    # Attempts over the whole window: 1 s doubling to 1 h, then hourly, about 80 in 72 h.
    at, attempts = created, 0
    while (due := next_attempt(at, attempts + 1, created, 1.0, 3600.0, window)) is not None:
        at, attempts = due, attempts + 1
    assert 70 <= attempts <= 90


def test_health_is_ok_degraded_or_error_from_controllers_and_data_sources() -> None:
    groups = [
        {"group": "battery", "devices": [{"id": "bat-1", "type": "battery", "vendor": "v", "model": "m"}]}
    ]
    online = [{"status": "online"}]
    system, devices = installation_health(online, [], groups)
    assert (system.status, system.online, devices[0].status) == ("ok", True, "ok")
    lost = [{"id": 3, "name": "battery inverter", "status": "offline", "reason": "connection refused"}]
    system, devices = installation_health(online, lost, groups)
    assert (system.status, devices[0].status) == ("degraded", "error")
    assert devices[0].error is not None and "battery inverter" in devices[0].error
    system, devices = installation_health([{"status": "offline"}], [], groups)
    assert (system.status, system.online, devices[0].status) == ("error", False, "offline")

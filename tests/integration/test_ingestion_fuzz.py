"""Hypothesis-generated telemetry, published over the real broker: ingestion stays up and stores exactly the
messages that are valid, whole, and nothing of the others."""

from __future__ import annotations

import math
import uuid
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto_schemas import topics
from tests.support import Platform, Site, build_site, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW_MS = 1_795_400_000_000  # 2026-11-22, inside the accepted window for the whole run
GOOD_MIN_MS = 946_684_800_000  # 2000-01-01


def reading_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.floats(allow_nan=False, allow_infinity=False, width=64),
        st.integers(-(10**12), 10**12),
        st.sampled_from(["NaN", "Infinity", "12", True, None, [], {}]),
    )


def timestamps() -> st.SearchStrategy[Any]:
    return st.one_of(
        # Good, within the last 30 days (readings before 2000 are still generated below and must be refused):
        # an accepted reading from 2000 would make normalisation spread a 26-year gap into about a million
        # estimated quarters, which is a load test of aggregation rather than of ingestion's validation.
        st.integers(NOW_MS - 30 * 86_400_000, NOW_MS),
        st.integers(0, GOOD_MIN_MS - 1),  # before 2000 (or epoch seconds)
        st.integers(NOW_MS + 400 * 86_400_000, NOW_MS + 800 * 86_400_000),  # far in the future
        st.sampled_from(["2026-11-22T10:00:00Z", "2026-11-22T10:00:00", "yesterday", 1.5e12, None]),
    )


@st.composite
def messages(draw: st.DrawFn, own: list[int], foreign: list[int]) -> dict[str, Any] | bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(
            st.sampled_from(
                [b"", b"{", b"null", b"[]", b'{"readings": "x"}', b"\xff\xfe", b'{"readings": []}']
            )
        )
    readings = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "point_id": st.one_of(
                        st.sampled_from(own), st.sampled_from(foreign), st.integers(-5, 2**40)
                    ),
                    "ts": timestamps(),
                    "value": reading_values(),
                }
            ),
            min_size=1,
            max_size=20,
        )
    )
    return {"msg_id": uuid.uuid4().hex, "readings": readings}


def is_valid(message: dict[str, Any] | bytes, own: set[int]) -> bool:
    """The acceptance rule, written independently of the service: whole message or nothing."""
    if isinstance(message, bytes):
        return False
    for reading in message["readings"]:
        value, ts, point = reading["value"], reading["ts"], reading["point_id"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        if point not in own:
            return False
        if isinstance(ts, str):
            if ts != "2026-11-22T10:00:00Z":
                return False
        elif isinstance(ts, bool) or not isinstance(ts, int) or not GOOD_MIN_MS <= ts <= NOW_MS + 86_400_000:
            return False
    return True


async def test_fuzzed_telemetry_never_stops_ingestion_and_only_whole_valid_messages_are_stored(
    platform: Platform,
) -> None:
    site: Site = await build_site(
        platform.api, f"fuzz-{uuid.uuid4().hex[:6]}", energy_points=("a", "b"), analog_points=("p",)
    )
    other = await build_site(platform.api, f"fuzz-other-{uuid.uuid4().hex[:6]}")
    own = list(site.points.values())
    sent: list[dict[str, Any] | bytes] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(messages(own, list(other.points.values())))
    def collect(message: dict[str, Any] | bytes) -> None:
        sent.append(message)

    collect()
    expected: dict[tuple[int, int], float] = {}
    async with platform.mqtt() as client:
        topic = platform.topic(topics.gateway_topic(site.gateway_uuid, "telemetry"))
        for message in sent:
            payload = message if isinstance(message, bytes) else orjson.dumps(message)
            await client.publish(topic, payload, qos=1)
            if is_valid(message, set(own)):
                assert isinstance(message, dict)
                for reading in message["readings"]:
                    ts = reading["ts"]
                    ts_ms = 1_795_341_600_000 if ts == "2026-11-22T10:00:00Z" else int(ts)
                    expected.setdefault((reading["point_id"], ts_ms), float(reading["value"]))
        marker = {"readings": [{"point_id": own[0], "ts": NOW_MS, "value": 1.0}]}
        await client.publish(topic, orjson.dumps(marker), qos=1)
    expected.setdefault((own[0], NOW_MS), 1.0)

    schema = platform.schema("ingestion")

    async def stored() -> dict[tuple[int, int], float]:
        rows = await platform.db.fetch(
            f'SELECT point_id, (extract(epoch FROM ts) * 1000)::bigint AS ms, value FROM "{schema}".raw_readings'
            " WHERE point_id = ANY($1)",
            own,
        )
        return {(r["point_id"], r["ms"]): r["value"] for r in rows}

    got = await eventually(stored, lambda rows: (own[0], NOW_MS) in rows, within=60)
    assert got == expected
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{platform.processes.url('ingestion')}/readyz")).status_code == 200
    assert "ingestion" not in platform.processes.crashed()

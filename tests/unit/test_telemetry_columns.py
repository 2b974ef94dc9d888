"""Ingestion's fast telemetry decoder accepts and refuses exactly what the `Telemetry` model does, and yields the
same values: the dead-letter topic and the stored readings cannot tell the two apart."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from proto_schemas.telemetry import Telemetry, TelemetryColumns, _fast_columns, telemetry_columns

MS_2026 = 1_767_225_600_000


def reference(payload: bytes) -> TelemetryColumns | None:
    """What the pydantic model makes of the payload (None: refused)."""
    try:
        return TelemetryColumns.of(Telemetry.model_validate_json(payload))
    except ValidationError:
        return None


def exact(columns: TelemetryColumns | None) -> object:
    """Comparable form that also tells -0.0 from 0.0 and an int from a float."""
    if columns is None:
        return None
    return (
        columns.msg_id,
        columns.point_ids,
        columns.ts_ms,
        [(type(v).__name__, v.hex()) for v in columns.values],
    )


_odd = st.sampled_from([None, True, False, "", "12", "x", [], {}, [1], {"a": 1}])

point_ids = st.one_of(
    st.integers(1, 2**31 - 1),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2**31 - 1, 2**31, -1, 2**63, 2**64, 2**64 + 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1.0, 5.0, 1e3]),
    _odd,
)
timestamps = st.one_of(
    st.integers(MS_2026 - 10**9, MS_2026 + 10**9),
    st.integers(-(2**70), 2**70),
    st.sampled_from(
        [0, -1, 32_503_680_000_000, 32_503_680_000_001, 253_402_300_799_999, 253_402_300_800_000]
    ),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(0, 4e13),
    st.sampled_from(
        ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00+02:00", "2026-01-01T00:00:00", str(MS_2026), "1.5e12"]
    ),
    _odd,
)
values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(),  # NaN and infinities: written as NaN / Infinity, which is not JSON
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 2**63, 2**64, 2**64 + 1, 10**400, 0, -0.0, 1e308]),
    _odd,
)
keys = st.sampled_from(["point_id", "ts", "value"])


good_values = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**53), 2**53))
good = {"point_id": st.integers(1, 2**31 - 1), "ts": st.integers(0, 32_503_680_000_000), "value": good_values}
anything = {"point_id": point_ids, "ts": timestamps, "value": values}


@st.composite
def readings(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 30)) == 0:
        return draw(_odd)
    if draw(st.booleans()):  # a good reading, or one with a single field off (the borders matter most)
        near: dict[str, Any] = {key: draw(strategy) for key, strategy in good.items()}
        if draw(st.integers(0, 3)) == 0:
            key = draw(keys)
            near[key] = draw(anything[key])
        return near
    reading: dict[str, Any] = {"point_id": draw(point_ids), "ts": draw(timestamps), "value": draw(values)}
    for key in draw(st.lists(keys, max_size=2)):
        reading.pop(key, None)
    if draw(st.booleans()):
        reading["extra"] = draw(_odd)
    return reading


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    shape = draw(st.integers(0, 20))
    if shape == 0:
        return draw(st.binary(max_size=40))
    if shape == 1:
        return json.dumps(draw(st.one_of(_odd, st.integers(), st.floats()))).encode()
    body: dict[str, Any] = {}
    if draw(st.booleans()):
        body["msg_id"] = draw(st.one_of(st.none(), st.text(max_size=130), st.just("m" * 129), _odd))
    if draw(st.integers(0, 2)) == 0:  # all good: the fast path's own ground
        body["readings"] = draw(st.lists(st.fixed_dictionaries(good), min_size=1, max_size=6))
    elif draw(st.integers(0, 15)):
        body["readings"] = draw(st.lists(readings(), min_size=0, max_size=6))
    else:
        body["readings"] = draw(_odd)
    if draw(st.booleans()):
        body["other"] = draw(_odd)
    text = json.dumps(body, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", errors="surrogatepass")


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads())
@example(b'{"readings": [{"point_id": 1, "ts": 1767225600000, "value": 18446744073709551616}]}')
@example(b'{"readings": [{"point_id": 1, "ts": 1767225600000, "value": 1e400}]}')
@example(b'{"readings": [{"point_id": 1, "ts": 1767225600000, "value": 1}], "readings": [{"point_id": 2}]}')
@example(b'{"readings": [{"point_id": 1, "ts": 1767225600000, "value": 1, "value": "x"}]}')
@example(b'{"msg_id": "\\ud800", "readings": [{"point_id": 1, "ts": 1767225600000, "value": 1}]}')
@example(b'\xef\xbb\xbf{"readings": [{"point_id": 1, "ts": 1767225600000, "value": 1}]}')
@example(b'{"readings": [{"point_id": 1, "ts": 1767225600000, "value": 1}]} ')
@example(b'{"readings": [{"point_id": 1, "ts": 1767225600000, "value": 1}]} x')
def test_fast_decoder_agrees_with_the_model(payload: bytes) -> None:
    expected = reference(payload)
    fast = _fast_columns(payload)
    event("fast path" if fast is not None else "model")
    if fast is not None:  # the fast path decided: it must be an accepted message with the same values
        assert expected is not None, payload
        assert exact(fast) == exact(expected)
    try:
        decoded: TelemetryColumns | None = telemetry_columns(payload)
    except ValidationError:
        decoded = None
    assert exact(decoded) == exact(expected)


def test_fast_path_takes_the_usual_message() -> None:
    """Integer epoch milliseconds, integer or float values: decided without the model."""
    body = {
        "msg_id": "m-1",
        "readings": [
            {"point_id": 7, "ts": MS_2026 + i, "value": i if i % 2 else i + 0.5} for i in range(100)
        ],
    }
    fast = _fast_columns(json.dumps(body).encode())
    assert fast is not None
    assert fast.ts_ms == [MS_2026 + i for i in range(100)]
    assert all(type(v) is float for v in fast.values)


def test_refused_message_raises_the_models_error() -> None:
    payload = b'{"readings": [{"point_id": 1, "ts": 1767225600000, "value": "NaN"}]}'
    try:
        telemetry_columns(payload)
    except ValidationError as exc:
        assert exc.title == "Telemetry"
        assert exc.errors()[0]["loc"] == ("readings", 0, "value")
    else:
        raise AssertionError("a string value was accepted")

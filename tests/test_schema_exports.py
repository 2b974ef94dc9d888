"""The generated contracts (JSON Schema, AsyncAPI) are fresh, complete and valid; the models keep the contract.

No database and no broker: everything here is pure Python.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from proto_schemas import topics
from proto_schemas.base import Message
from proto_schemas.catalog import CATALOG, UNMODELLED_TOPICS, Entry, all_models
from proto_schemas.control import ControlAck, ControlState, Schedule, ScheduleAck, ScheduleState
from proto_schemas.export import GENERATED, asyncapi, export, render
from proto_schemas.health import Health
from proto_schemas.telemetry import GatewayStatus, Telemetry

REGENERATE = "run `make schemas` (python -m proto_schemas.export) and commit proto_schemas/generated"
DRAFT_7 = "http://json-schema.org/draft-07/schema#"
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

# CONTRACTS.md §1: every device topic, its direction from the platform's view, and whether it is retained.
DEVICE_CONTRACT = {
    "telemetry": ("receive", False),
    "status": ("receive", True),
    "health": ("receive", False),
    "cmd": ("send", False),
    "cmd/ack": ("receive", False),
    "control": ("send", True),
    "control/ack": ("receive", False),
    "schedule": ("send", True),
    "schedule/ack": ("receive", False),
}

# One payload per channel; the device ones are the examples of docs/device-protocol.md.
EXAMPLES: dict[str, Any] = {
    "device.telemetry": {
        "msg_id": "0b9d2f52-7c1e-4a43-9a57-5f0f6f3c2e11",
        "readings": [
            {"point_id": 1042, "ts": "2025-03-30T01:15:00Z", "value": 183447.5},
            {"point_id": 1043, "ts": "2025-03-30T01:15:00Z", "value": -2310},
            {"point_id": 1042, "ts": 1743297600000, "value": 183512.0},
        ],
    },
    "device.status": "online",
    "device.health": {
        "ts": "2025-03-30T01:15:00Z",
        "serial": "HQ-2231-00457",
        "sw_version": "4.12.1",
        "types_version": "2025.03",
        "init_phase": "running",
        "last_reboot": "2025-03-28T22:04:11Z",
        "cpu_temp_c": 51.5,
        "mem_available_mb": 312,
        "unpublished_messages": 0,
        "db_status": "ok",
        "ping_ms": 38,
        "last_message_at": "2025-03-30T01:14:58Z",
    },
    "device.cmd": {
        "command_id": "5f1c7e2a-93d4-4b8e-8d0a-2b6f4c1a9e70",
        "name": "set_export_limit",
        "payload": {"register": 40123, "value": 5000},
        "expires_at": "2025-03-30T01:20:00Z",
    },
    "device.cmd.ack": {
        "command_id": "5f1c7e2a-93d4-4b8e-8d0a-2b6f4c1a9e70",
        "status": "succeeded",
        "result": {"written": True},
    },
    "device.control": {
        "version": 17,
        "issued_at": "2025-03-30T01:15:00Z",
        "fallback_timeout_s": 900,
        "policies": [
            {
                "policy_id": "b7a3c1d2-0f4e-4c5a-9e21-7d8c6b5a4f30",
                "group": "battery",
                "setpoint": {"power_w": -3000},
                "valid_until": "2025-03-30T02:15:00Z",
                "source": "provider:12",
            },
            {
                "policy_id": "c2e4a6b8-1d3f-4a5c-8e7b-9f0a1b2c3d4e",
                "group": "hvac",
                "setpoint": {"mode": "heat", "setpoint_c": 20.5, "max_power_w": 2500},
                "valid_until": "2025-03-30T03:00:00Z",
                "source": "user:6e0f9a52-3b1c-4d7e-8f2a-1c9b8d7e6f50",
            },
        ],
    },
    "device.control.ack": {
        "version": 18,
        "status": "rejected",
        "reason": "battery setpoint -12000 W exceeds inverter limit 5000 W",
    },
    "device.schedule": {
        "version": 5,
        "issued_at": "2025-03-29T18:00:00Z",
        "schedules": [
            {
                "schedule_id": "night-charge-2025-03-30",
                "group": "battery",
                "intervals": [
                    {
                        "start": "2025-03-30T00:00:00Z",
                        "end": "2025-03-30T03:00:00Z",
                        "setpoint": {"power_w": 4000},
                    },
                    {
                        "start": "2025-03-30T03:00:00Z",
                        "end": "2025-03-30T05:00:00Z",
                        "setpoint": {"power_w": 2000},
                    },
                ],
                "source": "provider:12",
            }
        ],
    },
    "device.schedule.ack": {"version": 5, "status": "stored"},
    "external.inst.live": {
        "request_id": "r-1842",
        "group": "battery",
        "setpoint": {"power_w": -2500},
        "ttl_s": 900,
    },
    "external.inst.schedule": {
        "request_id": "r-1843",
        "schedule_id": "day-ahead-2025-03-31",
        "group": "ev",
        "intervals": [
            {"start": "2025-03-31T01:00:00Z", "end": "2025-03-31T02:00:00Z", "setpoint": {"power_w": 7400}},
            {"start": "2025-03-31T02:00:00Z", "end": "2025-03-31T03:00:00Z", "setpoint": {"power_w": 0}},
        ],
    },
    "external.inst.ack": {
        "request_id": "r-1842",
        "status": "rejected",
        "reason": "battery power_w -9000 W exceeds the discharge limit 5000 W (negative power discharges)",
        "group": "battery",
    },
    "external.inst.state": {
        "ts": "2025-03-30T01:15:00Z",
        "grid": {"power_w": 1320},
        "solar": {"power_w": 2100},
        "battery": {"power_w": -2500, "soc_pct": 64},
        "ev": {"power_w": 0},
        "hvac": {"power_w": None},
        "policies": [
            {
                "policy_id": "9a0e8d38-3f3c-4c43-8d7e-1c2b7f4e5a60",
                "group": "battery",
                "setpoint": {"power_w": -2500},
                "valid_until": "2025-03-30T01:30:00Z",
                "source": "provider:7",
            }
        ],
        "device_groups": ["battery", "ev"],
    },
    "internal.readings.raw": {
        "batch_id": "b1",
        "correlation_id": "c1",
        "gateway_uuid": "gw-1",
        "point_ids": [1042],
        "ts_ms": [1743297600000],
        "values": [183512.0],
    },
    "internal.energy.intervals": {
        "batch_id": "b2",
        "correlation_id": "c1",
        "point_ids": [1042],
        "start_ms": [1743296700000],
        "end_ms": [1743297600000],
        "energy": [64.5],
        "quality": [0],
    },
    "internal.config.changed": {"entity": "point", "action": "updated", "id": 1042},
    "internal.datasources.status": {
        "data_source_id": 12,
        "gateway_uuid": "0b6f3c1e-2d4a-4f5b-8c9d-1e2f3a4b5c6d",
        "status": "offline",
        "previous": "online",
        "changed_ms": 1795440000000,
        "consecutive_failures": 3,
        "last_good_ms": 1795439970000,
        "reason": "timeout after 3 s",
    },
    "internal.onboarding.events": {
        "provider_id": 3,
        "installation_id": 41,
        "state": "active",
        "device_groups": ["battery", "ev"],
        "changed_ms": 1795440000000,
    },
    "internal.audit": {
        "event_key": "3f6c2b1e9a0d4c5b8e7f6a5b4c3d2e1f",
        "at": "2026-11-22T10:00:00Z",
        "actor": "operator.jane",
        "actor_kind": "user",
        "provider_id": 7,
        "action": "PUT",
        "object": "meters/42",
        "outcome": 200,
        "source_address": "203.0.113.9",
        "correlation_id": "8d1f0c2b",
    },
    "internal.gateways.seen": {"gateway_uuid": "gw-1", "last_seen_ms": 1743297600000, "status": "online"},
    "internal.deadletter": {
        "service": "ingestion",
        "topic": "gf/v1/gw/gw-1/telemetry",
        "reason": "validation failed",
        "errors": [{"field": "readings", "message": "List should have at least 1 item"}],
        "payload": '{"readings": []}',
        "received_at": 1743297600.5,
    },
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return asyncapi()


def _entry(channel_id: str) -> Entry:
    return next(entry for entry in CATALOG if entry.channel_id == channel_id)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _all_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _all_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _all_refs(value)]
    return []


# -- (a) the committed exports are fresh ------------------------------------------------------------------


def test_committed_exports_equal_a_fresh_export(tmp_path: Path) -> None:
    export(tmp_path)
    fresh = {path.relative_to(tmp_path).as_posix(): path.read_bytes() for path in tmp_path.rglob("*.json")}
    committed = {
        path.relative_to(GENERATED).as_posix(): path.read_bytes() for path in GENERATED.rglob("*.json")
    }
    problems = [f"missing: {name}" for name in sorted(fresh.keys() - committed.keys())]
    problems += [f"extra: {name}" for name in sorted(committed.keys() - fresh.keys())]
    problems += [
        f"stale: {name}" for name in sorted(fresh.keys() & committed.keys()) if fresh[name] != committed[name]
    ]
    assert not problems, f"proto_schemas/generated is out of date ({', '.join(problems)}): {REGENERATE}"


def test_export_is_deterministic() -> None:
    assert render() == render()
    for name, content in render().items():
        assert content.endswith(b"\n") and not content.endswith(b"\n\n"), name
        assert (
            content
            == (json.dumps(json.loads(content), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
        )


def test_all_models_are_sorted_unique_and_cover_the_catalog() -> None:
    models = all_models()
    ids = [model.schema_id() for model in models]
    assert ids == sorted(set(ids))
    assert {entry.model for entry in CATALOG} <= set(models)
    assert {Health, ControlState, ControlAck, ScheduleState, ScheduleAck, Schedule} <= set(models)
    for model in models:
        assert issubclass(model, Message)
        assert re.fullmatch(r"gridfleet\.[a-z_]+\.v[1-9][0-9]*", model.schema_id()), model
    assert {f"jsonschema/{schema_id}.json" for schema_id in ids} | {"asyncapi.json"} == set(render())


# -- (b) the AsyncAPI document is complete and its payloads are JSON Schemas ------------------------------


def test_every_topic_constant_is_in_the_catalog_or_declared_unmodelled(document: dict[str, Any]) -> None:
    constants = {
        name: value
        for name, value in vars(topics).items()
        if name.isupper()
        and isinstance(value, str)
        and value not in {topics.DEVICE_ROOT, topics.INTERNAL_ROOT, topics.EXTERNAL_ROOT}
    }
    assert constants, "no topic constants found in proto_schemas/topics.py"
    covered = {entry.topic for entry in CATALOG}
    addresses = {re.sub(r"\{[^}]+\}", "+", channel["address"]) for channel in document["channels"].values()}
    for name, topic in constants.items():
        assert (topic in covered) != (topic in UNMODELLED_TOPICS), (
            f"topics.{name} ({topic}): add a catalog entry"
        )
        if topic in covered:
            assert topic in addresses, f"topics.{name} ({topic}) has no AsyncAPI channel"
        else:
            assert topic not in addresses
    assert set(constants.values()) >= UNMODELLED_TOPICS


def test_every_device_topic_of_the_contract_has_a_channel(document: dict[str, Any]) -> None:
    by_address = {channel["address"]: channel_id for channel_id, channel in document["channels"].items()}
    for leaf, (action, retained) in DEVICE_CONTRACT.items():
        address = topics.gateway_topic("{gateway_uuid}", leaf)
        assert address in by_address, f"no channel for {address}"
        channel_id = by_address[address]
        operations = [
            op
            for op in document["operations"].values()
            if op["channel"]["$ref"] == f"#/channels/{channel_id}"
        ]
        assert [op["action"] for op in operations] == [action], address
        assert operations[0]["bindings"]["mqtt"] == {"bindingVersion": "0.2.0", "qos": 1, "retain": retained}
    device_channels = [a for a in by_address if a.startswith(topics.DEVICE_ROOT + "/")]
    assert len(device_channels) == len(DEVICE_CONTRACT)


def test_asyncapi_document_is_well_formed(document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "gridfleet device and internal bus"
    assert document["info"]["version"] == "1.0.0"
    server = document["servers"]["production"]
    assert server["protocol"] == "mqtt" and server["host"] == "{host}:1883" and "host" in server["variables"]
    for channel_id, channel in document["channels"].items():
        placeholders = set(re.findall(r"\{([^}]+)\}", channel["address"]))
        assert placeholders == set(channel.get("parameters", {})), channel_id
        assert channel["messages"], channel_id
    for operation in document["operations"].values():
        assert operation["action"] in {"send", "receive"}
    for ref in _all_refs(document):
        _resolve(document, ref)  # raises KeyError when dangling
    assert not any("$defs" in ref for ref in _all_refs(document))
    assert "$defs" not in json.dumps(document)
    status = document["components"]["messages"][GatewayStatus.schema_id()]
    assert status["contentType"] == "text/plain" and status["payload"]["enum"] == ["online", "offline"]
    for key, message in document["components"]["messages"].items():
        if key != GatewayStatus.schema_id():
            assert message["contentType"] == "application/json", key


def test_payloads_and_exported_schemas_are_valid_json_schemas(document: dict[str, Any]) -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    components = document["components"]
    schemas = [(f"message {key}", m["payload"]) for key, m in components["messages"].items()]
    schemas += [(f"schema {name}", schema) for name, schema in components["schemas"].items()]
    for label, schema in schemas:
        for dialect in (DRAFT_7, DRAFT_2020_12):  # AsyncAPI schemas build on draft 7; pydantic emits 2020-12
            try:
                jsonschema_rs.meta.validate({**schema, "$schema": dialect})
            except jsonschema_rs.ValidationError as exc:
                pytest.fail(f"{label} is not a valid {dialect} schema: {exc}")
    for path in sorted((GENERATED / "jsonschema").glob("*.json")):
        schema = json.loads(path.read_bytes())
        assert schema["$schema"] == DRAFT_2020_12 and schema["$id"] == path.stem and schema["title"]
        jsonschema_rs.meta.validate(schema)


@pytest.mark.parametrize("entry", CATALOG, ids=lambda entry: entry.channel_id)
def test_examples_fit_the_model_and_the_published_schema(entry: Entry, document: dict[str, Any]) -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    example = EXAMPLES[entry.channel_id]
    if entry.content_type == "text/plain":
        model: Message = GatewayStatus.from_wire(example.encode())
        produced: Any = GatewayStatus.model_validate(model).status
    else:
        model = entry.model.model_validate(example)
        produced = json.loads(model.model_dump_json(by_alias=True))  # what the bus publishes
    message = document["components"]["messages"][entry.model.schema_id()]
    schema = {**message["payload"], "$schema": DRAFT_2020_12, "components": document["components"]}
    validator = jsonschema_rs.validator_for(schema, validate_formats=True)
    for payload in (example, produced):
        errors = [error.message for error in validator.iter_errors(payload)]
        assert not errors, f"{entry.channel_id}: {errors}"


def test_per_model_schema_accepts_what_the_model_accepts() -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    schema = json.loads((GENERATED / "jsonschema" / f"{Telemetry.schema_id()}.json").read_bytes())
    validator = jsonschema_rs.validator_for(schema, validate_formats=True)
    assert validator.is_valid(EXAMPLES["device.telemetry"])
    assert not validator.is_valid({"readings": []})
    assert not validator.is_valid({"readings": [{"point_id": 1, "ts": "2025-03-30T01:15:00", "value": 1}]})


# -- (c) the models keep the contract ---------------------------------------------------------------------


def _telemetry(ts: Any = "2025-03-30T01:15:00Z", value: Any = 1.5) -> dict[str, Any]:
    return {"readings": [{"point_id": 1, "ts": ts, "value": value}]}


def test_telemetry_accepts_iso_with_offset_and_epoch_ms() -> None:
    utc = Telemetry.model_validate(_telemetry("2025-03-30T01:15:00Z")).readings[0].ts
    offset = Telemetry.model_validate(_telemetry("2025-03-30T03:15:00+02:00")).readings[0].ts
    epoch = Telemetry.model_validate(_telemetry(1743297300000)).readings[0].ts
    assert utc == offset == epoch
    assert epoch.utcoffset() is not None


@pytest.mark.parametrize(
    "payload",
    [
        _telemetry(ts="2025-03-30T01:15:00"),  # naive
        _telemetry(ts=True),
        _telemetry(value=True),
        _telemetry(value=False),
        _telemetry(value="12.5"),
        _telemetry(value=None),
        {"readings": []},
        {},
    ],
    ids=[
        "naive-ts",
        "bool-ts",
        "true-value",
        "false-value",
        "string-value",
        "null-value",
        "empty",
        "no-readings",
    ],
)
def test_telemetry_rejects(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Telemetry.model_validate(payload)


def test_telemetry_rejects_a_naive_time_in_json() -> None:
    with pytest.raises(ValidationError, match="timezone info"):
        Telemetry.model_validate_json(json.dumps(_telemetry("2025-03-30T01:15:00")))


def _schedule(*intervals: tuple[str, str], group: str = "battery", setpoint: Any = None) -> dict[str, Any]:
    return {
        "schedule_id": "s1",
        "group": group,
        "source": "operator",
        "intervals": [
            {
                "start": f"2025-03-30T{start}:00Z",
                "end": f"2025-03-30T{end}:00Z",
                "setpoint": setpoint or {"power_w": 1},
            }
            for start, end in intervals
        ],
    }


def test_schedule_accepts_sorted_touching_intervals() -> None:
    schedule = Schedule.model_validate(_schedule(("00:00", "03:00"), ("03:00", "05:00"), ("06:00", "07:00")))
    assert [interval.start.hour for interval in schedule.intervals] == [0, 3, 6]


@pytest.mark.parametrize(
    ("intervals", "match"),
    [
        ((("00:00", "03:00"), ("02:00", "05:00")), "overlaps"),
        ((("00:00", "05:00"), ("01:00", "02:00")), "overlaps"),
        ((("03:00", "05:00"), ("00:00", "02:00")), "sorted"),
        ((("03:00", "03:00"),), "after its start"),
        ((("05:00", "03:00"),), "after its start"),
        ((), "at least 1"),
    ],
    ids=["overlap", "contained", "unsorted", "empty-interval", "reversed", "no-intervals"],
)
def test_schedule_rejects_bad_intervals(intervals: tuple[tuple[str, str], ...], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        Schedule.model_validate(_schedule(*intervals))


@pytest.mark.parametrize(
    ("group", "setpoint"),
    [
        ("battery", {"max_power_w": 1}),
        ("battery", {"power_w": True}),
        ("battery", {"power_w": "100"}),
        ("solar", {"max_power_w": -1}),
        ("ev", {"power_w": -1}),
        ("hvac", {"setpoint_c": 20}),
        ("hvac", {"mode": "warm"}),
    ],
)
def test_setpoints_must_have_the_shape_of_their_group(group: str, setpoint: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="setpoint"):
        Schedule.model_validate(_schedule(("00:00", "01:00"), group=group, setpoint=setpoint))


def test_control_state_keeps_one_policy_per_group() -> None:
    state = dict(EXAMPLES["device.control"])
    policies = state["policies"]
    assert len(ControlState.model_validate(state).policies) == 2
    with pytest.raises(ValidationError, match="one policy per device group"):
        ControlState.model_validate(
            {**state, "policies": [policies[0], {**policies[0], "policy_id": "other"}]}
        )
    with pytest.raises(ValidationError):
        ControlState.model_validate({**state, "policies": [{**policies[0], "source": "someone"}]})
    assert ControlState.model_validate({**state, "policies": []}).policies == []


def test_schedule_state_ids_are_unique() -> None:
    state = EXAMPLES["device.schedule"]
    with pytest.raises(ValidationError, match="unique"):
        ScheduleState.model_validate({**state, "schedules": state["schedules"] * 2})


@pytest.mark.parametrize("ack", [ControlAck, ScheduleAck])
def test_a_rejection_needs_a_reason(ack: type[ControlAck] | type[ScheduleAck]) -> None:
    with pytest.raises(ValidationError, match="reason"):
        ack.model_validate({"version": 3, "status": "rejected"})
    assert ack.model_validate({"version": 3, "status": "rejected", "reason": "no"}).reason == "no"


def test_health_fields_are_all_optional_but_typed() -> None:
    assert Health.model_validate({}) == Health()
    assert Health.model_validate({"ping_ms": 38, "extra": "ignored"}).ping_ms == 38
    with pytest.raises(ValidationError):
        Health.model_validate({"cpu_temp_c": "51.5"})
    with pytest.raises(ValidationError):
        Health.model_validate({"unpublished_messages": -1})
    with pytest.raises(ValidationError):
        Health.model_validate({"ts": "2025-03-30T01:15:00"})

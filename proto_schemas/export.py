"""Write the machine-readable contracts generated from the models: `python -m proto_schemas.export [--check]`.

- `generated/jsonschema/<schema_id>.json`: one JSON Schema (2020-12) per message model, what the model accepts;
- `generated/asyncapi.json`: an AsyncAPI 3.0.0 document of every topic in the catalog (`catalog.py`).

Payloads the platform receives are described as it accepts them (a time is ISO 8601 with an offset or epoch
milliseconds); payloads it sends as it produces them (a time is always an ISO 8601 string). The output is
deterministic, so re-running produces identical bytes; `--check` lists stale, missing and extra files and exits 1
instead of writing.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from proto_schemas import base
from proto_schemas.base import Message
from proto_schemas.catalog import CATALOG, PARAMETERS, Entry, all_models

GENERATED = Path(__file__).parent / "generated"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMAS_REF = "#/components/schemas/{model}"
MQTT_BINDING_VERSION = "0.2.0"
REGENERATE = "run `make schemas` (python -m proto_schemas.export)"

_EPOCH_MS_MAX = 32503680000000 - 1  # base._to_datetime accepts up to the year 3000

_DESCRIPTION = """\
MQTT topics of gridfleet: the device protocol v1 between controllers (gateways) and the platform \
(`gf/v1/gw/{gateway_uuid}/…`, see docs/device-protocol.md) and the internal bus between gridfleet services \
(`gf/internal/v1/…`, see docs/architecture.md). Generated from `proto_schemas/` by \
`python -m proto_schemas.export`; do not edit by hand.

Operations are from the platform's view: `send` = the platform publishes, `receive` = the platform \
subscribes (a controller publishes). Internal topics have both. Every message is QoS 1, so expect duplicates. \
Payloads are UTF-8 JSON (unknown fields are ignored) except `status`, a bare word. Times the platform receives \
are ISO 8601 with an offset or epoch milliseconds; times it sends are ISO 8601 in UTC. An operator may set a \
topic prefix for a whole deployment (empty by default)."""


class _Generator(GenerateJsonSchema):
    """Pydantic's generator, plus what `base.Timestamp` accepts on input (its before-validator is opaque)."""

    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> JsonSchemaValue:
        function: Any = schema["function"].get("function")
        if (
            function is base._to_datetime
            and self.mode == "validation"
            and not schema.get("json_schema_input_schema")
        ):
            return {
                "anyOf": [
                    {"format": "date-time", "type": "string"},
                    {"maximum": _EPOCH_MS_MAX, "minimum": 0, "type": "integer"},
                ],
                "description": "ISO 8601 with an offset, or epoch milliseconds",
            }
        return super().function_before_schema(schema)


def dumps(document: Any) -> bytes:
    """The one encoding of every generated file: sorted keys, indent 2, UTF-8, trailing newline."""
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def json_schema(model: type[Message]) -> dict[str, Any]:
    """The model's JSON Schema (validation mode) with `$schema`, `$id` = its schema_id and a title."""
    schema = model.model_json_schema(schema_generator=_Generator)
    schema.setdefault("title", model.__name__)
    return {"$schema": DIALECT, "$id": model.schema_id(), **schema}


def _mode(entry: Entry) -> JsonSchemaMode:
    return "serialization" if entry.direction == "publish" else "validation"


def _refs(node: Any) -> set[str]:
    """Names of the component schemas referenced anywhere in `node`."""
    prefix = SCHEMAS_REF.format(model="")
    if isinstance(node, dict):
        found = {node["$ref"][len(prefix) :]} if str(node.get("$ref", "")).startswith(prefix) else set()
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


def _payload(entry: Entry, definition: dict[str, Any]) -> dict[str, Any]:
    payload = copy.deepcopy(definition)
    if entry.content_type == "text/plain":
        # A bare word on the wire: the payload is the model's single field, not an object.
        (field,) = payload["properties"].values()
        field.pop("title", None)
        return {
            **field,
            "description": payload.get("description", entry.description),
            "title": entry.model.__name__,
        }
    return payload


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of every catalog entry."""
    pairs = list(dict.fromkeys((entry.model, _mode(entry)) for entry in CATALOG))
    refs, definitions = models_json_schema(pairs, ref_template=SCHEMAS_REF, schema_generator=_Generator)
    schemas: dict[str, Any] = definitions.get("$defs", {})
    prefix = SCHEMAS_REF.format(model="")

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for entry in CATALOG:
        key = entry.model.schema_id()
        name = refs[(entry.model, _mode(entry))]["$ref"][len(prefix) :]
        message = {
            "contentType": entry.content_type,
            "name": key,
            "payload": _payload(entry, schemas[name]),
            "summary": entry.description,
            "title": entry.model.__name__,
        }
        if messages.setdefault(key, message) != message:
            raise ValueError(f"{key} travels in two shapes; give each its own model")
        channel: dict[str, Any] = {
            "address": entry.address,
            "description": entry.description,
            "messages": {entry.model.__name__: {"$ref": f"#/components/messages/{key}"}},
        }
        if entry.params:
            channel["parameters"] = {param: {"description": PARAMETERS[param]} for param in entry.params}
        channels[entry.channel_id] = channel
        actions = {"publish": ["send"], "subscribe": ["receive"], "internal": ["send", "receive"]}[
            entry.direction
        ]
        for action in actions:
            operations[f"{entry.channel_id}.{action}"] = {
                "action": action,
                "bindings": {
                    "mqtt": {
                        "bindingVersion": MQTT_BINDING_VERSION,
                        "qos": entry.qos,
                        "retain": entry.retained,
                    }
                },
                "channel": {"$ref": f"#/channels/{entry.channel_id}"},
                "messages": [{"$ref": f"#/channels/{entry.channel_id}/messages/{entry.model.__name__}"}],
                "summary": entry.description,
            }

    # Keep the schemas that payloads reference (top-level payloads are inlined, not referenced).
    used: set[str] = set()
    pending = _refs(messages)
    while pending:
        name = pending.pop()
        if name not in used:
            used.add(name)
            pending |= _refs(schemas[name])
    return {
        "asyncapi": "3.0.0",
        "channels": channels,
        "components": {"messages": messages, "schemas": {name: schemas[name] for name in sorted(used)}},
        "defaultContentType": "application/json",
        "info": {
            "description": _DESCRIPTION,
            "title": "gridfleet device and internal bus",
            "version": "1.0.0",
        },
        "operations": operations,
        "servers": {
            "production": {
                "description": "The operator's broker: plain MQTT only inside a private network (TLS, usually "
                "port 8883, over the internet). MQTT 5.0 preferred, 3.1.1 accepted.",
                "host": "{host}:1883",
                "protocol": "mqtt",
                "protocolVersion": "5.0",
                "variables": {
                    "host": {
                        "default": "localhost",
                        "description": "Broker host name, given by your operator",
                    }
                },
            }
        },
    }


def render() -> dict[str, bytes]:
    """Every generated file, by path relative to the output directory."""
    files = {f"jsonschema/{model.schema_id()}.json": dumps(json_schema(model)) for model in all_models()}
    files["asyncapi.json"] = dumps(asyncapi())
    return dict(sorted(files.items()))


def _existing(out_dir: Path) -> dict[str, Path]:
    if not out_dir.is_dir():
        return {}
    return {path.relative_to(out_dir).as_posix(): path for path in sorted(out_dir.rglob("*.json"))}


def check(out_dir: Path = GENERATED) -> list[str]:
    """What differs between `out_dir` and a fresh export: `stale: …`, `missing: …`, `extra: …`."""
    files, existing = render(), _existing(out_dir)
    problems = [f"missing: {name}" for name in files if name not in existing]
    problems += [
        f"stale: {name}" for name in files if name in existing and existing[name].read_bytes() != files[name]
    ]
    problems += [f"extra: {name}" for name in existing if name not in files]
    return sorted(problems)


def export(out_dir: Path = GENERATED) -> list[str]:
    """Write every file into `out_dir`, remove generated files no model produces; returns what changed."""
    files, existing = render(), _existing(out_dir)
    changed = []
    for name, content in files.items():
        path = out_dir / name
        if name not in existing or existing[name].read_bytes() != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            changed.append(name)
    for name, path in existing.items():
        if name not in files:
            path.unlink()
            changed.append(name)
    return sorted(changed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m proto_schemas.export", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the files are stale, missing or extra"
    )
    parser.add_argument("--out", type=Path, default=GENERATED, help=f"output directory (default {GENERATED})")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.out)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"generated schemas are out of date: {REGENERATE}", file=sys.stderr)
            return 1
        print(f"{len(render())} generated files up to date")
        return 0
    changed = export(args.out)
    for name in changed:
        print(f"wrote {name}" if (args.out / name).exists() else f"removed {name}")
    print(f"{len(changed)} file(s) changed in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

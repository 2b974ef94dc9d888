"""Command payload templates (seed 001): JSON text with `$s1` standing for the value sent.

A template is checked when it is saved: with a number in place of every `$s1` it must be a JSON object, and
it may use no other placeholder (MyEMS knows only `$s1`). At send time the value is substituted as a JSON
number (`5000`, not `5000.0`, for a whole number), so `{"value": $s1}` carries a number and `{"value": "$s1"}`
the same digits as text.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

from proto_schemas import topics

PLACEHOLDER = "$s1"
_ANY_PLACEHOLDER = re.compile(r"\$s\d+")
MAX_TEMPLATE = 65536
MAX_SAFE = 2**53


class TemplateError(ValueError):
    """The template or the substituted payload is not what a command may carry."""


def number_text(value: float) -> str:
    """A finite number as JSON text; whole numbers without a decimal point."""
    if not math.isfinite(value):
        raise TemplateError("set_value must be a finite number")
    if float(value).is_integer() and abs(value) < MAX_SAFE:
        return str(int(value))
    return orjson.dumps(float(value)).decode()


def normalise(template: Any) -> str:
    """The template as text: MyEMS sends it as a string, other clients as an object."""
    if isinstance(template, dict):
        try:
            text = orjson.dumps(template).decode()
        except TypeError as exc:  # an integer beyond 64 bits, say
            raise TemplateError(f"payload is not valid JSON: {exc}") from None
    elif isinstance(template, str):
        text = template.strip()
    else:
        raise TemplateError("payload must be a JSON object, or its text")
    if not text:
        raise TemplateError("payload must not be empty")
    if len(text) > MAX_TEMPLATE:
        raise TemplateError(f"payload is longer than {MAX_TEMPLATE} characters")
    if "\x00" in text:
        raise TemplateError("payload must not contain NUL characters")
    return text


def uses_value(template: str) -> bool:
    return PLACEHOLDER in template


def check(template: str) -> None:
    """Raise TemplateError unless the template gives a JSON object once `$s1` is replaced by a number."""
    others = sorted({p for p in _ANY_PLACEHOLDER.findall(template) if p != PLACEHOLDER})
    if others:
        raise TemplateError(f"unknown placeholder {others[0]}; only {PLACEHOLDER} is substituted")
    render(template, 0 if uses_value(template) else None)


def render(template: str, set_value: float | None) -> dict[str, Any]:
    """The payload to send: `$s1` replaced by the value, parsed as JSON (an object)."""
    text = template
    if uses_value(template):
        if set_value is None:
            raise TemplateError(
                f"the payload uses {PLACEHOLDER}: send a set_value (or save one with the command)"
            )
        text = template.replace(PLACEHOLDER, number_text(set_value))
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise TemplateError(
            f"the payload is not valid JSON once {PLACEHOLDER} is substituted: {exc}"
        ) from exc
    if not isinstance(parsed, dict):
        raise TemplateError("the payload must be a JSON object")
    return parsed


def check_topic(topic: str, gateway_uuid: str) -> None:
    """The topic must lie in the gateway's `cmd` subtree: `gf/v1/gw/{uuid}/cmd` or a level below it, never
    `cmd/ack` (the controller's own answers), and no wildcards."""
    base = topics.gateway_topic(gateway_uuid, "cmd")
    if topic != base and not topic.startswith(base + "/"):
        raise TemplateError(f"the topic must be {base} (or lie below it) for this gateway")
    if any(ch in topic for ch in "+#\x00"):
        raise TemplateError("the topic must not contain wildcards (+, #) or NUL")
    rest = topic[len(base) + 1 :]
    if rest:
        levels = rest.split("/")
        if "" in levels:
            raise TemplateError("the topic must not have empty levels")
        if levels[0] == "ack":
            raise TemplateError(f"{base}/ack is where the controller answers; choose another topic")
    if len(topic.encode()) > 1024:
        raise TemplateError("the topic is longer than 1024 bytes")

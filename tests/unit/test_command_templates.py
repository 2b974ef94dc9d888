"""Command payload templates and topics (seed 001): checked on save, substituted on send."""

from __future__ import annotations

import pytest

from services.command import templates
from services.command.templates import TemplateError

GW = "6e0f9a52-3b1c-4d7e-8f2a-1c9b8d7e6f50"


@pytest.mark.parametrize(
    "template",
    ['{"register": 40123, "value": $s1}', '{"value": "$s1"}', '{"on": true}', '  {"a": [$s1, $s1]}  '],
)
def test_a_template_that_gives_a_json_object_is_accepted(template: str) -> None:
    templates.check(templates.normalise(template))


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ('{"value": $s1', "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('"text"', "JSON object"),
        ('{"value": $s2}', "unknown placeholder $s2"),
        ("", "must not be empty"),
    ],
)
def test_a_template_that_cannot_give_a_json_object_is_refused(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message.replace("$", r"\$")):
        templates.check(templates.normalise(template))


def test_an_object_is_stored_as_its_json_text() -> None:
    assert templates.normalise({"value": 1}) == '{"value":1}'
    with pytest.raises(TemplateError):
        templates.normalise(["not", "an", "object"])


def test_the_value_is_substituted_as_a_json_number_and_whole_numbers_have_no_decimal_point() -> None:
    assert templates.render('{"value": $s1}', 5000.0) == {"value": 5000}
    assert templates.render('{"value": $s1}', -2.5) == {"value": -2.5}
    assert templates.render('{"value": "$s1"}', 7) == {"value": "7"}
    assert templates.render('{"on": true}', None) == {"on": True}


def test_a_template_with_s1_needs_a_value_and_a_finite_one() -> None:
    with pytest.raises(TemplateError, match="set_value"):
        templates.render('{"value": $s1}', None)
    with pytest.raises(TemplateError, match="finite"):
        templates.render('{"value": $s1}', float("nan"))


@pytest.mark.parametrize(
    "topic", [f"gf/v1/gw/{GW}/cmd", f"gf/v1/gw/{GW}/cmd/modbus", f"gf/v1/gw/{GW}/cmd/a/b"]
)
def test_a_topic_in_the_gateways_cmd_subtree_is_accepted(topic: str) -> None:
    templates.check_topic(topic, GW)


@pytest.mark.parametrize(
    "topic",
    [
        f"gf/v1/gw/{GW}/control",
        f"gf/v1/gw/{GW}/cmd/ack",
        f"gf/v1/gw/{GW}/cmd/ack/x",
        f"gf/v1/gw/{GW}/cmdx",
        f"gf/v1/gw/{GW}/cmd/+",
        f"gf/v1/gw/{GW}/cmd//x",
        "gf/v1/gw/00000000-0000-0000-0000-000000000000/cmd",
    ],
)
def test_a_topic_outside_the_subtree_or_on_the_ack_topic_is_refused(topic: str) -> None:
    with pytest.raises(TemplateError):
        templates.check_topic(topic, GW)

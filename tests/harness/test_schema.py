"""Kong's config validation and default filling (kong_schema)."""

from __future__ import annotations

from typing import Any

import pytest

from kong_cilium_identity.kong.kong_schema import ConfigRejected, validate_config

CONFIG: dict[str, Any] = {
    "type": "record",
    "fields": [
        {"mode": {"type": "string", "default": "enforce", "one_of": ["enforce", "monitor"]}},
        {"issuer": {"type": "string", "required": True}},
        {"ttl": {"type": "number", "gt": 0, "default": 30}},
        {"retries": {"type": "integer", "between": [0, 5], "default": 1}},
        {"strict": {"type": "boolean", "default": True}},
        {
            "cache": {
                "type": "record",
                "fields": [
                    {"size": {"type": "integer", "default": 100}},
                    {"path": {"type": "string"}},
                ],
            }
        },
        {
            "bindings": {
                "type": "array",
                "elements": {
                    "type": "record",
                    "fields": [
                        {"consumer": {"type": "string", "required": True}},
                        {
                            "selectors": {
                                "type": "set",
                                "elements": {"type": "string"},
                                "default": [],
                            }
                        },
                    ],
                },
            }
        },
        {
            "labels": {
                "type": "map",
                "keys": {"type": "string"},
                "values": {"type": "string"},
                "len_max": 2,
            }
        },
    ],
}


def test_defaults_are_filled_and_unset_fields_are_null() -> None:
    filled = validate_config(CONFIG, {"issuer": "https://idp", "bindings": [{"consumer": "a"}]})
    assert filled == {
        "mode": "enforce",
        "issuer": "https://idp",
        "ttl": 30,
        "retries": 1,
        "strict": True,
        "cache": {"size": 100, "path": None},
        "bindings": [{"consumer": "a", "selectors": []}],
        "labels": None,
    }


@pytest.mark.parametrize(
    ("config", "errors"),
    [
        ({}, {"issuer": "required field missing"}),
        ({"issuer": "i", "mode": "x"}, {"mode": "expected one of: enforce, monitor"}),
        ({"issuer": "i", "retries": 9}, {"retries": "value should be between 0 and 5"}),
        ({"issuer": "i", "retries": 1.5}, {"retries": "expected an integer"}),
        ({"issuer": "i", "ttl": 0}, {"ttl": "value must be greater than 0"}),
        ({"issuer": "i", "strict": "yes"}, {"strict": "expected a boolean"}),
        ({"issuer": ""}, {"issuer": "length must be at least 1"}),
        ({"issuer": "i", "nope": 1}, {"nope": "unknown field"}),
        ({"issuer": "i", "cache": {"size": "big"}}, {"cache": {"size": "expected an integer"}}),
        (
            {"issuer": "i", "bindings": [{}]},
            {"bindings": {1: {"consumer": "required field missing"}}},
        ),
        (
            {"issuer": "i", "labels": {"a": "1", "b": "2", "c": "3"}},
            {"labels": "length must be at most 2"},
        ),
        ({"issuer": "i", "bindings": "a"}, {"bindings": "expected an array"}),
    ],
)
def test_invalid_configs_are_rejected_like_kong(
    config: dict[str, Any], errors: dict[str, Any]
) -> None:
    with pytest.raises(ConfigRejected) as caught:
        validate_config(CONFIG, config)
    assert caught.value.errors == {"config": errors}

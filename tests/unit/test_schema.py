"""Config parsing: what Kong's schema cannot express is refused with a clear message."""

import json
import subprocess
import sys
from typing import Any

import pytest

from kong_cilium_identity.errors import ConfigError
from kong_cilium_identity.schema import IpSource, Mode, config_fields, parse_config

BASE: dict[str, Any] = {
    "sources": ["static"],
    "static": {"entries": [{"address": "10.0.0.5", "id": 50000, "labels": ["k8s:app=a"]}]},
    "bindings": [{"consumer": "alice", "selectors": ["k8s:app=a"]}],
}


def test_defaults_apply_when_kong_sends_nulls() -> None:
    raw = {
        **BASE,
        "mode": None,
        "ip_source": None,
        "lookup_timeout": None,
        "cache": None,
        "header_prefix": None,
        "tag_prefix": None,
        "claim_rules": None,
    }
    config = parse_config(raw)
    assert config.mode is Mode.ENFORCE and config.ip_source is IpSource.CONNECTION
    assert config.resolver.timeout == 0.5 and config.resolver.cache.ttl == 5
    assert config.header_prefix == "X-Cilium-"
    assert config.policy.tag_prefix == "cilium-identity:"  # the schema default, as Kong fills it


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mode": "audit"}, "audit"),
        ({"ip_source": "header"}, "header"),
        ({"sources": ["nope"]}, "unknown source"),
        ({"sources": ["static", "static"]}, "listed twice"),
        ({"sources": []}, "non-empty"),
        ({"bindings": [{"consumer": "alice", "selectors": ["k8s:app=a,"]}]}, "empty term"),
        ({"bindings": [{"consumer": "alice", "selectors": []}]}, "at least one selector"),
        ({"bindings": [{"consumer": " ", "selectors": ["a=b"]}]}, "empty consumer"),
        ({"claim_rules": [{"claim": "sub", "equals": "identity.color"}]}, "unknown identity"),
        ({"header_prefix": "X Cilium"}, "header_prefix"),
        ({"static": {"entries": [{"address": "10.0.0.300", "id": 1}]}}, "static.entries[0]"),
    ],
)
def test_invalid_config_is_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({**BASE, **change})
    assert message in str(raised.value)


def test_consumer_tags_can_be_turned_off() -> None:
    assert parse_config({**BASE, "consumer_tags": False}).policy.tag_prefix is None
    assert parse_config({**BASE, "tag_prefix": "id:"}).policy.tag_prefix == "id:"


def test_schema_has_a_record_per_source_kind_and_defaults_everywhere() -> None:
    names = [next(iter(field)) for field in config_fields()]
    assert "static" in names and "bindings" in names
    for field in config_fields():
        (definition,) = field.values()
        assert definition.get("required") is True
        if definition["type"] != "record":
            assert "default" in definition


def test_dump_prints_exactly_the_plugin_info() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kong_cilium_identity.cli", "--dump"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (info,) = json.loads(out)
    assert set(info) == {"Name", "Version", "Priority", "Phases", "Schema"}
    assert info["Name"] == "cilium-identity" and info["Priority"] == 1000
    assert info["Phases"] == ["access"]
    assert info["Schema"]["fields"][0]["config"]["type"] == "record"

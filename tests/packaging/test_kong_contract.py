"""The Kong-side contract is spelled once in Python, and the Lua companion agrees with it."""

from __future__ import annotations

import re

import pytest

from kong_cilium_identity import kong_contract, plugin
from kong_cilium_identity.server import protocol
from kong_cilium_identity.server.instances import PluginSpec
from tests.packaging.imports import PACKAGE, ROOT

GUARD_DIR = ROOT / PACKAGE / "lua" / "kong" / "plugins" / kong_contract.GUARD_NAME
EXTENSION = (GUARD_DIR / "extension.lua").read_text(encoding="utf-8")


def _lua_constant(name: str) -> str:
    found = re.findall(rf'^local {name} = "([^"]*)"$', EXTENSION, flags=re.MULTILINE)
    assert len(found) == 1, f"extension.lua declares {name} {len(found)} times"
    return found[0]


def test_the_lua_companion_uses_the_same_keys() -> None:
    assert _lua_constant("DECIDED_KEY") == kong_contract.DECIDED_CTX_KEY
    assert _lua_constant("SERIALIZE_KEY") == kong_contract.SERIALIZE_KEY
    assert _lua_constant("JWT_CTX_KEY") == kong_contract.JWT_CTX_KEY


def test_the_lua_companion_installs_the_two_methods_under_their_names() -> None:
    for method in (kong_contract.FACTS_METHOD, kong_contract.APPLY_METHOD):
        _kong, table, function = method.split(".")
        assert f"pdk.{table} = methods" in EXTENSION
        assert f"methods.{function} = {function}" in EXTENSION


def test_the_server_settles_the_companions_apply() -> None:
    assert kong_contract.APPLY_METHOD in protocol.SETTLING_METHODS
    assert kong_contract.FACTS_METHOD not in protocol.ENDING_METHODS


def test_the_plugin_info_is_the_same_from_the_plugin_and_the_server() -> None:
    spec = PluginSpec(plugin.Plugin, plugin.name, plugin.version, plugin.priority, plugin.Schema)
    assert spec.info() == plugin.plugin_info()
    assert plugin.plugin_info()["Name"] == kong_contract.PLUGIN_NAME
    assert plugin.plugin_info()["Phases"] == ["access"]


def test_pdk_method_walks_the_dotted_name() -> None:
    class Node:
        def __init__(self, path: str) -> None:
            self.path = path

        def __getattr__(self, name: str) -> Node:
            return Node(f"{self.path}.{name}")

    assert kong_contract.pdk_method(Node("kong"), kong_contract.FACTS_METHOD).path == (
        kong_contract.FACTS_METHOD
    )
    with pytest.raises(ValueError):
        kong_contract.pdk_method(Node("kong"), "ngx.ctx")


def test_the_guard_carries_the_package_version_and_sits_below_the_plugin() -> None:
    handler = (GUARD_DIR / "handler.lua").read_text(encoding="utf-8")
    [version] = re.findall(r'VERSION = "([^"]+)"', handler)
    [priority] = re.findall(r"PRIORITY = (\d+)", handler)
    assert version == plugin.version
    # after cilium-identity (1000), before ip-restriction (990) and acl (950)
    assert 990 < int(priority) < plugin.priority

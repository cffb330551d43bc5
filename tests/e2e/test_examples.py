"""The shipped examples stay true: kong.yaml's plugin configs pass Kong's schema rules and
the plugin's own parsing, and the demo's containers get the decisions the README promises."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kong_cilium_identity.kong.kong_schema import config_field, validate_config
from kong_cilium_identity.plugin import plugin_info
from kong_cilium_identity.schema import parse_config
from tests.kit.kong import KongHarness, KongRequest

ROOT = Path(__file__).resolve().parents[2]


def cilium_plugins(document: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for service in document.get("services", []):
        for route in service.get("routes", []):
            found += [p for p in route.get("plugins", []) if p["name"] == "cilium-identity"]
    return found


def test_kong_yaml_configs_are_valid() -> None:
    document = yaml.safe_load((ROOT / "kong.yaml").read_text())
    plugins = cilium_plugins(document)
    assert plugins
    record = config_field(plugin_info()["Schema"])
    for plugin in plugins:
        parse_config(validate_config(record, plugin["config"]))


def test_demo_decisions(kong: KongHarness) -> None:
    document = yaml.safe_load((ROOT / "kong.yaml").read_text())
    (plugin,) = cilium_plugins(document)
    entity = kong.add_plugin(plugin["config"])
    consumers = {
        c["username"]: {"id": f"id-{c['username']}", "tags": c.get("tags", []), **c}
        for c in document["consumers"]
    }
    for consumer in consumers.values():
        consumer.pop("keyauth_credentials", None)
    credential = {"id": "cred"}
    checkout_ip, reports_ip = (e["address"] for e in plugin["config"]["static"]["entries"])

    def status(username: str, client_ip: str) -> int:
        request = KongRequest(
            client_ip=client_ip, consumer=consumers[username], credential=credential
        )
        return kong.request(entity, request).status

    assert status("checkout", checkout_ip) == 200
    assert status("checkout", reports_ip) == 403  # the stolen key, used from the wrong pod
    assert status("reports", reports_ip) == 200  # bound through its consumer tag
    assert status("reports", checkout_ip) == 403


def yaml_blocks(path: Path) -> list[Any]:
    text = path.read_text()
    blocks = text.split("```yaml\n")[1:]
    return [yaml.safe_load(block.split("```", 1)[0]) for block in blocks]


def plugin_configs_in(document: Any) -> list[dict[str, Any]]:
    """Every cilium-identity config in a kong.yaml document or a bare ``plugins:`` list."""
    if not isinstance(document, dict):
        return []
    if document.get("kind") == "KongPlugin" and document.get("plugin") == "cilium-identity":
        return [document.get("config") or {}]
    plugins = list(document.get("plugins") or [])
    for service in document.get("services") or []:
        for route in service.get("routes") or []:
            plugins += route.get("plugins") or []
    return [p.get("config") or {} for p in plugins if p.get("name") == "cilium-identity"]


def test_documented_yaml_examples_are_valid_configs() -> None:
    record = config_field(plugin_info()["Schema"])
    checked = 0
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for document in yaml_blocks(path):
            for config in plugin_configs_in(document):
                parse_config(validate_config(record, config))
                checked += 1
    assert checked >= 5  # README's route snippet, SA-token and KongPlugin examples, docs

"""Offline operator tools behind ``kong-cilium-identity validate`` and ``explain``.

``validate`` checks every cilium-identity config in a declarative ``kong.yaml`` (or a
file holding one plugin config) with Kong's schema rules and the plugin's own parsing,
before Kong ever loads it. ``explain`` resolves one address with the configured sources
and prints the decision the plugin would make for a consumer, reason and all.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kong_cilium_identity.decision import Consumer, Decision, Facts, decide
from kong_cilium_identity.identity.address import parse_address
from kong_cilium_identity.identity.model import Lookup, Peer
from kong_cilium_identity.identity.resolver import RESOLVERS
from kong_cilium_identity.identity.sources import ConfigError
from kong_cilium_identity.plugin import name, plugin_info
from kong_cilium_identity.schema import Config, parse_config
from kong_cilium_identity.testing.kong_schema import ConfigRejected, config_field, validate_config


def plugin_configs(document: Any) -> list[tuple[str, Any]]:
    """(where, config) for every cilium-identity plugin in a kong.yaml document; a
    document that is itself a plugin config (no ``_format_version``) is one entry."""
    if not isinstance(document, Mapping):
        return []
    if "_format_version" not in document:
        return [("config", document)]
    found: list[tuple[str, Any]] = []

    def collect(where: str, plugins: Any) -> None:
        for index, plugin in enumerate(plugins or []):
            if isinstance(plugin, Mapping) and plugin.get("name") == name:
                found.append((f"{where}.plugins[{index}]", plugin.get("config") or {}))

    collect("", document.get("plugins"))
    for service in document.get("services") or []:
        collect(f"services[{service.get('name')}]", service.get("plugins"))
        for route in service.get("routes") or []:
            collect(f"routes[{route.get('name')}]", route.get("plugins"))
    for route in document.get("routes") or []:
        collect(f"routes[{route.get('name')}]", route.get("plugins"))
    return found


def load_config(raw: Any) -> Config:
    """Kong's validation (defaults filled) then the plugin's; raises ConfigError."""
    try:
        filled = validate_config(config_field(plugin_info()["Schema"]), raw)
    except ConfigRejected as rejected:
        raise ConfigError(f"Kong would reject it: {rejected}") from None
    return parse_config(filled)


def validate(path: Path) -> list[str]:
    """One line per plugin config: ``OK where`` or ``ERROR where: why``."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    configs = plugin_configs(document)
    if not configs:
        return [f"ERROR {path}: no {name} plugin config found"]
    lines = []
    for where, raw in configs:
        try:
            load_config(raw)
        except ConfigError as error:
            lines.append(f"ERROR {where}: {error}")
        else:
            lines.append(f"OK {where}")
    return lines


def explain(
    config: Config,
    address: str,
    consumer: Consumer | None,
    has_credential: bool,
    claims: Mapping[str, Any] | None,
    wait: float,
) -> tuple[Lookup, Decision]:
    """Resolve ``address`` with the configured sources (waiting up to ``wait`` seconds
    for them to be ready) and decide as the plugin would."""
    resolver = RESOLVERS.acquire(config.resolver)
    try:
        deadline = time.monotonic() + wait
        while not resolver.ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        lookup = resolver.lookup(Peer(str(parse_address(address))))
    finally:
        RESOLVERS.release(config.resolver)
    return lookup, decide(Facts(consumer, has_credential, address, claims), lookup, config.policy)

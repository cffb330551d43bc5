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

from kong_cilium_identity.budget import timeout_violations
from kong_cilium_identity.errors import ConfigError
from kong_cilium_identity.hosting import DEFAULT_EVENT_DEADLINE
from kong_cilium_identity.identity.address import parse_address
from kong_cilium_identity.identity.model import Lookup, Peer
from kong_cilium_identity.identity.resolver import RESOLVERS
from kong_cilium_identity.kong.kong_schema import ConfigRejected, config_field, validate_config
from kong_cilium_identity.kong_contract import GUARD_NAME
from kong_cilium_identity.plugin import name, plugin_info
from kong_cilium_identity.policy.decision import Consumer, Decision, Facts, decide
from kong_cilium_identity.schema import Config, parse_config


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


def load_config(raw: Any, event_deadline: float | None = DEFAULT_EVENT_DEADLINE) -> Config:
    """Kong's validation (defaults filled), then the plugin's, then the timeout budget
    against the server's event deadline; raises ConfigError."""
    try:
        filled = validate_config(config_field(plugin_info()["Schema"]), raw)
    except ConfigRejected as rejected:
        raise ConfigError(f"Kong would reject it: {rejected}") from None
    config = parse_config(filled)
    problems = timeout_violations(config, event_deadline)
    if problems:
        raise ConfigError("; ".join(problems))
    return config


def validate(path: Path) -> list[str]:
    """One line per plugin config: ``OK where`` or ``ERROR where: why``; then one
    ``ERROR`` line per scope where cilium-identity runs without cilium-identity-guard (a
    dead plugin server would fail open there) or the guard runs without cilium-identity
    (every request there would be refused)."""
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
    if isinstance(document, Mapping) and "_format_version" in document:
        lines.extend(guard_coverage(document))
    return lines


# A scope is () for global, ("service", name) or ("route", name).
Scope = tuple[str, ...]


def _scopes(document: Mapping[str, Any]) -> tuple[dict[str, list[Scope]], dict[str, str]]:
    """(plugin name -> the scopes it is configured at, route name -> its service name)."""
    found: dict[str, list[Scope]] = {}
    route_service: dict[str, str] = {}

    def add(plugins: Any, scope: Scope) -> None:
        for plugin in plugins or []:
            if isinstance(plugin, Mapping) and isinstance(plugin.get("name"), str):
                found.setdefault(plugin["name"], []).append(scope)

    for plugin in document.get("plugins") or []:
        if not isinstance(plugin, Mapping):
            continue
        if plugin.get("route"):
            add([plugin], ("route", str(plugin["route"])))
        elif plugin.get("service"):
            add([plugin], ("service", str(plugin["service"])))
        elif not plugin.get("consumer"):
            add([plugin], ())
    for service in document.get("services") or []:
        service_name = str(service.get("name") or "")
        add(service.get("plugins"), ("service", service_name))
        for route in service.get("routes") or []:
            route_service[str(route.get("name") or "")] = service_name
            add(route.get("plugins"), ("route", str(route.get("name") or "")))
    for route in document.get("routes") or []:
        service = route.get("service")
        named = service.get("name") if isinstance(service, Mapping) else service
        route_service[str(route.get("name") or "")] = str(named or "")
        add(route.get("plugins"), ("route", str(route.get("name") or "")))
    return found, route_service


def _covers(outer: Scope, inner: Scope, route_service: Mapping[str, str]) -> bool:
    """True when a plugin at ``outer`` runs on every request a plugin at ``inner`` runs on."""
    if outer == () or outer == inner:
        return True
    return (
        outer[0] == "service"
        and inner[:1] == ("route",)
        and route_service.get(inner[1]) == outer[1]
    )


def _describe(scope: Scope) -> str:
    return "global" if scope == () else f"{scope[0]} {scope[1]!r}"


def guard_coverage(document: Mapping[str, Any]) -> list[str]:
    """ERROR lines for scopes where cilium-identity and cilium-identity-guard do not pair."""
    scopes, routes = _scopes(document)
    plugin_scopes, guard_scopes = scopes.get(name, []), scopes.get(GUARD_NAME, [])

    def guarded(scope: Scope) -> bool:
        if any(_covers(guard, scope, routes) for guard in guard_scopes):
            return True
        # a service is also covered when each of its routes has the guard
        inner = [("route", route) for route, service in routes.items() if scope[1:] == (service,)]
        return scope[:1] == ("service",) and bool(inner) and all(map(guarded, inner))

    lines = [
        f"ERROR {_describe(scope)}: {name} without {GUARD_NAME}; if the plugin server is "
        f"down, Kong proxies these requests unchecked: add {GUARD_NAME} here"
        for scope in plugin_scopes
        if not guarded(scope)
    ]
    lines.extend(
        f"ERROR {_describe(scope)}: {GUARD_NAME} where {name} does not run on every "
        f"request; it refuses those requests: scope the guard like {name}"
        for scope in guard_scopes
        if not any(_covers(plugin, scope, routes) for plugin in plugin_scopes)
    )
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
        lookup = resolver.lookup(Peer.of(parse_address(address)))
    finally:
        RESOLVERS.release(config.resolver)
    return lookup, decide(Facts(consumer, has_credential, address, claims), lookup, config.policy)

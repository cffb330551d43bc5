"""The configurations the project ships, as Kong declarative documents, and the scenario
they describe (which key belongs to which pod)."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import yaml

from tests.kubernetes.helpers import FAST
from tests.nginx.kic import kic_declarative
from tests.nginx.rig import REPO

PLUGIN = "cilium-identity"
GUARD = "cilium-identity-guard"
# KONG_PLUGINS as the project documents it: bundled,cilium-identity,cilium-identity-guard
INSTALLED = ("key-auth", PLUGIN, GUARD)

CHECKOUT_KEY = ("apikey", "checkout-demo-key")
REPORTS_KEY = ("apikey", "reports-demo-key")
CHECKOUT_POD = "127.28.0.10"  # kong.yaml's 172.28.0.10, remapped to loopback by the rig
REPORTS_POD = "127.28.0.11"


def kong_yaml() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "kong.yaml").read_text())
    return doc


@dataclass
class Shipped:
    doc: dict[str, Any]
    path: str  # a request path on the protected route
    installed: tuple[str, ...]  # KONG_PLUGINS of the shipped image / Helm values


def kong_plugins(value: str) -> tuple[str, ...]:
    """A KONG_PLUGINS value as the rig installs it (its `bundled` is key-auth)."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    return tuple("key-auth" if name == "bundled" else name for name in names)


def image_plugins() -> tuple[str, ...]:
    """KONG_PLUGINS of docker/Dockerfile, the image of the compose demo and of Helm."""
    found = re.search(r"KONG_PLUGINS=(\S+)", (REPO / "docker" / "Dockerfile").read_text())
    assert found is not None, "docker/Dockerfile sets no KONG_PLUGINS"
    return kong_plugins(found.group(1))


def helm_plugins() -> tuple[str, ...]:
    values = yaml.safe_load((REPO / "deploy" / "helm" / "kong-values.yaml").read_text())
    return kong_plugins(values["env"]["plugins"])


# every configuration the project ships: kong.yaml (also the docker-compose demo's) and
# the Kubernetes manifests' Ingress and HTTPRoute with their KongPlugins and KongConsumers
SHIPPED = ("kong.yaml", "kubernetes Ingress", "kubernetes HTTPRoute")


def shipped_config(name: str, api_url: str) -> Shipped:
    """One shipped configuration; the Kubernetes ones read CiliumEndpoints at ``api_url``."""
    if name == "kong.yaml":
        return Shipped(kong_yaml(), "/orders/1", image_plugins())
    kind = name.split()[1]
    path = "/orders/1" if kind == "Ingress" else "/shop/orders/1"
    return Shipped(kic_declarative(kind, api_url, FAST), path, helm_plugins())


def plugin_holders(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    holders = [("global", doc)]
    for service in doc.get("services") or []:
        holders.append((f"service {service.get('name')}", service))
        holders += [(f"route {route.get('name')}", route) for route in service.get("routes") or []]
    return holders


def guard_gaps(doc: dict[str, Any]) -> list[str]:
    """Where ``doc`` enables cilium-identity without the guard beside it."""
    gaps = []
    for where, holder in plugin_holders(doc):
        names = {plugin["name"] for plugin in holder.get("plugins") or []}
        if PLUGIN in names and GUARD not in names:
            gaps.append(where)
    return gaps


def without_guard(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as it was before the guard, or as a user who forgot it has it."""
    out = copy.deepcopy(doc)
    for _, holder in plugin_holders(out):
        if "plugins" in holder:
            holder["plugins"] = [p for p in holder["plugins"] if p["name"] != GUARD]
    return out

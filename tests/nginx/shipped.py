"""The configurations the project ships, as Kong declarative documents, and the scenario
they describe (which key belongs to which pod)."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from tests.nginx.rig import REPO

PLUGIN = "cilium-identity"
GUARD = "cilium-identity-guard"
# KONG_PLUGINS as the project documents it: bundled,cilium-identity,cilium-identity-guard
INSTALLED = ("key-auth", PLUGIN, GUARD)

CHECKOUT_KEY = ("apikey", "checkout-demo-key")
CHECKOUT_POD = "127.28.0.10"  # kong.yaml's 172.28.0.10, remapped to loopback by the rig
REPORTS_POD = "127.28.0.11"


def kong_yaml() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "kong.yaml").read_text())
    return doc


def shipped_configs() -> dict[str, dict[str, Any]]:
    """name -> declarative document, for every configuration the project ships."""
    return {"kong.yaml": kong_yaml()}


def with_guard(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with the guard next to every cilium-identity plugin that lacks it."""
    out = copy.deepcopy(doc)
    holders = [out, *(out.get("services") or [])]
    for service in out.get("services") or []:
        holders += service.get("routes") or []
    for holder in holders:
        plugins = holder.get("plugins") or []
        names = {plugin["name"] for plugin in plugins}
        if PLUGIN in names and GUARD not in names:
            plugins.append({"name": GUARD})
    return out

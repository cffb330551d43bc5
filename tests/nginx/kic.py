"""The shipped Kubernetes manifests (deploy/kubernetes) as the declarative configuration KIC
would hand Kong: one route per Ingress path / HTTPRoute match, its plugins named by the
``konghq.com/plugins`` annotation (a KongPlugin of the route's namespace), consumers from
KongConsumers with their key-auth Secrets and tags (KIC's own k8s-* tags, then the
``konghq.com/tags`` annotation)."""

from __future__ import annotations

import copy
from typing import Any

from tests.deploy.helpers import PLUGIN, annotation_plugins, kic_tags, of_kind


def _namespaced_plugin(namespace: str, name: str) -> dict[str, Any]:
    (found,) = [
        p
        for p in of_kind("KongPlugin")
        if p["metadata"]["name"] == name and p["metadata"]["namespace"] == namespace
    ]
    return {"name": found["plugin"], "config": copy.deepcopy(found.get("config") or {})}


def _consumer(document: dict[str, Any], keys: dict[tuple[str, str], str]) -> dict[str, Any]:
    metadata = document["metadata"]
    tags = kic_tags(document)
    consumer: dict[str, Any] = {"username": document["username"], "tags": tags}
    if document.get("custom_id"):
        consumer["custom_id"] = document["custom_id"]
    consumer["keyauth_credentials"] = [
        {"key": keys[(metadata["namespace"], secret)]} for secret in document["credentials"]
    ]
    return consumer


def _route_paths(document: dict[str, Any]) -> list[str]:
    if document["kind"] == "Ingress":
        return [
            path["path"] for rule in document["spec"]["rules"] for path in rule["http"]["paths"]
        ]
    return [
        match["path"]["value"]
        for rule in document["spec"]["rules"]
        for match in rule.get("matches") or []
    ]


def kic_declarative(kind: str, api_url: str, fast: dict[str, Any]) -> dict[str, Any]:
    """The configuration for the shipped route of ``kind`` (Ingress or HTTPRoute).
    cilium-identity's kubernetes source is pointed at ``api_url`` with ``fast`` timings;
    nothing else changes."""
    keys = {
        (s["metadata"]["namespace"], s["metadata"]["name"]): s["stringData"]["key"]
        for s in of_kind("Secret")
        if (s["metadata"].get("labels") or {}).get("konghq.com/credential") == "key-auth"
    }
    (route_doc,) = of_kind(kind)
    namespace = route_doc["metadata"]["namespace"]
    plugins = [_namespaced_plugin(namespace, name) for name in annotation_plugins(route_doc)]
    for plugin in plugins:
        if plugin["name"] == PLUGIN:
            kubernetes = plugin["config"].get("kubernetes") or {}
            plugin["config"]["kubernetes"] = {**kubernetes, "api_url": api_url, **fast}
    strip = (route_doc["metadata"].get("annotations") or {}).get("konghq.com/strip-path")
    name = f"{namespace}.{route_doc['metadata']['name']}"
    return {
        "_format_version": "3.0",
        "consumers": [_consumer(c, keys) for c in of_kind("KongConsumer")],
        "services": [
            {
                "name": name,
                "url": "http://upstream.invalid",
                "routes": [
                    {
                        "name": f"{name}.0",
                        "paths": _route_paths(route_doc),
                        "strip_path": strip == "true",
                        "plugins": plugins,
                    }
                ],
            }
        ],
    }

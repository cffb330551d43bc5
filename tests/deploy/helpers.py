"""What the deploy tests read: the shipped configuration files and the upstream schemas
beside the repository (``../shared/schemas``, as CI lays it out)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kong_cilium_identity.ops.tools import plugin_configs

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / ".." / "shared" / "schemas"
KUBERNETES = ROOT / "deploy" / "kubernetes"
HELM_VALUES = ROOT / "deploy" / "helm" / "kong-values.yaml"
COMPOSE = ROOT / "docker" / "docker-compose.yml"
KONG_YAML = ROOT / "kong.yaml"
PLUGIN = "cilium-identity"
GUARD = "cilium-identity-guard"
PLUGINS_ANNOTATION = "konghq.com/plugins"


def require_schemas() -> Path:
    """The upstream schema snapshot, or a skip that names the missing path."""
    if not SCHEMAS.is_dir():
        pytest.skip(f"{SCHEMAS.resolve()} is absent: ../shared/schemas beside the repo")
    return SCHEMAS


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def manifest_files() -> list[Path]:
    """Every manifest the kustomization applies, in its order."""
    kustomization = load_yaml(KUBERNETES / "kustomization.yaml")
    return [KUBERNETES / name for name in kustomization["resources"]]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(``file#index``, document) for every document of every manifest."""
    found = []
    for path in manifest_files():
        documents = yaml.safe_load_all(path.read_text(encoding="utf-8"))
        for index, document in enumerate(documents):
            if document is not None:
                found.append((f"{path.name}#{index}", document))
    return found


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [document for _, document in manifests() if document["kind"] == kind]


def kic_plugin(kind: str, name: str) -> dict[str, Any]:
    (found,) = [p for p in of_kind(kind) if p["metadata"]["name"] == name]
    return found


def shipped_plugin_configs() -> list[tuple[str, dict[str, Any]]]:
    """(where, config) of every cilium-identity configuration the project ships."""
    configs = [
        (f"kong.yaml {where}", config) for where, config in plugin_configs(load_yaml(KONG_YAML))
    ]
    for kind in ("KongPlugin", "KongClusterPlugin"):
        for plugin in of_kind(kind):
            if plugin["plugin"] == PLUGIN:
                configs.append((f"{kind} {plugin['metadata']['name']}", plugin.get("config") or {}))
    return configs


def annotation_plugins(document: dict[str, Any]) -> list[str]:
    value = (document.get("metadata", {}).get("annotations") or {}).get(PLUGINS_ANNOTATION, "")
    return [name.strip() for name in value.split(",") if name.strip()]


def command_words(command: str) -> list[str]:
    return re.split(r"\s+", command.strip())


def kic_tags(document: dict[str, Any]) -> list[str]:
    """The tags KIC gives the consumer it generates from a KongConsumer: its own k8s-*
    tags, then the comma-separated ``konghq.com/tags`` annotation."""
    metadata = document["metadata"]
    group, version = document["apiVersion"].split("/")
    tags = [
        f"k8s-name:{metadata['name']}",
        f"k8s-namespace:{metadata['namespace']}",
        f"k8s-kind:{document['kind']}",
        f"k8s-group:{group}",
        f"k8s-version:{version}",
    ]
    annotation = (metadata.get("annotations") or {}).get("konghq.com/tags", "")
    return tags + [tag.strip() for tag in annotation.split(",") if tag.strip()]

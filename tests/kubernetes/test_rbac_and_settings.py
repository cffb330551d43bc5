"""The RBAC manifest, the schema record and settings parsing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kong_cilium_identity.errors import ConfigError
from kong_cilium_identity.identity.cep_watch import WatchSettings
from kong_cilium_identity.identity.sources import SOURCE_KINDS
from kong_cilium_identity.identity.sources.kubernetes import (
    SCHEMA,
    KubernetesSettings,
    KubernetesSource,
    api_client,
    create,
    parse_settings,
)
from tests.kit.fake_kube import ALL_SERVED, FakeKubeApi
from tests.kubernetes.helpers import FAST
from tests.shared_captures import REPO_ROOT

MANIFEST = REPO_ROOT / "deploy" / "kubernetes" / "rbac.yaml"


def documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if doc]


def test_manifest_covers_every_resource_the_source_reads(made: list[KubernetesSource]) -> None:
    """Run the source against a cluster serving every kind it knows, and check that each
    resource it listed or watched is granted get, list and watch by the ClusterRole."""
    with FakeKubeApi(served=ALL_SERVED) as fake:
        source = create(parse_settings({"api_url": fake.url, **FAST, "watch_identities": True}))
        made.append(source)
        assert source.wait_ready(10)
        read = {path.rsplit("/", 1)[-1] for path, _ in fake.requests if path.count("/") == 4}
    assert read == {"ciliumendpoints", "ciliumendpointslices", "ciliumidentities"}
    (role,) = [doc for doc in documents() if doc["kind"] == "ClusterRole"]
    granted = {
        (resource, verb)
        for rule in role["rules"]
        if rule["apiGroups"] == ["cilium.io"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for resource in read:
        assert {(resource, "get"), (resource, "list"), (resource, "watch")} <= granted, resource


@pytest.fixture
def made() -> Iterator[list[KubernetesSource]]:
    sources: list[KubernetesSource] = []
    yield sources
    for source in sources:
        source.close()


def test_manifest_grants_read_only_access_to_cilium_endpoints_and_identities() -> None:
    by_kind = {doc["kind"]: doc for doc in documents()}
    assert sorted(by_kind) == ["ClusterRole", "ClusterRoleBinding"]
    role = by_kind["ClusterRole"]
    assert role["apiVersion"] == "rbac.authorization.k8s.io/v1"
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["cilium.io"]
    assert sorted(rule["resources"]) == [
        "ciliumendpoints",
        "ciliumendpointslices",
        "ciliumidentities",
    ]
    assert sorted(rule["verbs"]) == ["get", "list", "watch"]
    binding = by_kind["ClusterRoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kong", "namespace": "kong"}]


def test_kind_is_registered_and_not_cacheable() -> None:
    kind = SOURCE_KINDS["kubernetes"]
    assert kind.schema is SCHEMA
    assert KubernetesSource.cacheable is False


def kong_defaults() -> dict[str, Any]:
    """The record as Kong fills it: every default set, other fields None."""
    record: dict[str, Any] = {}
    for entry in SCHEMA["fields"]:
        ((name, field),) = entry.items()
        record[name] = field.get("default")
    return record


def test_schema_defaults_parse_to_the_settings_defaults() -> None:
    assert parse_settings(kong_defaults()) == KubernetesSettings()
    assert KubernetesSettings().watch == WatchSettings()


def test_settings_are_hashable_for_the_shared_pool() -> None:
    one = parse_settings({**kong_defaults(), "api_url": "https://10.96.0.1:443"})
    two = parse_settings({**kong_defaults(), "api_url": "https://10.96.0.1:443"})
    assert hash(one) == hash(two) and one == two


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"api_url": "10.96.0.1:443"}, "must start with"),
        ({"api_url": "https://k", "kubeconfig": "/k"}, "not both"),
        ({"token_file": "/t"}, "go with api_url"),
        ({"context": "kind"}, "needs kubeconfig"),
        ({"backoff_initial": 5, "backoff_max": 1}, "must not exceed"),
    ],
)
def test_contradictory_settings_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings({**kong_defaults(), **change})


def test_missing_token_file_is_a_config_error(tmp_path: Path) -> None:
    settings = parse_settings(
        {**kong_defaults(), "api_url": "http://127.0.0.1:1", "token_file": str(tmp_path / "x")}
    )
    with pytest.raises(ConfigError, match="cannot configure"):
        api_client(settings)

"""Every shipped manifest and config file validates against the upstream schemas in
``../shared/schemas`` (skipped, naming that path, where it is absent): the CRD schemas of
Kong, Cilium and Gateway API, decK's declarative-config schema and the compose spec, through
the ``jsonschema`` library and through the ``check-jsonschema`` CLI; core Kubernetes kinds
through ``kubernetes-validate``."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.helpers import (
    COMPOSE,
    KONG_YAML,
    KUBERNETES,
    load_yaml,
    manifests,
    require_schemas,
)

# Custom resources: (apiVersion, kind) -> schema file under ../shared/schemas
CRD_SCHEMAS = {
    ("configuration.konghq.com/v1", "KongPlugin"): "kong-ingress-controller/kongplugin-v1",
    ("configuration.konghq.com/v1", "KongClusterPlugin"): (
        "kong-ingress-controller/kongclusterplugin-v1"
    ),
    ("configuration.konghq.com/v1", "KongConsumer"): "kong-ingress-controller/kongconsumer-v1",
    ("cilium.io/v2", "CiliumNetworkPolicy"): "cilium/ciliumnetworkpolicy-v2",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "gateway-api/httproute-v1",
}
CORE_KINDS = {
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
    ("networking.k8s.io/v1", "Ingress"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
}
CLUSTER_SCOPED = {"KongClusterPlugin", "ClusterRole", "ClusterRoleBinding"}
KUBERNETES_VERSION = "1.30.0"  # the oldest minor still in upstream support when written


def schema(name: str) -> dict[str, Any]:
    return json.loads((require_schemas() / f"{name}.schema.json").read_text(encoding="utf-8"))


def errors(schema_document: dict[str, Any], instance: Any) -> list[str]:
    declared = schema_document.get("$schema", "")
    # the compose spec writes draft-07 without the trailing '#' that jsonschema looks up
    validator_class = (
        jsonschema.Draft4Validator if "draft-04" in declared else jsonschema.Draft7Validator
    )
    validator = validator_class(schema_document)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(instance)
    ]


def test_every_manifest_is_a_known_kind_with_metadata() -> None:
    seen = set()
    for where, document in manifests():
        key = (document.get("apiVersion"), document.get("kind"))
        assert key in CRD_SCHEMAS or key in CORE_KINDS, f"{where}: unexpected {key}"
        metadata = document["metadata"]
        assert isinstance(metadata.get("name"), str) and metadata["name"], where
        namespaced = document["kind"] not in CLUSTER_SCOPED
        assert ("namespace" in metadata) == namespaced, f"{where}: namespace"
        seen.add(key)
    assert seen == set(CRD_SCHEMAS) | CORE_KINDS  # every kind of the set is exercised


def test_custom_resources_validate_against_their_crd_schemas() -> None:
    require_schemas()
    checked = 0
    for where, document in manifests():
        name = CRD_SCHEMAS.get((document["apiVersion"], document["kind"]))
        if name is not None:
            assert errors(schema(name), document) == [], where
            checked += 1
    assert checked >= 9


def test_core_kinds_validate_with_kubernetes_validate() -> None:
    checked = 0
    for _, document in manifests():
        if (document["apiVersion"], document["kind"]) in CORE_KINDS:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
            checked += 1
    assert checked >= 5, checked


def test_validators_catch_broken_documents() -> None:
    """The same checks refuse a broken copy of each shipped kind (they are not vacuous)."""
    require_schemas()
    plugin = next(d for _, d in manifests() if d["kind"] == "KongPlugin")
    assert errors(
        schema(CRD_SCHEMAS[("configuration.konghq.com/v1", "KongPlugin")]),
        {**plugin, "config": "mode=enforce"},
    )
    policy = copy.deepcopy(next(d for _, d in manifests() if d["kind"] == "CiliumNetworkPolicy"))
    policy["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["protocol"] = "TCPX"
    assert errors(schema(CRD_SCHEMAS[("cilium.io/v2", "CiliumNetworkPolicy")]), policy)
    route = copy.deepcopy(next(d for _, d in manifests() if d["kind"] == "HTTPRoute"))
    route["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Prefixx"
    assert errors(schema(CRD_SCHEMAS[("gateway.networking.k8s.io/v1", "HTTPRoute")]), route)
    ingress = copy.deepcopy(next(d for _, d in manifests() if d["kind"] == "Ingress"))
    ingress["spec"]["rules"][0]["http"]["paths"][0]["pathType"] = 7
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ingress, KUBERNETES_VERSION, strict=True)


def test_kong_yaml_validates_against_decks_schema() -> None:
    deck = json.loads(
        (require_schemas() / "kong-declarative" / "kong_json_schema.json").read_text()
    )
    document = load_yaml(KONG_YAML)
    assert errors(deck, document) == []
    broken = copy.deepcopy(document)
    broken["services"][0]["port"] = "notaport"
    assert errors(deck, broken)


def test_compose_file_validates_against_the_compose_spec() -> None:
    spec = json.loads((require_schemas() / "compose" / "compose-spec.json").read_text())
    document = load_yaml(COMPOSE)
    assert errors(spec, document) == []
    assert "name" not in document  # docker-compose 1.x refuses a top-level name
    assert errors(spec, {**document, "services": {"kong": {"bogus_key": 1}}})


def test_check_jsonschema_cli_accepts_every_file(tmp_path: Path) -> None:
    """The CLI the schema notes document, one run per schema; multi-document YAML split."""
    schemas = require_schemas()
    by_schema: dict[Path, list[Path]] = {}
    for index, (where, document) in enumerate(manifests()):
        name = CRD_SCHEMAS.get((document["apiVersion"], document["kind"]))
        if name is not None:
            single = tmp_path / f"{index}-{where.replace('#', '-')}.json"
            single.write_text(json.dumps(document))
            by_schema.setdefault(schemas / f"{name}.schema.json", []).append(single)
    by_schema[schemas / "kong-declarative" / "kong_json_schema.json"] = [KONG_YAML]
    by_schema[schemas / "compose" / "compose-spec.json"] = [COMPOSE]
    cli = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert cli, "check-jsonschema is in the test extra"
    for schema_file, instances in by_schema.items():
        done = subprocess.run(
            # nonunicode: Cilium's and KongConsumer's RE2 patterns (see the schema notes)
            [cli, "--regex-variant", "nonunicode", "--schemafile", str(schema_file)]
            + [str(p) for p in instances],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (schema_file.name, done.stdout, done.stderr)


def test_kustomization_applies_every_manifest_in_the_folder() -> None:
    listed = load_yaml(KUBERNETES / "kustomization.yaml")
    assert listed["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert listed["kind"] == "Kustomization"
    on_disk = sorted(p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed["resources"]) == on_disk

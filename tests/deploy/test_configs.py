"""Every shipped cilium-identity configuration passes the plugin's own validation and, run
by the real plugin server behind the Kong wire harness, gives the decisions docs/kic.md
and the README document; every route that has cilium-identity also has its guard."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import (
    GUARD,
    KONG_YAML,
    PLUGIN,
    ROOT,
    annotation_plugins,
    kic_plugin,
    kic_tags,
    load_yaml,
    manifests,
    of_kind,
    shipped_plugin_configs,
)
from tests.e2e.conftest import running_server
from tests.kit.fake_kube import FakeKubeApi, cilium_endpoint
from tests.kit.fake_relay import FakeRelay, ServerTLS, make_flow
from tests.kit.kong import KongHarness, KongRequest, Outcome
from tests.kubernetes.helpers import FAST
from tests.sources.conftest import TLSMaterial, tls_material

__all__ = ["tls_material"]  # the session fixture, shared with the source tests

CERT_MOUNT = "/etc/secrets/hubble-relay-client-certs/"
CHECKOUT_IP, REPORTS_IP, UNKNOWN_IP, HUBBLE_ONLY_IP = (
    "10.0.1.10",
    "10.0.1.11",
    "10.0.9.9",
    "10.0.2.20",
)
CREDENTIAL = {"id": "cred-1"}


# ---------------------------------------------------------------- the guard goes with it


def plugin_lists(document: Any) -> Iterator[tuple[str, list[Any]]]:
    """Every ``plugins:`` list of a kong.yaml-shaped document (global, service, route)."""
    if not isinstance(document, dict):
        return
    if isinstance(document.get("plugins"), list):
        yield "plugins", document["plugins"]
    for service in document.get("services") or []:
        yield from ((f"service {service.get('name')} {w}", p) for w, p in plugin_lists(service))
    for route in document.get("routes") or []:
        yield from ((f"route {route.get('name')} {w}", p) for w, p in plugin_lists(route))


def guard_problems(document: Any, where: str) -> list[str]:
    problems = []
    for place, plugins in plugin_lists(document):
        names = [p.get("name") for p in plugins if isinstance(p, dict)]
        if PLUGIN in names and GUARD not in names:
            problems.append(f"{where} {place}: {PLUGIN} without {GUARD}")
    if isinstance(document, dict):
        names = annotation_plugins(document)
        if PLUGIN in names and GUARD not in names:
            problems.append(f"{where}: konghq.com/plugins {names} lacks {GUARD}")
    return problems


def documented_yaml() -> Iterator[tuple[str, Any]]:
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for index, block in enumerate(path.read_text(encoding="utf-8").split("```yaml\n")[1:]):
            for document in yaml.safe_load_all(block.split("```", 1)[0]):
                yield f"{path.name} yaml block {index}", document


def test_every_shipped_route_with_the_plugin_has_the_guard() -> None:
    sources: list[tuple[str, Any]] = [("kong.yaml", load_yaml(KONG_YAML)), *manifests()]
    sources += list(documented_yaml())
    problems = [p for where, document in sources for p in guard_problems(document, where)]
    assert problems == []
    annotated = [d for _, d in manifests() if annotation_plugins(d)]
    assert {d["kind"] for d in annotated} == {"Ingress", "HTTPRoute"}
    for document in annotated:
        assert annotation_plugins(document) == ["key-auth", PLUGIN, GUARD]


def test_the_guard_check_sees_a_missing_guard() -> None:
    document = copy.deepcopy(load_yaml(KONG_YAML))
    route = document["services"][0]["routes"][0]
    route["plugins"] = [p for p in route["plugins"] if p["name"] != GUARD]
    assert len(guard_problems(document, "kong.yaml")) == 1
    ingress = copy.deepcopy(of_kind("Ingress")[0])
    ingress["metadata"]["annotations"]["konghq.com/plugins"] = "key-auth,cilium-identity"
    assert len(guard_problems(ingress, "ingress")) == 1


def test_annotated_plugins_resolve_to_kong_plugins() -> None:
    """KIC resolves each annotated name to a KongPlugin in the route's namespace, else a
    KongClusterPlugin; the guard's is the empty config."""
    for document in of_kind("Ingress") + of_kind("HTTPRoute"):
        namespace = document["metadata"]["namespace"]
        for name in annotation_plugins(document):
            local = [
                p
                for p in of_kind("KongPlugin")
                if p["metadata"]["name"] == name and p["metadata"]["namespace"] == namespace
            ]
            cluster = [p for p in of_kind("KongClusterPlugin") if p["metadata"]["name"] == name]
            (chosen,) = local or cluster
            assert chosen["plugin"] == name
    for kind in ("KongPlugin", "KongClusterPlugin"):
        assert kic_plugin(kind, GUARD)["config"] == {}


# ---------------------------------------------------------------- the plugin's validation


def mounted_certificates(config: dict[str, Any], tls: TLSMaterial) -> dict[str, Any]:
    """The config as the Kong pod sees it: the Secret's files at the mount point, here
    written under a temporary folder with the same file names."""
    config = copy.deepcopy(config)
    hubble = config.get("hubble") or {}
    contents = {"ca.crt": tls.ca.cert, "tls.crt": tls.client.cert, "tls.key": tls.client.key}
    for field in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        if field in hubble:
            assert hubble[field].startswith(CERT_MOUNT), field
            name = hubble[field].removeprefix(CERT_MOUNT)
            hubble[field] = tls.write(name, contents[name])
    return config


def validate_cli(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kong_cilium_identity.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_shipped_config_passes_kong_cilium_identity_validate(
    tmp_path: Path, tls_material: TLSMaterial
) -> None:
    done = validate_cli(KONG_YAML)
    assert done.returncode == 0 and done.stdout.startswith("OK "), done.stdout + done.stderr
    configs = [(w, c) for w, c in shipped_plugin_configs() if not w.startswith("kong.yaml")]
    assert {w for w, _ in configs} == {
        "KongPlugin cilium-identity",
        "KongClusterPlugin cilium-identity",
    }
    for index, (where, config) in enumerate(configs):
        path = tmp_path / f"config-{index}.yaml"
        path.write_text(yaml.safe_dump(mounted_certificates(config, tls_material)))
        done = validate_cli(path)
        assert done.returncode == 0, (where, done.stdout, done.stderr)
        assert done.stdout.strip() == "OK config", where


def test_validate_refuses_the_cluster_plugin_without_its_certificates(tmp_path: Path) -> None:
    """The certificate files are read when the config is checked: absent mount, refused."""
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(kic_plugin("KongClusterPlugin", PLUGIN)["config"]))
    done = validate_cli(path)
    assert done.returncode == 1 and "hubble.tls_ca_file" in done.stdout


# ---------------------------------------------------------------- decisions through Kong


def kic_consumer(document: dict[str, Any]) -> dict[str, Any]:
    """The consumer KIC generates from a KongConsumer: its own k8s-* tags, then the
    comma-separated ``konghq.com/tags`` annotation, as Kong tags."""
    tags = kic_tags(document)
    return {
        "id": f"id-{document['username']}",
        "username": document["username"],
        "custom_id": document.get("custom_id"),
        "created_at": 1700000000,
        "tags": tags,
    }


@pytest.fixture(scope="module")
def cluster() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as fake:
        fake.put(
            cilium_endpoint(
                "checkout-7d9f8-x2x5q",
                "shop",
                ipv4=CHECKOUT_IP,
                identity_id=48861,
                labels=["k8s:app=checkout", "k8s:io.kubernetes.pod.namespace=shop"],
            )
        )
        fake.put(
            cilium_endpoint(
                "reports-5c6b7-q8r2m",
                "shop",
                ipv4=REPORTS_IP,
                identity_id=51022,
                labels=["k8s:app=reports", "k8s:io.kubernetes.pod.namespace=shop"],
            )
        )
        yield fake


@pytest.fixture(scope="module")
def relay(tls_material: TLSMaterial) -> Iterator[FakeRelay]:
    tls = ServerTLS(tls_material.server.cert, tls_material.server.key, tls_material.ca.cert)
    with FakeRelay(tls=tls) as fake:
        # a checkout pod the CiliumEndpoint index does not know (e.g. not yet listed)
        fake.publish(
            make_flow(
                HUBBLE_ONLY_IP, 48861, ["k8s:app=checkout", "k8s:io.kubernetes.pod.namespace=shop"]
            )
        )
        yield fake


@pytest.fixture(scope="module")
def kong() -> Iterator[KongHarness]:
    with running_server() as harness:
        yield harness


def pointed_at_fakes(
    config: dict[str, Any], cluster: FakeKubeApi, relay: FakeRelay, tls: TLSMaterial
) -> dict[str, Any]:
    """Only what differs between a cluster and this test: where the API server and Relay
    are, and the certificate mount. Bindings, sources, mode and TLS names stay as shipped."""
    config = mounted_certificates(config, tls)
    config["kubernetes"] = {**config.get("kubernetes", {}), "api_url": cluster.url, **FAST}
    if "hubble" in config:
        config["hubble"]["address"] = relay.address
    return config


def decide(kong: KongHarness, plugin: Any, consumer: dict[str, Any] | None, ip: str) -> Outcome:
    request = KongRequest(
        client_ip=ip, consumer=consumer, credential=CREDENTIAL if consumer else None
    )
    outcome = kong.request(plugin, request)
    deadline = time.monotonic() + 10
    while outcome.status == 503 and time.monotonic() < deadline:  # the index is syncing
        time.sleep(0.05)
        outcome = kong.request(plugin, request)
    return outcome


def reason(outcome: Outcome) -> str:
    if outcome.proxied:
        return "allowed"
    assert not outcome.failed_open
    assert isinstance(outcome.body, dict), outcome.body
    return str(outcome.body["message"])


@pytest.mark.parametrize("kind", ["KongPlugin", "KongClusterPlugin"])
def test_kic_configs_give_the_documented_decisions(
    kind: str, kong: KongHarness, cluster: FakeKubeApi, relay: FakeRelay, tls_material: TLSMaterial
) -> None:
    config = pointed_at_fakes(kic_plugin(kind, PLUGIN)["config"], cluster, relay, tls_material)
    plugin = kong.add_plugin(config)
    consumers = {c["username"]: kic_consumer(c) for c in of_kind("KongConsumer")}
    checkout, reports = consumers["checkout"], consumers["reports"]
    assert reason(decide(kong, plugin, checkout, CHECKOUT_IP)) == "allowed"
    assert reason(decide(kong, plugin, reports, REPORTS_IP)) == "allowed"  # bound by its tag
    assert "identity_mismatch" in reason(decide(kong, plugin, checkout, REPORTS_IP))
    assert "identity_mismatch" in reason(decide(kong, plugin, reports, CHECKOUT_IP))
    assert "identity_unknown" in reason(decide(kong, plugin, checkout, UNKNOWN_IP))
    no_consumer = decide(kong, plugin, None, CHECKOUT_IP)
    assert no_consumer.status == 401 and "no_consumer" in reason(no_consumer)
    hubble_only = reason(decide(kong, plugin, checkout, HUBBLE_ONLY_IP))
    if kind == "KongClusterPlugin":  # Relay over mTLS with the mounted client certificate
        assert hubble_only == "allowed"
    else:
        assert "identity_unknown" in hubble_only


def test_kong_yaml_explain_example_is_true() -> None:
    """The README's `explain` example: checkout's address is allowed, exit code 0."""
    for ip, code in (("172.28.0.10", 0), ("172.28.0.11", 1)):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "kong_cilium_identity.cli",
                "explain",
                "--config",
                str(KONG_YAML),
                "--ip",
                ip,
                "--consumer",
                "checkout",
                "--wait",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == code, done.stdout + done.stderr
        decision = yaml.safe_load(done.stdout)["decision"]
        assert decision["reason"] == ("allowed" if code == 0 else "identity_mismatch")

"""The plugin server with the ``kubernetes`` source, through the Kong wire harness, against
the fake API server serving CiliumEndpoints shaped like the real ones."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import running_server
from tests.kit.fake_kube import (
    FakeKubeApi,
    cilium_endpoint,
    cilium_endpoint_slice,
    cilium_identity,
    core_endpoint,
)
from tests.kit.kong import KongHarness, KongRequest, Outcome
from tests.kubernetes.helpers import FAST, wluo_endpoint

SOCKET = "cilium-identity.socket"
CHECKOUT = {
    "id": "0c1f0b0e-1c1a-4e44-9a39-4a0d4b5a0001",
    "username": "checkout",
    "custom_id": None,
    "created_at": 1700000000,
    "tags": [],
}
CREDENTIAL = {"id": "7a0e1e4c-5d3b-4b1d-8f6e-000000000001", "consumer": {"id": CHECKOUT["id"]}}


@pytest.fixture(scope="module")
def cluster() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as fake:
        fake.put(wluo_endpoint())  # 10.0.1.200, k8s:app=wluo
        fake.put(cilium_endpoint("other", ipv4="10.0.1.201", identity_id=51022))
        fake.put(cilium_endpoint("slow", ipv4="10.0.1.202", state="waiting-for-identity"))
        fake.put(cilium_endpoint("twin-a", ipv4="10.0.1.203", identity_id=48861))
        fake.put(cilium_endpoint("twin-b", ipv4="10.0.1.203", identity_id=48861))
        yield fake


@pytest.fixture(scope="module")
def kong() -> Iterator[KongHarness]:
    with running_server() as harness:
        yield harness


def config(api_url: str) -> dict[str, Any]:
    return {
        "sources": ["kubernetes"],
        "kubernetes": {"api_url": api_url, **FAST},
        "bindings": [{"consumer": "checkout", "selectors": ["k8s:app=wluo"]}],
    }


def call(kong: KongHarness, api_url: str, client_ip: str) -> Outcome:
    request = KongRequest(client_ip=client_ip, consumer=CHECKOUT, credential=CREDENTIAL)
    return kong.request(kong.add_plugin(config(api_url)), request)


def call_synced(kong: KongHarness, api_url: str, client_ip: str) -> Outcome:
    """The source starts syncing with the first plugin instance: retry while it is 503."""
    deadline = time.monotonic() + 10
    while True:
        out = call(kong, api_url, client_ip)
        if out.status != 503 or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


def assert_denied(out: Outcome, status: int, reason: str) -> None:
    assert not out.proxied and not out.failed_open, out.kong_log
    assert out.status == status
    assert isinstance(out.body, dict) and reason in out.body["message"]


def server_said(kong: KongHarness, text: str) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if any(text in line for line in kong.server_output):
            return True
        time.sleep(0.02)
    return False


def test_bound_pod_is_allowed_with_its_identity(kong: KongHarness, cluster: FakeKubeApi) -> None:
    out = call_synced(kong, cluster.url, "10.0.1.200")
    assert out.proxied and out.status == 200 and not out.failed_open, out.kong_log
    assert out.upstream_headers["x-cilium-identity"] == ["48861"]
    assert out.upstream_headers["x-cilium-namespace"] == ["default"]
    assert out.upstream_headers["x-cilium-pod"] == ["wluo-mvz4t"]
    assert out.upstream_headers["x-cilium-service-account"] == ["default"]


def test_other_identity_is_a_mismatch(kong: KongHarness, cluster: FakeKubeApi) -> None:
    assert_denied(call_synced(kong, cluster.url, "10.0.1.201"), 403, "identity_mismatch")


def test_unknown_address(kong: KongHarness, cluster: FakeKubeApi) -> None:
    assert_denied(call_synced(kong, cluster.url, "10.0.9.9"), 403, "identity_unknown")


def test_endpoint_not_ready_is_unknown(kong: KongHarness, cluster: FakeKubeApi) -> None:
    assert_denied(call_synced(kong, cluster.url, "10.0.1.202"), 403, "identity_unknown")
    assert server_said(kong, "waiting-for-identity")


def test_address_claimed_twice_is_ambiguous(kong: KongHarness, cluster: FakeKubeApi) -> None:
    assert_denied(call_synced(kong, cluster.url, "10.0.1.203"), 403, "identity_ambiguous")


def test_not_synced_source_fails_closed_with_503(kong: KongHarness) -> None:
    with FakeKubeApi() as unreachable:
        unreachable.go_down()
        out = call(kong, unreachable.url, "10.0.1.200")
    assert_denied(out, 503, "source_unavailable")
    assert server_said(kong, "not synced")


NS = "k8s:io.kubernetes.pod.namespace"


@pytest.fixture(scope="module")
def slices_cluster() -> Iterator[FakeKubeApi]:
    """A cluster running with CiliumEndpointSlices and no CiliumEndpoint CRD (404)."""
    with FakeKubeApi(served=("ciliumendpointslices", "ciliumidentities")) as fake:
        fake.put(
            cilium_endpoint_slice(
                "ces-default-1",
                "default",
                [
                    core_endpoint("wluo-a", 6704, ipv4="10.0.3.1", ipv6="fd00::3:1"),
                    core_endpoint("other-a", 6705, ipv4="10.0.3.2"),
                ],
            )
        )
        fake.put(cilium_identity(6704, {"k8s:app": "wluo", NS: "default"}))
        fake.put(cilium_identity(6705, {"k8s:app": "other", NS: "default"}))
        yield fake


@pytest.mark.parametrize("client_ip", ["10.0.3.1", "fd00::3:1"])
def test_slices_only_cluster_allows_the_bound_pod(
    kong: KongHarness, slices_cluster: FakeKubeApi, client_ip: str
) -> None:
    out = call_synced(kong, slices_cluster.url, client_ip)
    assert out.proxied and out.status == 200 and not out.failed_open, out.kong_log
    assert out.upstream_headers["x-cilium-identity"] == ["6704"]
    assert out.upstream_headers["x-cilium-namespace"] == ["default"]
    assert out.upstream_headers["x-cilium-pod"] == ["wluo-a"]


def test_slices_only_cluster_denies_another_pod(
    kong: KongHarness, slices_cluster: FakeKubeApi
) -> None:
    assert_denied(call_synced(kong, slices_cluster.url, "10.0.3.2"), 403, "identity_mismatch")


def test_neither_endpoint_resource_is_503_with_a_clear_log(kong: KongHarness) -> None:
    with FakeKubeApi(served=("ciliumidentities",)) as bare:
        out = call(kong, bare.url, "10.0.1.200")
        assert_denied(out, 503, "source_unavailable")
        assert server_said(kong, "neither ciliumendpoints.cilium.io/v2 nor ciliumendpointslices")
        time.sleep(0.3)  # discovery asked again: still refused
        assert_denied(call(kong, bare.url, "10.0.1.200"), 503, "source_unavailable")

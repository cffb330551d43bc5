"""Hubble and agent sources end to end: real plugin server process, Kong wire harness,
fake Relay / fake agent in this process (loopback and a Unix socket)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import running_server
from tests.kit.fake_agent import FakeAgent
from tests.kit.fake_relay import FakeRelay, ServerTLS, make_flow
from tests.kit.kong import KongHarness, KongRequest, Outcome

from .conftest import TLSMaterial

CHECKOUT_LABELS = [
    "k8s:app=checkout",
    "k8s:io.cilium.k8s.policy.serviceaccount=checkout",
    "k8s:io.kubernetes.pod.namespace=shop",
]
# address -> (identity, labels, pod the source reports)
WORKLOADS: dict[str, tuple[int, list[str], str]] = {
    "10.0.1.200": (48861, CHECKOUT_LABELS, "checkout-7d9f8-x2x5q"),
    "10.0.1.201": (51022, ["k8s:app=payments", "k8s:io.kubernetes.pod.namespace=shop"], "pay-1"),
    "10.0.0.11": (1, ["reserved:host"], ""),
    "10.0.0.12": (2, ["reserved:world"], "node-local-dns-7xq"),  # Hubble's caveat
    "10.0.0.13": (6, ["reserved:remote-node"], ""),
    "10.0.0.14": (8, ["reserved:ingress"], ""),
}
CONSUMER = {
    "id": "0c1f0b0e-1c1a-4e44-9a39-4a0d4b5a0001",
    "username": "checkout",
    "custom_id": None,
    "created_at": 1700000000,
    "tags": [],
}
CREDENTIAL = {"id": "7a0e1e4c-5d3b-4b1d-8f6e-000000000001", "consumer": {"id": CONSUMER["id"]}}
NO_CACHE = {"ttl": 0, "negative_ttl": 0, "size": 1024}


@pytest.fixture(scope="module")
def kong() -> Iterator[KongHarness]:
    with running_server() as harness:
        yield harness


class Upstream:
    """A fake Relay or agent holding WORKLOADS, and the plugin config that points at it."""

    def __init__(self, kind: str, scratch: Path) -> None:
        self.kind = kind
        self.relay: FakeRelay | None = None
        self.agent: FakeAgent | None = None
        if kind == "hubble":
            self.relay = FakeRelay().start()
            for address, (identity, labels, pod) in WORKLOADS.items():
                self.relay.publish(make_flow(address, identity, labels, namespace="shop", pod=pod))
        else:
            self.agent = FakeAgent(scratch / "cilium.sock").start()
            for address, (identity, labels, pod) in WORKLOADS.items():
                self.agent.add(address, identity, labels, namespace="shop", pod=pod or None)

    def config(self, **common: Any) -> dict[str, Any]:
        if self.relay is not None:
            record: dict[str, Any] = {
                "address": self.relay.address,
                "reconnect_backoff_max": 0.2,
            }
        else:
            assert self.agent is not None
            record = {"socket_path": str(self.agent.socket_path)}
        return {
            "sources": [self.kind],
            self.kind: record,
            "bindings": [{"consumer": "checkout", "selectors": ["k8s:app=checkout"]}],
            **common,
        }

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.stop()
        if self.agent is not None:
            self.agent.stop()

    def restart(self) -> None:
        if self.relay is not None:
            self.relay.start(self.relay.port)
        if self.agent is not None:
            self.agent.start()

    def stall(self) -> None:
        if self.relay is not None:
            self.relay.mode = "stall"
        if self.agent is not None:
            self.agent.set_mode("stall")


@pytest.fixture(params=["hubble", "agent"])
def upstream(request: pytest.FixtureRequest) -> Iterator[Upstream]:
    with tempfile.TemporaryDirectory(prefix="kci-") as scratch:
        fake = Upstream(request.param, Path(scratch))
        try:
            yield fake
        finally:
            fake.stop()


def call(kong: KongHarness, plugin: Any, client_ip: str) -> Outcome:
    return kong.request(
        plugin, KongRequest(client_ip=client_ip, consumer=CONSUMER, credential=CREDENTIAL)
    )


def assert_denied(out: Outcome, status: int, reason: str) -> None:
    assert not out.proxied and not out.failed_open, out.kong_log
    assert out.status == status
    assert isinstance(out.body, dict) and reason in out.body["message"]


def test_bound_identity_is_allowed(kong: KongHarness, upstream: Upstream) -> None:
    out = call(kong, kong.add_plugin(upstream.config()), "10.0.1.200")
    assert out.proxied and out.status == 200, out.kong_log
    assert out.upstream_headers["x-cilium-identity"] == ["48861"]
    assert out.upstream_headers["x-cilium-namespace"] == ["shop"]
    assert out.upstream_headers["x-cilium-pod"] == ["checkout-7d9f8-x2x5q"]


def test_mismatch_unknown_and_reserved_are_403(kong: KongHarness, upstream: Upstream) -> None:
    plugin = kong.add_plugin(upstream.config())
    assert_denied(call(kong, plugin, "10.0.1.201"), 403, "identity_mismatch")
    assert_denied(call(kong, plugin, "10.0.9.9"), 403, "identity_unknown")
    for reserved_address in ("10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14"):
        assert_denied(call(kong, plugin, reserved_address), 403, "identity_reserved")


def test_source_down_is_503_then_recovers(kong: KongHarness, upstream: Upstream) -> None:
    plugin = kong.add_plugin(upstream.config(lookup_timeout=0.5, cache=NO_CACHE))
    assert call(kong, plugin, "10.0.1.200").proxied
    upstream.stop()
    assert_denied(call(kong, plugin, "10.0.1.200"), 503, "source_unavailable")
    upstream.restart()
    out = call(kong, plugin, "10.0.1.200")
    deadline = time.monotonic() + 10
    while not out.proxied and time.monotonic() < deadline:  # gRPC reconnect backoff
        time.sleep(0.05)
        out = call(kong, plugin, "10.0.1.200")
    assert out.proxied and out.status == 200, out.body


def test_slow_source_is_503_not_a_hang(kong: KongHarness, upstream: Upstream) -> None:
    upstream.stall()
    plugin = kong.add_plugin(upstream.config(lookup_timeout=0.3))
    assert_denied(call(kong, plugin, "10.0.1.200"), 503, "source_unavailable")


def _tls_config(relay: FakeRelay, tls: TLSMaterial, ca: bytes) -> dict[str, Any]:
    return {
        "sources": ["hubble"],
        "hubble": {
            "address": relay.address,
            "tls": True,
            "tls_ca_file": tls.write(f"e2e-ca-{hash(ca)}.pem", ca),
            "tls_cert_file": tls.write("e2e-client.crt", tls.client.cert),
            "tls_key_file": tls.write("e2e-client.key", tls.client.key),
            "tls_server_name": "relay.hubble-relay.cilium.io",
        },
        "bindings": [{"consumer": "checkout", "selectors": ["k8s:app=checkout"]}],
    }


def test_hubble_over_mtls_and_a_wrong_ca(kong: KongHarness, tls_material: TLSMaterial) -> None:
    tls = ServerTLS(tls_material.server.cert, tls_material.server.key, tls_material.ca.cert)
    with FakeRelay(tls=tls) as relay:
        relay.publish(make_flow("10.0.1.200", 48861, CHECKOUT_LABELS))
        good = kong.add_plugin(_tls_config(relay, tls_material, tls_material.ca.cert))
        assert call(kong, good, "10.0.1.200").proxied
        wrong = kong.add_plugin(_tls_config(relay, tls_material, tls_material.other_ca.cert))
        assert_denied(call(kong, wrong, "10.0.1.200"), 503, "source_unavailable")


def test_hubble_match_ports_pins_the_connection(kong: KongHarness) -> None:
    relay = FakeRelay().start()
    try:
        labels = CHECKOUT_LABELS
        relay.publish(
            make_flow("10.0.1.200", 48861, labels, source_port=40000, destination_port=8000)
        )
        plugin = kong.add_plugin(
            {
                "sources": ["hubble"],
                "hubble": {"address": relay.address, "match_ports": True},
                "cache": NO_CACHE,
                "bindings": [{"consumer": "checkout", "selectors": ["k8s:app=checkout"]}],
            }
        )

        def request(client_port: int) -> Outcome:
            return kong.request(
                plugin,
                KongRequest(
                    client_ip="10.0.1.200",
                    client_port=client_port,
                    server_port=8000,
                    consumer=CONSUMER,
                    credential=CREDENTIAL,
                ),
            )

        pinned = request(40000)
        assert pinned.proxied, pinned.body
        assert pinned.pdk_calls[3:6] == [  # after facts (nil here), consumer, credential
            "kong.client.get_ip",
            "kong.client.get_port",
            "kong.request.get_port",
        ]
        assert not request(40001).proxied  # no flow of that connection: nothing proven
    finally:
        relay.stop()

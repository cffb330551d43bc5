"""ClusterMesh: identities of pods in remote clusters, per source.

A remote cluster's identity carries ``k8s:io.cilium.k8s.policy.cluster=<name>`` among its
labels and a cluster id in bits 16-23 of its number; Hubble also names the cluster in
``cluster_name``. A consumer bound to ``k8s:io.cilium.k8s.policy.cluster=east`` must
match exactly the pods of cluster ``east``, whichever source found them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kong_cilium_identity.identity.model import Identity, Lookup, LookupStatus, Peer
from kong_cilium_identity.identity.sources.agent import AgentSource
from kong_cilium_identity.identity.sources.agent import parse_settings as agent_settings
from kong_cilium_identity.identity.sources.hubble_flows import read_lookup_stream
from kong_cilium_identity.identity.sources.static import StaticSource
from kong_cilium_identity.identity.sources.static import parse_settings as static_settings
from kong_cilium_identity.policy.decision import Consumer, Facts, Policy, Reason, decide
from kong_cilium_identity.proto.observer import observer_pb2
from tests.kit.fake_agent import FakeAgent
from tests.kit.fake_relay import make_flow

EAST_ID = (5 << 16) | 1234  # cluster id 5 in bits 16-23
WEST_ID = (6 << 16) | 1234
CHECKOUT = ["k8s:app=checkout", "k8s:io.kubernetes.pod.namespace=shop"]
EAST = [*CHECKOUT, "k8s:io.cilium.k8s.policy.cluster=east"]
WEST = [*CHECKOUT, "k8s:io.cilium.k8s.policy.cluster=west"]
ALICE = Facts(consumer=Consumer(id="c-1", username="alice"), has_credential=True)
EAST_ONLY = Policy.build(
    bindings=[("alice", ["k8s:app=checkout,k8s:io.cilium.k8s.policy.cluster=east"])]
)
ANY_CLUSTER = Policy.build(bindings=[("alice", ["k8s:app=checkout"])])
EAST_IP, WEST_IP = "10.20.0.5", "10.30.0.5"


def assert_cluster_selection(east: Lookup, west: Lookup) -> None:
    assert east.identity is not None and west.identity is not None
    assert (east.identity.id, east.identity.cluster) == (EAST_ID, "east")
    assert (west.identity.id, west.identity.cluster) == (WEST_ID, "west")
    assert decide(ALICE, east, EAST_ONLY).allowed
    west_decision = decide(ALICE, west, EAST_ONLY)
    assert (west_decision.allowed, west_decision.reason) == (False, Reason.IDENTITY_MISMATCH)
    assert decide(ALICE, west, ANY_CLUSTER).allowed  # no cluster term: any cluster


@pytest.fixture
def agent() -> Iterator[tuple[FakeAgent, AgentSource]]:
    with tempfile.TemporaryDirectory(prefix="kci-") as scratch:
        fake = FakeAgent(Path(scratch) / "cilium.sock").start()
        source = AgentSource(agent_settings({"socket_path": str(fake.socket_path)}))
        try:
            yield fake, source
        finally:
            source.close()
            fake.stop()


def test_agent_sees_remote_cluster_pods(agent: tuple[FakeAgent, AgentSource]) -> None:
    """The agent's ipcache holds remote pods (metadata.source ``clustermesh``)."""
    fake, source = agent
    fake.add(EAST_IP, EAST_ID, EAST, namespace="shop", pod="checkout-e", source="clustermesh")
    fake.add(WEST_IP, WEST_ID, WEST, namespace="shop", pod="checkout-w", source="clustermesh")
    east, west = source.lookup(Peer(EAST_IP), 2.0), source.lookup(Peer(WEST_IP), 2.0)
    assert east.identity is not None and east.identity.pod == "checkout-e"
    assert_cluster_selection(east, west)


def _hubble(address: str, identity: int, labels: list[str], cluster: str) -> Lookup:
    # a remote pod seen at Kong's node: no local endpoint id, the pod named from ipcache
    flow = make_flow(address, identity, labels, pod="checkout-x", endpoint_id=0, cluster=cluster)
    return read_lookup_stream([observer_pb2.GetFlowsResponse(flow=flow)], Peer(address), False, 0)


def test_hubble_relay_sees_remote_cluster_pods() -> None:
    assert_cluster_selection(
        _hubble(EAST_IP, EAST_ID, EAST, "east"), _hubble(WEST_IP, WEST_ID, WEST, "west")
    )


def test_hubble_cluster_name_alone_names_the_cluster_but_selectors_need_the_label() -> None:
    lookup = _hubble(EAST_IP, EAST_ID, CHECKOUT, "east")
    assert lookup.identity is not None and lookup.identity.cluster == "east"
    decision = decide(ALICE, lookup, EAST_ONLY)
    assert (decision.allowed, decision.reason) == (False, Reason.IDENTITY_MISMATCH)


def test_hubble_cluster_name_contradicting_the_label_is_not_evidence() -> None:
    lookup = _hubble(EAST_IP, EAST_ID, EAST, "west")
    assert lookup.status is LookupStatus.UNAVAILABLE
    assert not decide(ALICE, lookup, EAST_ONLY).allowed


def test_static_entries_name_remote_cluster_pods() -> None:
    settings = static_settings(
        {
            "entries": [
                {"address": f"{EAST_IP}/32", "id": EAST_ID, "labels": EAST},
                {"address": f"{WEST_IP}/32", "id": WEST_ID, "labels": WEST},
            ]
        }
    )
    source = StaticSource(settings.entries)
    assert_cluster_selection(source.lookup(Peer(EAST_IP), 1.0), source.lookup(Peer(WEST_IP), 1.0))


def test_cluster_comes_from_the_label() -> None:
    assert Identity.build(EAST_ID, EAST).cluster == "east"
    assert Identity.build(EAST_ID, CHECKOUT).cluster is None

"""Reading a GetFlows lookup stream: losses and gaps never allow; one pod identity answers.

Which flows count as evidence, and mixes of identities, are in test_hubble_evidence."""

from __future__ import annotations

import time

from kong_cilium_identity.identity.model import LookupStatus, Peer
from kong_cilium_identity.identity.sources.hubble_flows import read_lookup_stream
from kong_cilium_identity.proto.flow import flow_pb2
from kong_cilium_identity.proto.observer import observer_pb2
from kong_cilium_identity.proto.relay import relay_pb2
from tests.kit.fake_relay import make_flow

NOW = 1_800_000_000.0
APP = ["k8s:app=checkout", "k8s:io.kubernetes.pod.namespace=shop"]
PEER = Peer("10.0.0.5", port=40000, local_port=8000)


def flow(identity: int, at: float, **kwargs: object) -> observer_pb2.GetFlowsResponse:
    made = make_flow(kwargs.pop("source_ip", "10.0.0.5"), identity, APP, at=at, **kwargs)  # type: ignore[arg-type]
    return observer_pb2.GetFlowsResponse(flow=made)


def loss(last: float | None) -> observer_pb2.GetFlowsResponse:
    lost = flow_pb2.LostEvent(num_events_lost=7)
    if last is not None:
        lost.last.FromNanoseconds(int(last * 1e9))
    return observer_pb2.GetFlowsResponse(lost_events=lost)


def node_status(state: int, *names: str) -> observer_pb2.GetFlowsResponse:
    event = relay_pb2.NodeStatusEvent(state_change=state, node_names=list(names))  # type: ignore[arg-type]
    return observer_pb2.GetFlowsResponse(node_status=event)


def read(*responses: observer_pb2.GetFlowsResponse, match_ports: bool = False, age: float = 0):
    return read_lookup_stream(responses, PEER, match_ports, age, now=NOW)


def test_newest_flow_answers_regardless_of_order() -> None:
    result = read(flow(1000, NOW - 5), flow(2, NOW - 3), flow(1000, NOW - 1), flow(5, NOW - 4))
    assert result.status is LookupStatus.FOUND
    assert result.identity is not None and result.identity.id == 1000
    assert result.identity.namespace == "shop"
    assert result.identity.observed_at == NOW - 1


def test_several_pod_identities_are_ambiguous_in_any_order() -> None:
    result = read(flow(1000, NOW - 5), flow(2000, NOW - 1), flow(3000, NOW - 3))
    assert result.status is LookupStatus.AMBIGUOUS
    assert "3 pod identities" in result.detail


def test_flows_from_other_addresses_are_ignored() -> None:
    result = read(flow(1000, NOW, source_ip="10.0.0.6"))
    assert result.status is LookupStatus.UNKNOWN


def test_unknown_identity_zero_is_skipped() -> None:
    assert read(flow(0, NOW)).status is LookupStatus.UNKNOWN
    result = read(flow(1000, NOW - 2), flow(0, NOW))
    assert result.identity is not None and result.identity.id == 1000


def test_node_status_connected_alone_is_unknown() -> None:
    assert read(node_status(relay_pb2.NODE_CONNECTED, "n1")).status is LookupStatus.UNKNOWN


def test_lost_events_without_a_flow_are_unavailable() -> None:
    result = read(node_status(relay_pb2.NODE_CONNECTED, "n1"), loss(NOW))
    assert result.status is LookupStatus.UNAVAILABLE
    assert "lost 7" in result.detail


def test_loss_after_the_newest_flow_is_unavailable() -> None:
    assert read(flow(1000, NOW - 5), loss(NOW - 1)).status is LookupStatus.UNAVAILABLE


def test_loss_at_an_unknown_moment_is_unavailable() -> None:
    assert read(flow(1000, NOW - 5), loss(None)).status is LookupStatus.UNAVAILABLE


def test_loss_before_the_newest_flow_does_not_hide_it() -> None:
    result = read(loss(NOW - 10), flow(1000, NOW - 5))
    assert result.status is LookupStatus.FOUND


def test_unavailable_node_makes_absence_unprovable() -> None:
    result = read(
        node_status(relay_pb2.NODE_CONNECTED, "n1"), node_status(relay_pb2.NODE_UNAVAILABLE, "n2")
    )
    assert result.status is LookupStatus.UNAVAILABLE
    assert "n2" in result.detail


def test_flow_found_despite_an_unavailable_node() -> None:
    result = read(node_status(relay_pb2.NODE_ERROR, "n2"), flow(1000, NOW))
    assert result.status is LookupStatus.FOUND


def test_flows_older_than_max_age_are_unknown() -> None:
    assert read(flow(1000, NOW - 700), age=600).status is LookupStatus.UNKNOWN
    assert read(flow(1000, NOW - 500), age=600).status is LookupStatus.FOUND


def test_pinned_ports_select_the_connection() -> None:
    other_connection = flow(1000, NOW, source_port=40001)
    this_connection = flow(2000, NOW - 3, source_port=40000, destination_port=8000)
    result = read(other_connection, this_connection, match_ports=True)
    assert result.identity is not None and result.identity.id == 2000
    assert read(other_connection, match_ports=True).status is LookupStatus.UNKNOWN


def test_unparseable_labels_are_unavailable_not_unknown() -> None:
    bad = flow(1000, NOW)
    bad.flow.source.labels.append("")
    assert read(bad).status is LookupStatus.UNAVAILABLE


def test_ipv4_mapped_source_matches_the_folded_peer() -> None:
    result = read(flow(1000, time.time(), source_ip="::ffff:10.0.0.5"))
    assert result.status is LookupStatus.FOUND

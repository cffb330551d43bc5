"""The committed Hubble protos: generated modules in sync, wire bytes as Hubble sends them."""

from __future__ import annotations

from pathlib import Path

from kong_cilium_identity.identity.model import Peer
from kong_cilium_identity.identity.sources.hubble_flows import lookup_request
from kong_cilium_identity.proto import build
from kong_cilium_identity.proto.flow import flow_pb2
from kong_cilium_identity.proto.observer import observer_pb2, observer_pb2_grpc

# `hubble observe --from-ip 10.0.0.5 --last 1` (research §1.7).
HUBBLE_OBSERVE_FROM_IP_LAST_1 = bytes.fromhex("0801320a0a0831302e302e302e35")


def test_generated_modules_match_the_protos(tmp_path: Path) -> None:
    produced = build.generate(tmp_path)
    committed = build.generated_files()
    assert sorted(p.relative_to(tmp_path) for p in produced) == sorted(committed)
    for relative in committed:
        fresh = (tmp_path / relative).read_text()
        assert (build.PROTO_ROOT / relative).read_text() == fresh, (
            f"{relative} drifted from its .proto; run python -m kong_cilium_identity.proto.build"
        )


def test_hubble_cli_request_bytes() -> None:
    request = observer_pb2.GetFlowsRequest(
        number=1, first=False, follow=False, whitelist=[flow_pb2.FlowFilter(source_ip=["10.0.0.5"])]
    )
    assert request.SerializeToString() == HUBBLE_OBSERVE_FROM_IP_LAST_1


def _without_blacklist(request: observer_pb2.GetFlowsRequest) -> bytes:
    """The request minus the non-evidence blacklist (tested in test_hubble_evidence)."""
    parsed = observer_pb2.GetFlowsRequest.FromString(request.SerializeToString())
    assert len(parsed.blacklist) == 2
    parsed.ClearField("blacklist")
    return parsed.SerializeToString()


def test_default_lookup_is_the_cli_request_plus_the_blacklist() -> None:
    request = lookup_request(Peer("10.0.0.5", port=51234, local_port=8000), 1, match_ports=False)
    assert _without_blacklist(request) == HUBBLE_OBSERVE_FROM_IP_LAST_1


def test_pinned_lookup_adds_the_ports_to_the_same_filter() -> None:
    request = lookup_request(Peer("10.0.0.5", port=51234, local_port=8000), 1, match_ports=True)
    parsed = observer_pb2.GetFlowsRequest.FromString(request.SerializeToString())
    assert len(parsed.whitelist) == 1
    selected = parsed.whitelist[0]
    assert list(selected.source_ip) == ["10.0.0.5"]
    assert list(selected.source_port) == ["51234"]
    assert list(selected.destination_port) == ["8000"]


def test_pinning_needs_both_ports() -> None:
    request = lookup_request(Peer("10.0.0.5", port=51234), 1, match_ports=True)
    assert _without_blacklist(request) == HUBBLE_OBSERVE_FROM_IP_LAST_1


def test_service_path_is_observer_getflows() -> None:
    descriptor = observer_pb2.DESCRIPTOR.services_by_name["Observer"]
    assert descriptor.full_name == "observer.Observer"
    assert descriptor.methods_by_name["GetFlows"].server_streaming
    assert hasattr(observer_pb2_grpc, "ObserverStub")


def test_field_numbers_follow_cilium() -> None:
    def numbers(message: type) -> dict[str, int]:
        return {f.name: f.number for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]

    assert numbers(observer_pb2.GetFlowsRequest) == {
        "number": 1, "follow": 3, "blacklist": 5, "whitelist": 6,
        "since": 7, "until": 8, "first": 9,
    }  # fmt: skip
    assert numbers(observer_pb2.GetFlowsResponse) == {
        "flow": 1, "node_status": 2, "lost_events": 3, "node_name": 1000, "time": 1001,
    }  # fmt: skip
    assert numbers(flow_pb2.Endpoint) == {
        "ID": 1, "identity": 2, "namespace": 3, "labels": 4, "pod_name": 5,
        "workloads": 6, "cluster_name": 7,
    }  # fmt: skip
    flow_fields = numbers(flow_pb2.Flow)
    assert (flow_fields["source"], flow_fields["destination"], flow_fields["IP"]) == (8, 9, 5)
    assert (flow_fields["time"], flow_fields["l4"], flow_fields["is_reply"]) == (1, 6, 26)
    filter_fields = numbers(flow_pb2.FlowFilter)
    assert filter_fields["source_identity"] == 19
    assert filter_fields["traffic_direction"] == 30
    assert (filter_fields["source_port"], filter_fields["destination_port"]) == (13, 14)

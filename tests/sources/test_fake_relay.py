"""The fake Relay honours GetFlows the way Relay does (so source tests mean something)."""

from __future__ import annotations

import grpc
import pytest

from kong_cilium_identity.proto.flow import flow_pb2
from kong_cilium_identity.proto.observer import observer_pb2, observer_pb2_grpc
from tests.kit.fake_relay import FakeRelay, load_jsonl, make_flow

from .conftest import need_hubble_fixtures

T0 = 1_800_000_000.0


def _flows(relay: FakeRelay, **request: object) -> list[observer_pb2.GetFlowsResponse]:
    with grpc.insecure_channel(relay.address) as channel:
        stub = observer_pb2_grpc.ObserverStub(channel)
        return list(stub.GetFlows(observer_pb2.GetFlowsRequest(**request), timeout=5))


def _sources(responses: list[observer_pb2.GetFlowsResponse]) -> list[tuple[str, int]]:
    return [
        (r.flow.IP.source, r.flow.l4.TCP.source_port)
        for r in responses
        if r.WhichOneof("response_types") == "flow"
    ]


@pytest.fixture
def populated(relay: FakeRelay) -> FakeRelay:
    for index, (address, node) in enumerate(
        [("10.0.0.5", "n1"), ("10.0.0.6", "n1"), ("10.0.1.7", "n2"), ("10.0.0.5", "n2")]
    ):
        relay.publish(
            make_flow(address, 1000 + index, source_port=40000 + index, at=T0 + index, node=node)
        )
    return relay


def test_node_status_comes_first(populated: FakeRelay) -> None:
    responses = _flows(populated)
    assert responses[0].WhichOneof("response_types") == "node_status"
    assert list(responses[0].node_status.node_names) == ["n1", "n2"]


def test_number_is_per_node(populated: FakeRelay) -> None:
    assert _sources(_flows(populated, number=1)) == [("10.0.0.6", 40001), ("10.0.0.5", 40003)]
    assert _sources(_flows(populated, number=1, first=True)) == [
        ("10.0.0.5", 40000),
        ("10.0.1.7", 40002),
    ]


def test_source_ip_exact_and_cidr(populated: FakeRelay) -> None:
    exact = flow_pb2.FlowFilter(source_ip=["10.0.0.5"])
    assert len(_sources(_flows(populated, whitelist=[exact]))) == 2
    cidr = flow_pb2.FlowFilter(source_ip=["10.0.0.0/24"])
    assert len(_sources(_flows(populated, whitelist=[cidr]))) == 3


def test_or_across_filters_and_within_one(populated: FakeRelay) -> None:
    both = flow_pb2.FlowFilter(source_ip=["10.0.0.5"], source_port=["40003"])
    assert _sources(_flows(populated, whitelist=[both])) == [("10.0.0.5", 40003)]
    either = [
        flow_pb2.FlowFilter(source_ip=["10.0.0.6"]),
        flow_pb2.FlowFilter(source_identity=[1002]),
    ]
    assert _sources(_flows(populated, whitelist=either)) == [
        ("10.0.0.6", 40001),
        ("10.0.1.7", 40002),
    ]


def test_blacklist_is_subtracted(populated: FakeRelay) -> None:
    result = _flows(
        populated,
        whitelist=[flow_pb2.FlowFilter(source_ip=["10.0.0.5"])],
        blacklist=[flow_pb2.FlowFilter(source_port=["40000"])],
    )
    assert _sources(result) == [("10.0.0.5", 40003)]


def test_since_until(populated: FakeRelay) -> None:
    request = observer_pb2.GetFlowsRequest()
    request.since.FromNanoseconds(int((T0 + 1) * 1e9))
    request.until.FromNanoseconds(int((T0 + 2) * 1e9))
    with grpc.insecure_channel(populated.address) as channel:
        responses = list(observer_pb2_grpc.ObserverStub(channel).GetFlows(request, timeout=5))
    assert _sources(responses) == [("10.0.0.6", 40001), ("10.0.1.7", 40002)]


def test_pod_direction_and_destination_filters() -> None:
    relay = FakeRelay(load_jsonl(need_hubble_fixtures()[0])).start()
    try:
        pods = _flows(relay, whitelist=[flow_pb2.FlowFilter(source_pod=["bookinfo/reviews-"])])
        assert pods[1:] and all(r.flow.source.namespace == "bookinfo" for r in pods[1:])
        egress = _flows(relay, whitelist=[flow_pb2.FlowFilter(traffic_direction=[flow_pb2.EGRESS])])
        assert egress[1:] and all(r.flow.traffic_direction == flow_pb2.EGRESS for r in egress[1:])
        towards = _flows(relay, whitelist=[flow_pb2.FlowFilter(destination_ip=["10.0.2.16"])])
        assert towards[1:] and all(r.flow.IP.destination == "10.0.2.16" for r in towards[1:])
    finally:
        relay.stop()


def test_counts_requests(populated: FakeRelay) -> None:
    _flows(populated)
    _flows(populated, number=1)
    assert populated.request_count == 2


def test_event_type_and_reply_filters_follow_hubble() -> None:
    """``reply`` matches only a known ``is_reply`` (a dropped flow counts as not a reply);
    ``event_type`` matches the type, and the sub-type only when asked to."""
    l7_reply = make_flow("10.0.0.5", 2, event_type=129, is_reply=True, at=T0)
    l7_request = make_flow("10.0.0.5", 2, event_type=129, is_reply=False, at=T0 + 1)
    unknown = make_flow("10.0.0.5", 2, event_type=4, is_reply=None, at=T0 + 2)
    dropped = make_flow(
        "10.0.0.5", 2, is_reply=None, verdict=flow_pb2.DROPPED, at=T0 + 3, source_port=1
    )
    relay = FakeRelay(
        [observer_pb2.GetFlowsResponse(flow=f) for f in (l7_reply, l7_request, unknown, dropped)]
    )
    with relay:
        replies = _flows(relay, whitelist=[flow_pb2.FlowFilter(reply=[True])])
        not_replies = _flows(relay, whitelist=[flow_pb2.FlowFilter(reply=[False])])
        l7 = _flows(relay, whitelist=[flow_pb2.FlowFilter(event_type=[{"type": 129}])])
        sub = flow_pb2.EventTypeFilter(type=4, match_sub_type=True, sub_type=3)
        trace_sub_3 = _flows(relay, whitelist=[flow_pb2.FlowFilter(event_type=[sub])])
    assert [r.flow.time.seconds for r in replies[1:]] == [int(T0)]
    assert [r.flow.time.seconds for r in not_replies[1:]] == [int(T0) + 1, int(T0) + 3]
    assert len(l7[1:]) == 2
    assert trace_sub_3[1:] == []

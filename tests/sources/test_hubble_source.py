"""The hubble source against the fake Relay: answers, failures, TLS and the follow stream."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kong_cilium_identity.errors import ConfigError
from kong_cilium_identity.identity.model import Lookup, LookupStatus, Peer
from kong_cilium_identity.identity.sources.hubble import (
    CHANNELS,
    HubbleSource,
    parse_settings,
)
from kong_cilium_identity.identity.sources.hubble_follow import FlowFollower, WarmFlows
from kong_cilium_identity.proto.observer import observer_pb2
from tests.kit.fake_relay import FakeRelay, ServerTLS, make_flow

from .conftest import TLSMaterial

APP = ["k8s:app=checkout", "k8s:io.kubernetes.pod.namespace=shop"]
SERVER_NAME = "relay.hubble-relay.cilium.io"


def eventually(check: Callable[[], bool], within: float = 10.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return check()


@pytest.fixture
def make_source() -> Iterator[Callable[..., HubbleSource]]:
    made: list[HubbleSource] = []

    def make(**record: Any) -> HubbleSource:
        source = HubbleSource(parse_settings({"reconnect_backoff_max": 0.2, **record}))
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()


def test_found_unknown_and_pod_fields(relay: FakeRelay, make_source: Any) -> None:
    relay.publish(make_flow("10.0.0.5", 48861, APP, namespace="shop", pod="checkout-1"))
    source = make_source(address=relay.address)
    found = source.lookup(Peer("10.0.0.5"), 2.0)
    assert found.status is LookupStatus.FOUND and found.identity is not None
    assert (found.identity.id, found.identity.namespace, found.identity.pod) == (
        48861,
        "shop",
        "checkout-1",
    )
    assert source.lookup(Peer("10.0.0.6"), 2.0).status is LookupStatus.UNKNOWN
    assert source.lookup(Peer("not-an-ip"), 2.0).status is LookupStatus.UNKNOWN


@pytest.mark.parametrize(
    ("mode", "code"), [("fail", "UNAVAILABLE"), ("garbage", "INTERNAL"), ("stall", "DEADLINE")]
)
def test_failures_are_unavailable(relay: FakeRelay, make_source: Any, mode: str, code: str) -> None:
    relay.publish(make_flow("10.0.0.5", 48861, APP))
    relay.mode = mode
    result = make_source(address=relay.address).lookup(Peer("10.0.0.5"), 0.3)
    assert result.status is LookupStatus.UNAVAILABLE
    assert code in result.detail


def test_lost_events_without_a_flow_are_unavailable(relay: FakeRelay, make_source: Any) -> None:
    relay.lost_events = 12
    result = make_source(address=relay.address).lookup(Peer("10.0.0.5"), 2.0)
    assert result.status is LookupStatus.UNAVAILABLE


def test_old_flows_are_not_trusted(relay: FakeRelay, make_source: Any) -> None:
    relay.publish(make_flow("10.0.0.5", 48861, APP, at=time.time() - 3600))
    source = make_source(address=relay.address, max_flow_age=600)
    assert source.lookup(Peer("10.0.0.5"), 2.0).status is LookupStatus.UNKNOWN


def test_match_ports_pins_the_connection(relay: FakeRelay, make_source: Any) -> None:
    relay.publish(make_flow("10.0.0.5", 1111, APP, source_port=40001, destination_port=8000))
    relay.publish(make_flow("10.0.0.5", 2222, APP, source_port=40002, destination_port=8000))
    source = make_source(address=relay.address, match_ports=True)
    result = source.lookup(Peer("10.0.0.5", port=40001, local_port=8000), 2.0)
    assert result.identity is not None and result.identity.id == 1111
    sent = relay.requests[-1].whitelist[0]
    assert (list(sent.source_port), list(sent.destination_port)) == (["40001"], ["8000"])


def test_down_relay_is_unavailable_then_recovers(make_source: Any) -> None:
    relay = FakeRelay().start()
    relay.publish(make_flow("10.0.0.5", 48861, APP))
    port = relay.port
    source = make_source(address=relay.address)
    assert source.lookup(Peer("10.0.0.5"), 1.0).status is LookupStatus.FOUND
    relay.stop()
    assert source.lookup(Peer("10.0.0.5"), 0.5).status is LookupStatus.UNAVAILABLE
    relay.start(port)
    try:
        assert eventually(lambda: source.lookup(Peer("10.0.0.5"), 0.5).status is LookupStatus.FOUND)
    finally:
        relay.stop()


def test_sources_with_equal_connection_settings_share_one_channel(
    relay: FakeRelay, make_source: Any
) -> None:
    before = len(CHANNELS)
    first = make_source(address=relay.address)
    make_source(address=relay.address, match_ports=True)
    assert len(CHANNELS) == before + 1
    first.close()
    assert len(CHANNELS) == before + 1


def _tls_relay(tls: TLSMaterial, mutual: bool) -> FakeRelay:
    server = ServerTLS(tls.server.cert, tls.server.key, tls.ca.cert if mutual else None)
    relay = FakeRelay(tls=server).start()
    relay.publish(make_flow("10.0.0.5", 48861, APP))
    return relay


def _tls_record(tls: TLSMaterial, relay: FakeRelay, ca: bytes, client: bool) -> dict[str, Any]:
    record: dict[str, Any] = {
        "address": relay.address,
        "tls": True,
        "tls_ca_file": tls.write(f"ca-{hash(ca)}.pem", ca),
        "tls_server_name": SERVER_NAME,
    }
    if client:
        record["tls_cert_file"] = tls.write("client.crt", tls.client.cert)
        record["tls_key_file"] = tls.write("client.key", tls.client.key)
    return record


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_tls_and_mtls(tls_material: TLSMaterial, make_source: Any, mutual: bool) -> None:
    relay = _tls_relay(tls_material, mutual)
    try:
        record = _tls_record(tls_material, relay, tls_material.ca.cert, client=mutual)
        assert make_source(**record).lookup(Peer("10.0.0.5"), 3.0).status is LookupStatus.FOUND
    finally:
        relay.stop()


def test_mtls_without_a_client_certificate_is_refused(
    tls_material: TLSMaterial, make_source: Any
) -> None:
    relay = _tls_relay(tls_material, mutual=True)
    try:
        record = _tls_record(tls_material, relay, tls_material.ca.cert, client=False)
        result = make_source(**record).lookup(Peer("10.0.0.5"), 2.0)
        assert result.status is LookupStatus.UNAVAILABLE
    finally:
        relay.stop()


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_wrong_ca_is_refused(tls_material: TLSMaterial, make_source: Any, mutual: bool) -> None:
    relay = _tls_relay(tls_material, mutual)
    try:
        record = _tls_record(tls_material, relay, tls_material.other_ca.cert, client=mutual)
        result = make_source(**record).lookup(Peer("10.0.0.5"), 2.0)
        assert result.status is LookupStatus.UNAVAILABLE
        assert relay.request_count == 0
    finally:
        relay.stop()


def test_wrong_server_name_is_refused(tls_material: TLSMaterial, make_source: Any) -> None:
    relay = _tls_relay(tls_material, mutual=False)
    try:
        record = _tls_record(tls_material, relay, tls_material.ca.cert, client=False)
        record["tls_server_name"] = "relay.example.org"
        result = make_source(**record).lookup(Peer("10.0.0.5"), 2.0)
        assert result.status is LookupStatus.UNAVAILABLE
    finally:
        relay.stop()


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"tls": True, "tls_cert_file": "/dev/null"}, "go together"),
        ({"tls": False, "tls_server_name": "x.hubble-relay.cilium.io"}, "tls is false"),
        ({"tls": True, "tls_ca_file": "/nonexistent/ca.pem"}, "tls_ca_file"),
        ({"follow": True}, "follow_destination"),
    ],
)
def test_bad_settings(record: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings(record)


def test_defaults_are_hashable_and_stable() -> None:
    assert parse_settings({}) == parse_settings({"address": None, "flows": None})
    assert hash(parse_settings({"follow": True, "follow_destination_pods": ["kong/"]}))


def _follower_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cilium-identity-hubble-follow"]


def test_follow_prewarms_lookups_and_stops_on_close(relay: FakeRelay) -> None:
    before = len(_follower_threads())
    source = HubbleSource(
        parse_settings(
            {
                "address": relay.address,
                "follow": True,
                "follow_destination_ips": ["10.0.0.100"],
                "reconnect_backoff_max": 0.2,
            }
        )
    )
    try:
        assert len(_follower_threads()) == before + 1
        assert eventually(lambda: relay.request_count == 1)
        follow_request = relay.requests[0]
        assert follow_request.follow
        assert list(follow_request.whitelist[0].destination_ip) == ["10.0.0.100"]
        relay.publish(make_flow("10.0.0.5", 48861, APP))
        relay.publish(make_flow("10.0.0.9", 999, APP, destination_ip="10.0.0.200"))
        warm = source.warm
        assert warm is not None
        assert eventually(lambda: len(warm) == 1)
        result: Lookup = source.lookup(Peer("10.0.0.5"), 1.0)
        assert result.identity is not None and result.identity.id == 48861
        assert relay.request_count == 1  # answered from the warm cache, no lookup call
        relay.report_loss(3)
        assert eventually(lambda: len(warm) == 0)
        # The cache was dropped, so the lookup asks Relay, which reports the loss too.
        assert source.lookup(Peer("10.0.0.5"), 1.0).status is LookupStatus.UNAVAILABLE
        assert relay.request_count == 2
        relay.lost_events = 0
        assert source.lookup(Peer("10.0.0.5"), 1.0).status is LookupStatus.FOUND
    finally:
        source.close()
    assert len(_follower_threads()) == before


def test_follow_reconnects_after_relay_restart(make_source: Any) -> None:
    relay = FakeRelay().start()
    port = relay.port
    source = make_source(address=relay.address, follow=True, follow_destination_pods=["kong/"])
    try:
        assert eventually(lambda: relay.request_count == 1)
        relay.stop()
        relay.start(port)
        assert eventually(lambda: relay.request_count == 2)
        relay.publish(make_flow("10.0.0.5", 48861, APP, destination_ip="10.0.0.100"))
        relay.publish(make_flow("10.0.0.7", 777, APP))
        warm = source.warm
        assert warm is not None
        assert eventually(lambda: len(warm) == 2)
    finally:
        relay.stop()


def test_follow_stream_interruption_drops_the_warm_cache() -> None:
    """Flows sent while the follow stream was down are never replayed, so an address
    reused in that gap must not be answered from what was seen before it."""
    warm = WarmFlows(ttl=600, size=16)
    calls: list[observer_pb2.GetFlowsRequest] = []

    def start_stream(request: observer_pb2.GetFlowsRequest) -> _FakeCall:
        calls.append(request)
        if len(calls) == 1:
            return _FakeCall(_broken_stream(make_flow("10.0.0.5", 48861, APP)))
        return _FakeCall(iter(()))

    follower = FlowFollower(start_stream, observer_pb2.GetFlowsRequest(follow=True), warm, 0.05)
    follower.start()
    try:
        assert eventually(lambda: len(calls) >= 2)
        assert len(warm) == 0
        assert warm.get(Peer("10.0.0.5"), match_ports=False) is None
    finally:
        follower.stop()


class _FakeCall:
    """A gRPC streaming call: iterable, and cancellable by the follower's stop()."""

    def __init__(self, responses: Iterator[observer_pb2.GetFlowsResponse]) -> None:
        self._responses = responses

    def __iter__(self) -> Iterator[observer_pb2.GetFlowsResponse]:
        return self._responses

    def cancel(self) -> None:
        return None


def _broken_stream(flow: Any) -> Iterator[observer_pb2.GetFlowsResponse]:
    yield observer_pb2.GetFlowsResponse(flow=flow)
    raise ConnectionError("stream broke")

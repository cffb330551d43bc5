"""Which flows may say who is behind an address: table-driven from the shapes real
clusters produce (issue 10), through the lookup reader and the decision core.

The synthetic flows copy the facts of the real captures field for field:

- a kind node's router address ``10.244.0.148`` is the source of flows with identities
  1 (host), 6 (remote-node), 3418 (productpage) and 16370 (ratings) within ~2 s, none of
  which names a pod (``pod_name`` empty, ``source.ID`` 0), seen at ``TO_ENDPOINT`` and
  ``TO_OVERLAY``;
- productpage at ``10.156.2.8`` (identity 57816) has 35 flows, 34 of them L7 replies
  (``Type: L7``, ``event_type.type`` 129, ``is_reply: true``) that report the sender as
  ``reserved:world`` (id 2) while naming the pod.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from kong_cilium_identity.identity.model import Lookup, LookupStatus, Peer
from kong_cilium_identity.identity.sources.hubble_flows import lookup_request, read_lookup_stream
from kong_cilium_identity.policy.decision import Consumer, Facts, Policy, Reason, decide
from kong_cilium_identity.proto.flow import flow_pb2
from kong_cilium_identity.proto.observer import observer_pb2
from tests.kit.fake_relay import FakeRelay, make_flow, wanted

NOW = 1_800_000_000.0
NODE = "10.244.0.148"
PRODUCTPAGE_IP = "10.156.2.8"
HOST = ["reserved:host"]
REMOTE_NODE = ["reserved:remote-node"]
WORLD = ["reserved:world"]
PRODUCTPAGE = [
    "k8s:app=productpage",
    "k8s:io.cilium.k8s.policy.cluster=default",
    "k8s:io.cilium.k8s.policy.serviceaccount=bookinfo-productpage",
    "k8s:io.kubernetes.pod.namespace=default",
    "k8s:version=v1",
]
RATINGS = [
    "k8s:app=ratings",
    "k8s:io.cilium.k8s.policy.cluster=default",
    "k8s:io.cilium.k8s.policy.serviceaccount=bookinfo-ratings",
    "k8s:io.kubernetes.pod.namespace=default",
    "k8s:version=v1",
]
ALICE = Facts(consumer=Consumer(id="c-1", username="alice"), has_credential=True)
BOUND_TO_PRODUCTPAGE = Policy.build(bindings=[("alice", ["k8s:app=productpage"])])
BOUND_TO_RATINGS = Policy.build(bindings=[("alice", ["k8s:app=ratings"])])


def node_flow(identity: int, labels: Sequence[str], at: float, point: int) -> flow_pb2.Flow:
    """A flow from the node's router address: no pod name, no endpoint id."""
    return make_flow(NODE, identity, labels, endpoint_id=0, at=at, point=point, is_reply=None)


def node_address_flows() -> list[flow_pb2.Flow]:
    """The four identities the node address wore within ~2 s, repeated, oldest first."""
    shapes = [
        (1, HOST, flow_pb2.TO_ENDPOINT),
        (6, REMOTE_NODE, flow_pb2.TO_OVERLAY),
        (3418, PRODUCTPAGE, flow_pb2.TO_ENDPOINT),
        (16370, RATINGS, flow_pb2.TO_OVERLAY),
    ]
    return [
        node_flow(identity, labels, NOW - 2 + index * 0.1, point)
        for index, (identity, labels, point) in enumerate(shapes * 5)
    ]


def productpage_flows() -> list[flow_pb2.Flow]:
    """1 L3/L4 flow with the pod's identity, then 34 L7 replies tagged world (newest)."""
    pod = {"namespace": "default", "pod": "productpage-v1-6b746f74dc-8x5cs"}
    flows = [make_flow(PRODUCTPAGE_IP, 57816, PRODUCTPAGE, at=NOW - 30, endpoint_id=1712, **pod)]
    for index in range(34):
        flows.append(
            make_flow(
                PRODUCTPAGE_IP,
                2,
                WORLD,
                at=NOW - 29 + index * 0.5,
                flow_type=flow_pb2.L7,
                event_type=129,
                is_reply=True,
                source_port=9080,
                destination_port=41000 + index,
                point=flow_pb2.UNKNOWN_POINT,
                **pod,
            )
        )
    return flows


def relay_answer(
    flows: Sequence[flow_pb2.Flow], peer: Peer, number: int
) -> list[observer_pb2.GetFlowsResponse]:
    """What Relay sends for our lookup request: its filters, then the last ``number``."""
    request = lookup_request(peer, number, match_ports=False)
    chosen = [f for f in flows if wanted(f, request)][-number:]
    return [observer_pb2.GetFlowsResponse(flow=f) for f in chosen]


def read(flows: Sequence[flow_pb2.Flow], address: str, age: float = 0) -> Lookup:
    responses = [observer_pb2.GetFlowsResponse(flow=f) for f in flows]
    return read_lookup_stream(responses, Peer(address), False, age, now=NOW)


# -- the node address ---------------------------------------------------------------


@pytest.mark.parametrize("number", [1, 2, 3, 4, 5, 10, 20, 50])
@pytest.mark.parametrize("policy", [BOUND_TO_PRODUCTPAGE, BOUND_TO_RATINGS], ids=["pp", "ratings"])
def test_node_address_is_never_allowed_whatever_flows_is(number: int, policy: Policy) -> None:
    flows = node_address_flows()
    for end in range(1, len(flows) + 1):  # every moment of the capture
        answer = relay_answer(flows[:end], Peer(NODE), number)
        lookup = read_lookup_stream(answer, Peer(NODE), False, 0, now=NOW)
        decision = decide(ALICE, lookup, policy)
        assert not decision.allowed, (number, end, lookup)
        window_ids = {r.flow.source.identity for r in answer}
        if window_ids & {3418, 16370}:
            assert lookup.status is LookupStatus.AMBIGUOUS, (number, end, lookup)
            assert decision.reason is Reason.IDENTITY_AMBIGUOUS
        else:
            assert decision.reason is Reason.IDENTITY_RESERVED


@pytest.mark.parametrize(
    ("identities", "expected"),
    [
        ((3418,), LookupStatus.AMBIGUOUS),  # a pod identity on a flow naming no endpoint
        ((16370,), LookupStatus.AMBIGUOUS),
        ((1, 3418), LookupStatus.AMBIGUOUS),
        ((6, 16370), LookupStatus.AMBIGUOUS),
        ((3418, 16370), LookupStatus.AMBIGUOUS),
        ((1, 6, 3418, 16370), LookupStatus.AMBIGUOUS),
        ((1,), LookupStatus.FOUND),  # reserved:host: found, denied as reserved
        ((1, 6), LookupStatus.FOUND),  # one node seen as host and as remote-node
    ],
)
def test_node_address_table(identities: tuple[int, ...], expected: LookupStatus) -> None:
    labels = {1: HOST, 6: REMOTE_NODE, 3418: PRODUCTPAGE, 16370: RATINGS}
    for order in itertools.permutations(identities):
        flows = [
            node_flow(i, labels[i], NOW - 2 + n * 0.5, flow_pb2.TO_ENDPOINT)
            for n, i in enumerate(order)
        ]
        lookup = read(flows, NODE)
        assert lookup.status is expected, (order, lookup)
        if expected is LookupStatus.FOUND:
            assert lookup.identity is not None and lookup.identity.id == order[-1]
        else:
            assert decide(ALICE, lookup, BOUND_TO_PRODUCTPAGE).reason is Reason.IDENTITY_AMBIGUOUS


def test_a_pod_identity_needs_a_flow_that_names_the_endpoint() -> None:
    by_endpoint_id = make_flow(NODE, 3418, PRODUCTPAGE, endpoint_id=1712, at=NOW)
    by_pod_name = make_flow(NODE, 3418, PRODUCTPAGE, endpoint_id=0, pod="productpage-1", at=NOW)
    by_nothing = make_flow(NODE, 3418, PRODUCTPAGE, endpoint_id=0, at=NOW)
    assert read([by_endpoint_id], NODE).status is LookupStatus.FOUND
    assert read([by_pod_name], NODE).status is LookupStatus.FOUND
    assert read([by_nothing], NODE).status is LookupStatus.AMBIGUOUS
    # one unbound flow spoils the bound ones: the address carries other traffic too
    assert read([by_nothing, by_pod_name], NODE).status is LookupStatus.AMBIGUOUS


# -- pods and their L7 replies --------------------------------------------------------


@pytest.mark.parametrize("number", [1, 2, 5, 35, 50])
def test_productpage_keeps_its_identity_despite_l7_replies(number: int) -> None:
    flows = productpage_flows()
    assert sum(f.source.identity == 2 for f in flows) == 34
    answer = relay_answer(flows, Peer(PRODUCTPAGE_IP), number)
    assert [r.flow.source.identity for r in answer] == [57816]  # Relay leaves the replies out
    lookup = read_lookup_stream(answer, Peer(PRODUCTPAGE_IP), False, 0, now=NOW)
    assert lookup.status is LookupStatus.FOUND and lookup.identity is not None
    assert (lookup.identity.id, lookup.identity.pod) == (57816, "productpage-v1-6b746f74dc-8x5cs")
    assert decide(ALICE, lookup, BOUND_TO_PRODUCTPAGE).allowed


def test_client_rechecks_l7_replies_a_server_did_not_filter() -> None:
    """An older Relay (or one that ignores the blacklist) sends every flow."""
    lookup = read(productpage_flows(), PRODUCTPAGE_IP)
    assert lookup.status is LookupStatus.FOUND and lookup.identity is not None
    assert lookup.identity.id == 57816


def test_only_l7_replies_are_no_evidence() -> None:
    lookup = read(productpage_flows()[1:], PRODUCTPAGE_IP)
    assert lookup.status is LookupStatus.UNKNOWN
    assert "34 l7-reply" in lookup.detail


@pytest.mark.parametrize(
    ("flow_type", "event_type", "is_reply", "evidence"),
    [
        (flow_pb2.L7, 129, True, False),  # L7 reply
        (flow_pb2.L7, 129, None, False),  # L7, direction unknown
        (flow_pb2.L7, 129, False, True),  # L7 request: the proxy's conntrack identity
        (flow_pb2.L3_L4, 129, True, False),  # event type says L7 even if Type does not
        (flow_pb2.L7, 4, True, False),  # Type says L7 even if the event type does not
        (flow_pb2.L3_L4, 4, True, True),  # L3/L4 replies carry the endpoint's identity
        (flow_pb2.L3_L4, 4, None, True),
        (flow_pb2.L3_L4, 4, False, True),
    ],
)
def test_flow_kinds_table(
    flow_type: int, event_type: int, is_reply: bool | None, evidence: bool
) -> None:
    made = make_flow(
        PRODUCTPAGE_IP,
        57816,
        PRODUCTPAGE,
        pod="productpage-1",
        at=NOW,
        flow_type=flow_type,
        event_type=event_type,
        is_reply=is_reply,
    )
    lookup = read([made], PRODUCTPAGE_IP)
    assert (lookup.status is LookupStatus.FOUND) is evidence, lookup


@pytest.mark.parametrize("verdict", [flow_pb2.DROPPED, flow_pb2.ERROR])
def test_dropped_flows_are_no_evidence(verdict: int) -> None:
    """A spoofed source dropped by source-IP verification names the spoofer, not the owner."""
    spoofed = make_flow(PRODUCTPAGE_IP, 48861, RATINGS, pod="ratings-1", at=NOW, verdict=verdict)
    real = make_flow(PRODUCTPAGE_IP, 57816, PRODUCTPAGE, pod="productpage-1", at=NOW - 1)
    lookup = read([real, spoofed], PRODUCTPAGE_IP)
    assert lookup.identity is not None and lookup.identity.id == 57816
    request = lookup_request(Peer(PRODUCTPAGE_IP), 1, match_ports=False)
    assert not wanted(spoofed, request) and wanted(real, request)


# -- mixes at a pod address -------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        # (identity, labels) oldest first -> status, id when found
        ([(57816, PRODUCTPAGE), (16370, RATINGS)], (LookupStatus.AMBIGUOUS, None)),  # IP reuse
        ([(57816, PRODUCTPAGE), (1, HOST)], (LookupStatus.AMBIGUOUS, None)),
        ([(6, REMOTE_NODE), (57816, PRODUCTPAGE)], (LookupStatus.AMBIGUOUS, None)),
        ([(7, ["reserved:kube-apiserver"]), (57816, PRODUCTPAGE)], (LookupStatus.AMBIGUOUS, None)),
        ([(2, WORLD), (57816, PRODUCTPAGE)], (LookupStatus.FOUND, 57816)),  # ipcache lag
        ([(5, ["reserved:init"]), (57816, PRODUCTPAGE)], (LookupStatus.FOUND, 57816)),  # new pod
        ([(57816, PRODUCTPAGE), (2, WORLD)], (LookupStatus.FOUND, 2)),  # newest says world
        ([(57816, PRODUCTPAGE), (57816, PRODUCTPAGE)], (LookupStatus.FOUND, 57816)),
    ],
)
def test_mixed_evidence_table(
    history: list[tuple[int, list[str]]], expected: tuple[LookupStatus, int | None]
) -> None:
    flows = [
        make_flow(PRODUCTPAGE_IP, i, labels, pod="p" if i >= 256 else "", at=NOW - 10 + n)
        for n, (i, labels) in enumerate(history)
    ]
    lookup = read(flows, PRODUCTPAGE_IP)
    status, identity_id = expected
    assert lookup.status is status, lookup
    if identity_id is not None:
        assert lookup.identity is not None and lookup.identity.id == identity_id


def test_evidence_older_than_max_flow_age_does_not_conflict() -> None:
    old_pod = make_flow(PRODUCTPAGE_IP, 16370, RATINGS, pod="ratings-1", at=NOW - 700)
    new_pod = make_flow(PRODUCTPAGE_IP, 57816, PRODUCTPAGE, pod="productpage-1", at=NOW - 5)
    assert read([old_pod, new_pod], PRODUCTPAGE_IP, age=0).status is LookupStatus.AMBIGUOUS
    fresh = read([old_pod, new_pod], PRODUCTPAGE_IP, age=600)
    assert fresh.identity is not None and fresh.identity.id == 57816


def test_lookup_request_blacklists_what_can_never_be_evidence() -> None:
    request = lookup_request(Peer(NODE), 50, match_ports=False)
    parsed = observer_pb2.GetFlowsRequest.FromString(request.SerializeToString())
    assert [list(f.source_ip) for f in parsed.whitelist] == [[NODE]]
    l7_replies, undelivered = parsed.blacklist
    assert [(e.type, e.match_sub_type) for e in l7_replies.event_type] == [(129, False)]
    assert list(l7_replies.reply) == [True]
    assert set(undelivered.verdict) == {flow_pb2.DROPPED, flow_pb2.ERROR}


# -- the same rules end to end through the fake Relay ----------------------------------


@pytest.mark.parametrize("number", [1, 50])
def test_node_address_and_productpage_through_relay(number: int) -> None:
    from kong_cilium_identity.identity.sources.hubble import HubbleSource, parse_settings

    with FakeRelay(
        [observer_pb2.GetFlowsResponse(flow=f) for f in node_address_flows() + productpage_flows()]
    ) as relay:
        source = HubbleSource(
            parse_settings({"address": relay.address, "flows": number, "max_flow_age": 0})
        )
        try:
            node = source.lookup(Peer(NODE), 5.0)
            pod = source.lookup(Peer(PRODUCTPAGE_IP), 5.0)
        finally:
            source.close()
    assert node.status is LookupStatus.AMBIGUOUS  # the newest node flow is ratings (16370)
    assert pod.status is LookupStatus.FOUND and pod.identity is not None
    assert pod.identity.id == 57816


# -- the follow cache judges by the same rules ----------------------------------------


def test_follow_cache_applies_the_evidence_rules() -> None:
    from kong_cilium_identity.identity.sources.hubble_follow import WarmFlows

    warm = WarmFlows(ttl=30, size=100)
    for made in node_address_flows() + productpage_flows():
        made.time.FromNanoseconds(int((NOW - 10 + made.time.nanos / 1e9) * 1e9))
        warm.record(made)
    node = warm.get(Peer(NODE), match_ports=False, now=NOW)
    pod = warm.get(Peer(PRODUCTPAGE_IP), match_ports=False, now=NOW)
    assert node is not None and node.status is LookupStatus.AMBIGUOUS
    assert pod is not None and pod.identity is not None and pod.identity.id == 57816
    # the L7 replies were never recorded under their connection either
    replies = Peer(PRODUCTPAGE_IP, port=9080, local_port=41000)
    assert warm.get(replies, match_ports=True, now=NOW) is None


def test_follow_cache_forgets_evidence_older_than_its_ttl_or_max_age() -> None:
    from kong_cilium_identity.identity.sources.hubble_follow import WarmFlows

    warm = WarmFlows(ttl=30, size=100)
    warm.record(make_flow(PRODUCTPAGE_IP, 16370, RATINGS, pod="ratings-1", at=NOW - 40))
    warm.record(make_flow(PRODUCTPAGE_IP, 57816, PRODUCTPAGE, pod="productpage-1", at=NOW - 5))
    kept = warm.get(Peer(PRODUCTPAGE_IP), match_ports=False, now=NOW)
    assert kept is not None and kept.identity is not None and kept.identity.id == 57816
    assert warm.get(Peer(PRODUCTPAGE_IP), match_ports=False, max_age=2, now=NOW) is None
    warm.record(make_flow(PRODUCTPAGE_IP, 16370, RATINGS, pod="ratings-1", at=NOW - 1))
    mixed = warm.get(Peer(PRODUCTPAGE_IP), match_ports=False, now=NOW)
    assert mixed is not None and mixed.status is LookupStatus.AMBIGUOUS

"""Hubble flows to identities: the GetFlows requests we send and how answers are read.

Pure functions over the generated messages; the gRPC plumbing lives in ``hubble.py``.

Rules for reading a lookup stream (every flow in it passed Relay's whitelist):

- the newest flow whose IP source is the peer (and, when pinned, whose L4 ports are the
  connection's) and whose source endpoint carries an identity wins;
- Hubble resolves ``namespace``/``pod_name`` in userspace while the identity is the
  datapath's, so they can disagree (a ``reserved:world`` source with a pod name). The
  identity id wins: pod-level fields are dropped for reserved and node-local ids;
- lost events make absence unprovable, and make a flow older than the loss unprovable as
  the newest: both give UNAVAILABLE, never an allow on lost data. So do unreachable nodes
  when no flow was found (the flow may sit on that node).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from kong_cilium_identity.identity import reserved
from kong_cilium_identity.identity.address import parse_address
from kong_cilium_identity.identity.model import Identity, Lookup, Peer
from kong_cilium_identity.labels import LabelError
from kong_cilium_identity.proto.flow import flow_pb2
from kong_cilium_identity.proto.observer import observer_pb2
from kong_cilium_identity.proto.relay import relay_pb2

NAME = "hubble"

_POD_CLASSES = (reserved.IdentityClass.CLUSTER, reserved.IdentityClass.WELL_KNOWN)
_TROUBLED_NODE_STATES = (relay_pb2.NODE_UNAVAILABLE, relay_pb2.NODE_ERROR)


def lookup_request(peer: Peer, number: int, match_ports: bool) -> observer_pb2.GetFlowsRequest:
    """The last ``number`` flows (per node, through Relay) sent from the peer's address,
    pinned to the connection's ports when ``match_ports`` and both ports are known."""
    selected = flow_pb2.FlowFilter(source_ip=[peer.address])
    if match_ports and peer.port is not None and peer.local_port is not None:
        selected.source_port.append(str(peer.port))
        selected.destination_port.append(str(peer.local_port))
    return observer_pb2.GetFlowsRequest(number=number, whitelist=[selected])


def follow_request(
    destination_pods: Sequence[str],
    destination_ips: Sequence[str],
    destination_ports: Sequence[str],
) -> observer_pb2.GetFlowsRequest:
    """A live stream of flows towards Kong's own pods (one filter: its fields AND)."""
    towards_kong = flow_pb2.FlowFilter(
        destination_pod=list(destination_pods),
        destination_ip=list(destination_ips),
        destination_port=list(destination_ports),
    )
    return observer_pb2.GetFlowsRequest(follow=True, whitelist=[towards_kong])


def seconds(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def identity_from_endpoint(endpoint: flow_pb2.Endpoint, observed_at: float) -> Identity | None:
    """The identity of a flow endpoint; None when Hubble did not know it (id 0).

    Raises LabelError for a label that does not parse.
    """
    if endpoint.identity == 0:
        return None
    is_pod = reserved.classify(endpoint.identity) in _POD_CLASSES
    return Identity.build(
        endpoint.identity,
        endpoint.labels,
        namespace=endpoint.namespace if is_pod else None,
        pod=endpoint.pod_name if is_pod else None,
        cluster=endpoint.cluster_name or None,
        source=NAME,
        observed_at=observed_at,
    )


def ports(flow: flow_pb2.Flow) -> tuple[int, int] | None:
    """(source port, destination port) for TCP, UDP and SCTP flows."""
    protocol = flow.l4.WhichOneof("protocol")
    if protocol in ("TCP", "UDP", "SCTP"):
        layer = getattr(flow.l4, protocol)
        return int(layer.source_port), int(layer.destination_port)
    return None


def sent_by(flow: flow_pb2.Flow, peer: Peer, match_ports: bool) -> bool:
    """True when the flow's IP source is the peer (and its ports the connection's)."""
    try:
        if str(parse_address(flow.IP.source)) != peer.address:
            return False
    except ValueError:
        return False
    if match_ports and peer.port is not None and peer.local_port is not None:
        return ports(flow) == (peer.port, peer.local_port)
    return True


@dataclass
class _Reading:
    newest: Identity | None = None
    newest_at: float = float("-inf")
    lost_after: float | None = None  # latest moment covered by a loss report
    lost_count: int = 0
    troubled_nodes: tuple[str, ...] = ()
    unreadable: int = 0


def read_lookup_stream(
    responses: Iterable[observer_pb2.GetFlowsResponse],
    peer: Peer,
    match_ports: bool,
    max_flow_age: float,
    now: float | None = None,
) -> Lookup:
    """Consume a finished (non-follow) GetFlows stream into one answer.

    gRPC errors raised while iterating propagate to the caller.
    """
    reading = _Reading()
    for response in responses:
        kind = response.WhichOneof("response_types")
        if kind == "flow":
            _take_flow(reading, response.flow, peer, match_ports)
        elif kind == "lost_events":
            _take_loss(reading, response)
        elif kind == "node_status" and response.node_status.state_change in _TROUBLED_NODE_STATES:
            reading.troubled_nodes += tuple(response.node_status.node_names)
    return _conclude(reading, peer, max_flow_age, time.time() if now is None else now)


def _take_flow(reading: _Reading, flow: flow_pb2.Flow, peer: Peer, match_ports: bool) -> None:
    if not sent_by(flow, peer, match_ports):
        return
    at = seconds(flow.time)
    if at < reading.newest_at:
        return
    try:
        identity = identity_from_endpoint(flow.source, at)
    except LabelError:
        reading.unreadable += 1
        return
    if identity is not None:
        reading.newest, reading.newest_at = identity, at


def _take_loss(reading: _Reading, response: observer_pb2.GetFlowsResponse) -> None:
    lost = response.lost_events
    reading.lost_count += lost.num_events_lost or 1
    if lost.HasField("last"):
        covered = seconds(lost.last)
    elif response.HasField("time"):
        covered = seconds(response.time)
    else:
        covered = float("inf")  # a loss at an unknown moment may hide anything
    reading.lost_after = max(covered, reading.lost_after or float("-inf"))


def _conclude(reading: _Reading, peer: Peer, max_flow_age: float, now: float) -> Lookup:
    where = f"flows from {peer.address}"
    if reading.newest is None:
        if reading.lost_count:
            return Lookup.unavailable(
                NAME, f"no {where}, and Hubble lost {reading.lost_count} event(s)"
            )
        if reading.troubled_nodes:
            nodes = ", ".join(sorted(set(reading.troubled_nodes)))
            return Lookup.unavailable(NAME, f"no {where}; nodes not answering: {nodes}")
        if reading.unreadable:
            return Lookup.unavailable(NAME, f"{where} carry labels that do not parse")
        return Lookup.unknown(NAME, f"no {where} with a known identity")
    if reading.lost_after is not None and reading.lost_after >= reading.newest_at:
        return Lookup.unavailable(
            NAME,
            f"Hubble lost {reading.lost_count} event(s) after the newest of the {where}",
        )
    age = now - reading.newest_at
    if max_flow_age > 0 and age > max_flow_age:
        return Lookup.unknown(NAME, f"newest of the {where} is {age:.0f}s old")
    return Lookup.found(reading.newest, NAME)

"""Hubble flows to identities: the GetFlows requests we send and how answers are read.

Pure functions over the generated messages; the gRPC plumbing lives in ``hubble.py``,
which flows count as evidence and what several of them prove in ``hubble_evidence.py``.

Rules for reading a lookup stream:

- Relay is asked for flows from the peer, minus L7 replies and dropped flows (blacklist);
  every flow received is checked again here (its IP source is the peer, its ports the
  connection's when pinned, and it is evidence at all);
- evidence older than ``max_flow_age`` is ignored (an IP can be reused by another pod);
  the fresh evidence answers FOUND or AMBIGUOUS (``hubble_evidence.Evidence``);
- Hubble resolves ``namespace``/``pod_name`` in userspace while the identity is the
  datapath's, so they can disagree (a ``reserved:world`` source with a pod name). The
  identity id wins: pod-level fields are dropped for reserved and node-local ids;
- lost events make absence unprovable, and make a flow older than the loss unprovable as
  the newest: both give UNAVAILABLE, never an allow on lost data. So do unreachable nodes
  when no flow was found (the flow may sit on that node).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp

from kong_cilium_identity.identity.address import parse_address
from kong_cilium_identity.identity.model import Identity, Lookup, Peer
from kong_cilium_identity.identity.sources.hubble_evidence import (
    L7_EVENT_TYPE,
    NAME,
    Evidence,
    Witness,
    is_pod_id,
    names_endpoint,
    rejection,
)
from kong_cilium_identity.policy.labels import LabelError
from kong_cilium_identity.proto.flow import flow_pb2
from kong_cilium_identity.proto.observer import observer_pb2
from kong_cilium_identity.proto.relay import relay_pb2

__all__ = ["NAME", "follow_request", "lookup_request", "read_lookup_stream"]

log = logging.getLogger(__name__)

_TROUBLED_NODE_STATES = (relay_pb2.NODE_UNAVAILABLE, relay_pb2.NODE_ERROR)


def not_evidence() -> list[flow_pb2.FlowFilter]:
    """Blacklist entries for flows that can never be evidence, so ``number`` counts only
    flows that can: L7 replies (``event_type`` 129 with ``is_reply`` true) and flows that
    were dropped or errored. The client checks every flow again (``rejection``)."""
    return [
        flow_pb2.FlowFilter(
            event_type=[flow_pb2.EventTypeFilter(type=L7_EVENT_TYPE)], reply=[True]
        ),
        flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED, flow_pb2.ERROR]),
    ]


def lookup_request(peer: Peer, number: int, match_ports: bool) -> observer_pb2.GetFlowsRequest:
    """The last ``number`` evidence flows (per node, through Relay) sent from the peer's
    address, pinned to the connection's ports when ``match_ports`` and both are known."""
    selected = flow_pb2.FlowFilter(source_ip=[peer.address])
    if match_ports and peer.port is not None and peer.local_port is not None:
        selected.source_port.append(str(peer.port))
        selected.destination_port.append(str(peer.local_port))
    return observer_pb2.GetFlowsRequest(
        number=number, whitelist=[selected], blacklist=not_evidence()
    )


def follow_request(
    destination_pods: Sequence[str],
    destination_ips: Sequence[str],
    destination_ports: Sequence[str],
) -> observer_pb2.GetFlowsRequest:
    """A live stream of evidence flows towards Kong's own pods (one filter: fields AND)."""
    towards_kong = flow_pb2.FlowFilter(
        destination_pod=list(destination_pods),
        destination_ip=list(destination_ips),
        destination_port=list(destination_ports),
    )
    return observer_pb2.GetFlowsRequest(
        follow=True, whitelist=[towards_kong], blacklist=not_evidence()
    )


def seconds(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def identity_from_endpoint(endpoint: flow_pb2.Endpoint, observed_at: float) -> Identity | None:
    """The identity of a flow endpoint; None when Hubble did not know it (id 0).

    Raises LabelError for a label that does not parse, or when the endpoint's
    ``cluster_name`` contradicts its identity's cluster label.
    """
    if endpoint.identity == 0:
        return None
    is_pod = is_pod_id(endpoint.identity)
    identity = Identity.build(
        endpoint.identity,
        endpoint.labels,
        namespace=endpoint.namespace if is_pod else None,
        pod=endpoint.pod_name if is_pod else None,
        source=NAME,
        observed_at=observed_at,
    )
    cluster = endpoint.cluster_name or None
    if cluster is not None and identity.cluster not in (None, cluster):
        raise LabelError(
            f"cluster_name {cluster!r} contradicts the identity's cluster {identity.cluster!r}"
        )
    if cluster is not None and identity.cluster is None:
        identity = dataclasses.replace(identity, cluster=cluster)
    return identity


def witness_of(flow: flow_pb2.Flow) -> Witness | str:
    """The flow as evidence for its source address, or why it is not.

    Raises LabelError (see ``identity_from_endpoint``)."""
    reason = rejection(flow)
    if reason is not None:
        return reason
    at = seconds(flow.time)
    identity = identity_from_endpoint(flow.source, at)
    if identity is None:
        return "no-identity"
    return Witness(identity, at, names_endpoint(flow.source))


def ports(flow: flow_pb2.Flow) -> tuple[int, int] | None:
    """(source port, destination port) for TCP, UDP and SCTP flows."""
    protocol = flow.l4.WhichOneof("protocol")
    if protocol in ("TCP", "UDP", "SCTP"):
        layer = getattr(flow.l4, protocol)
        return int(layer.source_port), int(layer.destination_port)
    return None


def source_address(flow: flow_pb2.Flow) -> str | None:
    try:
        return str(parse_address(flow.IP.source))
    except ValueError:
        return None


def sent_by(flow: flow_pb2.Flow, peer: Peer, match_ports: bool) -> bool:
    """True when the flow's IP source is the peer (and its ports the connection's)."""
    if source_address(flow) != peer.address:
        return False
    if match_ports and peer.port is not None and peer.local_port is not None:
        return ports(flow) == (peer.port, peer.local_port)
    return True


@dataclass
class _Reading:
    evidence: Evidence = field(default_factory=Evidence)
    stale_newest: float | None = None  # newest evidence older than max_flow_age
    lost_after: float | None = None  # latest moment covered by a loss report
    lost_count: int = 0
    troubled_nodes: tuple[str, ...] = ()
    unreadable: int = 0
    ignored: dict[str, int] = field(default_factory=dict)


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
    now = time.time() if now is None else now
    oldest = now - max_flow_age if max_flow_age > 0 else float("-inf")
    for response in responses:
        kind = response.WhichOneof("response_types")
        if kind == "flow":
            _take_flow(reading, response.flow, peer, match_ports, oldest)
        elif kind == "lost_events":
            _take_loss(reading, response)
        elif kind == "node_status" and response.node_status.state_change in _TROUBLED_NODE_STATES:
            reading.troubled_nodes += tuple(response.node_status.node_names)
    if reading.unreadable:
        log.warning(
            "hubble: ignored %d flow(s) from %s whose labels or cluster do not read",
            reading.unreadable,
            peer.address,
        )
    return _conclude(reading, peer, now)


def _take_flow(
    reading: _Reading, flow: flow_pb2.Flow, peer: Peer, match_ports: bool, oldest: float
) -> None:
    if not sent_by(flow, peer, match_ports):
        reading.ignored["other-sender"] = reading.ignored.get("other-sender", 0) + 1
        return
    try:
        witness = witness_of(flow)
    except LabelError:
        reading.unreadable += 1
        return
    if isinstance(witness, str):
        reading.ignored[witness] = reading.ignored.get(witness, 0) + 1
        return
    if witness.at < oldest:
        reading.stale_newest = max(witness.at, reading.stale_newest or float("-inf"))
        return
    reading.evidence.add(witness)


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


def _conclude(reading: _Reading, peer: Peer, now: float) -> Lookup:
    where = f"flows from {peer.address}"
    newest = reading.evidence.newest
    if newest is None:
        if reading.lost_count:
            return Lookup.unavailable(
                NAME, f"no {where}, and Hubble lost {reading.lost_count} event(s)"
            )
        if reading.troubled_nodes:
            nodes = ", ".join(sorted(set(reading.troubled_nodes)))
            return Lookup.unavailable(NAME, f"no {where}; nodes not answering: {nodes}")
        if reading.unreadable:
            return Lookup.unavailable(NAME, f"{where} carry labels that do not parse")
        if reading.stale_newest is not None:
            age = now - reading.stale_newest
            return Lookup.unknown(NAME, f"newest of the {where} is {age:.0f}s old")
        ignored = ", ".join(f"{n} {why}" for why, n in sorted(reading.ignored.items()))
        return Lookup.unknown(
            NAME,
            f"no {where} with a known identity" + (f" (ignored: {ignored})" if ignored else ""),
        )
    if reading.lost_after is not None and reading.lost_after >= newest.at:
        return Lookup.unavailable(
            NAME,
            f"Hubble lost {reading.lost_count} event(s) after the newest of the {where}",
        )
    return reading.evidence.conclude(peer.address)

"""Which Hubble flows may say who is behind an address, and what several of them prove.

A flow's ``source.identity`` is the identity the datapath (or Cilium's L7 proxy) gave the
packet, not a statement about who owns ``IP.source``. Real captures show where the two
part ways, so a flow is *evidence* for its source address only when:

- it was not dropped (a dropped packet, e.g. a spoofed source refused by source-IP
  verification, proves nothing about the address it claimed);
- it is not an L7 (proxy, ``event_type`` 129, ``Type: L7``) reply. The proxy reports the
  sender of a response as ``reserved:world`` while still naming the pod, so an L7 reply
  would turn a pod into world. L7 flows count only when ``is_reply`` is known and false;
  L3/L4 replies carry the endpoint's real identity and count;
- its identity is known (not 0) and its labels parse.

A pod identity (cluster-global or well-known id) is *bound* to the address only when the
flow's source names an endpoint: a local endpoint id (``source.ID``) or a pod name. A pod
identity on a flow that names neither travelled with the packet (tunnel metadata) from an
address Cilium does not know as that pod's: a node or SNAT address carrying pod traffic.

Together, the fresh evidence for one address is ``AMBIGUOUS`` when it holds an unbound
pod identity, more than one pod identity, or a pod identity next to a node identity
(host 1, remote-node 6, kube-apiserver 7, remote-node scoped ids). Otherwise the newest
flow answers: a pod identity beside older ``world``/``init`` flows (a new pod before
every node knew it) is that pod; a newest reserved identity is reserved (denied).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kong_cilium_identity.identity import reserved
from kong_cilium_identity.identity.model import Identity, Lookup
from kong_cilium_identity.proto.flow import flow_pb2

NAME = "hubble"
L7_EVENT_TYPE = 129
NODE_IDS = frozenset({1, 6, 7})  # reserved:host, reserved:remote-node, reserved:kube-apiserver
REMOTE_NODE_SCOPE = 2  # identities 2<<24 .. 3<<24-1: remote-node scoped (node selectors)
_POD_CLASSES = (reserved.IdentityClass.CLUSTER, reserved.IdentityClass.WELL_KNOWN)
_NOT_DELIVERED = (flow_pb2.DROPPED, flow_pb2.ERROR)


def is_pod_id(identity_id: int) -> bool:
    return reserved.classify(identity_id) in _POD_CLASSES


def is_node_id(identity_id: int) -> bool:
    return identity_id in NODE_IDS or identity_id >> 24 == REMOTE_NODE_SCOPE


def is_l7(flow: flow_pb2.Flow) -> bool:
    return flow.Type == flow_pb2.L7 or flow.event_type.type == L7_EVENT_TYPE


def rejection(flow: flow_pb2.Flow) -> str | None:
    """Why this flow cannot say who sent it, or None when it can (if its identity is
    known: see ``hubble_flows.witness_of``)."""
    if flow.verdict in _NOT_DELIVERED:
        return "dropped"
    if is_l7(flow) and (not flow.HasField("is_reply") or flow.is_reply.value):
        return "l7-reply"
    return None


def names_endpoint(endpoint: flow_pb2.Endpoint) -> bool:
    return endpoint.ID != 0 or bool(endpoint.pod_name)


@dataclass(frozen=True, slots=True)
class Witness:
    """One evidence flow: the identity it reports, when, and whether the address is bound."""

    identity: Identity
    at: float
    bound: bool


@dataclass
class Evidence:
    """The evidence flows seen for one address (or one connection)."""

    newest: Witness | None = None
    pods: dict[int, Witness] = field(default_factory=dict)  # bound pod ids, newest each
    unbound: dict[int, Witness] = field(default_factory=dict)
    nodes: dict[int, Witness] = field(default_factory=dict)
    others: dict[int, Witness] = field(default_factory=dict)

    def add(self, witness: Witness) -> None:
        identity_id = witness.identity.id
        if is_pod_id(identity_id):
            group = self.pods if witness.bound else self.unbound
        elif is_node_id(identity_id):
            group = self.nodes
        else:
            group = self.others
        current = group.get(identity_id)
        if current is None or current.at <= witness.at:
            group[identity_id] = witness
        if self.newest is None or self.newest.at <= witness.at:
            self.newest = witness

    def prune(self, oldest: float) -> None:
        """Forget witnesses older than ``oldest`` (wall-clock seconds)."""
        for group in (self.pods, self.unbound, self.nodes, self.others):
            for identity_id in [i for i, w in group.items() if w.at < oldest]:
                del group[identity_id]
        if self.newest is not None and self.newest.at < oldest:
            kept = [
                w for g in (self.pods, self.unbound, self.nodes, self.others) for w in g.values()
            ]
            self.newest = max(kept, key=lambda w: w.at, default=None)

    def since(self, oldest: float) -> Evidence:
        """A copy holding only the witnesses from ``oldest`` on."""
        view = Evidence()
        for group in (self.pods, self.unbound, self.nodes, self.others):
            for witness in group.values():
                if witness.at >= oldest:
                    view.add(witness)
        return view

    def __bool__(self) -> bool:
        return self.newest is not None

    def conclude(self, address: str) -> Lookup:
        """FOUND (the newest witness) or AMBIGUOUS; UNKNOWN when there is no evidence."""
        if self.newest is None:
            return Lookup.unknown(NAME, f"no evidence for {address}")
        if self.unbound:
            return Lookup.ambiguous(
                NAME,
                f"{address} sent flows with pod identity {_ids(self.unbound)} that name no "
                "endpoint: a node or SNAT address carrying pod traffic",
            )
        if len(self.pods) > 1:
            return Lookup.ambiguous(
                NAME,
                f"flows from {address} carry {len(self.pods)} pod identities {_ids(self.pods)}",
            )
        if self.pods and self.nodes:
            return Lookup.ambiguous(
                NAME,
                f"flows from {address} carry pod identity {_ids(self.pods)} and node "
                f"identity {_ids(self.nodes)}",
            )
        return Lookup.found(self.newest.identity, NAME)


def _ids(group: Iterable[int]) -> str:
    return ", ".join(reserved.describe(i) if not is_pod_id(i) else str(i) for i in sorted(group))

"""What a source knows about the workload behind an address, and how sure it is."""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kong_cilium_identity.identity.address import IPAddress, parse_address
from kong_cilium_identity.policy.labels import Label, parse_label

NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
SERVICE_ACCOUNT_LABEL = "io.cilium.k8s.policy.serviceaccount"
CLUSTER_LABEL = "io.cilium.k8s.policy.cluster"


@dataclass(frozen=True, slots=True)
class Identity:
    """A Cilium security identity as seen for one address.

    ``labels`` are the identity labels (``k8s:app=checkout``); the pod name and UID are
    not identity labels (many pods share one identity) and live in their own fields.
    """

    id: int
    labels: frozenset[Label]
    namespace: str | None = None
    pod: str | None = None
    pod_uid: str | None = None
    service_account: str | None = None
    cluster: str | None = None
    source: str = ""
    observed_at: float = field(default_factory=time.time)

    @classmethod
    def build(
        cls,
        id: int,
        labels: Iterable[str],
        *,
        namespace: str | None = None,
        pod: str | None = None,
        pod_uid: str | None = None,
        service_account: str | None = None,
        cluster: str | None = None,
        source: str = "",
        observed_at: float | None = None,
    ) -> Identity:
        """Make an identity from label strings, filling namespace, service account and
        cluster from Cilium's well-known labels when they are not given."""
        parsed = frozenset(parse_label(text) for text in labels)
        by_key = {label.key: label.value for label in parsed if label.source == "k8s"}
        return cls(
            id=id,
            labels=parsed,
            namespace=namespace or by_key.get(NAMESPACE_LABEL) or None,
            pod=pod or None,
            pod_uid=pod_uid or None,
            service_account=service_account or by_key.get(SERVICE_ACCOUNT_LABEL) or None,
            cluster=cluster or by_key.get(CLUSTER_LABEL) or None,
            source=source,
            observed_at=time.time() if observed_at is None else observed_at,
        )

    def label_strings(self) -> list[str]:
        """Labels in Cilium's sorted ``source:key=value`` text form."""
        return sorted(str(label) for label in self.labels)


class LookupStatus(enum.Enum):
    """How a lookup ended. Only FOUND carries an identity."""

    FOUND = "found"
    UNKNOWN = "unknown"  # the source answered: it knows no identity for this address
    AMBIGUOUS = "ambiguous"  # several live identities claim the address, or sources disagree
    UNAVAILABLE = "unavailable"  # error, timeout, not synced, stale: nothing can be proven


@dataclass(frozen=True, slots=True)
class Lookup:
    """The answer of a source (or of the resolver) for one address."""

    status: LookupStatus
    identity: Identity | None = None
    source: str = ""
    detail: str = ""
    cached: bool | None = None
    """True: answered from the resolver's cache; False: the source was asked; None: the
    source has no cache in front of it (in-memory indexes)."""

    @classmethod
    def found(cls, identity: Identity, source: str = "") -> Lookup:
        return cls(LookupStatus.FOUND, identity, source or identity.source)

    @classmethod
    def unknown(cls, source: str, detail: str = "") -> Lookup:
        return cls(LookupStatus.UNKNOWN, None, source, detail)

    @classmethod
    def ambiguous(cls, source: str, detail: str) -> Lookup:
        return cls(LookupStatus.AMBIGUOUS, None, source, detail)

    @classmethod
    def unavailable(cls, source: str, detail: str) -> Lookup:
        return cls(LookupStatus.UNAVAILABLE, None, source, detail)


@dataclass(frozen=True, slots=True)
class Peer:
    """The connection whose identity is asked for.

    Ports are optional hints: a source that sees flows (Hubble) can pin the very
    connection with them; address-indexed sources ignore them.

    ``ip`` is the address already parsed by whoever made the peer (``Peer.of``), so the
    sources on the request path do not parse it again; ``parsed()`` falls back to parsing
    ``address`` for peers made from text.
    """

    address: str  # canonical text form, IPv4-mapped IPv6 already folded to IPv4
    port: int | None = None
    local_port: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    ip: IPAddress | None = field(default=None, compare=False)

    @classmethod
    def of(
        cls,
        ip: IPAddress,
        port: int | None = None,
        local_port: int | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> Peer:
        """The peer at ``ip``, an address from ``parse_address`` (canonical already)."""
        return cls(str(ip), port, local_port, {} if extra is None else extra, ip)

    def parsed(self) -> IPAddress:
        """The address as an object; raises ValueError as ``parse_address`` does."""
        return self.ip if self.ip is not None else parse_address(self.address)

"""Reading CiliumEndpoint and CiliumIdentity objects into index entries (slices: see
``ces_parse``).

Pure functions over decoded JSON dicts. Every field read is type-checked (``crd_shapes``):
an object with a wrong-typed field raises ``MalformedObject`` and never yields an entry.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kong_cilium_identity.identity import crd_shapes as shape
from kong_cilium_identity.identity.crd_shapes import MalformedObject
from kong_cilium_identity.identity.model import (
    CLUSTER_LABEL,
    NAMESPACE_LABEL,
    SERVICE_ACCOUNT_LABEL,
    Identity,
    Lookup,
)
from kong_cilium_identity.policy.labels import Label, LabelError, parse_label

log = logging.getLogger(__name__)

READY_STATE = "ready"


@dataclass(frozen=True, slots=True)
class LabelSet:
    """One distinct identity label list, parsed once and shared by every endpoint using it."""

    labels: frozenset[Label]
    namespace: str | None
    service_account: str | None
    cluster: str | None


class LabelInterner:
    """Maps a label list (as the API sends it) to its shared ``LabelSet``."""

    def __init__(self) -> None:
        self._sets: dict[tuple[str, ...], LabelSet] = {}

    def intern(self, texts: tuple[str, ...]) -> LabelSet:
        found = self._sets.get(texts)
        if found is None:
            labels = frozenset(parse_label(text) for text in texts)
            by_key = {label.key: label.value for label in labels if label.source == "k8s"}
            found = LabelSet(
                labels=labels,
                namespace=by_key.get(NAMESPACE_LABEL) or None,
                service_account=by_key.get(SERVICE_ACCOUNT_LABEL) or None,
                cluster=by_key.get(CLUSTER_LABEL) or None,
            )
            self._sets[texts] = found
        return found


EMPTY_LABELS = LabelSet(frozenset(), None, None, None)


@dataclass(frozen=True, slots=True)
class EndpointEntry:
    """What the index keeps of one endpoint, as one object (a CEP, or a slice) tells it.

    ``key`` is the endpoint (``namespace/name``, the pod); ``claim`` is unique within the
    view that holds the entry (the key for a CEP, ``slice/namespace/name`` for a slice
    member, since an endpoint moving between slices briefly sits in two). ``answer`` is
    the lookup result, built once. ``identity`` is None while the endpoint has none yet.
    """

    key: str
    claim: str
    uid: str
    resource_version: str
    state: str
    addresses: tuple[str, ...]
    node_ip: str | None
    identity: Identity | None
    # True: ``answer`` stands only while the CiliumIdentity labels of ``identity.id`` are
    # unknown; once they are known, the lookup joins them with ``identity``
    labels_missing: bool
    answer: Lookup


def object_key(obj: Any, what: str) -> str:
    """``namespace/name`` of an API object (namespace empty for cluster-scoped ones)."""
    metadata = shape.metadata(obj, what)
    return f"{metadata.get('namespace') or ''}/{metadata['name']}"


def canonical_address(text: str) -> str:
    """The text form ``Peer.address`` uses: IPv6 compressed, IPv4-mapped folded to IPv4.

    IPv4 takes a C fast path (the list of 100,000 endpoints parses every address).
    """
    if ":" not in text:
        try:
            return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text))
        except OSError:
            raise ValueError(f"{text!r} is not an IPv4 address") from None
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _networking(holder: Mapping[str, Any], where: str) -> tuple[tuple[str, ...], str | None]:
    """Addresses and node IP of ``networking``; an unparsable address is skipped (logged)."""
    networking = shape.mapping(holder, "networking", where)
    where = f"{where}.networking"
    found: list[str] = []
    for pair in shape.objects(networking, "addressing", where):
        for family in ("ipv4", "ipv6"):
            text = shape.text(pair, family, f"{where}.addressing[]")
            if not text:
                continue
            try:
                address = canonical_address(text)
            except ValueError:
                log.warning("%s: ignoring unparsable address %r", where, text)
                continue
            if address not in found:
                found.append(address)
    node = shape.text(networking, "node", where)
    return tuple(found), node or None


def _pod_uid(metadata: Mapping[str, Any], where: str) -> str | None:
    for owner in shape.objects(metadata, "ownerReferences", f"{where}.metadata"):
        kind = shape.text(owner, "kind", f"{where}.metadata.ownerReferences[]")
        uid = shape.text(owner, "uid", f"{where}.metadata.ownerReferences[]")
        if kind == "Pod" and uid:
            return uid
    return None


def _answer(key: str, state: str, identity: Identity | None, source: str) -> Lookup:
    if state != READY_STATE:
        return Lookup.unknown(source, f"endpoint {key} is in state {state or 'unset'!r}, not ready")
    if identity is None:
        return Lookup.unknown(source, f"endpoint {key} has no identity yet")
    return Lookup.found(identity, source)


def parse_endpoint(obj: Any, interner: LabelInterner, source: str, now: float) -> EndpointEntry:
    """Read the fields the index needs from a CiliumEndpoint (a decoded JSON dict)."""
    key = object_key(obj, "CiliumEndpoint")
    metadata: Mapping[str, Any] = obj["metadata"]
    where = f"CiliumEndpoint {key}"
    status = shape.mapping(obj, "status", where)
    where_status = f"{where}.status"
    state = shape.text(status, "state", where_status)
    addresses, node_ip = _networking(status, where_status)
    service_account = shape.text(status, "service-account", where_status)
    pod_uid = _pod_uid(metadata, where)
    _check_extras(status, where_status)
    raw_identity = shape.mapping(status, "identity", where_status)
    identity_id = shape.identity_id(raw_identity, "id", f"{where_status}.identity")
    texts = shape.strings(raw_identity, "labels", f"{where_status}.identity")
    identity: Identity | None = None
    if identity_id is not None:
        try:
            label_set = interner.intern(texts) if texts else EMPTY_LABELS
        except LabelError as error:
            raise MalformedObject(f"{where_status}.identity.labels: {error}") from None
        identity = Identity(
            id=identity_id,
            labels=label_set.labels,
            namespace=metadata.get("namespace") or label_set.namespace,
            pod=metadata["name"],
            pod_uid=pod_uid,
            service_account=service_account or label_set.service_account,
            cluster=label_set.cluster,
            source=source,
            observed_at=now,
        )
    # only the id is known: the answer is joined with CiliumIdentity labels at lookup, and
    # this one stands while they are unknown
    labels_missing = identity is not None and not texts and state == READY_STATE
    if labels_missing:
        answer = Lookup.unknown(source, f"endpoint {key}: labels of identity {identity_id} unknown")
    else:
        answer = _answer(key, state, identity, source)
    return EndpointEntry(
        key=key,
        claim=key,
        uid=metadata.get("uid") or "",
        resource_version=metadata.get("resourceVersion") or "",
        state=state,
        addresses=addresses,
        node_ip=node_ip,
        identity=identity,
        labels_missing=labels_missing,
        answer=answer,
    )


def _check_extras(holder: Mapping[str, Any], where: str) -> None:
    """Type-check the small fields the index does not use (endpoint id, encryption key,
    named ports, external identifiers), so that a mangled object is noticed as a whole."""
    shape.integer(holder, "id", where)
    shape.integer(shape.mapping(holder, "encryption", where), "key", f"{where}.encryption")
    for port in shape.objects(holder, "named-ports", where):
        shape.text(port, "name", f"{where}.named-ports[]")
        shape.integer(port, "port", f"{where}.named-ports[]")
        shape.text(port, "protocol", f"{where}.named-ports[]")
    external = shape.mapping(holder, "external-identifiers", where)
    for name, value in external.items():
        if value is not None and type(value) is not str:
            shape.text(external, name, f"{where}.external-identifiers")  # raises


def identity_number(obj: Any) -> int:
    """A CiliumIdentity is named by its numeric id."""
    name: str = shape.metadata(obj, "CiliumIdentity")["name"]
    if not (name.isascii() and name.isdigit()) or int(name) > shape.MAX_IDENTITY:
        raise MalformedObject(f"CiliumIdentity {name!r} is not a numeric identity")
    return int(name)


def identity_labels(obj: Mapping[str, Any], interner: LabelInterner) -> LabelSet:
    """The labels of a CiliumIdentity: the top-level ``security-labels`` maps
    ``source:key`` to the value (empty for ``reserved:`` labels)."""
    where = f"CiliumIdentity {obj['metadata']['name']}"
    raw = shape.string_map(obj, "security-labels", where)
    texts = tuple(sorted(f"{name}={value}" if value else name for name, value in raw.items()))
    try:
        return interner.intern(texts)
    except LabelError as error:
        raise MalformedObject(f"{where}: {error}") from None

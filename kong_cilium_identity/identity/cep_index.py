"""An in-memory index of CiliumEndpoint objects by address. Pure: no I/O, no threads.

One writer (the watch thread) feeds it whole lists (``begin_relist`` ... ``commit``) and
single events (``apply``); any number of readers call ``lookup`` without taking a lock.
Readers stay consistent because every value they can reach is immutable and every change
they can observe is one reference assignment: an address maps to a tuple of entries that
is replaced, never mutated, and a relist builds a fresh table that is swapped in whole.

Every answer is built when the event is applied, not when it is asked for: a lookup is a
dict probe returning a prebuilt ``Lookup``. Label sets (and the namespace, service account
and cluster read from them) are interned per distinct label list, so 100,000 endpoints
that share a few hundred identities hold a few hundred label sets.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kong_cilium_identity.identity.model import (
    CLUSTER_LABEL,
    NAMESPACE_LABEL,
    SERVICE_ACCOUNT_LABEL,
    Identity,
    Lookup,
)
from kong_cilium_identity.labels import Label, LabelError, parse_label

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
    """What the index keeps of one CiliumEndpoint.

    ``answer`` is the lookup result for any of its addresses, built once. ``identity`` is
    None while the endpoint has no identity yet (``waiting-for-identity``).
    """

    key: str  # namespace/name: the object's identity in the API
    uid: str
    resource_version: str
    state: str
    addresses: tuple[str, ...]
    node_ip: str | None
    identity: Identity | None
    labels_missing: bool  # only the numeric id is known: labels come from CiliumIdentity
    answer: Lookup


class MalformedObject(ValueError):
    """An object the index cannot use; its key (if any) is evicted."""


def object_key(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict) or not metadata.get("name"):
        raise MalformedObject("object without metadata.name")
    namespace = metadata.get("namespace") or ""
    return f"{namespace}/{metadata['name']}"


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


def _addresses(status: Mapping[str, Any]) -> tuple[str, ...]:
    networking = status.get("networking")
    if not isinstance(networking, dict):
        return ()
    found: list[str] = []
    for pair in networking.get("addressing") or ():
        if not isinstance(pair, dict):
            continue
        for family in ("ipv4", "ipv6"):
            text = pair.get(family)
            if text:
                try:
                    address = canonical_address(str(text))
                except ValueError:
                    log.warning("ignoring unparsable endpoint address %r", text)
                    continue
                if address not in found:
                    found.append(address)
    return tuple(found)


def _pod_uid(metadata: Mapping[str, Any]) -> str | None:
    for owner in metadata.get("ownerReferences") or ():
        if isinstance(owner, dict) and owner.get("kind") == "Pod" and owner.get("uid"):
            return str(owner["uid"])
    return None


def parse_endpoint(
    obj: Mapping[str, Any], interner: LabelInterner, source: str, now: float
) -> EndpointEntry:
    """Read only the fields the index needs from a CiliumEndpoint (a decoded JSON dict)."""
    key = object_key(obj)
    metadata: Mapping[str, Any] = obj["metadata"]
    status = obj.get("status")
    if not isinstance(status, dict):
        status = {}
    state = str(status.get("state") or "")
    addresses = _addresses(status)
    networking = status.get("networking")
    node_ip = networking.get("node") if isinstance(networking, dict) else None
    identity: Identity | None = None
    labels_missing = False
    raw_identity = status.get("identity")
    if isinstance(raw_identity, dict) and raw_identity.get("id") is not None:
        try:
            identity_id = int(raw_identity["id"])
            texts = tuple(raw_identity.get("labels") or ())
            label_set = interner.intern(texts) if texts else EMPTY_LABELS
        except (TypeError, ValueError, AttributeError, LabelError) as error:
            raise MalformedObject(f"{key}: bad status.identity: {error}") from None
        labels_missing = not texts
        identity = Identity(
            id=identity_id,
            labels=label_set.labels,
            namespace=metadata.get("namespace") or label_set.namespace,
            pod=metadata["name"],
            pod_uid=_pod_uid(metadata),
            service_account=status.get("service-account") or label_set.service_account,
            cluster=label_set.cluster,
            source=source,
            observed_at=now,
        )
    return EndpointEntry(
        key=key,
        uid=str(metadata.get("uid") or ""),
        resource_version=str(metadata.get("resourceVersion") or ""),
        state=state,
        addresses=addresses,
        node_ip=str(node_ip) if node_ip else None,
        identity=identity,
        labels_missing=labels_missing,
        answer=_answer(key, state, identity, source),
    )


def _answer(key: str, state: str, identity: Identity | None, source: str) -> Lookup:
    if state != READY_STATE:
        return Lookup.unknown(source, f"endpoint {key} is in state {state or 'unset'!r}, not ready")
    if identity is None:
        return Lookup.unknown(source, f"endpoint {key} has no identity yet")
    return Lookup.found(identity, source)


def identity_number(obj: Mapping[str, Any]) -> int:
    """A CiliumIdentity is named by its numeric id."""
    name = object_key(obj).lstrip("/")
    try:
        return int(name)
    except ValueError:
        raise MalformedObject(f"CiliumIdentity {name!r} is not numeric") from None


def identity_labels(obj: Mapping[str, Any], interner: LabelInterner) -> LabelSet:
    """The labels of a CiliumIdentity: the top-level ``security-labels`` maps
    ``source:key`` to the value (empty for ``reserved:`` labels)."""
    raw = obj.get("security-labels")
    if not isinstance(raw, Mapping):
        raise MalformedObject("CiliumIdentity without security-labels")
    texts = tuple(sorted(f"{name}={value}" if value else str(name) for name, value in raw.items()))
    try:
        return interner.intern(texts)
    except LabelError as error:
        raise MalformedObject(str(error)) from None


class _Table:
    """One generation of the index: endpoints by key and by address."""

    __slots__ = ("by_address", "by_key")

    def __init__(self) -> None:
        self.by_key: dict[str, EndpointEntry] = {}
        self.by_address: dict[str, tuple[EndpointEntry, ...]] = {}

    def put(self, entry: EndpointEntry) -> None:
        old = self.by_key.get(entry.key)
        self.by_key[entry.key] = entry
        if old is not None:
            for address in old.addresses:
                if address not in entry.addresses:
                    self._unlink(address, old.key)
        for address in entry.addresses:
            current = self.by_address.get(address)
            if current is None:
                self.by_address[address] = (entry,)
            else:
                others = tuple(e for e in current if e.key != entry.key)
                self.by_address[address] = (*others, entry)

    def remove(self, key: str) -> EndpointEntry | None:
        old = self.by_key.pop(key, None)
        if old is not None:
            for address in old.addresses:
                self._unlink(address, key)
        return old

    def _unlink(self, address: str, key: str) -> None:
        current = self.by_address.get(address)
        if current is None:
            return
        others = tuple(e for e in current if e.key != key)
        if others:
            self.by_address[address] = others
        else:
            del self.by_address[address]


class Relist:
    """A full list being loaded page by page; nothing is visible until ``commit``."""

    def __init__(self, index: EndpointIndex) -> None:
        self._index = index
        self._table = _Table()
        self._interner = LabelInterner()
        self._now = time.time()

    def add(self, items: Iterable[Mapping[str, Any]]) -> None:
        for obj in items:
            try:
                entry = parse_endpoint(obj, self._interner, self._index.source, self._now)
            except MalformedObject as error:
                log.warning("skipping CiliumEndpoint in list: %s", error)
                continue
            self._table.put(entry)

    def commit(self, resource_version: str) -> None:
        self._index._swap(self._table, self._interner, resource_version)


class IdentityRelist:
    """A full list of CiliumIdentity objects; replaces the id → labels table on commit."""

    def __init__(self, index: EndpointIndex) -> None:
        self._index = index
        self._labels: dict[int, LabelSet] = {}

    def add(self, items: Iterable[Mapping[str, Any]]) -> None:
        for obj in items:
            try:
                identity_id = identity_number(obj)
                self._labels[identity_id] = identity_labels(obj, self._index._interner)
            except MalformedObject as error:
                log.warning("skipping CiliumIdentity in list: %s", error)

    def commit(self, resource_version: str) -> None:
        self._index._identity_labels = self._labels


class EndpointIndex:
    """Address → CiliumEndpoint entries, plus CiliumIdentity labels for id-only endpoints."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._table = _Table()
        self._interner = LabelInterner()
        self._identity_labels: dict[int, LabelSet] = {}
        self._write_lock = threading.Lock()
        self.resource_version: str | None = None  # of the last list or event applied

    # -- reading (any thread, lock-free) --------------------------------------------------

    def lookup(self, address: str) -> Lookup | None:
        """The answer for one canonical address, or None when no endpoint claims it."""
        entries = self._table.by_address.get(address)
        if entries is None:
            return None
        if len(entries) > 1:
            claims = ", ".join(f"{e.key} (uid {e.uid})" for e in entries)
            return Lookup.ambiguous(self.source, f"{address} is claimed by {claims}")
        entry = entries[0]
        if entry.labels_missing and entry.answer.identity is not None:
            return self._with_identity_labels(entry, entry.answer.identity)
        return entry.answer

    def _with_identity_labels(self, entry: EndpointEntry, identity: Identity) -> Lookup:
        label_set = self._identity_labels.get(identity.id)
        if label_set is None:
            return Lookup.unknown(
                self.source, f"endpoint {entry.key}: labels of identity {identity.id} unknown"
            )
        filled = dataclasses.replace(
            identity,
            labels=label_set.labels,
            namespace=identity.namespace or label_set.namespace,
            service_account=identity.service_account or label_set.service_account,
            cluster=identity.cluster or label_set.cluster,
        )
        return Lookup.found(filled, self.source)

    def entries(self, address: str) -> tuple[EndpointEntry, ...]:
        return self._table.by_address.get(address, ())

    def get(self, key: str) -> EndpointEntry | None:
        return self._table.by_key.get(key)

    def __len__(self) -> int:
        return len(self._table.by_key)

    def keys(self) -> list[str]:
        return list(self._table.by_key)

    # -- writing (the watch thread) -------------------------------------------------------

    def begin_relist(self) -> Relist:
        return Relist(self)

    def begin_identity_relist(self) -> IdentityRelist:
        return IdentityRelist(self)

    def _swap(self, table: _Table, interner: LabelInterner, resource_version: str) -> None:
        with self._write_lock:
            self._table = table
            self._interner = interner
            self.resource_version = resource_version

    def apply(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """Apply one watch event (ADDED, MODIFIED or DELETED) for a CiliumEndpoint.

        A DELETE evicts at once; an object that cannot be read evicts its key (the old
        answer is no longer proven).
        """
        with self._write_lock:
            try:
                key = object_key(obj)
            except MalformedObject as error:
                log.warning("ignoring %s event: %s", event_type, error)
                return
            if event_type == "DELETED":
                self._table.remove(key)
            else:
                try:
                    entry = parse_endpoint(obj, self._interner, self.source, time.time())
                except MalformedObject as error:
                    log.warning("evicting %s after a bad %s event: %s", key, event_type, error)
                    self._table.remove(key)
                else:
                    self._table.put(entry)
            version = obj["metadata"].get("resourceVersion")
            if version:
                self.resource_version = str(version)

    def apply_identity(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """Apply one watch event for a CiliumIdentity; an unreadable update evicts the id."""
        with self._write_lock:
            try:
                identity_id = identity_number(obj)
            except MalformedObject as error:
                log.warning("ignoring CiliumIdentity %s event: %s", event_type, error)
                return
            if event_type == "DELETED":
                self._identity_labels.pop(identity_id, None)
                return
            try:
                self._identity_labels[identity_id] = identity_labels(obj, self._interner)
            except MalformedObject as error:
                log.warning("evicting identity %d after a bad event: %s", identity_id, error)
                self._identity_labels.pop(identity_id, None)

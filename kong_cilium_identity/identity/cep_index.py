"""An in-memory index of Cilium endpoints by address. Pure: no I/O, no threads.

Two *views* feed it: CiliumEndpoint objects (one per pod) and CiliumEndpointSlice objects
(pods batched per namespace, carrying only the identity id: labels come from the
CiliumIdentity table). A cluster may serve either or both; each view holds what its
resource says. When both are fed, a pod that both describe is one endpoint (never counted
twice) as long as they agree on its identity and addresses; if they disagree, the address
is ambiguous.

One writer (the watch threads, serialized by a lock) feeds whole lists (``begin_*relist``
... ``commit``) and single events (``apply*``); any number of readers call ``lookup``
without taking a lock. Readers stay consistent because every value they can reach is
immutable and every change they can observe is one reference assignment: an address maps
to a tuple of entries that is replaced, never mutated, and a relist builds a fresh table
that is swapped in whole.

Answers are built when an event is applied, not when they are asked for, except for
id-only entries (slices), whose labels are joined from the CiliumIdentity table. Label
sets (and the namespace, service account and cluster read from them) are interned per
distinct label list, so 100,000 endpoints sharing a few hundred identities hold a few
hundred label sets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from kong_cilium_identity.identity.ces_parse import (
    SliceState,
    SliceUpdate,
    read_slice,
    slice_name,
)
from kong_cilium_identity.identity.crd_parse import (
    EndpointEntry,
    LabelInterner,
    LabelSet,
    identity_labels,
    identity_number,
    object_key,
    parse_endpoint,
)
from kong_cilium_identity.identity.crd_shapes import MalformedObject
from kong_cilium_identity.identity.model import Identity, Lookup

log = logging.getLogger(__name__)

JOINED_MAX = 400_000  # joined answers kept before the cache starts over


class _Table:
    """One generation of one view: entries by claim, by endpoint key and by address."""

    __slots__ = ("by_address", "by_claim", "by_key", "by_slice")

    def __init__(self) -> None:
        self.by_claim: dict[str, EndpointEntry] = {}
        self.by_key: dict[str, tuple[EndpointEntry, ...]] = {}
        self.by_address: dict[str, tuple[EndpointEntry, ...]] = {}
        self.by_slice: dict[str, SliceState] = {}  # the slice view's slices, by name

    def put(self, entry: EndpointEntry) -> None:
        old = self.by_claim.get(entry.claim)
        self.by_claim[entry.claim] = entry
        if old is not None:
            for address in old.addresses:
                if address not in entry.addresses:
                    _unlink(self.by_address, address, old.claim)
        for address in entry.addresses:
            _link(self.by_address, address, entry)
        _link(self.by_key, entry.key, entry)

    def remove(self, claim: str) -> EndpointEntry | None:
        old = self.by_claim.pop(claim, None)
        if old is not None:
            for address in old.addresses:
                _unlink(self.by_address, address, claim)
            _unlink(self.by_key, old.key, claim)
        return old

    def put_slice(self, update: SliceUpdate) -> None:
        """Apply a slice's new version: its gone claims are removed, then its new entries
        put (an entry that kept its claim is replaced in place)."""
        for claim in update.gone:
            self.remove(claim)
        for entry in update.fresh:
            self.put(entry)
        self.by_slice[update.name] = update.state

    def remove_slice(self, name: str) -> None:
        state = self.by_slice.pop(name, None)
        if state is not None:
            for claim in state.claims():
                self.remove(claim)


def _link(table: dict[str, tuple[EndpointEntry, ...]], name: str, entry: EndpointEntry) -> None:
    current = table.get(name)
    if current is None or (len(current) == 1 and current[0].claim == entry.claim):
        table[name] = (entry,)  # the common cases, without building a generator
    else:
        table[name] = (*(e for e in current if e.claim != entry.claim), entry)


def _unlink(table: dict[str, tuple[EndpointEntry, ...]], name: str, claim: str) -> None:
    current = table.get(name)
    if current is None:
        return
    if len(current) == 1:  # the common case, without building a generator
        if current[0].claim == claim:
            del table[name]
        return
    others = tuple(e for e in current if e.claim != claim)
    if others:
        table[name] = others
    else:
        del table[name]


class Relist:
    """A full list of CiliumEndpoints being loaded page by page; invisible until ``commit``."""

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
                log.warning("skipping a CiliumEndpoint in the list: %s", error)
                continue
            self._table.put(entry)

    def commit(self, resource_version: str) -> None:
        self._index._swap_endpoints(self._table, self._interner, resource_version)


class SliceRelist:
    """A full list of CiliumEndpointSlices; replaces the slice view on ``commit``."""

    def __init__(self, index: EndpointIndex) -> None:
        self._index = index
        self._table = _Table()
        self._now = time.time()

    def add(self, items: Iterable[Mapping[str, Any]]) -> None:
        for obj in items:
            try:
                update = read_slice(obj, self._index.source, self._now)
            except MalformedObject as error:
                log.warning("skipping a CiliumEndpointSlice in the list: %s", error)
                continue
            self._table.remove_slice(update.name)  # a slice listed twice: the last one wins
            self._table.put_slice(update)

    def commit(self, resource_version: str) -> None:
        self._index._swap_slices(self._table, resource_version)


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
                log.warning("skipping a CiliumIdentity in the list: %s", error)

    def commit(self, resource_version: str) -> None:
        self._index._identity_labels = self._labels


class EndpointIndex:
    """Address → endpoint entries from both views, plus CiliumIdentity labels."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._endpoints = _Table()  # the CiliumEndpoint view
        self._slices = _Table()  # the CiliumEndpointSlice view
        self._interner = LabelInterner()
        self._identity_labels: dict[int, LabelSet] = {}
        # id-only entries joined with their labels, by claim: rebuilt when either changes
        self._joined: dict[str, tuple[EndpointEntry, LabelSet, Lookup]] = {}
        self._write_lock = threading.Lock()
        self.resource_version: str | None = None  # of the last list or event applied

    # -- reading (any thread, lock-free) --------------------------------------------------

    def lookup(self, address: str) -> Lookup | None:
        """The answer for one canonical address, or None when no endpoint claims it."""
        endpoints, slices = self._endpoints, self._slices
        from_endpoints = endpoints.by_address.get(address)
        from_slices = slices.by_address.get(address)
        if from_slices is None:
            if from_endpoints is None:
                return None
            entries = from_endpoints
        elif from_endpoints is None:
            entries = from_slices
        else:
            entries = from_endpoints + from_slices
        if len(entries) == 1 and not (endpoints.by_claim and slices.by_claim):
            return self._answer(entries[0])
        return self._merged(address, entries, endpoints, slices)

    def _merged(
        self,
        address: str,
        entries: tuple[EndpointEntry, ...],
        endpoints: _Table,
        slices: _Table,
    ) -> Lookup:
        """Several claims, or both views fed: one pod is one endpoint if its views agree."""
        keys = {entry.key for entry in entries}
        if len(keys) > 1:
            claims = ", ".join(sorted({f"{e.key} (uid {e.uid})" for e in entries}))
            return Lookup.ambiguous(self.source, f"{address} is claimed by {claims}")
        (key,) = keys
        as_endpoint = endpoints.by_key.get(key, ())
        views = as_endpoint + slices.by_key.get(key, ())
        told = {(_identity_id(e), frozenset(e.addresses)) for e in views}
        if len(told) > 1:
            said = "; ".join(
                sorted(
                    f"{'CiliumEndpoint' if e.claim == e.key else 'CiliumEndpointSlice'}: "
                    f"identity {_identity_id(e)}, addresses {', '.join(e.addresses)}"
                    for e in views
                )
            )
            return Lookup.ambiguous(self.source, f"endpoint {key} is described twice: {said}")
        return self._answer(as_endpoint[0] if as_endpoint else entries[0])

    def _answer(self, entry: EndpointEntry) -> Lookup:
        identity = entry.identity
        if not entry.labels_missing or identity is None:
            return entry.answer
        label_set = self._identity_labels.get(identity.id)
        if label_set is None:
            return entry.answer
        joined = self._joined.get(entry.claim)
        if joined is not None and joined[0] is entry and joined[1] is label_set:
            return joined[2]
        filled = Lookup.found(
            Identity(
                id=identity.id,
                labels=label_set.labels,
                namespace=identity.namespace or label_set.namespace,
                pod=identity.pod,
                pod_uid=identity.pod_uid,
                service_account=identity.service_account or label_set.service_account,
                cluster=identity.cluster or label_set.cluster,
                source=identity.source,
                observed_at=identity.observed_at,
            ),
            self.source,
        )
        if len(self._joined) >= JOINED_MAX:
            self._joined = {}  # entries of pods long gone would pile up otherwise
        self._joined[entry.claim] = (entry, label_set, filled)
        return filled

    def entries(self, address: str) -> tuple[EndpointEntry, ...]:
        """Entries of the CiliumEndpoint view claiming ``address``."""
        return self._endpoints.by_address.get(address, ())

    def slice_entries(self, address: str) -> tuple[EndpointEntry, ...]:
        """Entries of the CiliumEndpointSlice view claiming ``address``."""
        return self._slices.by_address.get(address, ())

    def get(self, key: str) -> EndpointEntry | None:
        return self._endpoints.by_claim.get(key)

    def __len__(self) -> int:
        """Distinct endpoints (pods) across both views."""
        return len(self._endpoints.by_key.keys() | self._slices.by_key.keys())

    def keys(self) -> list[str]:
        """Keys of the CiliumEndpoint view."""
        return list(self._endpoints.by_claim)

    def slice_keys(self) -> list[str]:
        """Endpoint keys (``namespace/name``) of the CiliumEndpointSlice view."""
        return list(self._slices.by_key)

    def slices(self) -> list[str]:
        return list(self._slices.by_slice)

    # -- writing (the watch threads) ------------------------------------------------------

    def begin_relist(self) -> Relist:
        return Relist(self)

    def begin_slice_relist(self) -> SliceRelist:
        return SliceRelist(self)

    def begin_identity_relist(self) -> IdentityRelist:
        return IdentityRelist(self)

    def _swap_endpoints(self, table: _Table, interner: LabelInterner, version: str) -> None:
        with self._write_lock:
            self._endpoints = table
            self._interner = interner
            self.resource_version = version

    def _swap_slices(self, table: _Table, version: str) -> None:
        with self._write_lock:
            self._slices = table
            self.resource_version = version

    def apply(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """Apply one watch event (ADDED, MODIFIED or DELETED) for a CiliumEndpoint.

        A DELETE evicts at once; an object that cannot be read evicts its key (the old
        answer is no longer proven).
        """
        with self._write_lock:
            try:
                key = object_key(obj, "CiliumEndpoint")
            except MalformedObject as error:
                log.warning("ignoring a CiliumEndpoint %s event: %s", event_type, error)
                return
            if event_type == "DELETED":
                self._endpoints.remove(key)
            else:
                try:
                    entry = parse_endpoint(obj, self._interner, self.source, time.time())
                except MalformedObject as error:
                    log.warning("evicting %s after a bad %s event: %s", key, event_type, error)
                    self._endpoints.remove(key)
                else:
                    self._endpoints.put(entry)
            self._advance(obj)

    def apply_slice(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """Apply one watch event for a CiliumEndpointSlice: its members replace the
        slice's previous ones; an unreadable slice evicts every member it had."""
        with self._write_lock:
            if event_type == "DELETED":
                try:
                    self._slices.remove_slice(slice_name(obj))
                except MalformedObject as error:
                    log.warning("ignoring a CiliumEndpointSlice DELETED event: %s", error)
                    return
            else:
                try:
                    update = read_slice(obj, self.source, time.time(), self._slices.by_slice)
                except MalformedObject as error:
                    self._evict_slice(event_type, obj, error)
                    return
                self._slices.put_slice(update)
            self._advance(obj)

    def _evict_slice(self, event_type: str, obj: Mapping[str, Any], error: Exception) -> None:
        try:
            name = slice_name(obj)
        except MalformedObject:
            log.warning("ignoring a CiliumEndpointSlice %s event: %s", event_type, error)
            return
        log.warning("evicting slice %s after a bad %s event: %s", name, event_type, error)
        self._slices.remove_slice(name)
        self._advance(obj)

    def apply_identity(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """Apply one watch event for a CiliumIdentity; an unreadable update evicts the id."""
        with self._write_lock:
            try:
                identity_id = identity_number(obj)
            except MalformedObject as error:
                log.warning("ignoring a CiliumIdentity %s event: %s", event_type, error)
                return
            if event_type == "DELETED":
                self._identity_labels.pop(identity_id, None)
                return
            try:
                self._identity_labels[identity_id] = identity_labels(obj, self._interner)
            except MalformedObject as error:
                log.warning("evicting identity %d after a bad event: %s", identity_id, error)
                self._identity_labels.pop(identity_id, None)

    def _advance(self, obj: Mapping[str, Any]) -> None:
        version = obj["metadata"].get("resourceVersion")
        if version:
            self.resource_version = version


def _identity_id(entry: EndpointEntry) -> int | None:
    return entry.identity.id if entry.identity is not None else None

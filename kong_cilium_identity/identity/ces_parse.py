"""Reading CiliumEndpointSlice objects (``cilium.io/v2alpha1``) into index entries.

A slice is cluster-scoped; its top-level ``namespace`` holds the namespace of every
member, and each member of ``endpoints[]`` is ``{id, name, networking: {addressing[],
node}, encryption, named-ports, pod-uid, service-account}`` where ``id`` is the
*identity* id (labels come from the CiliumIdentity of that id).

Slices are rewritten whole on every change of any member, so reading is on the hot path of
the watch: members are type-checked inline (the message is built only on error), and a
member equal (as decoded JSON) to the one already indexed is neither checked nor rebuilt.
Slice-level problems reject the slice; a bad member, or a name listed twice, is dropped
with a log line and the other members are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import compress
from operator import ne
from typing import Any

from kong_cilium_identity.identity import crd_shapes as shape
from kong_cilium_identity.identity.crd_parse import EndpointEntry, canonical_address
from kong_cilium_identity.identity.crd_shapes import MAX_IDENTITY, MalformedObject
from kong_cilium_identity.identity.model import Identity, Lookup

log = logging.getLogger(__name__)

UNKNOWN_IDENTITY = 0  # Cilium's "unknown" identity: the endpoint has none yet

# (name, identity id or None, ((ipv4, ipv6), ...), node, pod-uid, service-account)
Fields = tuple[str, int | None, tuple[tuple[str, str], ...], str, str, str]


def _wrong(path: str, value: Any, wanted: str) -> MalformedObject:
    return MalformedObject(f"{path} is a {type(value).__name__}, not {wanted}")


def _text(holder: Mapping[str, Any], name: str, path: str) -> str:
    value = holder.get(name)
    if value is None:
        return ""
    if type(value) is not str:
        raise _wrong(f"{path}{name}", value, "a string")
    return value


def member_fields(item: Any) -> Fields:
    """The fields of one slice member, every one type-checked (raises MalformedObject
    with the member-relative path)."""
    if type(item) is not dict:
        raise _wrong("the member", item, "an object")
    name = item.get("name")
    if type(name) is not str or not name:
        raise _wrong("name", name, "a non-empty string")
    identity = item.get("id")
    if identity is not None and (type(identity) is not int or not 0 <= identity <= MAX_IDENTITY):
        raise MalformedObject(f"id {identity!r} is not an identity (0..{MAX_IDENTITY})")
    pairs: tuple[tuple[str, str], ...] = ()
    node = ""
    networking = item.get("networking")
    if networking is not None:
        if type(networking) is not dict:
            raise _wrong("networking", networking, "an object")
        addressing = networking.get("addressing")
        if addressing is not None:
            if type(addressing) is not list:
                raise _wrong("networking.addressing", addressing, "an array")
            found = []
            for pair in addressing:
                if type(pair) is not dict:
                    raise _wrong("networking.addressing[]", pair, "an object")
                path = "networking.addressing[]."
                found.append((_text(pair, "ipv4", path), _text(pair, "ipv6", path)))
            pairs = tuple(found)
        node = _text(networking, "node", "networking.")
    _check_unused(item)
    return (
        name,
        identity,
        pairs,
        node,
        _text(item, "pod-uid", ""),
        _text(item, "service-account", ""),
    )


def _check_unused(item: Mapping[str, Any]) -> None:
    """The fields the index does not use are type-checked too: a mangled member is
    noticed as a whole."""
    encryption = item.get("encryption")
    if encryption is not None:
        if type(encryption) is not dict:
            raise _wrong("encryption", encryption, "an object")
        key = encryption.get("key")
        if key is not None and type(key) is not int:
            raise _wrong("encryption.key", key, "an integer")
    for port in shape.objects(item, "named-ports", "the member"):
        _text(port, "name", "named-ports[].")
        _text(port, "protocol", "named-ports[].")
        number = port.get("port")
        if number is not None and type(number) is not int:
            raise _wrong("named-ports[].port", number, "an integer")
    external = shape.mapping(item, "external-identifiers", "the member")
    for label in external:
        _text(external, label, "external-identifiers.")


@dataclass(slots=True)
class SliceState:
    """What the index keeps of one slice, to apply its next version cheaply."""

    namespace: str
    raw: list[Any]  # ``endpoints`` as decoded
    entries: list[EndpointEntry | None]  # by position; None: the member was dropped
    names: frozenset[str]  # names of the members kept
    plain: bool  # no name was listed twice

    def claims(self) -> list[str]:
        return [entry.claim for entry in self.entries if entry is not None]


@dataclass(slots=True)
class SliceUpdate:
    """A slice's new state, the entries to add (``fresh``) and the claims to remove."""

    name: str
    state: SliceState
    fresh: list[EndpointEntry]
    gone: list[str]


def _where(slice_name: str) -> str:
    return f"CiliumEndpointSlice {slice_name}"


def read_slice(
    obj: Any, source: str, now: float, previous: SliceState | None = None
) -> SliceUpdate:
    """Read one version of a slice. With ``previous`` (the state of the slice's version
    already indexed), members equal to theirs (as decoded JSON) keep their entries: they
    are neither checked nor built again."""
    metadata = shape.metadata(obj, "CiliumEndpointSlice")
    slice_name: str = metadata["name"]
    namespace = shape.required_text(obj, "namespace", _where(slice_name))
    raw = shape.sequence(obj, "endpoints", _where(slice_name))
    version = metadata.get("resourceVersion") or ""
    if (
        previous is not None
        and previous.plain
        and previous.namespace == namespace
        and len(previous.raw) == len(raw)
    ):
        update = _changed_in_place(slice_name, namespace, version, raw, previous, source, now)
        if update is not None:
            return update
    return _read_whole(slice_name, namespace, version, raw, previous, source, now)


def _changed_in_place(
    slice_name: str,
    namespace: str,
    version: str,
    raw: list[Any],
    previous: SliceState,
    source: str,
    now: float,
) -> SliceUpdate | None:
    """The common change: same length, a few members differ at their position. None
    when a changed member takes the name of another (read the whole slice instead)."""
    old_raw = previous.raw
    # positions whose member differs, found without a Python-level loop
    changed = list(compress(range(len(raw)), map(ne, raw, old_raw)))
    entries = list(previous.entries)
    names = previous.names
    fresh: list[EndpointEntry] = []
    gone: list[str] = []
    for position in changed:
        old = entries[position]
        old_name = old.raw["name"] if old is not None else None
        entry: EndpointEntry | None = None
        try:
            fields = member_fields(raw[position])
        except MalformedObject as error:
            log.warning("ignoring endpoints[%d] of %s: %s", position, _where(slice_name), error)
            new_name = None
        else:
            new_name = fields[0]
            if new_name != old_name and new_name in names:
                return None
            member = (fields, raw[position])
            entry = member_entry(member, namespace, slice_name, version, source, now)
            fresh.append(entry)
        if old is not None and (entry is None or entry.claim != old.claim):
            gone.append(old.claim)
        entries[position] = entry
        if new_name != old_name:
            names = names.difference((old_name,)).union((new_name,) if new_name else ())
    # keep the members already held, so that the copies just decoded die young: retained,
    # they would reach the collector's oldest generation and make it walk the whole index
    kept = list(old_raw)
    for position in changed:
        kept[position] = raw[position]
    state = SliceState(namespace, kept, entries, names, plain=True)
    return SliceUpdate(slice_name, state, fresh, gone)


def _read_whole(
    slice_name: str,
    namespace: str,
    version: str,
    raw: list[Any],
    previous: SliceState | None,
    source: str,
    now: float,
) -> SliceUpdate:
    held: dict[str, EndpointEntry] = {}
    if previous is not None and previous.namespace == namespace:
        held = {entry.raw["name"]: entry for entry in previous.entries if entry is not None}
    entries: list[EndpointEntry | None] = []
    fresh: list[EndpointEntry] = []
    positions: dict[str, list[int]] = {}
    for position, item in enumerate(raw):
        name = item.get("name") if type(item) is dict else None
        old = held.get(name) if type(name) is str else None
        if old is not None and old.raw == item:
            entry = old  # checked when it was first seen
        else:
            try:
                fields = member_fields(item)
            except MalformedObject as error:
                where = _where(slice_name)
                log.warning("ignoring endpoints[%d] of %s: %s", position, where, error)
                entries.append(None)
                continue
            entry = member_entry((fields, item), namespace, slice_name, version, source, now)
            fresh.append(entry)
        positions.setdefault(entry.raw["name"], []).append(position)
        entries.append(entry)
    plain = True
    for name, listed in positions.items():
        if len(listed) > 1:
            where = _where(slice_name)
            log.warning("%s lists endpoint %s more than once; ignoring it", where, name)
            plain = False
            for position in listed:
                entries[position] = None
    kept = {entry.claim for entry in entries if entry is not None}
    fresh = [entry for entry in fresh if entry.claim in kept]
    gone = [] if previous is None else [c for c in previous.claims() if c not in kept]
    names = frozenset(name for name, listed in positions.items() if len(listed) == 1)
    return SliceUpdate(slice_name, SliceState(namespace, raw, entries, names, plain), fresh, gone)


def member_entry(
    member: tuple[Fields, Any],
    namespace: str,
    slice_name: str,
    version: str,
    source: str,
    now: float,
) -> EndpointEntry:
    """The index entry of one checked member; its labels are joined at lookup time."""
    fields, item = member
    name, identity_id, pairs, node, pod_uid, service_account = fields
    key = f"{namespace}/{name}"
    addresses: list[str] = []
    for pair in pairs:
        for text in pair:
            if not text:
                continue
            try:
                address = canonical_address(text)
            except ValueError:
                log.warning("slice %s, endpoint %s: ignoring address %r", slice_name, key, text)
                continue
            if address not in addresses:
                addresses.append(address)
    identity: Identity | None = None
    if identity_id is not None and identity_id != UNKNOWN_IDENTITY:
        identity = Identity(
            id=identity_id,
            labels=frozenset(),
            namespace=namespace,
            pod=name,
            pod_uid=pod_uid or None,
            service_account=service_account or None,
            source=source,
            observed_at=now,
        )
        # returned only while the CiliumIdentity of the id is not known
        answer = Lookup.unknown(source, f"endpoint {key}: labels of identity {identity_id} unknown")
    else:
        answer = Lookup.unknown(source, f"endpoint {key} has no identity yet")
    # A slice carries no endpoint state: the operator mirrors endpoints, and the identity
    # id is what tells whether one can be answered for.
    return EndpointEntry(
        key=key,
        claim=f"{slice_name}/{key}",
        uid=pod_uid,
        resource_version=version,
        state="",
        addresses=tuple(addresses),
        node_ip=node or None,
        identity=identity,
        labels_missing=identity is not None,
        answer=answer,
        raw=item,
    )


def slice_entries(obj: Any, source: str, now: float) -> tuple[str, list[EndpointEntry]]:
    """The name of a slice and the entries of its readable members."""
    update = read_slice(obj, source, now)
    return update.name, [entry for entry in update.state.entries if entry is not None]

"""Reading CiliumEndpointSlice objects (``cilium.io/v2alpha1``) into index entries.

A slice is cluster-scoped; its top-level ``namespace`` holds the namespace of every
member, and each member of ``endpoints[]`` is ``{id, name, networking: {addressing[],
node}, encryption, named-ports, pod-uid, service-account}`` where ``id`` is the
*identity* id (labels come from the CiliumIdentity of that id).

Slices are rewritten whole on every change of any member, and the operator lists the
members in no stable order (it walks a Go set), so reading is on the hot path of the watch
and cannot go by position. Each member is kept by its JSON text (as received, see
``ces_decode``, or encoded when handed over decoded): a member whose text is already held
keeps its entry wherever it now stands, and only new texts are decoded and type-checked
(the message is built only on error). Slice-level problems reject the slice; a bad
member, or a name listed twice, is dropped with a log line and the other members are kept.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

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


def member_fields(text: bytes) -> Fields:
    """The fields of one slice member, from its JSON text, every one type-checked
    (raises MalformedObject with the member-relative path)."""
    try:
        item = msgspec.json.decode(text)
    except msgspec.DecodeError as error:
        raise MalformedObject(f"the member is not JSON: {error}") from None
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
    members: dict[bytes, EndpointEntry]  # each member kept, by its JSON text
    texts_by_key: dict[str, bytes]  # the same, by endpoint key (``namespace/name``)

    def claims(self) -> list[str]:
        return [entry.claim for entry in self.members.values()]


@dataclass(slots=True)
class SliceUpdate:
    """A slice's new state, the entries to add (``fresh``) and the claims to remove."""

    name: str
    state: SliceState
    fresh: list[EndpointEntry]
    gone: list[str]


@dataclass(slots=True)
class _Version:
    """One version of a slice, as read before its members are."""

    name: str
    namespace: str
    resource_version: str
    texts: list[bytes]  # the members' JSON texts, in the order listed
    source: str
    now: float

    def entry(self, position: int) -> EndpointEntry | None:
        """The entry of one member, built from its text (None, logged: malformed)."""
        try:
            fields = member_fields(self.texts[position])
        except MalformedObject as error:
            log.warning("ignoring endpoints[%d] of %s: %s", position, _where(self.name), error)
            return None
        version = self.resource_version
        return member_entry(fields, self.namespace, self.name, version, self.source, self.now)


def _where(slice_name: str) -> str:
    return f"CiliumEndpointSlice {slice_name}"


def slice_name(obj: Any) -> str:
    """The name of a slice (``metadata.name``: slices are cluster-scoped)."""
    name: str = shape.metadata(obj, "CiliumEndpointSlice")["name"]
    return name


def read_slice(
    obj: Any, source: str, now: float, held: Mapping[str, SliceState] | None = None
) -> SliceUpdate:
    """Read one version of a slice. With ``held`` (the states of the slices already
    indexed, by name), a member whose JSON text is one its slice already holds keeps its
    entry: it is neither decoded, checked nor built again, wherever it now stands in
    ``endpoints`` (the operator lists a slice's members in no stable order)."""
    metadata = shape.metadata(obj, "CiliumEndpointSlice")
    name: str = metadata["name"]
    namespace = shape.required_text(obj, "namespace", _where(name))
    texts = _texts(shape.sequence(obj, "endpoints", _where(name)), name)
    version = metadata.get("resourceVersion") or ""
    read = _Version(name, namespace, version, texts, source, now)
    previous = held.get(name) if held is not None else None
    if previous is not None and previous.namespace == namespace:
        update = _patched(read, previous)
        if update is not None:
            return update
    return _rebuilt(read, previous)


def _patched(read: _Version, previous: SliceState) -> SliceUpdate | None:
    """The common change: a few members new, a few gone, the others (in any order) held.
    Only the new ones are read, and the previous state is patched in place (only the
    writer ever reads it; not allocating a new one per event spares the collector).
    None, with the state untouched, when a name would be listed twice (``_rebuilt``
    sorts that out)."""
    texts, held, texts_by_key = read.texts, previous.members, previous.texts_by_key
    listed = set(texts)
    if len(listed) < len(texts):
        return None
    # one set operation finds the gone and the new texts; it reuses the hashes the dict
    # stores, so a held text is read only to confirm a match (measured: cheaper than
    # probing the dict member by member, whose cache misses dominate a cold slice)
    changed = listed.symmetric_difference(held)
    gone = [held[text] for text in changed if text in held]
    leaving = {entry.key for entry in gone}
    fresh: list[tuple[bytes, EndpointEntry]] = []
    for position, text in _in_listed_order(changed.difference(held) if gone else changed, texts):
        entry = read.entry(position)
        if entry is None:
            continue
        if entry.key in texts_by_key and entry.key not in leaving:
            return None
        fresh.append((text, entry))
    if len({entry.key for _, entry in fresh}) < len(fresh):
        return None
    for entry in gone:
        del held[texts_by_key.pop(entry.key)]
    for text, entry in fresh:
        held[text] = entry
        texts_by_key[entry.key] = text
    entries = [entry for _, entry in fresh]
    return SliceUpdate(read.name, previous, entries, _claims_gone(gone, entries))


def _in_listed_order(new: set[bytes], texts: list[bytes]) -> list[tuple[int, bytes]]:
    """The new texts with their positions, in the order listed (one new text, the common
    case, is found without walking every member)."""
    if len(new) == 1:
        return [(texts.index(text), text) for text in new]
    return [(position, text) for position, text in enumerate(texts) if text in new]


def _rebuilt(read: _Version, previous: SliceState | None) -> SliceUpdate:
    """Every member placed again (a first version, a slice that moved namespace, or a name
    listed twice); members held before with the same text keep their entries."""
    held = previous.members if previous is not None and previous.namespace == read.namespace else {}
    members: dict[bytes, EndpointEntry] = {}
    fresh: list[EndpointEntry] = []
    for position, text in enumerate(read.texts):
        if text in members:
            continue  # the same text twice: one entry, dropped below as a repeated name
        entry = held.get(text)
        if entry is None:
            entry = read.entry(position)
            if entry is None:
                continue
            fresh.append(entry)
        members[text] = entry
    repeated = _drop_repeated_names(members, read.texts, read.name)
    fresh = [entry for entry in fresh if entry.key not in repeated]
    texts_by_key = {entry.key: text for text, entry in members.items()}
    before = previous.members.items() if previous is not None else ()
    gone = [entry for text, entry in before if members.get(text) is not entry]
    state = SliceState(read.namespace, members, texts_by_key)
    return SliceUpdate(read.name, state, fresh, _claims_gone(gone, fresh))


def _claims_gone(gone: list[EndpointEntry], fresh: list[EndpointEntry]) -> list[str]:
    """The claims to remove: a pod whose member changed keeps its claim (it is replaced,
    not gone, so that no reader sees it missing in between)."""
    if not (gone and fresh):
        return [entry.claim for entry in gone]
    claims = {entry.claim for entry in fresh}
    return [entry.claim for entry in gone if entry.claim not in claims]


def _texts(members: list[Any], slice_name: str) -> list[bytes]:
    """The JSON text of each member: as received (``ces_decode`` hands over the texts) or
    encoded from a member handed over decoded; one that cannot be encoded is dropped with
    a log line."""
    if set(map(type, members)) <= {bytes}:
        return members  # JSON never decodes to bytes: these are the texts
    texts = []
    for position, member in enumerate(members):
        try:
            texts.append(member if type(member) is bytes else msgspec.json.encode(member))
        except (TypeError, ValueError) as error:
            where = _where(slice_name)
            log.warning("ignoring endpoints[%d] of %s: not JSON (%s)", position, where, error)
    return texts


def _drop_repeated_names(
    kept: dict[bytes, EndpointEntry], texts: list[bytes], slice_name: str
) -> set[str]:
    """Drop every member whose name is listed more than once (the same text twice, or
    two texts naming one pod): which one is right cannot be told. Returns their keys."""
    listed = Counter(kept[text].key for text in texts if text in kept)
    repeated = {key for key, times in listed.items() if times > 1}
    for key in sorted(repeated):
        log.warning("%s lists endpoint %s more than once; ignoring it", _where(slice_name), key)
    if repeated:
        for text in [text for text, entry in kept.items() if entry.key in repeated]:
            del kept[text]
    return repeated


def member_entry(
    fields: Fields,
    namespace: str,
    slice_name: str,
    version: str,
    source: str,
    now: float,
) -> EndpointEntry:
    """The index entry of one checked member; its labels are joined at lookup time."""
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
    )


def slice_entries(obj: Any, source: str, now: float) -> tuple[str, list[EndpointEntry]]:
    """The name of a slice and the entries of its readable members."""
    update = read_slice(obj, source, now)
    return update.name, list(update.state.members.values())

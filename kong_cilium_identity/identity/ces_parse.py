"""Reading CiliumEndpointSlice objects (``cilium.io/v2alpha1``) into index entries.

A slice is cluster-scoped; its top-level ``namespace`` holds the namespace of every
member, and each member of ``endpoints[]`` is ``{id, name, networking: {addressing[],
node}, encryption, named-ports, pod-uid, service-account}`` where ``id`` is the
*identity* id (labels come from the CiliumIdentity of that id).

Slices are rewritten whole on every change of any member, so reading is on the hot path of
the watch: members are type-checked inline (the message is built only on error), and a
member whose checked fields equal those of the entry already indexed is not rebuilt.
Slice-level problems reject the slice; a bad member, or a name listed twice, is dropped
with a log line and the other members are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from kong_cilium_identity.identity import crd_shapes as shape
from kong_cilium_identity.identity.crd_parse import EndpointEntry, canonical_address
from kong_cilium_identity.identity.crd_shapes import MAX_IDENTITY, MalformedObject
from kong_cilium_identity.identity.model import Identity, Lookup

log = logging.getLogger(__name__)

UNKNOWN_IDENTITY = 0  # Cilium's "unknown" identity: the endpoint has none yet

# (name, identity id or None, ((ipv4, ipv6), ...), node, pod-uid, service-account)
Fields = tuple[str, int | None, tuple[tuple[str, str], ...], str, str, str]
# a member to build (its checked fields and the decoded JSON), or an entry to keep
Member = EndpointEntry | tuple[Fields, Any]


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
    for port in shape.objects(item, "named-ports", "named-ports"):
        _text(port, "name", "named-ports[].")
        _text(port, "protocol", "named-ports[].")
        number = port.get("port")
        if number is not None and type(number) is not int:
            raise _wrong("named-ports[].port", number, "an integer")
    external = shape.mapping(item, "external-identifiers", "the member")
    for label in external:
        _text(external, label, "external-identifiers.")


def read_slice(
    obj: Any, indexed: Callable[[str], EndpointEntry | None] | None = None
) -> tuple[str, str, str, dict[str, Member]]:
    """Name, namespace and resourceVersion of a slice, and its readable members by name:
    checked fields, or the entry already indexed when the member is unchanged."""
    metadata = shape.metadata(obj, "CiliumEndpointSlice")
    slice_name: str = metadata["name"]
    where = f"CiliumEndpointSlice {slice_name}"
    namespace = shape.required_text(obj, "namespace", where)
    prefix = f"{slice_name}/{namespace}/"
    members: dict[str, Member] = {}
    repeated: list[str] = []
    for position, item in enumerate(shape.sequence(obj, "endpoints", where)):
        if indexed is not None and type(item) is dict:
            name = item.get("name")
            if type(name) is str:
                old = indexed(prefix + name)
                if old is not None and old.raw == item:  # checked when it was first seen
                    if name in members:
                        repeated.append(name)
                    members[name] = old
                    continue
        try:
            fields = member_fields(item)
        except MalformedObject as error:
            log.warning("ignoring endpoints[%d] of %s: %s", position, where, error)
            continue
        if fields[0] in members:
            repeated.append(fields[0])
        members[fields[0]] = (fields, item)
    for name in set(repeated):
        log.warning("%s lists endpoint %s more than once; ignoring it", where, name)
        del members[name]
    return slice_name, namespace, metadata.get("resourceVersion") or "", members


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


def slice_entries(
    obj: Any,
    source: str,
    now: float,
    indexed: Callable[[str], EndpointEntry | None] | None = None,
) -> tuple[str, list[EndpointEntry], list[EndpointEntry]]:
    """The name of a slice, the entries of its readable members, and which of those are
    new (built now).

    ``indexed`` gives the entry already held for a claim: a member equal (as decoded
    JSON) to the one that entry was read from is neither checked nor built again.
    """
    slice_name, namespace, version, members = read_slice(obj, indexed)
    entries = []
    fresh = []
    for member in members.values():
        if isinstance(member, EndpointEntry):
            entries.append(member)
        else:
            entry = member_entry(member, namespace, slice_name, version, source, now)
            fresh.append(entry)
            entries.append(entry)
    return slice_name, entries, fresh

"""Decoding CiliumEndpointSlice list pages and watch lines, members left as JSON text.

The operator rewrites a whole slice (about 100 members, 12 KiB) whenever one member
changes, so decoding every member of every event into Python objects costs more than
everything else the watch does. Here the slice's own fields are decoded and each member of
``endpoints[]`` is kept as its JSON text (``bytes``, copied out of the line msgspec left it
in as a ``Raw``): the reader compares a member's text with the ones already indexed and
decodes only the members that are new.

The result has the shape of the generic decoding (a dict for the event, the page and each
slice), so the strict checks downstream are the same; only the members differ. Anything the
typed decoding does not accept (a slice that is not an object, ``endpoints`` that is not an
array, an event other than ADDED/MODIFIED/DELETED, whose object may be a ``Status``) is
decoded generically instead, and the checks downstream reject or handle it as before.
"""

from __future__ import annotations

from typing import Any

import msgspec

from kong_cilium_identity.identity.cep_watch import Codec

decode_any = msgspec.json.decode  # the generic decoding, for everything else

CHANGES = frozenset(("ADDED", "MODIFIED", "DELETED"))


class _Slice(msgspec.Struct):
    """The fields of a slice the reader uses; UNSET when absent, so that the object handed
    on has the keys the JSON had."""

    metadata: Any = msgspec.UNSET
    namespace: Any = msgspec.UNSET
    endpoints: list[msgspec.Raw] | msgspec.UnsetType | None = msgspec.UNSET

    def as_object(self) -> dict[str, Any]:
        fields = (("metadata", self.metadata), ("namespace", self.namespace))
        found = {name: value for name, value in fields if value is not msgspec.UNSET}
        if self.endpoints is not msgspec.UNSET:
            members = self.endpoints
            # as bytes of their own: a Raw points into the whole line, which it keeps alive
            found["endpoints"] = None if members is None else list(map(bytes, members))
        return found


class _Event(msgspec.Struct):
    type: str
    object: _Slice


class _Page(msgspec.Struct):
    metadata: Any = msgspec.UNSET
    items: list[_Slice] | msgspec.UnsetType | None = msgspec.UNSET


_events = msgspec.json.Decoder(_Event)
_pages = msgspec.json.Decoder(_Page)


def decode_slice_event(line: bytes | str) -> Any:
    """One watch line of the slice resource."""
    try:
        event = _events.decode(line)
    except msgspec.ValidationError:
        return decode_any(line)
    if event.type not in CHANGES:
        return decode_any(line)  # ERROR (a Status object), BOOKMARK, or unknown
    return {"type": event.type, "object": event.object.as_object()}


def decode_slice_page(body: bytes | str) -> Any:
    """One list page (``CiliumEndpointSliceList``) of the slice resource."""
    try:
        page = _pages.decode(body)
    except msgspec.ValidationError:
        return decode_any(body)
    found: dict[str, Any] = {}
    if page.metadata is not msgspec.UNSET:
        found["metadata"] = page.metadata
    if page.items is not msgspec.UNSET:
        found["items"] = None if page.items is None else [s.as_object() for s in page.items]
    return found


SLICE_CODEC = Codec(page=decode_slice_page, event=decode_slice_event)

"""Flows in their JSON form (``hubble observe -o json`` lines), read strictly.

Over gRPC the protobuf decoder guarantees every field's type. The JSON form does not,
and protobuf's own JSON parser is lenient where a lookup must not be: it takes
``"identity": "3418"`` for a number and ``null`` for an absent field. Here every field
this package's ``flow``/``observer``/``relay`` subset defines is checked against its
declared type before parsing; one wrong type anywhere makes the whole line unreadable
(None, with a log line), so it can never answer a lookup. Keys the subset does not
define (``ethernet``, ``l7``, ``Summary``, ...) are not read and not checked.

Accepted per field type: strings; bools (JSON true/false only); 32-bit integers as JSON
integers (not bools, not strings); 64-bit integers as JSON integers or decimal strings
(protobuf's JSON form writes them as strings); enums as value names (unknown names are
ignored, as newer Cilium adds values; numbers are refused); ``Timestamp`` as an RFC 3339 string;
wrapper types as their bare value; messages as objects; repeated fields as lists.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from kong_cilium_identity.proto.observer import observer_pb2

log = logging.getLogger(__name__)

_INT32 = (
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_SFIXED32,
)
_INT64 = (
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
)
_UNSIGNED = (
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
)
_WRAPPERS = {
    "google.protobuf.BoolValue": FieldDescriptor.TYPE_BOOL,
    "google.protobuf.Int32Value": FieldDescriptor.TYPE_INT32,
    "google.protobuf.UInt32Value": FieldDescriptor.TYPE_UINT32,
    "google.protobuf.Int64Value": FieldDescriptor.TYPE_INT64,
    "google.protobuf.UInt64Value": FieldDescriptor.TYPE_UINT64,
    "google.protobuf.StringValue": FieldDescriptor.TYPE_STRING,
}


_RESPONSE = cast(Descriptor, observer_pb2.GetFlowsResponse.DESCRIPTOR)


class ShapeError(ValueError):
    """A field of the JSON form does not have its declared type."""


def read_response(value: Any) -> observer_pb2.GetFlowsResponse | None:
    """One decoded JSON object as a GetFlowsResponse, or None (logged) when any field
    this package reads has the wrong type."""
    try:
        _check_message(value, _RESPONSE, "")
        return json_format.ParseDict(
            value, observer_pb2.GetFlowsResponse(), ignore_unknown_fields=True
        )
    except (ShapeError, json_format.ParseError, ValueError, TypeError) as error:
        log.warning("hubble: ignored a flow in JSON form: %s", error)
        return None


def read_line(line: str) -> observer_pb2.GetFlowsResponse | None:
    """One ``hubble observe -o json`` line; None (logged) when it does not read."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError) as error:
        log.warning("hubble: ignored a line that is not JSON: %s", error)
        return None
    return read_response(value)


def _check_message(value: Any, descriptor: Descriptor, path: str) -> None:
    if not isinstance(value, Mapping):
        raise ShapeError(f"{path or 'the line'} is {type(value).__name__}, not an object")
    by_name: dict[str, FieldDescriptor] = {}
    for declared in descriptor.fields:
        by_name[declared.name] = declared
        by_name[declared.json_name] = declared
    for key, item in value.items():
        field = by_name.get(key) if isinstance(key, str) else None
        if field is None:
            continue
        where = f"{path}.{key}" if path else key
        if field.is_repeated:
            if not isinstance(item, list):
                raise ShapeError(f"{where} is {type(item).__name__}, not a list")
            for index, element in enumerate(item):
                _check_value(element, field, f"{where}[{index}]")
        else:
            _check_value(item, field, where)


def _check_value(value: Any, field: FieldDescriptor, where: str) -> None:
    kind = field.type
    message = field.message_type
    if kind == FieldDescriptor.TYPE_MESSAGE and message is not None:
        if message.full_name == "google.protobuf.Timestamp":
            _check_timestamp(value, where)
        elif message.full_name in _WRAPPERS:
            _check_scalar(value, _WRAPPERS[message.full_name], where)
        else:
            _check_message(value, message, where)
    elif kind == FieldDescriptor.TYPE_ENUM:
        if not isinstance(value, str):  # Hubble writes enum names, never numbers
            raise ShapeError(f"{where} is {type(value).__name__}, not an enum name")
    else:
        _check_scalar(value, kind, where)


def _check_scalar(value: Any, kind: int, where: str) -> None:
    if kind == FieldDescriptor.TYPE_STRING:
        ok = isinstance(value, str)
    elif kind == FieldDescriptor.TYPE_BOOL:
        ok = isinstance(value, bool)
    elif kind in _INT32:
        ok = _integer_in_range(value, 32, kind in _UNSIGNED)
    elif kind in _INT64:
        if isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit():
            value = int(value)
        ok = _integer_in_range(value, 64, kind in _UNSIGNED)
    elif kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = False
    if not ok:
        raise ShapeError(f"{where} is {type(value).__name__} {value!r:.40}, not its declared type")


def _integer_in_range(value: Any, bits: int, unsigned: bool) -> bool:
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    if unsigned:
        return 0 <= value < 1 << bits
    return -(1 << (bits - 1)) <= value < 1 << (bits - 1)


def _check_timestamp(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise ShapeError(f"{where} is {type(value).__name__}, not an RFC 3339 string")
    try:
        Timestamp().FromJsonString(value)
    except ValueError:
        raise ShapeError(f"{where} is not an RFC 3339 time") from None

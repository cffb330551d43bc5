"""Strict readers for fields of Cilium objects decoded from the API's JSON.

Every field the index reads goes through one of these: a field that is absent (or JSON
null) gives the default, a field of the wrong type raises ``MalformedObject``. Nothing is
coerced: a string where a list belongs is not iterated character by character, a string
where a number belongs is not converted, and ``true`` is not the number 1.

The checks compare exact types (``type(x) is dict``): JSON decodes to exactly these, and
an ``isinstance`` against the abstract ``Mapping`` costs several times more on a path that
reads every field of 100,000 objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_IDENTITY = 2**32 - 1  # Cilium's NumericIdentity is a uint32


class MalformedObject(ValueError):
    """An object the index cannot use; its key (if any) is evicted."""


def _kind(value: Any) -> str:
    return type(value).__name__


def mapping(obj: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    """An optional JSON object field ({} when absent)."""
    value = obj.get(key)
    if value is None:
        return {}
    if type(value) is not dict:
        raise MalformedObject(f"{where}.{key} is a {_kind(value)}, not an object")
    return value


def sequence(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    """An optional JSON array field ([] when absent)."""
    value = obj.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise MalformedObject(f"{where}.{key} is a {_kind(value)}, not an array")
    return value


def text(obj: Mapping[str, Any], key: str, where: str) -> str:
    """An optional JSON string field ("" when absent)."""
    value = obj.get(key)
    if value is None:
        return ""
    if type(value) is not str:
        raise MalformedObject(f"{where}.{key} is a {_kind(value)}, not a string")
    return value


def required_text(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = text(obj, key, where)
    if not value:
        raise MalformedObject(f"{where}.{key} is missing or empty")
    return value


def integer(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    """An optional JSON integer field (None when absent); booleans are not integers."""
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise MalformedObject(f"{where}.{key} is a {_kind(value)}, not an integer")
    return value


def identity_id(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    """A numeric security identity: an integer within Cilium's uint32 range."""
    value = integer(obj, key, where)
    if value is not None and not 0 <= value <= MAX_IDENTITY:
        raise MalformedObject(f"{where}.{key} {value} is outside 0..{MAX_IDENTITY}")
    return value


def strings(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    """An optional JSON array of strings (() when absent)."""
    items = sequence(obj, key, where)
    for position, item in enumerate(items):
        if type(item) is not str:
            raise MalformedObject(f"{where}.{key}[{position}] is a {_kind(item)}, not a string")
    return tuple(items)


def objects(obj: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
    """An optional JSON array of objects ([] when absent)."""
    items = sequence(obj, key, where)
    for position, item in enumerate(items):
        if type(item) is not dict:
            raise MalformedObject(f"{where}.{key}[{position}] is a {_kind(item)}, not an object")
    return items


def string_map(obj: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    """A required JSON object whose values are all strings."""
    if obj.get(key) is None:
        raise MalformedObject(f"{where}.{key} is missing")
    found = mapping(obj, key, where)
    for name, value in found.items():
        if type(name) is not str or type(value) is not str:
            raise MalformedObject(f"{where}.{key}[{name!r}] is a {_kind(value)}, not a string")
    return dict(found)


def metadata(obj: Any, what: str) -> Mapping[str, Any]:
    """``metadata`` of an API object, with a non-empty string ``name``."""
    if type(obj) is not dict:
        raise MalformedObject(f"{what} is a {_kind(obj)}, not an object")
    meta = obj.get("metadata")
    if type(meta) is not dict:
        raise MalformedObject(f"{what} without metadata")
    required_text(meta, "name", f"{what}.metadata")
    for key in ("namespace", "uid", "resourceVersion"):
        text(meta, key, f"{what}.metadata")
    return meta

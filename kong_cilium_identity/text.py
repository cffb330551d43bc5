"""Strings from Kong that can be trusted as text."""

from __future__ import annotations

from typing import Any


def valid_text(value: Any) -> str | None:
    """``value`` when it is a non-empty string of valid UTF-8, else None.

    Plugin servers that survive invalid UTF-8 from Kong hand it over with surrogate
    escapes; such a value is never trusted (it names nobody and matches nothing).
    """
    if not isinstance(value, str) or not value:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value

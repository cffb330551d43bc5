"""A thin layer over kong-pdk's ``kong`` proxy that works in both return conventions.

With the default Lua style every PDK call returns a ``(data, err)`` tuple (and a tuple is
always truthy, so ``if not kong.client.get_consumer()`` would never deny); with
``--no-lua-style`` it returns the data or raises. ``call`` accepts both and raises
PdkError on an error, so no caller ever mistakes an error for a value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kong_cilium_identity.text import valid_text


class PdkError(RuntimeError):
    """Kong answered a PDK call with an error."""


def call(method: Callable[..., Any], *args: Any) -> Any:
    result = method(*args)
    if isinstance(result, tuple):
        if len(result) != 2:
            raise PdkError(f"unexpected PDK reply {result!r}")
        data, err = result
        if err:
            raise PdkError(str(err))
        return data
    return result


def text(value: Any) -> str | None:
    """A string from Kong (the first one of a header's value list), or None when it is
    absent, empty or not valid UTF-8 text."""
    if isinstance(value, list):
        value = value[0] if value else None
    return valid_text(value)

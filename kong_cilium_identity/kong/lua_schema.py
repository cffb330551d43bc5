"""``kong-cilium-identity schema --lua``: the plugin's Kong schema as a Lua ``schema.lua``.

Kong nodes that never run the plugin server still need the plugin's schema to accept its
configuration: a hybrid-mode control plane validates every plugin entity it hands to the
data planes, and Konnect takes a custom plugin as an uploaded ``schema.lua``. This module
writes the schema the plugin reports to Kong (``plugin_info()["Schema"]``) as that Lua
file, field for field, and adds the one thing a Lua plugin schema states and the dump does
not: the plugin runs on HTTP(S) routes only (``typedefs.protocols_http``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LUA_KEYWORDS = frozenset(
    [
        "and",
        "break",
        "do",
        "else",
        "elseif",
        "end",
        "false",
        "for",
        "function",
        "goto",
        "if",
        "in",
        "local",
        "nil",
        "not",
        "or",
        "repeat",
        "return",
        "then",
        "true",
        "until",
        "while",
    ]
)
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_INDENT = "  "


def lua_string(text: str) -> str:
    """A double-quoted Lua string literal; bytes outside printable ASCII become ``\\ddd``."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.extend(f"\\{byte:03d}" for byte in char.encode("utf-8"))
    return '"' + "".join(out) + '"'


def _key(name: str) -> str:
    if _IDENTIFIER.match(name) and name not in _LUA_KEYWORDS:
        return name
    return f"[{lua_string(name)}]"


def _number(value: int | float) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} has no Lua literal")
    return repr(value)


def lua_value(value: Any, depth: int = 0) -> str:
    """A Lua expression for JSON-like data; mappings keep their key order."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, str):
        return lua_string(value)
    if isinstance(value, Mapping):
        items = [f"{_key(str(k))} = {lua_value(v, depth + 1)}" for k, v in value.items()]
        return _table(items, depth)
    if isinstance(value, Sequence):
        return _table([lua_value(v, depth + 1) for v in value], depth)
    raise TypeError(f"{type(value).__name__} has no Lua literal")


def _table(items: list[str], depth: int) -> str:
    if not items:
        return "{}"
    one_line = "{ " + ", ".join(items) + " }"
    if len(one_line) + len(_INDENT) * depth <= 90 and "\n" not in one_line:
        return one_line
    inner = _INDENT * (depth + 1)
    return "{\n" + "".join(f"{inner}{item},\n" for item in items) + _INDENT * depth + "}"


def render_schema(schema: Mapping[str, Any]) -> str:
    """``schema.lua`` for a dumped plugin schema (``{"name": ..., "fields": [...]}``)."""
    fields = [lua_value(field, 2) for field in schema["fields"]]
    body = "".join(f"    {field},\n" for field in fields)
    return (
        f"-- Kong schema of the {schema['name']} plugin, written by\n"
        "-- `kong-cilium-identity schema --lua` from the schema its plugin server reports.\n"
        "-- Install it where Kong nodes validate configuration without running the plugin\n"
        "-- server (hybrid-mode control planes), or upload it to Konnect as a custom plugin.\n"
        'local typedefs = require "kong.db.schema.typedefs"\n'
        "\n"
        "return {\n"
        f"  name = {lua_string(schema['name'])},\n"
        "  fields = {\n"
        "    { protocols = typedefs.protocols_http },\n"
        f"{body}"
        "  },\n"
        "}\n"
    )


def plugin_schema_lua() -> str:
    """The ``schema.lua`` of the plugin this package serves."""
    from kong_cilium_identity.plugin import plugin_info

    return render_schema(plugin_info()["Schema"])

"""What the plugin and Kong agree on, read by the plugin, the plugin server and the tools.

Nothing here belongs to one subsystem: the plugin must run under any plugin server, and the
server must settle the companion's calls without knowing the plugin. The Lua side
(``lua/kong/plugins/cilium-identity-guard/extension.lua``) spells the same keys; a test
holds the two together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

PLUGIN_NAME: Final = "cilium-identity"
GUARD_NAME: Final = "cilium-identity-guard"

# The two PDK methods the guard's Lua module adds to Kong (one round trip each).
FACTS_METHOD: Final = "kong.cilium_identity.facts"
APPLY_METHOD: Final = "kong.cilium_identity.apply"

# ngx.ctx key under which apply() records the decision the guard looks for.
DECIDED_CTX_KEY: Final = "cilium_identity_decision"
# Key of the decision in Kong's log serializer (kong.log.set_serialize_value).
SERIALIZE_KEY: Final = "cilium_identity"
# kong.ctx.shared key where Kong's jwt plugin leaves the token it verified.
JWT_CTX_KEY: Final = "authenticated_jwt_token"


def pdk_method(kong: Any, method: str) -> Any:
    """The callable for a dotted PDK method name on a ``kong`` object (``kong.a.b`` ->
    ``kong.a.b``), so a method name is written once, here, and not as an attribute path."""
    head, *path = method.split(".")
    if head != "kong" or not path:
        raise ValueError(f"not a PDK method name: {method!r}")
    target = kong
    for part in path:
        target = getattr(target, part)
    return target


def plugin_info(
    name: str, version: str, priority: int, phases: Sequence[str], schema: Sequence[Any]
) -> dict[str, Any]:
    """The entry Kong reads from ``query_cmd`` (``--dump``) and ``GetPluginInfo``: kong-pdk's
    shape, built here only."""
    return {
        "Name": name,
        "Phases": list(phases),
        "Priority": priority,
        "Version": version,
        "Schema": {
            "name": name,
            "fields": [{"config": {"type": "record", "fields": list(schema)}}],
        },
    }

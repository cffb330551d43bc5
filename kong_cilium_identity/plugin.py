"""Kong's contract: name, version, priority, phases, schema, and the Plugin class.

Priority 1000 runs after every authentication plugin (jwt 1450, oauth2 1400, key-auth
1250, openid-connect 1050, hmac-auth 1030) and before ip-restriction (990) and acl (950).
The module follows kong-pdk's plugin contract, so it also runs under stock
``kong-python-pluginserver``.
"""

from __future__ import annotations

import weakref
from typing import Any

from kong_cilium_identity import PLUGIN_NAME, __version__
from kong_cilium_identity.access import handle_access
from kong_cilium_identity.identity.resolver import RESOLVERS
from kong_cilium_identity.schema import config_fields, parse_config
from kong_cilium_identity.token import TokenVerifier

name = PLUGIN_NAME
version = __version__
priority = 1000
Schema = config_fields()


class Plugin:
    """One Kong plugin instance (per nginx worker and config). Holds no resources of its
    own: the resolver it uses is shared process-wide and released when the instance is
    closed or collected."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = parse_config(config)
        self.verifier = TokenVerifier(self.config.token) if self.config.token.enabled else None
        try:
            self.resolver = RESOLVERS.acquire(self.config.resolver)
        except BaseException:
            if self.verifier is not None:
                self.verifier.close()
            raise
        self._release = weakref.finalize(self, _release, self.config.resolver, self.verifier)

    def access(self, kong: Any) -> None:
        handle_access(kong, self.config, self.resolver, self.verifier)

    def close(self) -> None:
        self._release()


def _release(resolver_settings: Any, verifier: TokenVerifier | None) -> None:
    """Let go of the shared resolver and key store (runs once: on close or collection)."""
    RESOLVERS.release(resolver_settings)
    if verifier is not None:
        verifier.close()


def plugin_info() -> dict[str, Any]:
    """The entry Kong's ``query_cmd`` expects (kong-pdk's GetPluginInfo shape)."""
    return {
        "Name": name,
        "Version": version,
        "Priority": priority,
        "Phases": ["access"],
        "Schema": {
            "name": name,
            "fields": [{"config": {"type": "record", "fields": Schema}}],
        },
    }

"""Kong's contract: name, version, priority, phases, schema, and the Plugin class.

Priority 1000 runs after every authentication plugin (jwt 1450, oauth2 1400, key-auth
1250, openid-connect 1050, hmac-auth 1030) and before ip-restriction (990) and acl (950).
The module follows kong-pdk's plugin contract, so it also runs under stock
``kong-python-pluginserver``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import weakref
from typing import Any

from kong_cilium_identity import __version__, hosting
from kong_cilium_identity.budget import timeout_violations
from kong_cilium_identity.errors import ConfigError
from kong_cilium_identity.identity.resolver import RESOLVERS
from kong_cilium_identity.kong.access import KongSide, handle_access
from kong_cilium_identity.kong_contract import PLUGIN_NAME
from kong_cilium_identity.kong_contract import plugin_info as build_plugin_info
from kong_cilium_identity.schema import config_fields, parse_config
from kong_cilium_identity.token import TokenVerifier

log = logging.getLogger(__name__)

name = PLUGIN_NAME
version = __version__
priority = 1000
Schema = config_fields()


# Kong adds these to every instance's config; they change with each reload or worker.
_PER_INSTANCE_KEYS = ("__seq__", "__key__")


class Plugin:
    """One Kong plugin instance (per nginx worker and config). Holds no resources of its
    own: the resolver it uses is shared process-wide and released when the instance is
    closed or collected.

    A configuration the plugin cannot use does not fail StartInstance (Kong would retry it
    on every request and answer a bare 500): the instance starts *invalid*, the problem is
    logged once per configuration, and every request on it is refused with a 500."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.invalid: str | None = None
        self.kong_side = KongSide()
        self._release: Any = None
        try:
            self.config = parse_config(config)
            problems = timeout_violations(self.config, hosting.event_deadline())
            if problems:
                raise ConfigError("; ".join(problems))
        except ConfigError as error:
            self.invalid = str(error)
            _report_invalid(config, self.invalid)
            return
        self.verifier = TokenVerifier(self.config.token) if self.config.token.enabled else None
        try:
            self.resolver = RESOLVERS.acquire(self.config.resolver)
        except BaseException:
            if self.verifier is not None:
                self.verifier.close()
            raise
        self._release = weakref.finalize(self, _release, self.config.resolver, self.verifier)

    def access(self, kong: Any) -> None:
        if self.invalid is not None:
            kong.response.error(500, "An unexpected error occurred (invalid_config)")
            return
        handle_access(kong, self.config, self.resolver, self.verifier, self.kong_side)

    def close(self) -> None:
        if self._release is not None:
            self._release()


_reported: set[str] = set()
_reported_lock = threading.Lock()


def _report_invalid(config: dict[str, Any], problem: str) -> None:
    """Log an unusable configuration once per configuration, not once per worker,
    instance or request."""
    stable = {k: v for k, v in config.items() if k not in _PER_INSTANCE_KEYS}
    digest = hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()
    with _reported_lock:
        if digest in _reported:
            return
        _reported.add(digest)
    scope = ("route_id", "service_id", "__plugin_id")
    where = ", ".join(f"{key}={config[key]}" for key in scope if config.get(key))
    log.error(
        "cilium-identity: invalid configuration (%s): %s; every request on it is refused "
        "with 500 until the configuration is fixed",
        where or "no route or service",
        problem,
    )


def _release(resolver_settings: Any, verifier: TokenVerifier | None) -> None:
    """Let go of the shared resolver and key store (runs once: on close or collection)."""
    RESOLVERS.release(resolver_settings)
    if verifier is not None:
        verifier.close()


def plugin_info() -> dict[str, Any]:
    """The entry Kong's ``query_cmd`` expects (kong-pdk's GetPluginInfo shape)."""
    return build_plugin_info(name, version, priority, ["access"], Schema)

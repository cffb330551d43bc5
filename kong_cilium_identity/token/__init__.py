"""The plugin's own token check: JWT/OIDC verification, Kubernetes service-account tokens.

How the plugin uses it (nothing here blocks before the first PDK call: keys are fetched
by a background thread per key source, started when the first instance acquires it)::

    from kong_cilium_identity import token

    # plugin instance start (config parse); ConfigError on a bad record
    settings = token.parse_settings(conf.get("token"))
    verifier = token.TokenVerifier(settings) if settings.enabled else None
    rules = token.claim_rules_for(settings)   # add to the Policy's claim rules

    # access phase, after the first cheap PDK call
    result = verifier.check(kong.request.get_header(settings.header))
    if isinstance(result, token.TokenFailure):
        # 401 with result.headers() (WWW-Authenticate), 400 for duplicate headers,
        # 503 when no signing key could be loaded; result.reason for logs/metrics
        kong.response.error(result.status, message, result.headers())
    else:
        facts = Facts(consumer, has_credential, client_ip, claims=result.claims)

    # plugin instance close
    verifier.close()

``consumer_claim(claims, settings)`` names the consumer a token stands for, with the
arguments for ``kong.client.load_consumer`` and a check of the row Kong returns.
"""

from __future__ import annotations

from kong_cilium_identity.token.binding import ConsumerClaim, claim_rules_for, consumer_claim
from kong_cilium_identity.token.keys import KEY_STORES, KeyStore
from kong_cilium_identity.token.settings import (
    DISABLED,
    SCHEMA,
    KeySettings,
    TokenSettings,
    parse_settings,
)
from kong_cilium_identity.token.verify import (
    TokenFailure,
    TokenReason,
    Verified,
    extract_token,
    verify,
)


class TokenVerifier:
    """One per plugin instance: verifies with the process-wide key store of its settings."""

    def __init__(self, settings: TokenSettings) -> None:
        if not settings.enabled:
            raise ValueError("token verification is not enabled in these settings")
        self.settings = settings
        self.keys = KEY_STORES.acquire(settings.keys)
        self._closed = False

    def verify(self, token: str) -> Verified | TokenFailure:
        return verify(token, self.settings, self.keys)

    def check(self, header_value: object) -> Verified | TokenFailure:
        """Extract and verify in one step."""
        token = extract_token(header_value, self.settings)
        return token if isinstance(token, TokenFailure) else self.verify(token)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            KEY_STORES.release(self.settings.keys)


__all__ = [
    "DISABLED",
    "KEY_STORES",
    "SCHEMA",
    "ConsumerClaim",
    "KeySettings",
    "KeyStore",
    "TokenFailure",
    "TokenReason",
    "TokenSettings",
    "TokenVerifier",
    "Verified",
    "claim_rules_for",
    "consumer_claim",
    "extract_token",
    "parse_settings",
    "verify",
]

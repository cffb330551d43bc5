"""The access phase: gather facts with as few PDK calls as possible, decide, apply.

PDK calls, in order (each is one round trip to Kong):
1. ``kong.client.get_consumer``   - always; first, and nothing slow happens before it
2. ``kong.client.get_credential`` - unless there is no consumer
3. ``kong.client.get_ip`` (or ``get_forwarded_ip``)
   [``kong.ctx.shared.get("authenticated_jwt_token")`` - only when claim rules are set]
then either
4. ``kong.request.get_headers`` + 5. ``kong.service.request.set_headers`` (allow), or
4. ``kong.response.error`` (deny).
Decision logs go to the plugin server's stdout/stderr (Kong copies them into its error
log), so logging costs no PDK call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import jwt

from kong_cilium_identity import metrics, pdk
from kong_cilium_identity.decision import Consumer, Decision, Facts, Reason, decide, deny
from kong_cilium_identity.identity.address import parse_address
from kong_cilium_identity.identity.model import Identity, Lookup, Peer
from kong_cilium_identity.identity.resolver import Resolver
from kong_cilium_identity.schema import Config, IpSource, Mode

log = logging.getLogger("kong_cilium_identity.decision")

KONG_JWT_CTX_KEY = "authenticated_jwt_token"

_MESSAGES = {
    401: "Unauthorized",
    403: "Forbidden",
    500: "An unexpected error occurred",
    503: "Service unavailable",
}


def handle_access(kong: Any, config: Config, resolver: Resolver) -> Decision:
    """Run the access phase for one request; never raises, never lets an error pass."""
    try:
        decision = _decide(kong, config, resolver)
    except Exception as error:
        log.exception("cilium-identity: internal error")
        decision = deny(Reason.INTERNAL_ERROR, f"{type(error).__name__}: {error}")
    try:
        _apply(kong, config, decision)
    except Exception:
        log.exception("cilium-identity: could not apply decision %s", decision.reason)
        if config.mode is Mode.ENFORCE:
            kong.response.error(500, _MESSAGES[500])
    return decision


def _decide(kong: Any, config: Config, resolver: Resolver) -> Decision:
    consumer = Consumer.from_kong(pdk.call(kong.client.get_consumer))
    if consumer is None and config.mode is Mode.ENFORCE:
        return decide(Facts(None, False), None, config.policy)
    has_credential = pdk.call(kong.client.get_credential) is not None
    if not has_credential and config.mode is Mode.ENFORCE:
        return decide(Facts(consumer, False), None, config.policy)
    get_ip = (
        kong.client.get_forwarded_ip
        if config.ip_source is IpSource.FORWARDED
        else kong.client.get_ip
    )
    client_ip = pdk.text(pdk.call(get_ip))
    lookup = _lookup(resolver, client_ip)
    claims = _kong_jwt_claims(kong) if config.policy.claim_rules else None
    return decide(Facts(consumer, has_credential, client_ip, claims), lookup, config.policy)


def _lookup(resolver: Resolver, client_ip: str | None) -> Lookup:
    if client_ip is None:
        return Lookup.unknown("kong", "Kong reported no client address")
    try:
        address = parse_address(client_ip)
    except ValueError as error:
        return Lookup.unknown("kong", f"client address {client_ip!r}: {error}")
    return resolver.lookup(Peer(str(address)))


def _kong_jwt_claims(kong: Any) -> Mapping[str, Any] | None:
    """Claims of the token Kong's jwt plugin already verified, or None."""
    token = pdk.text(pdk.call(kong.ctx.shared.get, KONG_JWT_CTX_KEY))
    if token is None:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return claims if isinstance(claims, dict) else None


def _apply(kong: Any, config: Config, decision: Decision) -> None:
    _log_decision(config, decision)
    if decision.allowed or config.mode is Mode.MONITOR:
        headers = pdk.call(kong.request.get_headers)
        identity = decision.identity if decision.allowed else None
        pdk.call(kong.service.request.set_headers, upstream_headers(config, headers, identity))
        return
    message = _MESSAGES.get(decision.status, "Forbidden")
    if config.client_reason:
        message = f"{message} ({decision.reason})"
    kong.response.error(decision.status, message)


def upstream_headers(
    config: Config, client_headers: Any, identity: Identity | None
) -> dict[str, str | list[str]]:
    """The ``set_headers`` table: our headers set, every client-sent header with our
    prefix cleared (an empty list clears a header in ``set_headers``)."""
    prefix = config.header_prefix.lower()
    table: dict[str, str | list[str]] = {}
    if isinstance(client_headers, Mapping):
        for name in client_headers:
            if isinstance(name, str) and name.lower().startswith(prefix):
                table[name.lower()] = []
    values = _identity_header_values(identity) if config.upstream_headers else {}
    for suffix in ("Identity", "Namespace", "Service-Account", "Pod"):
        name = config.header_prefix + suffix
        value = values.get(suffix)
        table.pop(name.lower(), None)
        table[name] = value if value else []
    return table


def _identity_header_values(identity: Identity | None) -> dict[str, str]:
    if identity is None:
        return {}
    values = {
        "Identity": str(identity.id),
        "Namespace": identity.namespace,
        "Service-Account": identity.service_account,
        "Pod": identity.pod,
    }
    return {key: value for key, value in values.items() if value}


def _log_decision(config: Config, decision: Decision) -> None:
    enforced = config.mode is Mode.ENFORCE and not decision.allowed
    metrics.count(decision, str(config.mode), enforced)
    fields = decision.log_fields()
    fields["mode"] = str(config.mode)
    if config.mode is Mode.MONITOR and not decision.allowed:
        fields["would_deny"] = True
    level = logging.INFO if decision.allowed else logging.WARNING
    log.log(level, "cilium-identity decision %s", json.dumps(fields, sort_keys=True))

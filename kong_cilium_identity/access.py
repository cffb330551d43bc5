"""The access phase: gather facts with as few PDK calls as possible, decide, apply.

PDK calls, in order (each is one round trip to Kong):
1. ``kong.client.get_consumer``   - always; first, and nothing slow happens before it
2. ``kong.client.get_credential`` - unless there is no consumer
3. ``kong.client.get_ip`` (or ``get_forwarded_ip``)
   [``kong.ctx.shared.get("authenticated_jwt_token")`` - only when claim rules are set]
then either
4. ``kong.request.get_headers`` + 5. ``kong.service.request.set_headers`` (allow), or
4. ``kong.response.error`` (deny).

With the plugin's own token check (``config.token``) the headers are read first (the
token is in them), the token is verified after that first call, and the consumer comes
from the token (``load_consumer`` + ``authenticate``) or, without ``consumer_claim``,
from Kong (``get_consumer`` + ``get_credential``); the headers are not read twice.

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
from kong_cilium_identity.server import GUARD_CTX_KEY
from kong_cilium_identity.token import (
    ConsumerClaim,
    TokenFailure,
    TokenReason,
    TokenVerifier,
    consumer_claim,
)

log = logging.getLogger("kong_cilium_identity.decision")

KONG_JWT_CTX_KEY = "authenticated_jwt_token"

_MESSAGES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    500: "An unexpected error occurred",
    503: "Service unavailable",
}

# Kong's auth plugins set these for the upstream; so does the token check when it
# authenticates the consumer (and clears client-sent copies).
_CONSUMER_HEADERS = ("X-Consumer-ID", "X-Consumer-Username", "X-Consumer-Custom-ID")


class Exchange:
    """One request's PDK conversation; remembers what it already asked Kong."""

    def __init__(self, kong: Any) -> None:
        self.kong = kong
        self._headers: Mapping[str, Any] | None = None
        # (X-Consumer-ID, X-Consumer-Username, X-Consumer-Custom-ID), credential id: set
        # when the token check authenticated the consumer itself
        self.authenticated: tuple[tuple[str | None, ...], str] | None = None

    def headers(self) -> Mapping[str, Any]:
        if self._headers is None:
            headers = pdk.call(self.kong.request.get_headers)
            self._headers = headers if isinstance(headers, Mapping) else {}
        return self._headers


def handle_access(
    kong: Any, config: Config, resolver: Resolver, verifier: TokenVerifier | None = None
) -> Decision:
    """Run the access phase for one request; never raises, never lets an error pass."""
    exchange = Exchange(kong)
    try:
        decision = _decide(exchange, config, resolver, verifier)
    except Exception as error:
        log.exception("cilium-identity: internal error")
        decision = deny(Reason.INTERNAL_ERROR, f"{type(error).__name__}: {error}")
    try:
        _apply(exchange, config, decision)
    except Exception:
        log.exception("cilium-identity: could not apply decision %s", decision.reason)
        if config.mode is Mode.ENFORCE:
            kong.response.error(500, _MESSAGES[500])
    return decision


def _decide(
    exchange: Exchange, config: Config, resolver: Resolver, verifier: TokenVerifier | None
) -> Decision:
    kong = exchange.kong
    claims: Mapping[str, Any] | None = None
    if verifier is not None:
        verified = verifier.check(exchange.headers().get(verifier.settings.header))
        if isinstance(verified, TokenFailure):
            return _token_denial(verified)
        claims = verified.claims
        named = consumer_claim(claims, verifier.settings)
        if isinstance(named, TokenFailure):
            return _token_denial(named)
        if named is not None:
            return _decide_for(exchange, config, resolver, _token_consumer(exchange, named), claims)
    consumer = Consumer.from_kong(pdk.call(kong.client.get_consumer))
    if consumer is None and config.mode is Mode.ENFORCE:
        return decide(Facts(None, False), None, config.policy)
    has_credential = pdk.call(kong.client.get_credential) is not None
    if not has_credential and config.mode is Mode.ENFORCE:
        return decide(Facts(consumer, False), None, config.policy)
    if claims is None and config.policy.claim_rules:
        claims = _kong_jwt_claims(kong)
    return _decide_for(exchange, config, resolver, (consumer, has_credential), claims)


def _decide_for(
    exchange: Exchange,
    config: Config,
    resolver: Resolver,
    consumer: tuple[Consumer | None, bool],
    claims: Mapping[str, Any] | None,
) -> Decision:
    kong = exchange.kong
    get_ip = (
        kong.client.get_forwarded_ip
        if config.ip_source is IpSource.FORWARDED
        else kong.client.get_ip
    )
    client_ip = pdk.text(pdk.call(get_ip))
    ports = _ports(exchange, config) if config.resolver.wants_ports else (None, None)
    lookup = _lookup(resolver, client_ip, *ports)
    facts = Facts(consumer[0], consumer[1], client_ip, claims)
    return decide(facts, lookup, config.policy)


def _token_consumer(exchange: Exchange, named: ConsumerClaim) -> tuple[Consumer | None, bool]:
    """Load and authenticate the consumer a verified token names, as Kong's auth
    plugins do, so acl, rate-limiting and logs see it. (consumer, has_credential)."""
    credential_id = f"cilium-identity-token:{named.value}"
    if named.by == "custom_id":  # no PDK call loads it; bindings name it custom_id:<v>
        exchange.authenticated = ((None, None, named.value), credential_id)
        return Consumer(id=f"custom_id:{named.value}", custom_id=named.value), True
    args = named.load_args()
    if args is None:  # by id, but not a UUID: it names no consumer row
        return None, False
    kong = exchange.kong
    row = pdk.call(kong.client.load_consumer, *args)
    if not named.matches(row):
        return None, False
    pdk.call(kong.client.authenticate, row, {"id": credential_id})
    consumer = Consumer.from_kong(row)
    if consumer is not None:
        values = (consumer.id, consumer.username, consumer.custom_id)
        exchange.authenticated = (values, credential_id)
    return consumer, consumer is not None


def _token_denial(failure: TokenFailure) -> Decision:
    if failure.reason is TokenReason.KEYS_UNAVAILABLE:
        return deny(Reason.SOURCE_UNAVAILABLE, f"{failure.reason}: {failure.description}")
    return deny(
        Reason.INVALID_TOKEN,
        f"{failure.reason}: {failure.description}",
        status_code=failure.status,
        response_headers=failure.headers(),
    )


def _ports(exchange: Exchange, config: Config) -> tuple[int | None, int | None]:
    """(client source port, Kong's listening port) for sources that pin the connection."""
    kong = exchange.kong
    get_port = (
        kong.client.get_forwarded_port
        if config.ip_source is IpSource.FORWARDED
        else kong.client.get_port
    )
    client_port = pdk.call(get_port)
    local_port = pdk.call(kong.request.get_port)
    return (
        client_port if isinstance(client_port, int) else None,
        local_port if isinstance(local_port, int) else None,
    )


def _lookup(
    resolver: Resolver,
    client_ip: str | None,
    client_port: int | None = None,
    local_port: int | None = None,
) -> Lookup:
    if client_ip is None:
        return Lookup.unknown("kong", "Kong reported no client address")
    try:
        address = parse_address(client_ip)
    except ValueError as error:
        return Lookup.unknown("kong", f"client address {client_ip!r}: {error}")
    return resolver.lookup(Peer(str(address), client_port, local_port))


def _kong_jwt_claims(kong: Any) -> Mapping[str, Any] | None:
    """Claims of the token Kong's jwt plugin already verified (its signature is not
    checked again here), or None."""
    token = pdk.text(pdk.call(kong.ctx.shared.get, KONG_JWT_CTX_KEY))
    if token is None:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return claims if isinstance(claims, dict) else None


def _apply(exchange: Exchange, config: Config, decision: Decision) -> None:
    _log_decision(config, decision)
    kong = exchange.kong
    if decision.allowed or config.mode is Mode.MONITOR:
        identity = decision.identity if decision.allowed else None
        table = upstream_headers(config, exchange.headers(), identity)
        if exchange.authenticated is not None:
            table.update(_consumer_headers(*exchange.authenticated))
        pdk.call(kong.service.request.set_headers, table)
        if config.guard_marker:  # tells deploy/guard.lua that this request was decided
            pdk.call(kong.ctx.shared.set, GUARD_CTX_KEY, True)
        return
    message = _MESSAGES.get(decision.status, "Forbidden")
    if config.client_reason:
        message = f"{message} ({decision.reason})"
    if decision.response_headers:
        kong.response.error(decision.status, message, dict(decision.response_headers))
    else:
        kong.response.error(decision.status, message)


def upstream_headers(
    config: Config, client_headers: Mapping[str, Any], identity: Identity | None
) -> dict[str, str | list[str]]:
    """The ``set_headers`` table: our headers set, every client-sent header with our
    prefix cleared (an empty list clears a header in ``set_headers``)."""
    prefix = config.header_prefix.lower()
    table: dict[str, str | list[str]] = {
        name.lower(): []
        for name in client_headers
        if isinstance(name, str) and name.lower().startswith(prefix)
    }
    values = _identity_header_values(identity) if config.upstream_headers else {}
    for suffix in ("Identity", "Namespace", "Service-Account", "Pod"):
        name = config.header_prefix + suffix
        table.pop(name.lower(), None)
        table[name] = values.get(suffix) or []
    return table


def _consumer_headers(
    values: tuple[str | None, ...], credential_id: str
) -> dict[str, str | list[str]]:
    table: dict[str, str | list[str]] = {
        name: value or [] for name, value in zip(_CONSUMER_HEADERS, values, strict=True)
    }
    table["X-Credential-Identifier"] = credential_id
    table["X-Anonymous-Consumer"] = []
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
    level = logging.INFO if decision.allowed else logging.WARNING
    if not log.isEnabledFor(level):
        return
    fields = decision.log_fields()
    fields["mode"] = str(config.mode)
    if config.mode is Mode.MONITOR and not decision.allowed:
        fields["would_deny"] = True
    log.log(level, "cilium-identity decision %s", json.dumps(fields, sort_keys=True))

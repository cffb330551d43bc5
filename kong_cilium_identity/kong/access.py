"""The access phase: gather the request's facts, decide, apply the decision.

Two ways to talk to Kong, chosen per plugin instance:

* **Kong-side** (the ``cilium-identity-guard`` plugin is installed in Kong): its Lua module
  offers two PDK methods. ``kong.cilium_identity.facts`` returns everything the decision
  needs in one round trip and removes every client-sent header under ``header_prefix``
  natively (all header lines, no 100-line window); ``kong.cilium_identity.apply`` records
  the decision for the guard and Kong's log serializer and refuses the request or sets the
  upstream headers. Allowed: HandleEvent + 2 calls = 3 socket round trips; denied: 2.
  A token that names its consumer adds ``load_consumer`` (+1).
* **PDK only** (no companion in Kong): ``get_consumer``, ``get_credential``, ``get_ip``
  [, ``ctx.shared.get`` for jwt claims], then ``request.get_headers(1000)`` +
  ``service.request.set_headers`` (allow) or ``response.error`` (deny). Kong cannot show a
  plugin more than 1,000 header lines, and nothing refuses a request whose plugin call
  failed: use the companion.

The first call of an instance is ``facts``: Kong answers ``None`` for a method it does not
have, and the instance then stays on the PDK-only path. Nothing slow runs before the
first call. Decision logs go to the plugin server's stderr (Kong's error log): no PDK call.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import jwt

from kong_cilium_identity.identity.address import parse_address
from kong_cilium_identity.identity.model import Identity, Lookup, Peer
from kong_cilium_identity.identity.resolver import Resolver
from kong_cilium_identity.kong import pdk
from kong_cilium_identity.kong_contract import APPLY_METHOD, FACTS_METHOD, JWT_CTX_KEY, pdk_method
from kong_cilium_identity.ops import metrics, tracing
from kong_cilium_identity.policy.decision import Consumer, Decision, Facts, Reason, decide, deny
from kong_cilium_identity.schema import Config, IpSource, Mode
from kong_cilium_identity.text import valid_text
from kong_cilium_identity.token import (
    ConsumerClaim,
    TokenFailure,
    TokenReason,
    TokenVerifier,
    consumer_claim,
)

log = logging.getLogger("kong_cilium_identity.decision")

# Kong reads at most this many header lines for a plugin (kong.request.get_headers)
KONG_MAX_HEADERS = 1000

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


class KongSide:
    """Per plugin instance: does this Kong offer the companion's PDK methods?
    ``None`` until the first request asked."""

    def __init__(self) -> None:
        self.available: bool | None = None


@dataclass
class Authenticated:
    """The consumer the token check authenticated itself (not an earlier auth plugin)."""

    row: Mapping[str, Any] | None  # Kong's consumer row; None for custom_id consumers
    header_values: tuple[str | None, str | None, str | None]
    credential_id: str


class Exchange:
    """One request's conversation with Kong; remembers what it already asked.

    ``native`` holds the companion's facts table when Kong offers it; every getter then
    reads from it instead of making a PDK call."""

    def __init__(self, kong: Any, native: Mapping[str, Any] | None = None) -> None:
        self.kong = kong
        self.native = native
        self._headers: Mapping[str, Any] | None = None
        self.authenticated: Authenticated | None = None

    def headers(self) -> Mapping[str, Any]:
        if self._headers is None:
            headers = pdk.call(self.kong.request.get_headers, KONG_MAX_HEADERS)
            self._headers = headers if isinstance(headers, Mapping) else {}
        return self._headers

    def token_value(self, header: str) -> Any:
        """What the token check reads: every line of the token header."""
        if self.native is not None:
            return self.native.get("tokens")
        return self.headers().get(header)

    def consumer(self) -> Consumer | None:
        if self.native is not None:
            return Consumer.from_kong(self.native.get("consumer"))
        return Consumer.from_kong(pdk.call(self.kong.client.get_consumer))

    def has_credential(self) -> bool:
        if self.native is not None:
            return self.native.get("credential") is True
        return pdk.call(self.kong.client.get_credential) is not None

    def client_ip(self, config: Config) -> str | None:
        if self.native is not None:
            return _text(self.native.get("ip"))
        client = self.kong.client
        forwarded = config.ip_source is IpSource.FORWARDED
        return pdk.text(pdk.call(client.get_forwarded_ip if forwarded else client.get_ip))

    def ports(self, config: Config) -> tuple[int | None, int | None]:
        """(client source port, Kong's listening port) for sources that pin the connection."""
        if self.native is not None:
            client_port, local_port = self.native.get("port"), self.native.get("server_port")
        else:
            client = self.kong.client
            forwarded = config.ip_source is IpSource.FORWARDED
            client_port = pdk.call(client.get_forwarded_port if forwarded else client.get_port)
            local_port = pdk.call(self.kong.request.get_port)
        return _port(client_port), _port(local_port)

    def traceparent(self) -> str | None:
        """Kong's W3C trace context for the lookup spans; only asked while tracing is on."""
        if not tracing.enabled():
            return None
        if self.native is not None:
            return tracing.valid_traceparent(self.native.get(tracing.TRACEPARENT))
        return tracing.valid_traceparent(self.headers().get(tracing.TRACEPARENT))

    def kong_jwt(self) -> str | None:
        """The token Kong's jwt plugin verified (``kong.ctx.shared``), if any."""
        if self.native is not None:
            return _text(self.native.get("jwt"))
        return pdk.text(pdk.call(self.kong.ctx.shared.get, JWT_CTX_KEY))


def _text(value: Any) -> str | None:
    """A single string from the companion's facts (no list unwrapping: strict shapes)."""
    return valid_text(value) if isinstance(value, str) else None


def _port(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def facts_request(config: Config, verifier: TokenVerifier | None) -> dict[str, Any]:
    """The argument of ``kong.cilium_identity.facts``: what to read, what to clear."""
    return {
        "ip_source": str(config.ip_source),
        "header_prefix": config.header_prefix,
        "token_header": verifier.settings.header if verifier is not None else "",
        "jwt": bool(config.policy.claim_rules) and verifier is None,
        "ports": config.resolver.wants_ports,
        "traceparent": tracing.enabled(),
    }


def handle_access(
    kong: Any,
    config: Config,
    resolver: Resolver,
    verifier: TokenVerifier | None = None,
    kong_side: KongSide | None = None,
) -> Decision:
    """Run the access phase for one request; never raises, never lets an error pass."""
    exchange = Exchange(kong)
    try:
        exchange = _open(kong, config, verifier, kong_side or KongSide())
        decision = _decide(exchange, config, resolver, verifier)
    except Exception as error:
        metrics.plugin_exception("access")
        log.exception("cilium-identity: internal error")
        decision = deny(Reason.INTERNAL_ERROR, f"{type(error).__name__}: {error}")
    try:
        _log_decision(config, decision)
        if exchange.native is not None:
            _apply_native(exchange, config, decision)
        else:
            _apply_pdk(exchange, config, decision)
    except Exception:
        metrics.plugin_exception("apply")
        log.exception("cilium-identity: could not apply decision %s", decision.reason)
        if config.mode is Mode.ENFORCE:
            kong.response.error(500, _MESSAGES[500])
    return decision


def _open(
    kong: Any, config: Config, verifier: TokenVerifier | None, kong_side: KongSide
) -> Exchange:
    """The request's first PDK call: the companion's facts when Kong has them."""
    if kong_side.available is False:
        return Exchange(kong)
    native = pdk.call(pdk_method(kong, FACTS_METHOD), facts_request(config, verifier))
    if isinstance(native, Mapping):
        kong_side.available = True
        return Exchange(kong, native)
    if kong_side.available is None:
        log.warning(
            "cilium-identity: Kong has no cilium-identity-guard plugin installed; using "
            "plain PDK calls (more round trips, a 1,000-header window, and no refusal "
            "when the plugin server is unreachable)"
        )
    kong_side.available = False
    return Exchange(kong)


def _decide(
    exchange: Exchange, config: Config, resolver: Resolver, verifier: TokenVerifier | None
) -> Decision:
    claims: Mapping[str, Any] | None = None
    if verifier is not None:
        verified = verifier.check(exchange.token_value(verifier.settings.header))
        if isinstance(verified, TokenFailure):
            return _token_denial(verified)
        claims = verified.claims
        named = consumer_claim(claims, verifier.settings)
        if isinstance(named, TokenFailure):
            return _token_denial(named)
        if named is not None:
            return _decide_for(exchange, config, resolver, _token_consumer(exchange, named), claims)
    consumer = exchange.consumer()
    if consumer is None and config.mode is Mode.ENFORCE:
        return decide(Facts(None, False), None, config.policy)
    has_credential = exchange.has_credential()
    if not has_credential and config.mode is Mode.ENFORCE:
        return decide(Facts(consumer, False), None, config.policy)
    if claims is None and config.policy.claim_rules:
        claims = _claims_of(exchange.kong_jwt())
    return _decide_for(exchange, config, resolver, (consumer, has_credential), claims)


def _decide_for(
    exchange: Exchange,
    config: Config,
    resolver: Resolver,
    consumer: tuple[Consumer | None, bool],
    claims: Mapping[str, Any] | None,
) -> Decision:
    client_ip = exchange.client_ip(config)
    ports = exchange.ports(config) if config.resolver.wants_ports else (None, None)
    lookup = _lookup(resolver, client_ip, *ports, exchange.traceparent())
    facts = Facts(consumer[0], consumer[1], client_ip, claims)
    return replace(decide(facts, lookup, config.policy), lookup=lookup)


def _token_consumer(exchange: Exchange, named: ConsumerClaim) -> tuple[Consumer | None, bool]:
    """Load and authenticate the consumer a verified token names, as Kong's auth
    plugins do, so acl, rate-limiting and logs see it. (consumer, has_credential).
    Kong-side, the authentication happens in ``apply``; PDK-only, right here."""
    credential_id = f"cilium-identity-token:{named.value}"
    if named.by == "custom_id":  # no PDK call loads it; bindings name it custom_id:<v>
        exchange.authenticated = Authenticated(None, (None, None, named.value), credential_id)
        return Consumer(id=f"custom_id:{named.value}", custom_id=named.value), True
    args = named.load_args()
    if args is None:  # by id, but not a UUID: it names no consumer row
        return None, False
    kong = exchange.kong
    row = pdk.call(kong.client.load_consumer, *args)
    if not named.matches(row):
        return None, False
    consumer = Consumer.from_kong(row)
    if consumer is None:
        return None, False
    if exchange.native is None:
        pdk.call(kong.client.authenticate, row, {"id": credential_id})
    values = (consumer.id, consumer.username, consumer.custom_id)
    exchange.authenticated = Authenticated(row, values, credential_id)
    return consumer, True


def _token_denial(failure: TokenFailure) -> Decision:
    if failure.reason is TokenReason.KEYS_UNAVAILABLE:
        return deny(Reason.SOURCE_UNAVAILABLE, f"{failure.reason}: {failure.description}")
    return deny(
        Reason.INVALID_TOKEN,
        f"{failure.reason}: {failure.description}",
        status_code=failure.status,
        response_headers=failure.headers(),
    )


def _lookup(
    resolver: Resolver,
    client_ip: str | None,
    client_port: int | None = None,
    local_port: int | None = None,
    traceparent: str | None = None,
) -> Lookup:
    if client_ip is None:
        return Lookup.unknown("kong", "Kong reported no client address")
    try:
        address = parse_address(client_ip)
    except ValueError as error:
        return Lookup.unknown("kong", f"client address {client_ip!r}: {error}")
    extra = {tracing.TRACEPARENT: traceparent} if traceparent else {}
    return resolver.lookup(Peer.of(address, client_port, local_port, extra))


def _claims_of(token: str | None) -> Mapping[str, Any] | None:
    """Claims of the token Kong's jwt plugin already verified (its signature is not
    checked again here), or None."""
    if token is None:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return claims if isinstance(claims, dict) else None


def _passes(config: Config, decision: Decision) -> bool:
    return decision.allowed or config.mode is Mode.MONITOR


def _client_message(config: Config, decision: Decision) -> str:
    message = _MESSAGES.get(decision.status, "Forbidden")
    return f"{message} ({decision.reason})" if config.client_reason else message


def _apply_native(exchange: Exchange, config: Config, decision: Decision) -> None:
    """One call: ``kong.cilium_identity.apply`` refuses or lets through, natively."""
    answer: dict[str, Any] = {
        "allow": _passes(config, decision),
        "log": log_entry(config, decision),
    }
    if answer["allow"]:
        identity = decision.identity if decision.allowed else None
        upstream: dict[str, str | bool] = {
            name: value or False for name, value in identity_headers(config, identity).items()
        }
        if exchange.authenticated is not None:
            upstream.update(_consumer_headers(exchange.authenticated))
            if exchange.authenticated.row is not None:
                answer["authenticate"] = {
                    "consumer": exchange.authenticated.row,
                    "credential": {"id": exchange.authenticated.credential_id},
                }
        answer["upstream"] = upstream
    else:
        if getattr(exchange.kong, "settling_calls", None) is not True:
            # kong-pdk's server would wait forever for a Step that a refusal never gets
            _refuse(exchange.kong, config, decision)
            return
        answer["status"] = decision.status
        answer["message"] = _client_message(config, decision)
        if decision.response_headers:
            answer["headers"] = dict(decision.response_headers)
    pdk_method(exchange.kong, APPLY_METHOD)(answer)


def _apply_pdk(exchange: Exchange, config: Config, decision: Decision) -> None:
    kong = exchange.kong
    if _passes(config, decision):
        identity = decision.identity if decision.allowed else None
        table = upstream_headers(config, exchange.headers(), identity)
        if exchange.authenticated is not None:
            for name, value in _consumer_headers(exchange.authenticated).items():
                table[name] = value if isinstance(value, str) else []
        pdk.call(kong.service.request.set_headers, table)
        return
    _refuse(kong, config, decision)


def _refuse(kong: Any, config: Config, decision: Decision) -> None:
    message = _client_message(config, decision)
    if decision.response_headers:
        kong.response.error(decision.status, message, dict(decision.response_headers))
    else:
        kong.response.error(decision.status, message)


def identity_headers(config: Config, identity: Identity | None) -> dict[str, str | None]:
    """Our upstream headers: name → value, or None to clear it."""
    values = _identity_header_values(identity) if config.upstream_headers else {}
    return {
        config.header_prefix + suffix: values.get(suffix)
        for suffix in ("Identity", "Namespace", "Service-Account", "Pod")
    }


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
    for name, value in identity_headers(config, identity).items():
        table.pop(name.lower(), None)
        table[name] = value or []
    return table


def _consumer_headers(authenticated: Authenticated) -> dict[str, str | bool]:
    """X-Consumer-* for the token's consumer; False clears a header."""
    table: dict[str, str | bool] = {
        name: value or False
        for name, value in zip(_CONSUMER_HEADERS, authenticated.header_values, strict=True)
    }
    table["X-Credential-Identifier"] = authenticated.credential_id
    table["X-Anonymous-Consumer"] = False
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


def log_entry(config: Config, decision: Decision) -> dict[str, Any]:
    """What Kong's log plugins receive under ``cilium_identity`` (docs/metrics.md): the
    decision, the identity's coordinates, which source answered, how old its answer is and
    whether it came from the cache; never tokens, secrets, label dumps, the detail text or
    client header values."""
    entry: dict[str, Any] = {
        "decision": "allow" if decision.allowed else "deny",
        "reason": str(decision.reason),
        "mode": str(config.mode),
        "enforced": config.mode is Mode.ENFORCE,
    }
    if config.mode is Mode.MONITOR and not decision.allowed:
        entry["decision"] = "would_deny"
    if decision.consumer is not None:
        entry["consumer"] = decision.consumer.username or decision.consumer.id
    lookup = decision.lookup
    if lookup is not None:
        entry["source"] = lookup.source
        entry["cache"] = {True: "hit", False: "miss", None: "none"}[lookup.cached]
    identity = decision.identity
    if identity is not None:
        entry["identity"] = identity.id
        entry["source"] = identity.source or entry.get("source", "")
        if identity.observed_at > 0:  # static entries are configured, never observed
            entry["age"] = round(max(0.0, time.time() - identity.observed_at), 3)
        for key in ("namespace", "service_account", "cluster"):
            value = getattr(identity, key)
            if value:
                entry[key] = value
    return entry


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

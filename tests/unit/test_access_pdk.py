"""The access phase over plain PDK calls (Kong without the cilium-identity-guard
companion): which calls it makes, what it sets upstream, how it refuses (access.py).

The companion path is in test_access_kong_side.py; these pin the fallback path, which
the earlier unit suite never drove (docs/mutation.md)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import types
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from kong_cilium_identity.identity.model import Identity, Lookup, LookupStatus, Peer
from kong_cilium_identity.identity.resolver import ResolverSettings
from kong_cilium_identity.kong import access
from kong_cilium_identity.kong.access import Exchange, KongSide
from kong_cilium_identity.kong.kong_schema import config_field, validate_config
from kong_cilium_identity.ops import metrics
from kong_cilium_identity.plugin import Plugin, plugin_info
from kong_cilium_identity.policy.decision import Consumer, Reason, deny
from kong_cilium_identity.schema import parse_config
from kong_cilium_identity.token import ConsumerClaim, TokenFailure, TokenReason, Verified
from kong_cilium_identity.token.settings import TokenSettings
from tests.unit.test_access_kong_side import (
    CHECKOUT,
    CHECKOUT_IP,
    PAYMENTS_IP,
    RAW_CONFIG,
    FakeKong,
)

IDENTITY_HEADERS = {
    "X-Cilium-Identity": "48861",
    "X-Cilium-Namespace": "shop",
    "X-Cilium-Service-Account": "checkout",
    "X-Cilium-Pod": "checkout-7d9f8-x2x5q",
}


class PdkKong(FakeKong):
    """Kong without the companion: ``facts`` is nil; PDK getters answer from a table."""

    def __init__(self, **answers: Any) -> None:
        super().__init__(None)
        self.answers: dict[str, Any] = {
            "kong.client.get_consumer": CHECKOUT,
            "kong.client.get_credential": {"id": "cred-1"},
            "kong.client.get_ip": CHECKOUT_IP,
            "kong.request.get_headers": {},
            **answers,
        }

    def answer(self, path: str, args: tuple[Any, ...]) -> Any:
        if path in self.answers:
            self.calls.append((path, args))
            return self.answers[path], None
        return super().answer(path, args)

    def args_of(self, path: str) -> tuple[Any, ...]:
        (args,) = [args for name, args in self.calls if name == path]
        return args


def _config(**overrides: Any) -> dict[str, Any]:
    return validate_config(config_field(plugin_info()["Schema"]), {**RAW_CONFIG, **overrides})


@pytest.fixture
def plugin() -> Iterator[Plugin]:
    instance = Plugin(_config())
    yield instance
    instance.close()


def test_allowed_sets_identity_headers_and_clears_client_sent_ones(plugin: Plugin) -> None:
    kong = PdkKong(
        **{"kong.request.get_headers": {"x-cilium-identity": "1", "X-CILIUM-Extra": "2", "a": "b"}}
    )
    plugin.access(kong)
    assert kong.names() == [
        "kong.cilium_identity.facts",
        "kong.client.get_consumer",
        "kong.client.get_credential",
        "kong.client.get_ip",
        "kong.request.get_headers",
        "kong.service.request.set_headers",
    ]
    assert kong.args_of("kong.request.get_headers") == (1000,)
    (table,) = kong.args_of("kong.service.request.set_headers")
    assert table == {**IDENTITY_HEADERS, "x-cilium-extra": []}


@pytest.mark.parametrize(
    ("answers", "status", "message"),
    [
        ({"kong.client.get_ip": PAYMENTS_IP}, 403, "Forbidden (identity_mismatch)"),
        ({"kong.client.get_consumer": None}, 401, "Unauthorized (no_consumer)"),
        ({"kong.client.get_credential": None}, 401, "Unauthorized (anonymous)"),
        ({"kong.client.get_ip": None}, 403, "Forbidden (identity_unknown)"),
        ({"kong.client.get_ip": "nope"}, 403, "Forbidden (identity_unknown)"),
    ],
)
def test_denied_refuses_with_response_error(
    plugin: Plugin, answers: dict[str, Any], status: int, message: str
) -> None:
    kong = PdkKong(**answers)
    decision = plugin.access(kong)
    assert kong.names()[-1] == "kong.response.error"
    assert kong.calls[-1][1] == (status, message)
    assert "kong.service.request.set_headers" not in kong.names()
    assert decision is None or decision.status == status


def test_an_unparsable_address_names_it_in_the_detail() -> None:
    lookup = access._lookup(None, "nope")  # type: ignore[arg-type]
    assert lookup.source == "kong" and lookup.detail.startswith("client address 'nope': ")
    missing = access._lookup(None, None)  # type: ignore[arg-type]
    assert missing.detail == "Kong reported no client address"


def test_forwarded_ip_source_reads_the_forwarded_address() -> None:
    plugin = Plugin(_config(ip_source="forwarded"))
    try:
        kong = PdkKong(
            **{"kong.client.get_ip": "10.9.9.9", "kong.client.get_forwarded_ip": CHECKOUT_IP}
        )
        plugin.access(kong)
        assert "kong.client.get_forwarded_ip" in kong.names()
        assert "kong.client.get_ip" not in kong.names()
        (table,) = kong.args_of("kong.service.request.set_headers")
        assert table["X-Cilium-Identity"] == "48861"
    finally:
        plugin.close()


def test_without_client_reason_the_message_is_bare() -> None:
    plugin = Plugin(_config(client_reason=False))
    try:
        kong = PdkKong(**{"kong.client.get_ip": PAYMENTS_IP})
        plugin.access(kong)
        assert kong.calls[-1] == ("kong.response.error", (403, "Forbidden"))
    finally:
        plugin.close()


def test_without_upstream_headers_ours_are_only_cleared() -> None:
    plugin = Plugin(_config(upstream_headers=False))
    try:
        kong = PdkKong()
        plugin.access(kong)
        (table,) = kong.args_of("kong.service.request.set_headers")
        assert table == {key: [] for key in IDENTITY_HEADERS}
    finally:
        plugin.close()


def test_monitor_lets_a_denial_through_with_headers_cleared() -> None:
    plugin = Plugin(_config(mode="monitor"))
    try:
        kong = PdkKong(
            **{"kong.client.get_ip": PAYMENTS_IP, "kong.request.get_headers": {"X-Cilium-Pod": "x"}}
        )
        plugin.access(kong)
        assert "kong.response.error" not in kong.names()
        (table,) = kong.args_of("kong.service.request.set_headers")
        assert table == {key: [] for key in IDENTITY_HEADERS}
    finally:
        plugin.close()


def test_a_failing_apply_refuses_with_500_in_enforce_mode(
    plugin: Plugin, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(PdkKong):
        def answer(self, path: str, args: tuple[Any, ...]) -> Any:
            if path == "kong.service.request.set_headers":
                self.calls.append((path, args))
                return None, "socket closed"
            return super().answer(path, args)

    kong = Broken()
    with caplog.at_level(logging.ERROR, "kong_cilium_identity.decision"):
        plugin.access(kong)
    assert kong.calls[-1] == ("kong.response.error", (500, "An unexpected error occurred"))


def test_a_pdk_error_while_deciding_is_an_internal_error(plugin: Plugin) -> None:
    class Broken(PdkKong):
        def answer(self, path: str, args: tuple[Any, ...]) -> Any:
            if path == "kong.client.get_consumer":
                return None, "boom"
            return super().answer(path, args)

    kong = Broken()
    plugin.access(kong)
    assert kong.calls[-1] == (
        "kong.response.error",
        (500, "An unexpected error occurred (internal_error)"),
    )


def test_refusal_passes_the_decision_s_response_headers() -> None:
    kong = PdkKong()
    config = parse_config(_config())
    decision = deny(
        Reason.INVALID_TOKEN, "x", status_code=400, response_headers={"WWW-Authenticate": "B"}
    )
    access._refuse(kong, config, decision)
    assert kong.calls == [
        ("kong.response.error", (400, "Bad request (invalid_token)", {"WWW-Authenticate": "B"}))
    ]


def test_exchange_ports_and_jwt_over_pdk() -> None:
    config = parse_config(_config())
    kong = PdkKong(
        **{
            "kong.client.get_port": 40000,
            "kong.client.get_forwarded_port": 1,
            "kong.request.get_port": 8000,
            "kong.ctx.shared.get": ["tok"],
        }
    )
    exchange = Exchange(kong)
    assert exchange.ports(config) == (40000, 8000)
    assert exchange.kong_jwt() == "tok"
    assert kong.args_of("kong.ctx.shared.get") == ("authenticated_jwt_token",)
    forwarded = parse_config(_config(ip_source="forwarded"))
    assert Exchange(kong).ports(forwarded) == (1, 8000)


def test_exchange_reads_the_companion_s_facts_strictly() -> None:
    config = parse_config(_config())
    native = {"port": 40000, "server_port": True, "jwt": ["tok"], "ip": CHECKOUT_IP}
    exchange = Exchange(PdkKong(), native)
    assert exchange.ports(config) == (40000, None)
    assert exchange.kong_jwt() is None
    assert Exchange(PdkKong(), {"jwt": "tok"}).kong_jwt() == "tok"
    assert exchange.client_ip(config) == CHECKOUT_IP
    assert exchange.token_value("authorization") is None


def test_exchange_headers_are_asked_once_and_must_be_a_table() -> None:
    kong = PdkKong(**{"kong.request.get_headers": ["not", "a", "table"]})
    exchange = Exchange(kong)
    assert exchange.headers() == {}
    assert exchange.headers() == {}
    assert kong.names().count("kong.request.get_headers") == 1
    table = PdkKong(**{"kong.request.get_headers": {"authorization": "Bearer x"}})
    assert Exchange(table).token_value("authorization") == "Bearer x"


@pytest.mark.parametrize(("value", "port"), [(443, 443), (0, 0), (True, None), ("80", None)])
def test_port_accepts_only_integers(value: Any, port: int | None) -> None:
    assert access._port(value) == port


def test_claims_of_kong_s_verified_jwt() -> None:
    token = jwt.encode({"ns": "shop"}, "k" * 32, algorithm="HS256")
    assert access._claims_of(token) == {"ns": "shop"}
    assert access._claims_of(None) is None
    assert access._claims_of("not a jwt") is None
    listed = jwt.api_jws.encode(b"[1]", "k" * 32, algorithm="HS256")
    assert access._claims_of(listed) is None


def test_identity_headers_skip_empty_values() -> None:
    config = parse_config(_config())
    identity = Identity.build(300, [], namespace="ns")
    assert access.identity_headers(config, identity) == {
        "X-Cilium-Identity": "300",
        "X-Cilium-Namespace": "ns",
        "X-Cilium-Service-Account": None,
        "X-Cilium-Pod": None,
    }


def test_log_entry_for_allow_and_would_deny() -> None:
    config = parse_config(_config(mode="monitor"))
    identity = Identity.build(300, [], namespace="ns", source="static")
    decision = deny(Reason.IDENTITY_MISMATCH, "x", identity=identity, consumer=Consumer("c-1"))
    entry = access.log_entry(config, decision)
    assert entry.pop("age") >= 0
    assert entry == {
        "decision": "would_deny",
        "reason": "identity_mismatch",
        "mode": "monitor",
        "enforced": False,
        "consumer": "c-1",
        "identity": 300,
        "source": "static",
        "namespace": "ns",
    }


def test_kong_side_is_remembered_per_instance() -> None:
    side = KongSide()
    assert side.available is None
    config = parse_config(_config())
    access._open(PdkKong(), config, None, side)
    assert side.available is False
    kong = PdkKong()
    access._open(kong, config, None, side)
    assert kong.names() == []


WARN = logging.WARNING


def _counted(reason: str, mode: str, enforced: str) -> float:
    value = metrics.DECISIONS.labels(reason, mode, enforced)._value.get()
    assert isinstance(value, float)
    return value


@pytest.mark.parametrize(
    ("mode", "answers", "reason", "enforced", "level", "would_deny"),
    [
        ("enforce", {}, "allowed", "false", logging.INFO, None),
        (
            "enforce",
            {"kong.client.get_ip": PAYMENTS_IP},
            "identity_mismatch",
            "true",
            logging.WARNING,
            None,
        ),
        (
            "monitor",
            {"kong.client.get_ip": PAYMENTS_IP},
            "identity_mismatch",
            "false",
            logging.WARNING,
            True,
        ),
        ("monitor", {}, "allowed", "false", logging.INFO, None),
    ],
)
def test_every_decision_is_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
    mode: str,
    answers: dict[str, Any],
    reason: str,
    enforced: str,
    level: int,
    would_deny: bool | None,
) -> None:
    plugin = Plugin(_config(mode=mode))
    try:
        before = _counted(reason, mode, enforced)
        with caplog.at_level(logging.INFO, "kong_cilium_identity.decision"):
            plugin.access(PdkKong(**answers))
        assert _counted(reason, mode, enforced) == before + 1
        prefix = "cilium-identity decision "
        (record,) = [r for r in caplog.records if r.getMessage().startswith(prefix)]
        assert record.levelno == level
        text = record.getMessage().removeprefix(prefix)
        fields = json.loads(text)
        assert text == json.dumps(fields, sort_keys=True)
        assert fields["reason"] == reason and fields["mode"] == mode
        assert fields.get("would_deny") is would_deny
    finally:
        plugin.close()


def test_nothing_is_logged_below_the_configured_level(
    plugin: Plugin, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "kong_cilium_identity.decision"):
        plugin.access(PdkKong())
    assert not [r for r in caplog.records if "decision" in r.getMessage()]


def test_an_internal_error_names_the_exception_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = parse_config(_config())

    class Exploding:
        def lookup(self, peer: object) -> object:
            raise KeyError("boom")

    with caplog.at_level(logging.ERROR, "kong_cilium_identity.decision"):
        decision = access.handle_access(PdkKong(), config, Exploding(), None, KongSide())  # type: ignore[arg-type]
    assert decision.reason is Reason.INTERNAL_ERROR
    assert decision.detail == "KeyError: 'boom'"
    assert any(r.getMessage() == "cilium-identity: internal error" for r in caplog.records)


def test_a_failing_apply_in_monitor_mode_does_not_refuse(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = parse_config(_config(mode="monitor"))

    class Broken(PdkKong):
        def answer(self, path: str, args: tuple[Any, ...]) -> Any:
            if path == "kong.service.request.set_headers":
                return None, "socket closed"
            return super().answer(path, args)

    kong = Broken()
    resolver = Plugin(_config())
    try:
        with caplog.at_level(logging.ERROR, "kong_cilium_identity.decision"):
            decision = access.handle_access(kong, config, resolver.resolver, None, KongSide())
    finally:
        resolver.close()
    assert decision.allowed
    assert "kong.response.error" not in kong.names()
    assert any(
        r.getMessage() == "cilium-identity: could not apply decision allowed"
        for r in caplog.records
    )


ROW = {"id": "0c1f0b0e-1c1a-4e44-9a39-4a0d4b5a0009", "username": "sa-user", "custom_id": "ext"}


def test_a_token_consumer_by_custom_id_needs_no_pdk_call() -> None:
    kong = PdkKong()
    exchange = Exchange(kong)
    consumer, credential = access._token_consumer(exchange, ConsumerClaim("custom_id", "ext"))
    assert (consumer, credential) == (Consumer("custom_id:ext", None, "ext"), True)
    assert exchange.authenticated == access.Authenticated(
        None, (None, None, "ext"), "cilium-identity-token:ext"
    )
    assert kong.calls == []


def test_a_token_consumer_by_username_is_loaded_and_authenticated() -> None:
    kong = PdkKong(**{"kong.client.load_consumer": ROW, "kong.client.authenticate": True})
    exchange = Exchange(kong)
    consumer, credential = access._token_consumer(exchange, ConsumerClaim("username", "sa-user"))
    assert consumer == Consumer(ROW["id"], "sa-user", "ext") and credential is True
    assert kong.calls == [
        ("kong.client.load_consumer", ("sa-user", True)),
        ("kong.client.authenticate", (ROW, {"id": "cilium-identity-token:sa-user"})),
    ]
    assert exchange.authenticated == access.Authenticated(
        ROW, (ROW["id"], "sa-user", "ext"), "cilium-identity-token:sa-user"
    )


def test_kong_side_the_token_consumer_is_authenticated_in_apply() -> None:
    kong = PdkKong(**{"kong.client.load_consumer": ROW})
    exchange = Exchange(kong, {})
    consumer, _ = access._token_consumer(exchange, ConsumerClaim("id", ROW["id"]))
    assert consumer is not None and consumer.id == ROW["id"]
    assert kong.calls == [("kong.client.load_consumer", (ROW["id"], False))]


@pytest.mark.parametrize(
    ("claim", "row"),
    [
        (ConsumerClaim("id", "not-a-uuid"), ROW),  # names no consumer row: not loaded
        (ConsumerClaim("username", "someone-else"), ROW),  # Kong returned another row
        (ConsumerClaim("username", "sa-user"), {"username": "sa-user"}),  # row without id
        (ConsumerClaim("username", "sa-user"), None),
    ],
)
def test_a_token_consumer_that_cannot_be_proven_is_no_consumer(
    claim: ConsumerClaim, row: Any
) -> None:
    kong = PdkKong(**{"kong.client.load_consumer": row})
    exchange = Exchange(kong)
    assert access._token_consumer(exchange, claim) == (None, False)
    assert exchange.authenticated is None
    assert "kong.client.authenticate" not in kong.names()


def test_token_denials_keep_status_and_challenge() -> None:
    bad = access._token_denial(TokenFailure.of(TokenReason.BAD_REQUEST, "two tokens"))
    assert (bad.reason, bad.status, bad.detail) == (
        Reason.INVALID_TOKEN,
        400,
        "token_bad_request: two tokens",
    )
    assert bad.response_headers["WWW-Authenticate"].startswith('Bearer realm="kong", error=')
    down = access._token_denial(TokenFailure.of(TokenReason.KEYS_UNAVAILABLE, "timeout"))
    assert (down.reason, down.status, down.detail) == (
        Reason.SOURCE_UNAVAILABLE,
        503,
        "token_keys_unavailable: timeout",
    )
    assert dict(down.response_headers) == {}


def test_consumer_headers_for_the_token_consumer() -> None:
    authenticated = access.Authenticated(None, ("c-1", None, "ext"), "cred")
    assert access._consumer_headers(authenticated) == {
        "X-Consumer-ID": "c-1",
        "X-Consumer-Username": False,
        "X-Consumer-Custom-ID": "ext",
        "X-Credential-Identifier": "cred",
        "X-Anonymous-Consumer": False,
    }


def test_facts_request_names_what_to_read() -> None:
    config = parse_config(_config())
    assert access.facts_request(config, None) == {
        "ip_source": "connection",
        "header_prefix": "X-Cilium-",
        "token_header": "",
        "jwt": False,
        "ports": False,
        "traceparent": False,  # no tracer provider configured
    }
    rules = parse_config(_config(claim_rules=[{"claim": "ns", "equals": "identity.namespace"}]))
    assert access.facts_request(rules, None)["jwt"] is True


def test_enforce_stops_asking_once_there_is_no_consumer(plugin: Plugin) -> None:
    kong = PdkKong(**{"kong.client.get_consumer": None})
    plugin.access(kong)
    assert kong.names() == [
        "kong.cilium_identity.facts",
        "kong.client.get_consumer",
        "kong.response.error",
    ]
    anonymous = PdkKong(**{"kong.client.get_credential": None})
    plugin.access(anonymous)
    assert "kong.client.get_ip" not in anonymous.names()


def test_monitor_still_resolves_the_identity_of_an_anonymous_caller() -> None:
    plugin = Plugin(_config(mode="monitor"))
    try:
        kong = PdkKong(**{"kong.client.get_consumer": None, "kong.client.get_credential": None})
        plugin.access(kong)
        assert "kong.client.get_ip" in kong.names()
        assert "kong.response.error" not in kong.names()
    finally:
        plugin.close()


def test_claim_rules_read_the_token_kong_s_jwt_plugin_verified() -> None:
    rules = [{"claim": "ns", "equals": "identity.namespace"}]
    plugin = Plugin(_config(claim_rules=rules))
    try:
        good = jwt.encode({"ns": "shop"}, "k" * 32, algorithm="HS256")
        kong = PdkKong(**{"kong.ctx.shared.get": good})
        plugin.access(kong)
        assert kong.args_of("kong.ctx.shared.get") == ("authenticated_jwt_token",)
        assert "kong.service.request.set_headers" in kong.names()
        other = jwt.encode({"ns": "dev"}, "k" * 32, algorithm="HS256")
        refused = PdkKong(**{"kong.ctx.shared.get": other})
        plugin.access(refused)
        assert refused.calls[-1] == ("kong.response.error", (403, "Forbidden (claim_mismatch)"))
    finally:
        plugin.close()


def test_the_lookup_gets_the_canonical_address_and_both_ports() -> None:
    asked: list[Peer] = []

    class Recorder:
        def lookup(self, peer: Peer) -> Lookup:
            asked.append(peer)
            return Lookup.unknown("test")

    lookup = access._lookup(Recorder(), "::ffff:10.0.0.7", 40000, 8000)  # type: ignore[arg-type]
    assert lookup.source == "test"
    assert asked == [Peer("10.0.0.7", 40000, 8000)]


def test_the_missing_companion_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config(_config())
    side = KongSide()
    with caplog.at_level(logging.WARNING, "kong_cilium_identity.decision"):
        access._open(PdkKong(), config, None, side)
        access._open(PdkKong(), config, None, KongSide())
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert warnings[0] == (
        "cilium-identity: Kong has no cilium-identity-guard plugin installed; using plain PDK "
        "calls (more round trips, a 1,000-header window, and no refusal when the plugin "
        "server is unreachable)"
    )
    caplog.clear()
    native_side = KongSide()
    exchange = access._open(FakeKong({"v": 1}), config, None, native_side)
    assert native_side.available is True and exchange.native == {"v": 1}
    assert caplog.records == []


def test_a_status_without_a_message_reads_forbidden() -> None:
    config = parse_config(_config())
    decision = deny(Reason.IDENTITY_MISMATCH, "x", status_code=418)
    assert access._client_message(config, decision) == "Forbidden (identity_mismatch)"


def test_kong_side_answers_carry_credential_and_refusal_headers() -> None:
    config = parse_config(_config())
    kong = FakeKong({})
    exchange = Exchange(kong, {})
    exchange.authenticated = access.Authenticated(ROW, (ROW["id"], "sa-user", None), "cred-9")
    allowed = access.Decision(True, Reason.ALLOWED, consumer=Consumer(ROW["id"], "sa-user"))
    access._apply_native(exchange, config, allowed)
    answer = kong.applied()
    assert answer["authenticate"] == {"consumer": ROW, "credential": {"id": "cred-9"}}
    assert answer["upstream"]["X-Consumer-Custom-ID"] is False

    refused = FakeKong({})
    denial = deny(
        Reason.INVALID_TOKEN, "x", status_code=400, response_headers={"WWW-Authenticate": "B"}
    )
    access._apply_native(Exchange(refused, {}), config, denial)
    assert refused.applied()["headers"] == {"WWW-Authenticate": "B"}
    assert refused.applied()["status"] == 400


def test_log_entry_for_an_enforced_denial_and_an_allow() -> None:
    config = parse_config(_config())
    observed = time.time() - 2.0
    identity = Identity.build(300, [], source="static", cluster="c1", observed_at=observed)
    consumer = Consumer("c-1", "alice")
    denied = access.log_entry(config, deny(Reason.IDENTITY_MISMATCH, "x", consumer=consumer))
    assert denied == {
        "decision": "deny",
        "reason": "identity_mismatch",
        "mode": "enforce",
        "enforced": True,
        "consumer": "alice",
    }
    allowed = access.log_entry(
        config, access.Decision(True, Reason.ALLOWED, identity=identity, consumer=consumer)
    )
    age = allowed.pop("age")
    assert 2.0 <= age < 60 and round(age, 3) == age
    assert allowed == {
        "decision": "allow",
        "reason": "allowed",
        "mode": "enforce",
        "enforced": True,
        "consumer": "alice",
        "identity": 300,
        "source": "static",
        "cluster": "c1",
    }
    future = Identity.build(300, [], observed_at=time.time() + 100)
    assert (
        access.log_entry(config, deny(Reason.IDENTITY_MISMATCH, "x", identity=future))["age"] == 0.0
    )


@dataclasses.dataclass(frozen=True)
class PinningSource:
    """Settings of a source that pins the connection (like Hubble's match_ports)."""

    match_ports: bool = True


def test_a_pinning_source_gets_both_ports_from_kong() -> None:
    config = parse_config(_config())
    pinning = dataclasses.replace(config, resolver=ResolverSettings((("hubble", PinningSource()),)))
    asked: list[Peer] = []

    class Recorder:
        def lookup(self, peer: Peer) -> Lookup:
            asked.append(peer)
            return Lookup.unknown("test")

    kong = PdkKong(**{"kong.client.get_port": 40000, "kong.request.get_port": 8000})
    decision = access._decide_for(
        Exchange(kong),
        pinning,
        Recorder(),  # type: ignore[arg-type]
        (Consumer("c-1"), True),
        None,
    )
    assert decision.reason is Reason.IDENTITY_UNKNOWN
    assert asked == [Peer(CHECKOUT_IP, 40000, 8000)]
    access._decide_for(Exchange(PdkKong()), config, Recorder(), (Consumer("c-1"), True), None)  # type: ignore[arg-type]
    assert asked[-1] == Peer(CHECKOUT_IP, None, None)


def test_kong_side_ports_come_from_the_facts() -> None:
    config = parse_config(_config())
    native = {"port": 40000, "server_port": 8000}
    assert Exchange(PdkKong(), native).ports(config) == (40000, 8000)


def test_no_client_address_is_unknown_to_kong() -> None:
    lookup = access._lookup(None, None)  # type: ignore[arg-type]
    assert (lookup.status, lookup.source) == (LookupStatus.UNKNOWN, "kong")


def test_a_failure_before_the_facts_still_refuses_with_the_reason(plugin: Plugin) -> None:
    class Raising(PdkKong):
        def answer(self, path: str, args: tuple[Any, ...]) -> Any:
            if path == "kong.cilium_identity.facts":
                raise ConnectionError("socket closed")
            return super().answer(path, args)

    kong = Raising()
    plugin.access(kong)
    assert kong.calls == [
        ("kong.response.error", (500, "An unexpected error occurred (internal_error)"))
    ]


def test_a_stock_kong_without_settling_calls_is_refused_directly() -> None:
    """kong-pdk's own PDK object has no ``settling_calls`` attribute at all."""
    refused: list[tuple[Any, ...]] = []

    class Response:
        def error(self, *args: Any) -> None:
            refused.append(args)

    class StockKong:
        response = Response()

    config = parse_config(_config())
    access._apply_native(Exchange(StockKong(), {}), config, deny(Reason.NO_BINDING, "x"))
    assert refused == [(403, "Forbidden (no_binding)")]


def test_over_pdk_a_token_consumer_is_authenticated_and_named_upstream() -> None:
    config = parse_config(_config())
    kong = PdkKong(**{"kong.request.get_headers": {"X-Consumer-ID": "forged"}})
    exchange = Exchange(kong)
    exchange.authenticated = access.Authenticated(ROW, (ROW["id"], "sa-user", None), "cred-9")
    identity = Identity.build(300, [])
    allowed = access.Decision(True, Reason.ALLOWED, identity=identity)
    access._apply_pdk(exchange, config, allowed)
    (table,) = kong.args_of("kong.service.request.set_headers")
    assert table["X-Consumer-ID"] == ROW["id"]
    assert table["X-Consumer-Username"] == "sa-user"
    assert table["X-Consumer-Custom-ID"] == []  # cleared: the token's consumer has none
    assert table["X-Credential-Identifier"] == "cred-9"
    assert table["X-Anonymous-Consumer"] == []
    assert table["X-Cilium-Identity"] == "300"


def test_the_token_is_read_from_the_configured_header_over_pdk() -> None:
    exchange = Exchange(PdkKong(**{"kong.request.get_headers": {"x-tok": "Bearer a.b.c"}}))
    assert exchange.token_value("x-tok") == "Bearer a.b.c"
    assert exchange.token_value("authorization") is None


def test_the_logged_age_is_in_seconds_to_the_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access, "time", types.SimpleNamespace(time=lambda: 1000.123456))
    config = parse_config(_config())
    identity = Identity.build(300, [], observed_at=997.0)
    entry = access.log_entry(config, deny(Reason.IDENTITY_MISMATCH, "x", identity=identity))
    assert entry["age"] == 3.123


class StubVerifier:
    """Accepts exactly ``Bearer good`` from the configured header, with fixed claims."""

    def __init__(self, claims: dict[str, Any]) -> None:
        self.settings = dataclasses.replace(
            TokenSettings(), enabled=True, header="x-tok", consumer_claim="sub"
        )
        self.claims = claims
        self.seen: list[object] = []

    def check(self, value: object) -> Verified | TokenFailure:
        self.seen.append(value)
        if value == "Bearer good":
            return Verified(self.claims, None, "RS256")
        return TokenFailure.of(TokenReason.MISSING, "no bearer token")


def test_the_token_check_reads_its_header_and_names_a_bad_consumer_claim() -> None:
    config = parse_config(_config())
    kong = PdkKong(**{"kong.request.get_headers": {"x-tok": "Bearer good"}})
    verifier = StubVerifier({"iss": "x"})
    decision = access._decide(Exchange(kong), config, None, verifier)  # type: ignore[arg-type]
    assert verifier.seen == ["Bearer good"]
    assert (decision.reason, decision.status, decision.detail) == (
        Reason.INVALID_TOKEN,
        401,
        "token_claims: claim sub is not a non-empty string",
    )
    assert "kong.client.get_consumer" not in kong.names()

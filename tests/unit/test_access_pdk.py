"""The access phase over plain PDK calls (Kong without the cilium-identity-guard
companion): which calls it makes, what it sets upstream, how it refuses (access.py).

The companion path is in test_access_kong_side.py; these pin the fallback path, which
the earlier unit suite never drove (docs/mutation.md)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from kong_cilium_identity import access
from kong_cilium_identity.access import Exchange, KongSide
from kong_cilium_identity.decision import Consumer, Reason, deny
from kong_cilium_identity.identity.model import Identity
from kong_cilium_identity.plugin import Plugin, plugin_info
from kong_cilium_identity.schema import parse_config
from kong_cilium_identity.testing.kong_schema import config_field, validate_config
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

"""The access phase with Kong's cilium-identity-guard companion: what the plugin asks
(facts), what it answers (apply), and how many calls that takes. Kong's side itself (the
Lua) runs in real nginx in tests/nginx."""

from __future__ import annotations

from typing import Any

import pytest

from kong_cilium_identity.kong.kong_schema import config_field, validate_config
from kong_cilium_identity.plugin import Plugin, plugin_info
from tests.scenario import (
    CHECKOUT,
    CHECKOUT_BINDING,
    CHECKOUT_ENTRY,
    CHECKOUT_IP,
    PAYMENTS_ENTRY,
    PAYMENTS_IP,
)

RAW_CONFIG: dict[str, Any] = {
    "sources": ["static"],
    "static": {"entries": [CHECKOUT_ENTRY, PAYMENTS_ENTRY]},
    "bindings": [CHECKOUT_BINDING],
}


class Method:
    def __init__(self, kong: FakeKong, path: str) -> None:
        self._kong, self._path = kong, path

    def __getattr__(self, name: str) -> Method:
        return Method(self._kong, f"{self._path}.{name}")

    def __call__(self, *args: Any) -> Any:
        return self._kong.answer(self._path, args)


class FakeKong:
    """Records every PDK call; answers the companion's facts from a table."""

    settling_calls = True

    def __init__(self, facts: dict[str, Any] | None) -> None:
        self.facts = facts
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Method:
        return Method(self, f"kong.{name}")

    def answer(self, path: str, args: tuple[Any, ...]) -> Any:
        self.calls.append((path, args))
        if path == "kong.cilium_identity.facts":
            return self.facts, None
        if path == "kong.cilium_identity.apply":
            return None
        return None, None

    def names(self) -> list[str]:
        return [path for path, _ in self.calls]

    def applied(self) -> dict[str, Any]:
        (answer,) = [args[0] for path, args in self.calls if path == "kong.cilium_identity.apply"]
        assert isinstance(answer, dict)
        return answer


def facts(**overrides: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "consumer": CHECKOUT,
        "credential": True,
        "ip": CHECKOUT_IP,
        "forged": 0,
        "tokens": [],
        "jwt": False,
        **overrides,
    }


@pytest.fixture
def plugin() -> Plugin:
    filled = validate_config(config_field(plugin_info()["Schema"]), RAW_CONFIG)
    instance = Plugin(filled)
    yield instance
    instance.close()


def test_allowed_is_facts_then_apply(plugin: Plugin) -> None:
    kong = FakeKong(facts())
    plugin.access(kong)
    assert kong.names() == ["kong.cilium_identity.facts", "kong.cilium_identity.apply"]
    spec = kong.calls[0][1][0]
    assert spec["header_prefix"] == "X-Cilium-" and spec["ip_source"] == "connection"
    answer = kong.applied()
    assert answer["allow"] is True
    assert answer["upstream"] == {
        "X-Cilium-Identity": "48861",
        "X-Cilium-Namespace": "shop",
        "X-Cilium-Service-Account": "checkout",
        "X-Cilium-Pod": "checkout-7d9f8-x2x5q",
    }
    assert answer["log"]["decision"] == "allow" and answer["log"]["identity"] == 48861


@pytest.mark.parametrize(
    ("overrides", "status", "reason"),
    [
        ({"ip": PAYMENTS_IP}, 403, "identity_mismatch"),
        ({"consumer": False, "credential": False}, 401, "no_consumer"),
        ({"credential": False}, 401, "anonymous"),
        ({"ip": "10.9.9.9"}, 403, "identity_unknown"),
        ({"ip": False}, 403, "identity_unknown"),
        ({"ip": "not-an-ip"}, 403, "identity_unknown"),
        ({"consumer": {"username": "no-id"}}, 401, "no_consumer"),
        ({"credential": "yes"}, 401, "anonymous"),  # only a real true counts
    ],
)
def test_denied_is_facts_then_a_refusing_apply(
    plugin: Plugin, overrides: dict[str, Any], status: int, reason: str
) -> None:
    kong = FakeKong(facts(**overrides))
    plugin.access(kong)
    assert kong.names() == ["kong.cilium_identity.facts", "kong.cilium_identity.apply"]
    answer = kong.applied()
    assert answer["allow"] is False and answer["status"] == status
    assert answer["message"].endswith(f"({reason})")
    assert answer["log"]["reason"] == reason and "upstream" not in answer


def test_monitor_lets_a_would_deny_through_without_identity_headers() -> None:
    filled = validate_config(
        config_field(plugin_info()["Schema"]), {**RAW_CONFIG, "mode": "monitor"}
    )
    plugin = Plugin(filled)
    try:
        kong = FakeKong(facts(ip=PAYMENTS_IP))
        plugin.access(kong)
        answer = kong.applied()
        assert answer["allow"] is True
        assert set(answer["upstream"].values()) == {False}  # every identity header cleared
        assert answer["log"]["decision"] == "would_deny"
    finally:
        plugin.close()


def test_without_the_companion_the_instance_stays_on_plain_pdk(plugin: Plugin) -> None:
    first = FakeKong(None)  # Kong answers nil for a method it does not have
    plugin.access(first)
    assert first.names()[:2] == ["kong.cilium_identity.facts", "kong.client.get_consumer"]
    second = FakeKong(None)
    plugin.access(second)
    assert "kong.cilium_identity.facts" not in second.names()


def test_stock_kong_pdk_refuses_with_response_error(plugin: Plugin) -> None:
    """kong-pdk's own server would wait forever for apply's Step on a refusal."""
    kong = FakeKong(facts(ip=PAYMENTS_IP))
    kong.settling_calls = False  # type: ignore[misc]
    plugin.access(kong)
    assert kong.names() == ["kong.cilium_identity.facts", "kong.response.error"]
    assert kong.calls[-1][1][0] == 403


@pytest.mark.parametrize("ip", [["10.0.1.200"], 167772616, b"10.0.1.200", {"ip": CHECKOUT_IP}])
def test_an_address_of_the_wrong_type_is_no_address(plugin: Plugin, ip: Any) -> None:
    kong = FakeKong(facts(ip=ip))
    plugin.access(kong)
    assert kong.applied()["log"]["reason"] == "identity_unknown"


def test_facts_that_are_not_a_table_fall_back_to_plain_pdk(plugin: Plugin) -> None:
    kong = FakeKong("facts")  # type: ignore[arg-type]
    plugin.access(kong)
    assert kong.names()[1] == "kong.client.get_consumer"


def test_token_consumer_is_loaded_then_authenticated_inside_apply() -> None:
    from tests.kit.fake_issuer import FakeIssuer

    sa_user = "system:serviceaccount:shop:checkout"
    row = {**CHECKOUT, "username": sa_user}
    with FakeIssuer(audience="kong") as issuer:
        raw = {
            **RAW_CONFIG,
            "bindings": [{"consumer": sa_user, "selectors": ["k8s:app=checkout"]}],
            "token": {
                "enabled": True,
                "issuer": issuer.issuer,
                "audiences": ["kong"],
                "jwks_uri": issuer.jwks_uri,
                "consumer_claim": "sub",
                "service_account_token": True,
            },
        }
        plugin = Plugin(validate_config(config_field(plugin_info()["Schema"]), raw))
        try:
            claims = issuer.service_account_claims("shop", "checkout", "checkout-a", "uid-a")
            token = issuer.sign(claims)

            class TokenKong(FakeKong):
                def answer(self, path: str, args: tuple[Any, ...]) -> Any:
                    if path == "kong.client.load_consumer":
                        self.calls.append((path, args))
                        return row, None
                    return super().answer(path, args)

            kong = TokenKong(facts(consumer=False, credential=False, tokens=[f"Bearer {token}"]))
            plugin.access(kong)
            assert kong.names() == [
                "kong.cilium_identity.facts",
                "kong.client.load_consumer",
                "kong.cilium_identity.apply",
            ]
            assert kong.calls[0][1][0]["token_header"] == "authorization"
            answer = kong.applied()
            assert answer["allow"] is True, answer
            assert answer["authenticate"]["consumer"] == row
            assert answer["upstream"]["X-Consumer-Username"] == sa_user
            assert answer["upstream"]["X-Anonymous-Consumer"] is False
            assert token not in repr(answer)  # the token never goes back to Kong

            twice = TokenKong(facts(tokens=[f"Bearer {token}", f"Bearer {token}"]))
            plugin.access(twice)
            refused = twice.applied()
            assert refused["allow"] is False and refused["status"] == 400
        finally:
            plugin.close()

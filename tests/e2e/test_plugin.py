"""The cilium-identity plugin end to end: real plugin server process, Kong wire harness."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from kong_cilium_identity.kong.kong_schema import ConfigRejected
from tests.kit.kong import KongHarness, KongRequest, Outcome
from tests.scenario import (
    CHECKOUT,
    CHECKOUT_BINDING,
    CHECKOUT_ENTRY,
    CHECKOUT_IP,
    CHECKOUT_V6_ID,
    CHECKOUT_V6_IP,
    CREDENTIAL,
    HOST_IP,
    PAYMENTS_ENTRY,
    PAYMENTS_IP,
    static_entry,
)

CONFIG: dict[str, Any] = {
    "sources": ["static"],
    "static": {
        "entries": [
            CHECKOUT_ENTRY,
            PAYMENTS_ENTRY,
            static_entry(CHECKOUT_V6_IP, CHECKOUT_V6_ID, "k8s:app=checkout"),
            static_entry(HOST_IP, 1, "reserved:host"),
        ]
    },
    "bindings": [
        CHECKOUT_BINDING,
        {"consumer": "admin", "selectors": ["reserved:host"]},
    ],
}
ADMIN = {**CHECKOUT, "id": "0c1f0b0e-1c1a-4e44-9a39-4a0d4b5a0002", "username": "admin"}


def call(kong: KongHarness, config: dict[str, Any] | None = None, **request: Any) -> Outcome:
    fields: dict[str, Any] = {
        "client_ip": CHECKOUT_IP,
        "consumer": CHECKOUT,
        "credential": CREDENTIAL,
        **request,
    }
    return kong.request(kong.add_plugin(config or CONFIG), KongRequest(**fields))


def wait_for_log(kong: KongHarness, text: str, timeout: float = 5.0) -> bool:
    """The server's output reaches Kong's log through a pipe: poll for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for line in kong.server_output):
            return True
        time.sleep(0.02)
    return False


def assert_denied(out: Outcome, status: int, reason: str) -> None:
    assert not out.proxied and not out.failed_open, out.kong_log
    assert out.status == status
    assert isinstance(out.body, dict) and reason in out.body["message"]


def test_dump_passes_kongs_validation(kong: KongHarness) -> None:
    info = kong.query()
    assert (info.name, info.priority, info.phases) == ("cilium-identity", 1000, ("access",))


def test_bound_identity_is_allowed_with_upstream_headers(kong: KongHarness) -> None:
    out = call(kong)
    assert out.proxied and out.status == 200 and not out.failed_open, out.kong_log
    assert out.upstream_headers["x-cilium-identity"] == ["48861"]
    assert out.upstream_headers["x-cilium-namespace"] == ["shop"]
    assert out.upstream_headers["x-cilium-service-account"] == ["checkout"]
    assert out.upstream_headers["x-cilium-pod"] == ["checkout-7d9f8-x2x5q"]


def test_wrong_identity_is_403(kong: KongHarness) -> None:
    assert_denied(call(kong, client_ip=PAYMENTS_IP), 403, "identity_mismatch")


def test_unknown_address_is_403(kong: KongHarness) -> None:
    assert_denied(call(kong, client_ip="10.9.9.9"), 403, "identity_unknown")


def test_reserved_identity_is_403_even_when_bound(kong: KongHarness) -> None:
    out = call(kong, client_ip=HOST_IP, consumer=ADMIN)
    assert_denied(out, 403, "identity_reserved")


def test_reserved_identity_passes_only_when_allowlisted(kong: KongHarness) -> None:
    out = call(
        kong, {**CONFIG, "allow_reserved_identities": [1]}, client_ip=HOST_IP, consumer=ADMIN
    )
    assert out.proxied and out.upstream_headers["x-cilium-identity"] == ["1"]


def test_no_consumer_is_401(kong: KongHarness) -> None:
    assert_denied(call(kong, consumer=None, credential=None), 401, "no_consumer")


def test_anonymous_consumer_is_401(kong: KongHarness) -> None:
    assert_denied(call(kong, credential=None), 401, "anonymous")


def test_consumer_not_bound_is_403(kong: KongHarness) -> None:
    other = {**CHECKOUT, "id": "0c1f0b0e-1c1a-4e44-9a39-4a0d4b5a0009", "username": "intern"}
    assert_denied(call(kong, consumer=other), 403, "no_binding")


def test_binding_from_consumer_tag(kong: KongHarness) -> None:
    tagged = {**CHECKOUT, "username": "payments", "tags": ["cilium-identity:k8s:app=payments"]}
    out = call(kong, consumer=tagged, client_ip=PAYMENTS_IP)
    assert out.proxied and out.upstream_headers["x-cilium-identity"] == ["51022"]


def test_monitor_mode_passes_and_reports(kong: KongHarness) -> None:
    out = call(
        kong,
        {**CONFIG, "mode": "monitor"},
        client_ip=PAYMENTS_IP,
        headers={"X-Cilium-Identity": "48861"},
    )
    assert out.proxied and out.status == 200 and not out.failed_open
    assert "x-cilium-identity" not in out.upstream_headers  # would-deny: no identity claims
    assert wait_for_log(kong, '"would_deny": true')
    assert wait_for_log(kong, '"reason": "identity_mismatch"')


def test_spoofed_identity_headers_are_removed(kong: KongHarness) -> None:
    spoofed = {
        "X-Cilium-Identity": "1",
        "x-cilium-namespace": ["kube-system", "x"],
        "X-Cilium-Admin": "yes",
        "X-Other": "kept",
    }
    out = call(kong, {**CONFIG, "upstream_headers": False}, headers=spoofed)
    assert out.proxied
    assert not [name for name in out.upstream_headers if name.startswith("x-cilium-")]
    assert out.upstream_headers["x-other"] == ["kept"]


def test_spoofed_headers_are_replaced_on_allow(kong: KongHarness) -> None:
    out = call(kong, headers={"X-CILIUM-IDENTITY": "1", "X-Cilium-Pod": "evil"})
    assert out.upstream_headers["x-cilium-identity"] == ["48861"]
    assert out.upstream_headers["x-cilium-pod"] == ["checkout-7d9f8-x2x5q"]


@pytest.mark.parametrize(
    ("client_ip", "allowed"),
    [
        (CHECKOUT_V6_IP, True),
        ("FD00:10:244:0::17", True),
        (f"::ffff:{CHECKOUT_IP}", True),
        (f"::ffff:{PAYMENTS_IP}", False),
        ("fd00:10:244::18", False),
    ],
)
def test_ipv6_and_ipv4_mapped_clients(kong: KongHarness, client_ip: str, allowed: bool) -> None:
    out = call(kong, client_ip=client_ip)
    assert out.proxied is allowed and out.status == (200 if allowed else 403)


def test_forwarded_ip_source(kong: KongHarness) -> None:
    config = {**CONFIG, "ip_source": "forwarded"}
    out = call(kong, config, client_ip="10.250.0.1", forwarded_ip=CHECKOUT_IP)
    assert out.proxied and "kong.client.get_forwarded_ip" in out.pdk_calls
    assert not call(kong, config, client_ip=CHECKOUT_IP, forwarded_ip="10.250.0.1").proxied


@pytest.mark.parametrize(
    "change",
    [
        {"bindings": [{"consumer": "checkout", "selectors": ["k8s:app=,"]}]},
        {"header_prefix": "X Bad"},
        {"static": {"entries": [{"address": "10.0.0.1/8", "id": 5}]}},
        {"claim_rules": [{"claim": "sub", "equals": "identity.colour"}]},
    ],
)
def test_invalid_config_starts_but_refuses_every_request(
    kong: KongHarness, change: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    plugin = kong.add_plugin({**CONFIG, **change})
    first = kong.request(plugin, KongRequest(client_ip=CHECKOUT_IP, consumer=CHECKOUT))
    second = kong.request(plugin, KongRequest(client_ip=CHECKOUT_IP, consumer=CHECKOUT))
    for out in (first, second):
        assert not out.proxied and out.status == 500
        assert out.body["message"] == "An unexpected error occurred (invalid_config)"
        assert out.pdk_calls == ["kong.response.error"]  # one round trip, nothing else asked
    assert first.rpc_calls == ["plugin.StartInstance", "plugin.HandleEvent"]
    assert second.rpc_calls == ["plugin.HandleEvent"]  # Kong does not retry StartInstance


@pytest.mark.parametrize(
    "change",
    [{"mode": "audit"}, {"lookup_timeout": 0}, {"sources": []}, {"bindings": [{"consumer": "x"}]}],
)
def test_kong_itself_rejects_what_the_schema_forbids(
    kong: KongHarness, change: dict[str, Any]
) -> None:
    with pytest.raises(ConfigRejected):
        kong.add_plugin({**CONFIG, **change})


def test_pdk_calls_per_path_without_the_kong_side_companion(kong: KongHarness) -> None:
    """Kong without cilium-identity-guard: the instance's first call asks for the
    companion's facts, Kong answers nil, and the instance stays on plain PDK calls."""
    plugin = kong.add_plugin(CONFIG)
    request = KongRequest(client_ip=CHECKOUT_IP, consumer=CHECKOUT, credential=CREDENTIAL)
    first = kong.request(plugin, request)
    allowed = kong.request(plugin, request)
    denied = kong.request(plugin, replace(request, client_ip=PAYMENTS_IP))
    no_consumer = kong.request(plugin, KongRequest(client_ip=CHECKOUT_IP))
    anonymous = kong.request(plugin, KongRequest(client_ip=CHECKOUT_IP, consumer=CHECKOUT))
    assert first.pdk_calls[0] == "kong.cilium_identity.facts"
    assert first.pdk_calls[1:] == allowed.pdk_calls
    assert allowed.pdk_calls == [
        "kong.client.get_consumer",
        "kong.client.get_credential",
        "kong.client.get_ip",
        "kong.request.get_headers",
        "kong.service.request.set_headers",
    ]
    assert denied.pdk_calls == [
        "kong.client.get_consumer",
        "kong.client.get_credential",
        "kong.client.get_ip",
        "kong.response.error",
    ]
    assert no_consumer.pdk_calls == ["kong.client.get_consumer", "kong.response.error"]
    assert anonymous.pdk_calls == [
        "kong.client.get_consumer",
        "kong.client.get_credential",
        "kong.response.error",
    ]


def test_plugin_exception_is_a_500_not_a_pass(faulty_kong: KongHarness) -> None:
    out = call(faulty_kong, client_ip="10.66.6.6")
    assert_denied(out, 500, "internal_error")
    assert call(faulty_kong).proxied  # the server keeps serving other requests


def test_plugin_exception_in_monitor_mode_passes(faulty_kong: KongHarness) -> None:
    out = call(faulty_kong, {**CONFIG, "mode": "monitor"}, client_ip="10.66.6.6")
    assert out.proxied and not out.failed_open
    assert "x-cilium-identity" not in out.upstream_headers


def test_timeouts_that_cannot_fit_the_event_deadline_refuse_the_route(kong: KongHarness) -> None:
    """Two remote sources at 6 s each cannot answer within the server's 10 s deadline: the
    configuration is refused (500 invalid_config, once logged naming the fields) instead
    of every request ending at the deadline."""
    plugin = kong.add_plugin({**CONFIG, "sources": ["agent", "hubble"], "lookup_timeout": 6})
    out = kong.request(plugin, KongRequest(client_ip=CHECKOUT_IP, consumer=CHECKOUT))
    assert not out.proxied and out.status == 500
    assert out.body["message"] == "An unexpected error occurred (invalid_config)"
    assert out.pdk_calls == ["kong.response.error"]

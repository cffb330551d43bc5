"""The plugin's own token check end to end: a service-account token is bound to its pod."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.kit.fake_issuer import FakeIssuer
from tests.kit.kong import KongHarness, KongRequest, Outcome

POD_A_IP, POD_B_IP, OTHER_NS_IP = "10.0.2.10", "10.0.2.11", "10.0.3.10"
POD_A_UID = "0f4c7d3e-2b1a-4c5d-9e8f-a1b2c3d4e5f6"
POD_B_UID = "7e6d5c4b-3a29-4f18-8e7d-6c5b4a392817"
SA_USERNAME = "system:serviceaccount:shop:checkout"
CHECKOUT_LABELS = [
    "k8s:app=checkout",
    "k8s:io.kubernetes.pod.namespace=shop",
    "k8s:io.cilium.k8s.policy.serviceaccount=checkout",
]
CONSUMER = {
    "id": "4a2f3c1e-9b8d-4e7f-a6c5-b4d3e2f1a0b9",
    "username": SA_USERNAME,
    "custom_id": None,
    "created_at": 1700000000,
    "tags": [],
}


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    with FakeIssuer(audience="kong") as fake:
        yield fake


def config(issuer: FakeIssuer, **token: Any) -> dict[str, Any]:
    entries = [
        {
            "address": POD_A_IP,
            "id": 48861,
            "labels": CHECKOUT_LABELS,
            "pod": "checkout-a",
            "pod_uid": POD_A_UID,
        },
        {
            "address": POD_B_IP,
            "id": 48861,
            "labels": CHECKOUT_LABELS,
            "pod": "checkout-b",
            "pod_uid": POD_B_UID,
        },
        {
            "address": OTHER_NS_IP,
            "id": 50211,
            "labels": [
                "k8s:app=checkout",
                "k8s:io.kubernetes.pod.namespace=dev",
                "k8s:io.cilium.k8s.policy.serviceaccount=checkout",
            ],
        },
    ]
    return {
        "sources": ["static"],
        "static": {"entries": entries},
        "bindings": [{"consumer": SA_USERNAME, "selectors": ["k8s:app=checkout"]}],
        "token": {
            "enabled": True,
            "issuer": issuer.issuer,
            "audiences": ["kong"],
            "jwks_uri": issuer.jwks_uri,
            "consumer_claim": "sub",
            "service_account_token": True,
            "pod_binding": True,
            **token,
        },
    }


def pod_a_token(issuer: FakeIssuer, **claims: Any) -> str:
    sa = issuer.service_account_claims("shop", "checkout", "checkout-a", POD_A_UID)
    return issuer.sign({**sa, **claims})


def send(
    kong: KongHarness,
    plugin_config: dict[str, Any],
    token: str | None,
    client_ip: str = POD_A_IP,
    **request: Any,
) -> Outcome:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    fields: dict[str, Any] = {
        "client_ip": client_ip,
        "headers": headers,
        "consumers": [CONSUMER],
        **request,
    }
    return kong.request(kong.add_plugin(plugin_config), KongRequest(**fields))


def test_token_of_pod_a_from_pod_a_is_allowed(kong: KongHarness, issuer: FakeIssuer) -> None:
    out = send(kong, config(issuer), pod_a_token(issuer))
    assert out.proxied and out.status == 200 and not out.failed_open, (out.body, out.kong_log)
    assert out.upstream_headers["x-cilium-pod"] == ["checkout-a"]
    assert out.upstream_headers["x-consumer-username"] == [SA_USERNAME]
    assert out.authenticated_consumer["id"] == CONSUMER["id"]  # acl & co. see the consumer
    assert out.pdk_calls == [
        "kong.cilium_identity.facts",  # Kong without the companion answers nil
        "kong.request.get_headers",
        "kong.client.load_consumer",
        "kong.client.authenticate",
        "kong.client.get_ip",
        "kong.service.request.set_headers",
    ]


def test_same_token_from_pod_b_is_claim_mismatch(kong: KongHarness, issuer: FakeIssuer) -> None:
    out = send(kong, config(issuer), pod_a_token(issuer), client_ip=POD_B_IP)
    assert not out.proxied and out.status == 403
    assert isinstance(out.body, dict) and "claim_mismatch" in out.body["message"]


def test_without_pod_binding_pod_b_passes(kong: KongHarness, issuer: FakeIssuer) -> None:
    out = send(kong, config(issuer, pod_binding=False), pod_a_token(issuer), client_ip=POD_B_IP)
    assert out.proxied


def test_token_replayed_from_another_namespace(kong: KongHarness, issuer: FakeIssuer) -> None:
    out = send(kong, config(issuer, pod_binding=False), pod_a_token(issuer), client_ip=OTHER_NS_IP)
    assert out.status == 403 and "claim_mismatch" in str(out.body)


def attacks(issuer: FakeIssuer) -> dict[str, str | None]:
    sa = issuer.service_account_claims("shop", "checkout", "checkout-a", POD_A_UID)
    valid = issuer.sign(sa)
    header, payload, signature = valid.split(".")
    return {
        "no token": None,
        "expired": issuer.sign(
            {**sa, "exp": sa["iat"] - 600, "iat": sa["iat"] - 4000, "nbf": sa["iat"] - 4000}
        ),
        "not yet valid": issuer.sign({**sa, "nbf": sa["iat"] + 3600}),
        "wrong issuer": issuer.sign({**sa, "iss": "https://evil.example"}),
        "wrong audience": issuer.sign({**sa, "aud": "other-api"}),
        "alg none": issuer.forge_none(sa),
        "hs256 with the public key": issuer.forge_hmac(sa),
        "tampered payload": f"{header}.{payload[:-4]}AAAA.{signature}",
        "malformed": "not.a.jwt",
        "unknown kid": issuer.sign(sa, headers={"kid": "nobody"}),
    }


ATTACKS = [
    "no token",
    "expired",
    "not yet valid",
    "wrong issuer",
    "wrong audience",
    "alg none",
    "hs256 with the public key",
    "tampered payload",
    "malformed",
    "unknown kid",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_tokens_are_401_with_a_challenge(
    kong: KongHarness, issuer: FakeIssuer, attack: str
) -> None:
    tokens = attacks(issuer)
    assert set(tokens) == set(ATTACKS)
    out = send(kong, config(issuer), tokens[attack])
    assert not out.proxied and out.status == 401, (attack, out.body)
    assert isinstance(out.body, dict) and "invalid_token" in out.body["message"]
    challenge = out.response_headers["www-authenticate"][0]
    assert challenge.startswith('Bearer realm="kong"')
    assert (attack == "no token") == ("error=" not in challenge)


def test_jwks_down_keeps_cached_keys_and_an_empty_cache_is_503(kong: KongHarness) -> None:
    with FakeIssuer(audience="kong") as issuer:
        plugin_config = config(issuer)
        assert send(kong, plugin_config, pod_a_token(issuer)).proxied  # keys now cached
        issuer.down()
        assert send(kong, plugin_config, pod_a_token(issuer)).proxied
        fresh = config(issuer, fetch_timeout=0.5)  # other settings: its own, empty store
        out = send(kong, fresh, pod_a_token(issuer))
        assert not out.proxied and out.status == 503
        assert "source_unavailable" in str(out.body)


def test_consumer_from_an_earlier_auth_plugin(kong: KongHarness, issuer: FakeIssuer) -> None:
    plugin_config = config(issuer, consumer_claim=None)
    out = send(
        kong, plugin_config, pod_a_token(issuer), consumer=CONSUMER, credential={"id": "cred-1"}
    )
    assert out.proxied
    assert out.pdk_calls[:4] == [
        "kong.cilium_identity.facts",
        "kong.request.get_headers",
        "kong.client.get_consumer",
        "kong.client.get_credential",
    ]
    assert (
        send(
            kong,
            plugin_config,
            pod_a_token(issuer),
            client_ip=POD_B_IP,
            consumer=CONSUMER,
            credential={"id": "cred-1"},
        ).status
        == 403
    )


def test_token_naming_an_unknown_consumer_is_401(kong: KongHarness, issuer: FakeIssuer) -> None:
    out = send(kong, config(issuer), pod_a_token(issuer, sub="system:serviceaccount:x:y"))
    assert out.status == 401 and "no_consumer" in str(out.body)


def test_consumer_by_id_with_a_claim_that_is_no_uuid_is_401(
    kong: KongHarness, issuer: FakeIssuer
) -> None:
    """A by-id claim that cannot name a consumer row must not turn into a custom_id
    consumer (whose bare binding is the username's)."""
    out = send(kong, config(issuer, consumer_by="id"), pod_a_token(issuer))
    assert not out.proxied
    assert out.status == 401 and "no_consumer" in str(out.body)


def test_consumer_by_custom_id_clears_client_sent_consumer_headers(
    kong: KongHarness, issuer: FakeIssuer
) -> None:
    """A token-named custom_id consumer is the authenticated caller: client-sent
    X-Consumer-* copies must not reach the upstream as if Kong had set them."""
    spoofed = {
        "X-Consumer-ID": CONSUMER["id"],
        "X-Consumer-Username": "admin",
        "X-Consumer-Custom-ID": "someone-else",
        "X-Credential-Identifier": "cred-admin",
        "X-Anonymous-Consumer": "false",
    }
    token = pod_a_token(issuer)
    out = send(
        kong,
        config(issuer, consumer_by="custom_id"),
        None,
        headers={"Authorization": f"Bearer {token}", **spoofed},
    )
    assert out.proxied
    headers = out.upstream_headers
    assert headers["x-consumer-custom-id"] == [SA_USERNAME]
    for name in ("x-consumer-id", "x-consumer-username", "x-anonymous-consumer"):
        assert name not in headers
    assert headers["x-credential-identifier"] == [f"cilium-identity-token:{SA_USERNAME}"]

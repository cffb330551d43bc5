"""From verified service-account tokens to decisions: the claim rules in the decision core."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kong_cilium_identity.identity.model import Identity, Lookup
from kong_cilium_identity.policy.decision import ClaimRule, Consumer, Facts, Policy, Reason, decide
from kong_cilium_identity.token import (
    ConsumerClaim,
    KeyStore,
    TokenFailure,
    TokenReason,
    TokenSettings,
    Verified,
    claim_rules_for,
    consumer_claim,
    verify,
)
from tests.kit.fake_issuer import FakeIssuer
from tests.token.conftest import settings_for

UID_A = "0f4c6f3e-8a8b-4c52-9d0b-5d7d3c1c0a01"
UID_B = "7a1e2b9c-3d4f-4e5a-8b6c-9d0e1f2a3b4c"
LABELS = [
    "k8s:app=checkout",
    "k8s:io.kubernetes.pod.namespace=shop",
    "k8s:io.cilium.k8s.policy.serviceaccount=checkout",
]
POD_A = Identity.build(48861, LABELS, pod="checkout-a", pod_uid=UID_A, source="static")
POD_B = Identity.build(48861, LABELS, pod="checkout-b", pod_uid=UID_B, source="static")
CHECKOUT = Consumer("c-1", "checkout", None, ())


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    with FakeIssuer() as fake:
        yield fake


@pytest.fixture(scope="module")
def settings(issuer: FakeIssuer) -> TokenSettings:
    return settings_for(issuer, service_account_token=True, pod_binding=True)


@pytest.fixture(scope="module")
def store(settings: TokenSettings) -> Iterator[KeyStore]:
    keys = KeyStore(settings.keys)
    yield keys
    keys.close()


def _policy(settings: TokenSettings) -> Policy:
    return Policy.build([("checkout", ["k8s:app=checkout"])], claim_rules=claim_rules_for(settings))


def _decide(claims: Any, identity: Identity, settings: TokenSettings) -> tuple[Reason, str]:
    facts = Facts(CHECKOUT, True, "10.0.0.7", claims)
    decision = decide(facts, Lookup.found(identity, "static"), _policy(settings))
    return decision.reason, decision.detail


def test_claim_rules_for_the_templates(issuer: FakeIssuer) -> None:
    assert claim_rules_for(settings_for(issuer)) == []
    service_account = settings_for(issuer, service_account_token=True)
    assert claim_rules_for(service_account) == [
        ("kubernetes.io.namespace", "identity.namespace"),
        ("kubernetes.io.serviceaccount.name", "identity.service_account"),
    ]
    pod = settings_for(issuer, service_account_token=True, pod_binding=True)
    assert claim_rules_for(pod)[2:] == [
        ("kubernetes.io.pod.name", "identity.pod"),
        ("kubernetes.io.pod.uid", "identity.pod_uid"),
    ]
    for claim, target in claim_rules_for(pod):
        assert ClaimRule.parse(claim, target).target == target


def test_pod_a_token_from_pod_a_is_allowed_and_from_pod_b_is_refused(
    issuer: FakeIssuer, settings: TokenSettings, store: KeyStore
) -> None:
    token = issuer.sign(issuer.service_account_claims("shop", "checkout", "checkout-a", UID_A))
    verified = verify(token, settings, store)
    assert isinstance(verified, Verified)
    assert _decide(verified.claims, POD_A, settings)[0] is Reason.ALLOWED
    reason, detail = _decide(verified.claims, POD_B, settings)
    assert (reason, reason.status) == (Reason.CLAIM_MISMATCH, 403)
    assert "kubernetes.io.pod.name" in detail


def test_without_pod_binding_any_pod_of_the_service_account_passes(
    issuer: FakeIssuer, store: KeyStore
) -> None:
    settings = settings_for(issuer, service_account_token=True)
    token = issuer.sign(issuer.service_account_claims("shop", "checkout", "checkout-a", UID_A))
    verified = verify(token, settings, store)
    assert isinstance(verified, Verified)
    assert _decide(verified.claims, POD_B, settings)[0] is Reason.ALLOWED


def test_pod_uid_is_compared_even_when_the_name_is_reused(
    issuer: FakeIssuer, settings: TokenSettings, store: KeyStore
) -> None:
    # a StatefulSet pod recreated under the same name gets a new UID
    token = issuer.sign(issuer.service_account_claims("shop", "checkout", "checkout-a", UID_B))
    verified = verify(token, settings, store)
    assert isinstance(verified, Verified)
    reason, detail = _decide(verified.claims, POD_A, settings)
    assert reason is Reason.CLAIM_MISMATCH and "kubernetes.io.pod.uid" in detail


def _sa(**kubernetes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "namespace": "shop",
        "serviceaccount": {"name": "checkout", "uid": "sa-uid"},
        "pod": {"name": "checkout-a", "uid": UID_A},
    }
    return {"sub": "system:serviceaccount:shop:checkout", "kubernetes.io": {**base, **kubernetes}}


WRONG_TYPES: list[tuple[str, dict[str, Any], str]] = [
    ("namespace is an array", _sa(namespace=["shop"]), "is a list, not a string"),
    ("namespace is a number", _sa(namespace=7), "is a int, not a string"),
    ("namespace is an object", _sa(namespace={"name": "shop"}), "is a dict, not a string"),
    ("pod is a string", _sa(pod="checkout-a"), "'kubernetes.io.pod.name' is missing"),
    ("serviceaccount is an array", _sa(serviceaccount=["checkout"]), "is missing"),
    ("kubernetes.io is a string", {"kubernetes.io": "shop"}, "is missing"),
    ("no kubernetes.io claim", {"sub": "alice"}, "'kubernetes.io.namespace' is missing"),
]


@pytest.mark.parametrize(
    ("name", "extra", "detail"), WRONG_TYPES, ids=[name for name, _, _ in WRONG_TYPES]
)
def test_claim_values_of_the_wrong_type_verify_but_fail_the_claim_rule(
    name: str,
    extra: dict[str, Any],
    detail: str,
    issuer: FakeIssuer,
    settings: TokenSettings,
    store: KeyStore,
) -> None:
    verified = verify(issuer.sign(issuer.claims(**extra)), settings, store)
    assert isinstance(verified, Verified)
    reason, text = _decide(verified.claims, POD_A, settings)
    assert (reason, reason.status) == (Reason.CLAIM_MISMATCH, 403)
    assert detail in text


def test_consumer_claim(issuer: FakeIssuer) -> None:
    claims = {"sub": "alice", "client": {"id": 5}}
    assert consumer_claim(claims, settings_for(issuer)) is None
    by_username = consumer_claim(claims, settings_for(issuer, consumer_claim="sub"))
    assert by_username == ConsumerClaim("username", "alice")
    failure = consumer_claim(claims, settings_for(issuer, consumer_claim="client.id"))
    assert isinstance(failure, TokenFailure) and failure.reason is TokenReason.CLAIMS


@pytest.mark.parametrize(
    ("claim", "load_args"),
    [
        (ConsumerClaim("username", "alice"), ("alice", True)),
        (ConsumerClaim("id", UID_A), (UID_A, False)),
        (ConsumerClaim("id", "alice"), None),  # Kong raises on a non-UUID id: never call it
        (ConsumerClaim("custom_id", "ext-1"), None),  # no PDK call loads by custom_id
    ],
)
def test_consumer_load_args(claim: ConsumerClaim, load_args: tuple[str, bool] | None) -> None:
    assert claim.load_args() == load_args


def test_consumer_row_must_be_the_named_one() -> None:
    claim = ConsumerClaim("username", UID_A)
    # load_consumer(UID_A, True) finds a consumer whose *id* is UID_A first
    assert not claim.matches({"id": UID_A, "username": "admin"})
    assert claim.matches({"id": UID_B, "username": UID_A})
    assert not claim.matches(None)

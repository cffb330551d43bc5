"""Every reason code of the decision core, table-driven."""

from dataclasses import dataclass, field
from typing import Any

import pytest

from kong_cilium_identity.identity.model import Identity, Lookup
from kong_cilium_identity.policy.decision import (
    ClaimRule,
    Consumer,
    Facts,
    Policy,
    Reason,
    decide,
)
from kong_cilium_identity.policy.labels import LabelError

CHECKOUT = Identity.build(
    48861,
    [
        "k8s:app=checkout",
        "k8s:io.kubernetes.pod.namespace=shop",
        "k8s:io.cilium.k8s.policy.serviceaccount=checkout",
    ],
    pod="checkout-7d9f-abcde",
    pod_uid="uid-a",
    source="static",
)
PAYMENTS = Identity.build(51234, ["k8s:app=payments", "k8s:io.kubernetes.pod.namespace=shop"])
ALICE = Consumer("c-1", "alice", "ext-alice", ())
TAGGED = Consumer("c-2", "bob", None, ("team-x", "cilium-identity:k8s:app=payments"))
STRANGER = Consumer("c-3", "carol")

POLICY = Policy.build(
    [("alice", ["k8s:app=checkout"]), ("custom_id:ext-zed", ["k8s:app=payments"])],
    allowed_reserved=[104],
)
SA_CLAIMS = {
    "kubernetes.io": {
        "namespace": "shop",
        "serviceaccount": {"name": "checkout", "uid": "sa-uid"},
        "pod": {"name": "checkout-7d9f-abcde", "uid": "uid-a"},
    }
}
CLAIM_POLICY = Policy.build(
    [("alice", ["k8s:app=checkout"])],
    claim_rules=[
        ("kubernetes.io.namespace", "k8s:io.kubernetes.pod.namespace"),
        ("kubernetes.io.serviceaccount.name", "identity.service_account"),
        ("kubernetes.io.pod.uid", "identity.pod_uid"),
    ],
)


@dataclass
class Case:
    name: str
    reason: Reason
    consumer: Consumer | None = ALICE
    credential: bool = True
    lookup: Lookup | None = field(default_factory=lambda: Lookup.found(CHECKOUT))
    policy: Policy = POLICY
    claims: dict[str, Any] | None = None


CASES = [
    Case("bound identity", Reason.ALLOWED),
    Case(
        "bound by custom_id",
        Reason.ALLOWED,
        Consumer("c-9", "zed", "ext-zed"),
        lookup=Lookup.found(PAYMENTS),
    ),
    Case("bound by consumer tag", Reason.ALLOWED, TAGGED, lookup=Lookup.found(PAYMENTS)),
    Case("no consumer", Reason.NO_CONSUMER, consumer=None, lookup=None),
    Case("anonymous", Reason.ANONYMOUS, credential=False),
    Case("unknown address", Reason.IDENTITY_UNKNOWN, lookup=Lookup.unknown("static", "none")),
    Case("ambiguous", Reason.IDENTITY_AMBIGUOUS, lookup=Lookup.ambiguous("kubernetes", "2 CEPs")),
    Case("source down", Reason.SOURCE_UNAVAILABLE, lookup=Lookup.unavailable("agent", "down")),
    Case(
        "host", Reason.IDENTITY_RESERVED, lookup=Lookup.found(Identity.build(1, ["reserved:host"]))
    ),
    Case("world", Reason.IDENTITY_RESERVED, lookup=Lookup.found(Identity.build(2, []))),
    Case("remote-node", Reason.IDENTITY_RESERVED, lookup=Lookup.found(Identity.build(6, []))),
    Case("ingress", Reason.IDENTITY_RESERVED, lookup=Lookup.found(Identity.build(8, []))),
    Case(
        "user-reserved 200", Reason.IDENTITY_RESERVED, lookup=Lookup.found(Identity.build(200, []))
    ),
    Case(
        "well-known not allowlisted",
        Reason.IDENTITY_RESERVED,
        lookup=Lookup.found(Identity.build(102, ["k8s:app=checkout"])),
    ),
    Case(
        "well-known allowlisted",
        Reason.ALLOWED,
        lookup=Lookup.found(Identity.build(104, ["k8s:app=checkout"])),
    ),
    Case(
        "local scope",
        Reason.IDENTITY_RESERVED,
        lookup=Lookup.found(Identity.build(16777217, ["k8s:app=checkout"])),
    ),
    Case(
        "id 0 even if allowlisted",
        Reason.IDENTITY_RESERVED,
        lookup=Lookup.found(Identity.build(0, ["k8s:app=checkout"])),
        policy=Policy.build([("alice", ["k8s:app=checkout"])], allowed_reserved=[]),
    ),
    Case("no binding", Reason.NO_BINDING, consumer=STRANGER),
    Case("mismatch", Reason.IDENTITY_MISMATCH, lookup=Lookup.found(PAYMENTS)),
    Case("claims match", Reason.ALLOWED, policy=CLAIM_POLICY, claims=SA_CLAIMS),
    Case("claims absent", Reason.CLAIM_MISMATCH, policy=CLAIM_POLICY, claims=None),
    Case(
        "claim other pod uid",
        Reason.CLAIM_MISMATCH,
        policy=CLAIM_POLICY,
        claims={
            **SA_CLAIMS,
            "kubernetes.io": {**SA_CLAIMS["kubernetes.io"], "pod": {"name": "x", "uid": "uid-b"}},
        },
    ),
    Case(
        "claim other namespace",
        Reason.CLAIM_MISMATCH,
        policy=CLAIM_POLICY,
        claims={"kubernetes.io": {**SA_CLAIMS["kubernetes.io"], "namespace": "dev"}},
    ),
    Case(
        "claim is a list",
        Reason.CLAIM_MISMATCH,
        policy=CLAIM_POLICY,
        claims={"kubernetes.io": {**SA_CLAIMS["kubernetes.io"], "namespace": ["shop"]}},
    ),
    Case(
        "claim is a number",
        Reason.CLAIM_MISMATCH,
        policy=CLAIM_POLICY,
        claims={"kubernetes.io": {**SA_CLAIMS["kubernetes.io"], "namespace": 7}},
    ),
    Case(
        "claim is nested",
        Reason.CLAIM_MISMATCH,
        policy=CLAIM_POLICY,
        claims={"kubernetes.io": {**SA_CLAIMS["kubernetes.io"], "namespace": {"n": "shop"}}},
    ),
    Case("internal: lookup missing", Reason.INTERNAL_ERROR, lookup=None),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide(case: Case) -> None:
    decision = decide(
        Facts(case.consumer, case.credential, "10.0.0.5", case.claims), case.lookup, case.policy
    )
    assert decision.reason is case.reason, decision.detail
    assert decision.allowed is (case.reason is Reason.ALLOWED)
    assert decision.status == {
        Reason.ALLOWED: 200,
        Reason.NO_CONSUMER: 401,
        Reason.ANONYMOUS: 401,
        Reason.SOURCE_UNAVAILABLE: 503,
        Reason.INTERNAL_ERROR: 500,
    }.get(case.reason, 403)


def test_every_reason_code_is_covered() -> None:
    # invalid_token comes from the token check before decide(): tests/e2e/test_token.py
    assert {case.reason for case in CASES} == set(Reason) - {Reason.INVALID_TOKEN}


def test_denial_explains_itself() -> None:
    decision = decide(Facts(ALICE, True), Lookup.found(PAYMENTS), POLICY)
    fields = decision.log_fields()
    assert fields["reason"] == "identity_mismatch"
    assert fields["identity"] == 51234 and fields["consumer"] == "alice"
    assert "51234" in decision.detail


def test_malformed_tag_grants_nothing() -> None:
    consumer = Consumer("c-5", "eve", None, ("cilium-identity:,",))
    assert decide(Facts(consumer, True), Lookup.found(CHECKOUT), POLICY).reason is Reason.NO_BINDING


@pytest.mark.parametrize("tag", ["cilium-identity:\u00b2", "cilium-identity:\u0663"])
def test_a_tag_with_non_ascii_digits_grants_nothing_and_does_not_raise(tag: str) -> None:
    consumer = Consumer("c-6", "eve", None, (tag,))
    reserved_three = Identity.build(3, ["reserved:unmanaged"])
    policy = Policy.build([], allowed_reserved=[3])
    for identity in (CHECKOUT, reserved_three):
        decision = decide(Facts(consumer, True), Lookup.found(identity), policy)
        assert decision.reason is Reason.IDENTITY_MISMATCH


def test_bindings_can_name_the_field() -> None:
    policy = Policy.build([("id:c-1", ["k8s:app=checkout"]), ("username:c-1", ["k8s:app=x"])])
    assert policy.selectors_for(ALICE)[0].text == "k8s:app=checkout"
    assert len(policy.selectors_for(ALICE)) == 1


@pytest.mark.parametrize(
    "consumer",
    [
        Consumer("c-9", "mallory", "username:alice"),
        Consumer("c-9", "username:alice"),
        Consumer("username:alice"),
    ],
)
def test_a_value_that_spells_a_field_prefix_gets_no_other_consumers_binding(
    consumer: Consumer,
) -> None:
    """``username:alice`` names alice's username only: a custom_id (or a token claim
    mapped to one) whose text is ``username:alice`` is not alice."""
    policy = Policy.build([("username:alice", ["k8s:app=checkout"])])
    assert policy.selectors_for(consumer) == ()
    assert decide(Facts(consumer, True), Lookup.found(CHECKOUT), policy).reason is (
        Reason.NO_BINDING
    )


@pytest.mark.parametrize(
    ("claim", "target"),
    [("", "identity.namespace"), ("sub", "identity.nope"), ("sub", "k8s:app=x"), ("sub", "")],
)
def test_bad_claim_rules_are_refused(claim: str, target: str) -> None:
    with pytest.raises(LabelError):
        ClaimRule.parse(claim, target)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (None, None),
        ([], None),
        ({"username": "x"}, None),
        ({"id": ""}, None),
        (
            {"id": "c-1", "username": "alice", "custom_id": None, "tags": None},
            Consumer("c-1", "alice", None, ()),
        ),
        ({"id": "c-1", "tags": ["a", 3]}, Consumer("c-1", None, None, ("a",))),
    ],
)
def test_consumer_from_kong(row: object, expected: Consumer | None) -> None:
    assert Consumer.from_kong(row) == expected


def test_a_field_prefixed_binding_names_that_field_only() -> None:
    """Found by test_decision_properties: a consumer whose custom_id reads
    "username:alice" got the binding written for the consumer named alice."""
    policy = Policy.build([("username:alice", ["k8s:app=checkout"])])
    impostor = Consumer("c-9", "mallory", "username:alice")
    decision = decide(Facts(impostor, True), Lookup.found(CHECKOUT), policy)
    assert decision.reason is Reason.NO_BINDING
    alice = Consumer("c-1", "alice", "username:alice")
    assert decide(Facts(alice, True), Lookup.found(CHECKOUT), policy).allowed


def test_a_claim_rule_target_with_two_values_fails_closed() -> None:
    """Found by test_decision_properties: with labels k8s:app=a and k8s:app=b, the rule
    compared the claim with whichever label the frozenset yielded first."""
    identity = Identity.build(48861, ["k8s:app=a", "k8s:app=b"])
    policy = Policy.build([("alice", ["48861"])], claim_rules=[("app", "app")])
    for claim in ("a", "b"):
        decision = decide(Facts(ALICE, True, None, {"app": claim}), Lookup.found(identity), policy)
        assert decision.reason is Reason.CLAIM_MISMATCH
        assert "no single value for app" in decision.detail


def test_consumer_fields_that_are_not_valid_text_name_nobody() -> None:
    """Found by tests/e2e/test_plugin_fuzz.py: a consumer row whose id was invalid UTF-8
    (a surrogate-escaped str from the plugin server) was accepted, and its binding tag
    let the request through."""
    tag = "cilium-identity:k8s:app=checkout"
    assert Consumer.from_kong({"id": "checkout\udcff", "tags": [tag]}) is None
    row = {"id": "c-1", "username": "alice\udcff", "custom_id": "\udcfe", "tags": [tag + "\udcff"]}
    assert Consumer.from_kong(row) == Consumer("c-1")

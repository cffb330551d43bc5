"""Edges of the decision core that the reason table does not pin down (decision.py).

Each test here was written against a mutant that survived the earlier suite
(docs/mutation.md): the allowlist cannot admit id 0 or below, the local-scope boundary,
the exact reason details and log fields, consumer parsing from Kong's row, claim-rule
parsing and the one-value rule for claim targets.
"""

from __future__ import annotations

from typing import Any

import pytest

from kong_cilium_identity.identity.model import Identity, Lookup, LookupStatus
from kong_cilium_identity.policy.decision import (
    ClaimRule,
    Consumer,
    Decision,
    Facts,
    Policy,
    Reason,
    decide,
    deny,
    tag_selector,
)
from kong_cilium_identity.policy.labels import Label, LabelError

ALICE = Consumer("c-1", "alice", "ext-alice")
POD = Identity.build(
    48861,
    ["k8s:app=checkout", "k8s:io.kubernetes.pod.namespace=shop"],
    pod="checkout-1",
    pod_uid="uid-a",
    source="static",
)


def _decide(identity: Identity, policy: Policy, consumer: Consumer = ALICE) -> Decision:
    return decide(Facts(consumer, True, "10.0.0.5"), Lookup.found(identity), policy)


@pytest.mark.parametrize("identity_id", [0, -1])
def test_an_allowlist_never_admits_id_zero_or_below(identity_id: int) -> None:
    """The allowlist is for reserved/well-known ids; 0 (unknown) and negatives never pass,
    even when listed and even when a selector names the id."""
    policy = Policy.build([("alice", [str(abs(identity_id))])], allowed_reserved=[identity_id])
    identity = Identity.build(identity_id, ["k8s:app=checkout"])
    decision = _decide(identity, policy)
    assert decision.reason is Reason.IDENTITY_RESERVED
    assert not decision.allowed
    assert decision.identity is identity and decision.consumer is ALICE


def test_an_allowlisted_positive_reserved_id_passes_the_reserved_check() -> None:
    policy = Policy.build([("alice", ["1"])], allowed_reserved=[1])
    assert _decide(Identity.build(1, ["reserved:host"]), policy).reason is Reason.ALLOWED


@pytest.mark.parametrize(
    ("identity_id", "reason"),
    [
        (2**24 - 1, Reason.ALLOWED),  # the last cluster-global id
        (2**24, Reason.IDENTITY_RESERVED),  # the first local-scope id is not a pod
        (255, Reason.IDENTITY_RESERVED),
        (256, Reason.ALLOWED),
    ],
)
def test_the_pod_identity_range_boundaries(identity_id: int, reason: Reason) -> None:
    policy = Policy.build([("alice", [str(identity_id)])])
    assert _decide(Identity.build(identity_id, []), policy).reason is reason


def test_a_reserved_denial_names_the_identity() -> None:
    decision = _decide(Identity.build(1, []), Policy.build([("alice", ["1"])]))
    assert decision.detail == "reserved:host (1) is not a pod identity"
    assert decision.status == 403


def test_lookup_failures_carry_the_source_and_detail() -> None:
    facts = Facts(ALICE, True)
    policy = Policy.build([("alice", ["48861"])])
    unknown = decide(facts, Lookup.unknown("static", "no entry"), policy)
    assert (unknown.reason, unknown.detail) == (Reason.IDENTITY_UNKNOWN, "static: no entry")
    assert unknown.consumer is ALICE and unknown.identity is None
    bare = decide(facts, Lookup(LookupStatus.UNAVAILABLE, None, "agent", ""), policy)
    assert (bare.reason, bare.detail, bare.status) == (Reason.SOURCE_UNAVAILABLE, "agent", 503)
    ambiguous = decide(facts, Lookup.ambiguous("kubernetes", "2 CEPs"), policy)
    assert ambiguous.detail == "kubernetes: 2 CEPs"


def test_a_found_lookup_without_identity_is_an_internal_error() -> None:
    decision = decide(
        Facts(ALICE, True), Lookup(LookupStatus.FOUND, None, "x", ""), Policy.build([])
    )
    assert (decision.reason, decision.status) == (Reason.INTERNAL_ERROR, 500)
    assert decision.detail == "lookup found no identity" and decision.consumer is ALICE


def test_every_denial_before_the_identity_keeps_the_consumer() -> None:
    anonymous = decide(Facts(ALICE, False), Lookup.found(POD), Policy.build([]))
    assert anonymous.reason is Reason.ANONYMOUS and anonymous.consumer is ALICE
    assert anonymous.detail == "anonymous consumer (no credential)"
    missing = decide(Facts(ALICE, True), None, Policy.build([]))
    assert missing.consumer is ALICE and missing.detail == "no identity lookup was made"
    nobody = decide(Facts(None, True), Lookup.found(POD), Policy.build([]))
    assert (nobody.detail, nobody.status) == ("no authenticated consumer", 401)


def test_allowed_and_denied_decisions_record_what_matched() -> None:
    policy = Policy.build([("alice", ["k8s:app=other", "k8s:app=checkout"])])
    allowed = _decide(POD, policy)
    assert allowed.allowed and allowed.reason is Reason.ALLOWED and allowed.detail == ""
    assert allowed.selector == "k8s:app=checkout"
    assert allowed.identity is POD and allowed.consumer is ALICE and allowed.status == 200
    mismatch = _decide(POD, Policy.build([("alice", ["k8s:app=x", "1234"])]))
    assert mismatch.detail == "identity 48861 matches none of 2 selector(s)"
    assert mismatch.identity is POD and mismatch.consumer is ALICE and mismatch.selector is None
    unbound = _decide(POD, Policy.build([]))
    assert unbound.detail == "consumer has no identity binding" and unbound.identity is POD


def test_a_claim_denial_records_the_matched_selector() -> None:
    policy = Policy.build([("alice", ["k8s:app=checkout"])], claim_rules=[("ns", "identity.pod")])
    decision = decide(Facts(ALICE, True, None, {"ns": "other"}), Lookup.found(POD), policy)
    assert decision.reason is Reason.CLAIM_MISMATCH
    assert decision.selector == "k8s:app=checkout" and decision.identity is POD
    assert decision.detail == "claim 'ns' is 'other' but identity.pod is 'checkout-1'"


@pytest.mark.parametrize(
    ("claims", "detail"),
    [
        (None, "claim rules are configured but the request carries no token claims"),
        ({}, "claim 'ns' is missing"),
        ({"ns": 5}, "claim 'ns' is a int, not a string"),
    ],
)
def test_claim_failures_say_why(claims: dict[str, Any] | None, detail: str) -> None:
    policy = Policy.build([("alice", ["48861"])], claim_rules=[("ns", "identity.namespace")])
    decision = decide(Facts(ALICE, True, None, claims), Lookup.found(POD), policy)
    assert (decision.reason, decision.detail) == (Reason.CLAIM_MISMATCH, detail)


def test_every_claim_rule_must_hold_not_only_the_first() -> None:
    policy = Policy.build(
        [("alice", ["48861"])],
        claim_rules=[("ns", "identity.namespace"), ("pod", "identity.pod")],
    )
    good = {"ns": "shop", "pod": "checkout-1"}
    assert decide(Facts(ALICE, True, None, good), Lookup.found(POD), policy).allowed
    bad = {"ns": "shop", "pod": "other"}
    assert not decide(Facts(ALICE, True, None, bad), Lookup.found(POD), policy).allowed


def test_a_target_with_two_values_or_none_never_matches() -> None:
    two = Identity.build(300, ["k8s:app=a", "container:app=b"])
    rule = ClaimRule.parse("app", "app")
    assert rule.expected(two) is None
    assert ClaimRule.parse("app", "k8s:app").expected(two) == "a"
    assert ClaimRule.parse("app", "container:app").expected(two) == "b"
    assert ClaimRule.parse("app", "other").expected(two) is None
    assert ClaimRule.parse("x", "identity.pod").expected(two) is None
    assert ClaimRule.parse("x", "identity.id").expected(two) == "300"
    policy = Policy.build([("alice", ["300"])], claim_rules=[("app", "app")])
    decision = decide(Facts(ALICE, True, None, {"app": "a"}), Lookup.found(two), policy)
    assert decision.detail == "identity 300 has no single value for app"


def test_claim_rule_parsing() -> None:
    rule = ClaimRule.parse("  sa.name ", "  k8s:io.kubernetes.pod.namespace ")
    assert (rule.claim, rule.target) == ("sa.name", "k8s:io.kubernetes.pod.namespace")
    assert rule.label == Label("k8s", "io.kubernetes.pod.namespace", "")
    bare = ClaimRule.parse("ns", "app")
    assert bare.label == Label("any", "app", "")
    attribute = ClaimRule.parse(" ns ", " identity.namespace ")
    assert (attribute.claim, attribute.target, attribute.label) == (
        "ns",
        "identity.namespace",
        None,
    )
    for claim, target, message in [
        ("  ", "app", "claim path is empty"),
        (
            "x",
            "identity.labels",
            "unknown identity attribute 'identity.labels'; use one of identity.id, "
            "identity.namespace, identity.service_account, identity.pod, identity.pod_uid, "
            "identity.cluster",
        ),
        ("x", "k8s:app=a", "claim rule target 'k8s:app=a' must be a label key without '='"),
    ]:
        with pytest.raises(LabelError) as raised:
            ClaimRule.parse(claim, target)
        assert str(raised.value) == message


def test_consumer_from_kong_row() -> None:
    row = {"id": "c-1", "username": "alice", "custom_id": "ext", "tags": ["a", "", 5, "b"]}
    assert Consumer.from_kong(row) == Consumer("c-1", "alice", "ext", ("a", "b"))
    assert Consumer.from_kong({"id": "c-2", "tags": "a"}) == Consumer("c-2", None, None, ())
    assert Consumer.from_kong({"id": ""}) is None
    assert Consumer.from_kong({"username": "alice"}) is None
    assert Consumer.from_kong(["c-1"]) is None
    assert Consumer.from_kong(None) is None


def test_consumer_refs_skip_empty_fields() -> None:
    assert Consumer("c-1").refs() == (("id", "c-1"),)
    assert Consumer("c-1", "", "").refs() == (("id", "c-1"),)
    assert ALICE.refs() == (("id", "c-1"), ("username", "alice"), ("custom_id", "ext-alice"))


def test_policy_build_parses_and_merges() -> None:
    policy = Policy.build(
        [(" alice ", ["1000"]), ("alice", ["k8s:app=a"])],
        tag_prefix="",
        claim_rules=[("ns", "app")],
        allowed_reserved=[104, 104],
    )
    assert [s.text for s in policy.bindings["alice"]] == ["1000", "k8s:app=a"]
    assert policy.tag_prefix is None
    assert policy.claim_rules == (ClaimRule.parse("ns", "app"),)
    assert policy.allowed_reserved == frozenset({104})
    assert Policy.build([]).tag_prefix == "cilium-identity:"
    assert Policy().tag_prefix == "cilium-identity:"
    with pytest.raises(LabelError) as raised:
        Policy.build([("  ", ["1"])])
    assert str(raised.value) == "binding with an empty consumer"


def test_tag_prefix_none_ignores_tags_and_duplicates_collapse() -> None:
    tagged = Consumer("c-1", "alice", None, ("cilium-identity:1000", "cilium-identity:1000"))
    assert [s.text for s in Policy.build([]).selectors_for(tagged)] == ["1000"]
    assert Policy.build([], tag_prefix=None).selectors_for(tagged) == ()
    both = Policy.build([("alice", ["1000"]), ("c-1", ["1000"])])
    assert [s.text for s in both.selectors_for(tagged)] == ["1000"]


def test_a_prefixed_value_only_hits_its_named_field() -> None:
    consumer = Consumer("c-1", "username:alice")
    policy = Policy.build([("username:alice", ["1"]), ("username:username:alice", ["2"])])
    assert [s.text for s in policy.selectors_for(consumer)] == ["2"]
    by_custom_id = Policy.build([("ext", ["3"])])
    assert [s.text for s in by_custom_id.selectors_for(Consumer("c", None, "ext"))] == ["3"]


def test_tag_selector_parses_or_returns_none() -> None:
    selector = tag_selector("k8s:app=a")
    assert selector is not None and selector.text == "k8s:app=a"
    assert tag_selector("") is None and tag_selector(",") is None


def test_log_fields() -> None:
    allowed = _decide(POD, Policy.build([("alice", ["48861"])]))
    assert allowed.log_fields() == {
        "allowed": True,
        "reason": "allowed",
        "consumer": "alice",
        "identity": 48861,
        "namespace": "shop",
        "source": "static",
        "selector": "48861",
    }
    assert deny(Reason.NO_CONSUMER, "").log_fields() == {
        "allowed": False,
        "reason": "no_consumer",
    }
    no_name = deny(Reason.ANONYMOUS, "why", consumer=Consumer("c-9"))
    assert no_name.log_fields() == {
        "allowed": False,
        "reason": "anonymous",
        "detail": "why",
        "consumer": "c-9",
    }


def test_status_codes_and_override() -> None:
    assert {r: r.status for r in Reason} == {
        Reason.ALLOWED: 200,
        Reason.NO_CONSUMER: 401,
        Reason.INVALID_TOKEN: 401,
        Reason.ANONYMOUS: 401,
        Reason.IDENTITY_UNKNOWN: 403,
        Reason.IDENTITY_RESERVED: 403,
        Reason.IDENTITY_AMBIGUOUS: 403,
        Reason.NO_BINDING: 403,
        Reason.IDENTITY_MISMATCH: 403,
        Reason.CLAIM_MISMATCH: 403,
        Reason.SOURCE_UNAVAILABLE: 503,
        Reason.INTERNAL_ERROR: 500,
    }
    assert deny(Reason.INVALID_TOKEN, "x", status_code=400).status == 400
    assert deny(Reason.INVALID_TOKEN, "x").status == 401

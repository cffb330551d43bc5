"""Properties of the pure decision core, checked against an oracle written apart from it.

For any consumer, credential, lookup, bindings, tags and claim rules, ``decide()`` allows
exactly when: there is a consumer with a credential, the lookup found an identity whose id
is a cluster id (256..2^24-1) or an allowlisted id other than 0, one of the consumer's
selectors has every term matching that identity, and every claim rule's claim is a string
equal to the target's one value on the identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kong_cilium_identity.identity.model import Identity, Lookup, LookupStatus
from kong_cilium_identity.policy.claims import MISSING, claim_at
from kong_cilium_identity.policy.decision import Consumer, Facts, Policy, Reason, decide
from kong_cilium_identity.policy.labels import Label, LabelError

PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

SOURCES = ["k8s", "container", "reserved", "any"]
KEYS = ["app", "io.kubernetes.pod.namespace"]
VALUES = ["a", "b", ""]
FIELDS = ("id", "username", "custom_id")
NAMES = ["alice", "bob", "c-1", "username:alice", "custom_id:bob", "id:c-1"]
TAG_PREFIX = "cilium-identity:"
ATTRIBUTES = ("id", "namespace", "service_account", "pod", "pod_uid", "cluster")

CLUSTER_IDS = range(256, 1 << 24)
INTERESTING_IDS = [-1, 0, 1, 2, 6, 8, 99, 100, 104, 115, 116, 255, 256, 48861]
INTERESTING_IDS += [(1 << 24) - 1, 1 << 24, (1 << 24) + 1, 2**32 - 1]

labels = st.builds(Label, st.sampled_from(SOURCES), st.sampled_from(KEYS), st.sampled_from(VALUES))
identity_ids = st.one_of(
    st.sampled_from(INTERESTING_IDS), st.integers(256, 260), st.integers(-10, 2**32)
)
text_or_none = st.one_of(st.none(), st.sampled_from(["a", "b", "shop", ""]))
identities = st.builds(
    Identity,
    id=identity_ids,
    labels=st.frozensets(labels, max_size=4),
    namespace=text_or_none,
    pod=text_or_none,
    pod_uid=text_or_none,
    service_account=text_or_none,
    cluster=text_or_none,
)


@st.composite
def lookups(draw: st.DrawFn) -> Lookup | None:
    # Found most of the time: that is where the interesting decisions are.
    found = draw(st.integers(0, 3)) > 0
    status = LookupStatus.FOUND if found else draw(st.sampled_from([*LookupStatus, None]))
    if status is None:
        return None
    identity = draw(identities) if status is LookupStatus.FOUND else None
    if status is LookupStatus.FOUND and draw(st.booleans()):
        return Lookup.found(identity) if identity is not None else None
    return Lookup(status, identity, "test", "")


def label_text(label: Label) -> str:
    text = f"{label.source}:{label.key}" if label.source != "any" else label.key
    return f"{text}={label.value}" if label.value else text


terms = st.one_of(
    labels.map(label_text),
    st.sampled_from(["256", "257", "0", "1", "16777216"]),
)
selector_texts = st.lists(terms, min_size=1, max_size=3).map(",".join)
consumers = st.one_of(
    st.none(),
    st.builds(
        Consumer,
        id=st.sampled_from(NAMES),
        username=st.one_of(st.none(), st.sampled_from(NAMES)),
        custom_id=st.one_of(st.none(), st.sampled_from(NAMES)),
        tags=st.lists(
            st.one_of(
                st.sampled_from(["team-x", TAG_PREFIX, f"{TAG_PREFIX},"]),
                selector_texts.map(lambda s: TAG_PREFIX + s),
            ),
            max_size=3,
        ).map(tuple),
    ),
)
bindings = st.lists(
    st.tuples(st.sampled_from(NAMES), st.lists(selector_texts, min_size=1, max_size=2)),
    max_size=3,
)
claim_paths = st.sampled_from(["ns", "sa.name", "kubernetes.io.namespace", "app"])
claim_targets = st.one_of(
    st.sampled_from(KEYS),
    st.builds(lambda s, k: f"{s}:{k}", st.sampled_from(SOURCES), st.sampled_from(KEYS)),
    st.sampled_from(ATTRIBUTES).map(lambda a: f"identity.{a}"),
)
claim_values = st.one_of(
    st.sampled_from(["a", "b", "shop", "", "256"]),
    st.integers(255, 257),
    st.none(),
    st.lists(st.just("a"), max_size=1),
)
claims = st.recursive(
    st.dictionaries(st.sampled_from(["ns", "app", "kubernetes.io", "sa"]), claim_values),
    lambda inner: st.dictionaries(
        st.sampled_from(["ns", "sa", "name", "namespace", "kubernetes.io"]),
        st.one_of(claim_values, inner),
        max_size=3,
    ),
    max_leaves=6,
)


# --------------------------------------------------------------------------- the oracle


def is_pod_identity(identity_id: int, allowlisted: frozenset[int]) -> bool:
    return identity_id in CLUSTER_IDS or (identity_id in allowlisted and identity_id != 0)


def names_consumer(ref: str, consumer: Consumer) -> bool:
    """A binding names a consumer by ``field:value`` (that field only) or by a bare value
    (any field). The consumer id is always set; username/custom_id only when non-empty."""
    fields = {"id": consumer.id, "username": consumer.username, "custom_id": consumer.custom_id}
    field, sep, value = ref.partition(":")
    if sep and field in fields:
        return bool(value) and fields[field] == value
    return any(v == ref for v in fields.values() if v)


def term_holds(term: str, identity: Identity) -> bool:
    term = term.strip()
    if term.isdigit():
        return int(term) == identity.id
    colon, equals = term.find(":"), term.find("=")
    if colon < 0 or 0 <= equals < colon:
        source, rest = None, term
    else:
        source, rest = term[:colon], term[colon + 1 :]
    key, _, value = rest.partition("=")
    return any(
        label.key == key and label.value == value and source in (None, "any", label.source)
        for label in identity.labels
    )


def selector_holds(text: str, identity: Identity) -> bool:
    terms = [t for t in text.replace(";", ",").split(",")]
    return all(t.strip() for t in terms) and all(term_holds(t, identity) for t in terms)


def bound_selectors(
    consumer: Consumer, binding_list: list[tuple[str, list[str]]], tag_prefix: str
) -> list[str]:
    found = [s for ref, sels in binding_list if names_consumer(ref, consumer) for s in sels]
    found += [tag[len(tag_prefix) :] for tag in consumer.tags if tag.startswith(tag_prefix)]
    return found


def target_values(target: str, identity: Identity) -> set[str]:
    """Every value the identity has for a claim rule target."""
    if target.startswith("identity."):
        value = getattr(identity, target.removeprefix("identity."))
        return set() if value is None else {str(value)}
    source, sep, key = target.partition(":")
    if not sep:
        source, key = "any", target
    return {
        label.value
        for label in identity.labels
        if label.key == key and source in ("any", label.source)
    }


def claims_hold(
    rules: list[tuple[str, str]], token: Mapping[str, Any] | None, identity: Identity
) -> bool:
    if not rules:
        return True
    if token is None:
        return False
    for path, target in rules:
        value = claim_at(token, path)  # the path walk itself is claims.py's, tested apart
        if value is MISSING or not isinstance(value, str):
            return False
        if target_values(target, identity) != {value}:
            return False
    return True


# --------------------------------------------------------------------------- the property


@PROPERTY_SETTINGS
@given(
    consumer=consumers,
    has_credential=st.booleans(),
    lookup=lookups(),
    binding_list=bindings,
    rules=st.lists(st.tuples(claim_paths, claim_targets), max_size=2),
    token=st.one_of(st.none(), claims),
    allowlisted=st.frozensets(st.sampled_from([0, 1, 2, 104, 1 << 24, 48861]), max_size=3),
)
def test_decide_allows_exactly_when_the_oracle_does(
    consumer: Consumer | None,
    has_credential: bool,
    lookup: Lookup | None,
    binding_list: list[tuple[str, list[str]]],
    rules: list[tuple[str, str]],
    token: dict[str, Any] | None,
    allowlisted: frozenset[int],
) -> None:
    try:
        policy = Policy.build(binding_list, TAG_PREFIX, rules, sorted(allowlisted))
    except LabelError:
        return  # config validation refuses it; nothing is decided
    decision = decide(Facts(consumer, has_credential, "10.0.0.1", token), lookup, policy)

    identity = lookup.identity if lookup is not None else None
    expected = (
        consumer is not None
        and has_credential
        and lookup is not None
        and lookup.status is LookupStatus.FOUND
        and identity is not None
        and is_pod_identity(identity.id, allowlisted)
        and any(
            selector_holds(text, identity)
            for text in bound_selectors(consumer, binding_list, TAG_PREFIX)
        )
        and claims_hold(rules, token, identity)
    )
    assert decision.allowed is expected, decision
    assert (decision.reason is Reason.ALLOWED) is decision.allowed
    if decision.allowed:
        assert decision.identity is identity and decision.consumer is consumer
    else:
        assert decision.status in (401, 403, 500, 503)


@PROPERTY_SETTINGS
@given(
    identity=identities.filter(lambda i: i.id in CLUSTER_IDS),
    rules=st.lists(st.tuples(claim_paths, claim_targets), min_size=1, max_size=2),
    token=claims,
)
def test_claim_rules_allow_only_a_string_equal_to_the_one_target_value(
    identity: Identity, rules: list[tuple[str, str]], token: dict[str, Any]
) -> None:
    """The binding always matches here (by the identity's own id), so the claim rules
    alone decide."""
    policy = Policy.build([("alice", [str(identity.id)])], claim_rules=rules)
    facts = Facts(Consumer("c-1", "alice"), True, "10.0.0.1", token)
    decision = decide(facts, Lookup.found(identity), policy)
    assert decision.allowed is claims_hold(rules, token, identity), decision
    if not decision.allowed:
        assert decision.reason is Reason.CLAIM_MISMATCH

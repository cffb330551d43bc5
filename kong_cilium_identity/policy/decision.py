"""The decision core: (facts, identity lookup, policy) -> Decision. Pure: no Kong, no I/O.

Order of checks, each ending the decision with its reason code:
consumer present -> not anonymous -> lookup usable -> identity not reserved ->
consumer has a binding -> identity matches one of its selectors -> claim rules hold.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kong_cilium_identity.identity import reserved
from kong_cilium_identity.identity.model import Identity, Lookup, LookupStatus
from kong_cilium_identity.policy.claims import MISSING, claim_at
from kong_cilium_identity.policy.labels import ANY_SOURCE, Label, LabelError, parse_label
from kong_cilium_identity.policy.selectors import Selector, any_matches, parse_selector
from kong_cilium_identity.text import valid_text


class Reason(enum.StrEnum):
    ALLOWED = "allowed"
    NO_CONSUMER = "no_consumer"
    INVALID_TOKEN = "invalid_token"
    ANONYMOUS = "anonymous"
    IDENTITY_UNKNOWN = "identity_unknown"
    IDENTITY_RESERVED = "identity_reserved"
    IDENTITY_AMBIGUOUS = "identity_ambiguous"
    NO_BINDING = "no_binding"
    IDENTITY_MISMATCH = "identity_mismatch"
    CLAIM_MISMATCH = "claim_mismatch"
    SOURCE_UNAVAILABLE = "source_unavailable"
    INTERNAL_ERROR = "internal_error"

    @property
    def status(self) -> int:
        return _STATUS[self]


_STATUS = {
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


@dataclass(frozen=True, slots=True)
class Consumer:
    id: str
    username: str | None = None
    custom_id: str | None = None
    tags: tuple[str, ...] = ()

    @classmethod
    def from_kong(cls, row: Any) -> Consumer | None:
        """A consumer from Kong's consumer row; None when there is no usable row."""
        if not isinstance(row, Mapping):
            return None
        consumer_id = valid_text(row.get("id"))
        if consumer_id is None:
            return None
        tags = row.get("tags")
        return cls(
            id=consumer_id,
            username=valid_text(row.get("username")),
            custom_id=valid_text(row.get("custom_id")),
            tags=tuple(t for t in tags if valid_text(t)) if isinstance(tags, list) else (),
        )

    def refs(self) -> tuple[tuple[str, str], ...]:
        """(field, value) pairs a binding may name this consumer by."""
        pairs = [("id", self.id)]
        if self.username:
            pairs.append(("username", self.username))
        if self.custom_id:
            pairs.append(("custom_id", self.custom_id))
        return tuple(pairs)


@dataclass(frozen=True, slots=True)
class Facts:
    """What Kong told us about the request."""

    consumer: Consumer | None
    has_credential: bool
    client_address: str | None = None
    claims: Mapping[str, Any] | None = None


# Binding refs that name one consumer field explicitly.
_FIELD_PREFIXES = ("id:", "username:", "custom_id:")

IDENTITY_ATTRIBUTES = ("id", "namespace", "service_account", "pod", "pod_uid", "cluster")


@dataclass(frozen=True, slots=True)
class ClaimRule:
    """The claim at ``claim`` must equal ``target`` on the resolved identity.

    ``target`` is an identity label key (``k8s:io.kubernetes.pod.namespace``; a key with
    no source matches any source) or an identity attribute written ``identity.<name>``.
    Only string claims compare; numbers, arrays and objects never match.
    """

    claim: str
    target: str
    label: Label | None = None

    @classmethod
    def parse(cls, claim: str, target: str) -> ClaimRule:
        if not claim.strip():
            raise LabelError("claim path is empty")
        target = target.strip()
        if target.startswith("identity."):
            if target.removeprefix("identity.") not in IDENTITY_ATTRIBUTES:
                raise LabelError(
                    f"unknown identity attribute {target!r}; "
                    f"use one of identity.{', identity.'.join(IDENTITY_ATTRIBUTES)}"
                )
            return cls(claim.strip(), target)
        label = parse_label(target, default_source=ANY_SOURCE)
        if label.value:
            raise LabelError(f"claim rule target {target!r} must be a label key without '='")
        return cls(claim.strip(), target, label)

    def expected(self, identity: Identity) -> str | None:
        """The target's value on the identity; None when it has none, or more than one
        (labels ``k8s:app=a`` and ``container:app=b`` for the target ``app``): picking one
        would make the decision depend on set order."""
        if self.label is None:
            value = getattr(identity, self.target.removeprefix("identity."))
            return None if value is None else str(value)
        values = {
            label.value
            for label in identity.labels
            if label.key == self.label.key and self.label.source in (ANY_SOURCE, label.source)
        }
        return values.pop() if len(values) == 1 else None


@dataclass(frozen=True)
class Policy:
    """What the plugin config says about who may come from where."""

    bindings: Mapping[str, tuple[Selector, ...]] = field(default_factory=dict)
    tag_prefix: str | None = "cilium-identity:"
    claim_rules: tuple[ClaimRule, ...] = ()
    allowed_reserved: frozenset[int] = frozenset()

    @classmethod
    def build(
        cls,
        bindings: Sequence[tuple[str, Sequence[str]]],
        tag_prefix: str | None = "cilium-identity:",
        claim_rules: Sequence[tuple[str, str]] = (),
        allowed_reserved: Sequence[int] = (),
    ) -> Policy:
        """Parse bindings and rules; raises LabelError naming the bad entry."""
        by_ref: dict[str, list[Selector]] = {}
        for consumer_ref, selectors in bindings:
            ref = consumer_ref.strip()
            if not ref:
                raise LabelError("binding with an empty consumer")
            by_ref.setdefault(ref, []).extend(parse_selector(text) for text in selectors)
        return cls(
            bindings={ref: tuple(sel) for ref, sel in by_ref.items()},
            tag_prefix=tag_prefix or None,
            claim_rules=tuple(ClaimRule.parse(claim, target) for claim, target in claim_rules),
            allowed_reserved=frozenset(allowed_reserved),
        )

    def selectors_for(self, consumer: Consumer) -> tuple[Selector, ...]:
        """Selectors from config bindings (by ``id``/``username``/``custom_id``, bare or
        prefixed like ``username:alice``) and from consumer tags carrying the prefix."""
        found: list[Selector] = []
        for field_name, value in consumer.refs():
            found.extend(self.bindings.get(f"{field_name}:{value}", ()))
            # A bare binding matches any field; a binding written ``username:alice`` names
            # that field only, so a custom_id that reads "username:alice" must not hit it.
            if not value.startswith(_FIELD_PREFIXES):
                found.extend(self.bindings.get(value, ()))
        if self.tag_prefix:
            for tag in consumer.tags:
                if tag.startswith(self.tag_prefix):
                    selector = tag_selector(tag[len(self.tag_prefix) :])
                    if selector is not None:  # a malformed tag grants nothing
                        found.append(selector)
        return tuple(dict.fromkeys(found))


@functools.lru_cache(maxsize=4096)
def tag_selector(text: str) -> Selector | None:
    """A consumer tag's selector, parsed once per distinct tag (consumers repeat on every
    request); None when the tag is malformed."""
    try:
        return parse_selector(text)
    except LabelError:
        return None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: Reason
    detail: str = ""
    identity: Identity | None = None
    consumer: Consumer | None = None
    selector: str | None = None
    status_code: int | None = None  # when a reason has more than one status (token: 400/401)
    response_headers: Mapping[str, str] = field(default_factory=dict)
    lookup: Lookup | None = None  # the identity lookup the decision was based on, if any

    @property
    def status(self) -> int:
        return self.status_code or self.reason.status

    def log_fields(self) -> dict[str, Any]:
        """Structured fields for logs and serialize values."""
        fields: dict[str, Any] = {"allowed": self.allowed, "reason": str(self.reason)}
        if self.detail:
            fields["detail"] = self.detail
        if self.consumer is not None:
            fields["consumer"] = self.consumer.username or self.consumer.id
        if self.identity is not None:
            fields["identity"] = self.identity.id
            fields["namespace"] = self.identity.namespace
            fields["source"] = self.identity.source
        if self.selector is not None:
            fields["selector"] = self.selector
        return fields


def deny(reason: Reason, detail: str, **kwargs: Any) -> Decision:
    return Decision(False, reason, detail, **kwargs)


def decide(facts: Facts, lookup: Lookup | None, policy: Policy) -> Decision:
    consumer = facts.consumer
    if consumer is None:
        return deny(Reason.NO_CONSUMER, "no authenticated consumer")
    if not facts.has_credential:
        return deny(Reason.ANONYMOUS, "anonymous consumer (no credential)", consumer=consumer)
    if lookup is None:
        return deny(Reason.INTERNAL_ERROR, "no identity lookup was made", consumer=consumer)
    status_reason = _LOOKUP_REASONS.get(lookup.status)
    if status_reason is not None:
        detail = f"{lookup.source}: {lookup.detail}" if lookup.detail else lookup.source
        return deny(status_reason, detail, consumer=consumer)
    identity = lookup.identity
    if identity is None:
        return deny(Reason.INTERNAL_ERROR, "lookup found no identity", consumer=consumer)
    if reserved.classify(identity.id) is not reserved.IdentityClass.CLUSTER and (
        identity.id not in policy.allowed_reserved or identity.id <= 0
    ):
        return deny(
            Reason.IDENTITY_RESERVED,
            f"{reserved.describe(identity.id)} is not a pod identity",
            consumer=consumer,
            identity=identity,
        )
    selectors = policy.selectors_for(consumer)
    if not selectors:
        return deny(
            Reason.NO_BINDING,
            "consumer has no identity binding",
            consumer=consumer,
            identity=identity,
        )
    matched = any_matches(selectors, identity)
    if matched is None:
        return deny(
            Reason.IDENTITY_MISMATCH,
            f"identity {identity.id} matches none of {len(selectors)} selector(s)",
            consumer=consumer,
            identity=identity,
        )
    failure = _failed_claim_rule(policy.claim_rules, facts.claims, identity)
    if failure is not None:
        return deny(
            Reason.CLAIM_MISMATCH,
            failure,
            consumer=consumer,
            identity=identity,
            selector=matched.text,
        )
    return Decision(True, Reason.ALLOWED, "", identity, consumer, matched.text)


_LOOKUP_REASONS = {
    LookupStatus.UNKNOWN: Reason.IDENTITY_UNKNOWN,
    LookupStatus.AMBIGUOUS: Reason.IDENTITY_AMBIGUOUS,
    LookupStatus.UNAVAILABLE: Reason.SOURCE_UNAVAILABLE,
}


def _failed_claim_rule(
    rules: Sequence[ClaimRule], claims: Mapping[str, Any] | None, identity: Identity
) -> str | None:
    if not rules:
        return None
    if claims is None:
        return "claim rules are configured but the request carries no token claims"
    for rule in rules:
        value = claim_at(claims, rule.claim)
        if value is MISSING:
            return f"claim {rule.claim!r} is missing"
        if not isinstance(value, str):
            return f"claim {rule.claim!r} is a {type(value).__name__}, not a string"
        expected = rule.expected(identity)
        if expected is None:
            return f"identity {identity.id} has no single value for {rule.target}"
        if value != expected:
            return f"claim {rule.claim!r} is {value!r} but {rule.target} is {expected!r}"
    return None

"""From verified claims to the decision core: claim rules, and the consumer a token names.

Kubernetes projected service-account tokens name the pod that holds them under the
claim ``kubernetes.io`` (one key containing a dot)::

    "kubernetes.io": {"namespace": "shop",
                      "serviceaccount": {"name": "checkout", "uid": "..."},
                      "pod": {"name": "checkout-7d9f", "uid": "..."}}

The ``service_account_token`` template compares namespace and service account with the
Cilium identity of the connection; ``pod_binding`` adds pod name and UID, so a token
copied out of pod A and replayed from pod B (same namespace and service account) fails.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kong_cilium_identity.policy.claims import claim_at
from kong_cilium_identity.token.settings import TokenSettings
from kong_cilium_identity.token.verify import TokenFailure, TokenReason

SERVICE_ACCOUNT_RULES: tuple[tuple[str, str], ...] = (
    ("kubernetes.io.namespace", "identity.namespace"),
    ("kubernetes.io.serviceaccount.name", "identity.service_account"),
)
POD_RULES: tuple[tuple[str, str], ...] = (
    ("kubernetes.io.pod.name", "identity.pod"),
    ("kubernetes.io.pod.uid", "identity.pod_uid"),
)


def claim_rules_for(settings: TokenSettings) -> list[tuple[str, str]]:
    """(claim path, target) pairs for ``decision.ClaimRule.parse`` from the templates."""
    if not settings.enabled or not settings.service_account_token:
        return []
    rules = list(SERVICE_ACCOUNT_RULES)
    if settings.pod_binding:
        rules.extend(POD_RULES)
    return rules


_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class ConsumerClaim:
    """The Kong consumer a verified token names: ``by`` is username, custom_id or id."""

    by: str
    value: str

    def load_args(self) -> tuple[str, bool] | None:
        """Arguments for ``kong.client.load_consumer(value, search_by_username)``.

        None when the PDK cannot load this consumer: by custom_id (no PDK call does
        that; match bindings by ``custom_id:<value>`` instead), or by id with a value that
        is not a UUID (Kong raises a Lua error for that, and the request would pass).
        """
        if self.by == "username":
            return self.value, True
        if self.by == "id" and _UUID.match(self.value):
            return self.value, False
        return None

    def matches(self, row: Any) -> bool:
        """True when the consumer row Kong returned is the one this claim names.

        ``load_consumer(x, True)`` tries x as an id first, so a token whose claim is some
        other consumer's UUID must not be taken for that consumer.
        """
        return isinstance(row, Mapping) and row.get(self.by) == self.value


def consumer_claim(
    claims: Mapping[str, Any], settings: TokenSettings
) -> ConsumerClaim | TokenFailure | None:
    """The consumer named by ``settings.consumer_claim``; None when none is configured."""
    if settings.consumer_claim is None:
        return None
    value = claim_at(claims, settings.consumer_claim)
    if not isinstance(value, str) or not value:
        return TokenFailure.of(
            TokenReason.CLAIMS, f"claim {settings.consumer_claim} is not a non-empty string"
        )
    return ConsumerClaim(settings.consumer_by, value)

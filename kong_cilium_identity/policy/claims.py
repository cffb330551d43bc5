"""Reading claims out of a decoded JWT payload by a dotted path.

Claim names may themselves contain dots (Kubernetes puts ``namespace`` under the claim
``kubernetes.io``), so at each level the longest key that matches a prefix of the
remaining path wins: ``kubernetes.io.serviceaccount.name`` walks
``["kubernetes.io"]["serviceaccount"]["name"]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MISSING = object()


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at ``path``, or MISSING."""
    node: Any = claims
    rest = path
    while rest:
        if not isinstance(node, Mapping):
            return MISSING
        key = _longest_key(node, rest)
        if key is None:
            return MISSING
        node = node[key]
        rest = rest[len(key) + 1 :]
    return node


def _longest_key(node: Mapping[str, Any], path: str) -> str | None:
    best: str | None = None
    for key in node:
        if not isinstance(key, str):
            continue
        if (path == key or path.startswith(key + ".")) and (best is None or len(key) > len(best)):
            best = key
    return best

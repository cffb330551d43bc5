"""Cilium's numeric identity ranges that never name a pod workload on their own.

- 0..255 except the well-known range: reserved (host 1, world 2, unmanaged 3, health 4,
  init 5, remote-node 6, kube-apiserver 7, ingress 8, world-ipv4 9, world-ipv6 10,
  overlay 11) and user-reserved (128..255).
- 100..115: well-known identities (kube-dns, coredns, ...) used only when that feature is on.
- >= 2**24: scoped identities (local CIDR/FQDN, remote-node scope): node-local numbers that
  must never be compared across nodes.
Cluster-global identities (256 .. 2**24-1, cluster id in bits 16-23) are pod identities.
"""

from __future__ import annotations

import enum

LOCAL_SCOPE_START = 1 << 24
FIRST_GLOBAL_ID = 256
WELL_KNOWN = range(100, 116)

RESERVED_NAMES = {
    0: "unknown",
    1: "host",
    2: "world",
    3: "unmanaged",
    4: "health",
    5: "init",
    6: "remote-node",
    7: "kube-apiserver",
    8: "ingress",
    9: "world-ipv4",
    10: "world-ipv6",
    11: "encrypted-overlay",
}


class IdentityClass(enum.Enum):
    INVALID = "invalid"
    RESERVED = "reserved"
    WELL_KNOWN = "well-known"
    LOCAL_SCOPE = "local-scope"
    CLUSTER = "cluster"


def classify(identity_id: int) -> IdentityClass:
    if identity_id <= 0:
        return IdentityClass.INVALID
    if identity_id >= LOCAL_SCOPE_START:
        return IdentityClass.LOCAL_SCOPE
    if identity_id in WELL_KNOWN:
        return IdentityClass.WELL_KNOWN
    if identity_id < FIRST_GLOBAL_ID:
        return IdentityClass.RESERVED
    return IdentityClass.CLUSTER


def describe(identity_id: int) -> str:
    """Human name for logs: ``reserved:host (1)``, ``local-scope (16777217)``."""
    cls = classify(identity_id)
    if identity_id in RESERVED_NAMES:
        return f"reserved:{RESERVED_NAMES[identity_id]} ({identity_id})"
    return f"{cls.value} ({identity_id})"

"""Cilium's identity ranges at their exact boundaries (identity/reserved.py).

Every boundary is tested on both sides: an off-by-one here lets a node-local or reserved
number pass as a pod identity.
"""

from __future__ import annotations

import pytest

from kong_cilium_identity.identity.reserved import (
    FIRST_GLOBAL_ID,
    LOCAL_SCOPE_START,
    RESERVED_NAMES,
    WELL_KNOWN,
    IdentityClass,
    classify,
    describe,
)


def test_the_range_constants_are_cilium_s() -> None:
    assert LOCAL_SCOPE_START == 16_777_216 == 2**24
    assert FIRST_GLOBAL_ID == 256
    assert (WELL_KNOWN.start, WELL_KNOWN.stop) == (100, 116)


@pytest.mark.parametrize(
    ("identity_id", "expected"),
    [
        (-(2**31), IdentityClass.INVALID),
        (-1, IdentityClass.INVALID),
        (0, IdentityClass.INVALID),
        (1, IdentityClass.RESERVED),
        (11, IdentityClass.RESERVED),
        (99, IdentityClass.RESERVED),
        (100, IdentityClass.WELL_KNOWN),
        (115, IdentityClass.WELL_KNOWN),
        (116, IdentityClass.RESERVED),
        (255, IdentityClass.RESERVED),
        (256, IdentityClass.CLUSTER),
        (48861, IdentityClass.CLUSTER),
        (2**24 - 1, IdentityClass.CLUSTER),
        (2**24, IdentityClass.LOCAL_SCOPE),  # the first local-scope number is not a pod
        (2**24 + 1, IdentityClass.LOCAL_SCOPE),
        (2**32 - 1, IdentityClass.LOCAL_SCOPE),
    ],
)
def test_classify_on_both_sides_of_every_boundary(
    identity_id: int, expected: IdentityClass
) -> None:
    assert classify(identity_id) is expected


def test_class_values_are_the_names_shown_in_logs() -> None:
    assert [c.value for c in IdentityClass] == [
        "invalid",
        "reserved",
        "well-known",
        "local-scope",
        "cluster",
    ]


def test_every_named_reserved_identity_is_cilium_s_number() -> None:
    assert RESERVED_NAMES == {
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


@pytest.mark.parametrize(
    ("identity_id", "text"),
    [
        (0, "reserved:unknown (0)"),
        (1, "reserved:host (1)"),
        (11, "reserved:encrypted-overlay (11)"),
        (12, "reserved (12)"),
        (104, "well-known (104)"),
        (2**24, "local-scope (16777216)"),
        (48861, "cluster (48861)"),
        (-5, "invalid (-5)"),
    ],
)
def test_describe_names_the_identity_for_logs(identity_id: int, text: str) -> None:
    assert describe(identity_id) == text

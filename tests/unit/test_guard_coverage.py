"""`validate` pairs cilium-identity with cilium-identity-guard in declarative configs."""

from __future__ import annotations

from typing import Any

import pytest

from kong_cilium_identity.ops.tools import guard_coverage

PLUGIN = {"name": "cilium-identity"}
GUARD = {"name": "cilium-identity-guard"}


def document(
    top: list[dict[str, Any]] | None = None,
    service: list[dict[str, Any]] | None = None,
    route: list[dict[str, Any]] | None = None,
    other_route: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "_format_version": "3.0",
        "plugins": top or [],
        "services": [
            {
                "name": "orders",
                "plugins": service or [],
                "routes": [
                    {"name": "orders-api", "plugins": route or []},
                    {"name": "orders-admin", "plugins": other_route or []},
                ],
            }
        ],
    }


@pytest.mark.parametrize(
    "doc",
    [
        document(route=[PLUGIN, GUARD]),
        document(service=[PLUGIN, GUARD]),
        document(top=[PLUGIN, GUARD]),
        document(top=[GUARD, {**PLUGIN}]),
        document(route=[PLUGIN], top=[{**GUARD, "route": "orders-api"}]),
        document(service=[PLUGIN], route=[GUARD], other_route=[GUARD]),
    ],
)
def test_paired_configs_pass(doc: dict[str, Any]) -> None:
    assert guard_coverage(doc) == []


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (document(route=[PLUGIN]), "route 'orders-api': cilium-identity without"),
        (document(service=[PLUGIN], other_route=[GUARD]), "service 'orders': cilium-identity"),
        (document(route=[PLUGIN], other_route=[GUARD]), "route 'orders-api': cilium-identity"),
        (document(top=[PLUGIN], route=[GUARD]), "global: cilium-identity without"),
        (document(top=[GUARD], route=[PLUGIN]), "global: cilium-identity-guard where"),
        (document(route=[GUARD]), "route 'orders-api': cilium-identity-guard where"),
        (document(service=[GUARD], route=[PLUGIN]), "service 'orders': cilium-identity-guard"),
        (document(service=[PLUGIN], route=[GUARD]), "service 'orders': cilium-identity without"),
    ],
)
def test_unpaired_configs_are_errors(doc: dict[str, Any], fragment: str) -> None:
    lines = guard_coverage(doc)
    assert lines and all(line.startswith("ERROR ") for line in lines)
    assert any(fragment in line for line in lines), lines

"""The header window: Kong shows a plugin at most 100 header lines by default (1,000 at
most). Whatever the count, no client-sent X-Cilium-* header reaches the upstream, and a
second token header is refused. Forged headers come last, after filler lines."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kit.fake_issuer import FakeIssuer
from tests.nginx.conftest import RigFactory
from tests.nginx.shipped import CHECKOUT_KEY, CHECKOUT_POD, PLUGIN, kong_yaml

# http_request sends Host and Connection first
FIXED_LINES = 2
FORGED = [("X-Cilium-Identity", "1"), ("X-Cilium-Pod-Uid", "forged-uid")]


def fillers(count: int) -> list[tuple[str, str]]:
    return [(f"X-Filler-{i:04d}", "f") for i in range(count)]


def cilium_lines(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (name, value) for name, value in record["headers"] if name.lower().startswith("x-cilium-")
    ]


@pytest.mark.parametrize("total", [99, 100, 101, 1000, 5000])
def test_forged_cilium_headers_last_never_reach_upstream(make_rig: RigFactory, total: int) -> None:
    rig = make_rig(kong_yaml())
    headers = [CHECKOUT_KEY, *fillers(total - FIXED_LINES - 1 - len(FORGED)), *FORGED]
    assert len(headers) + FIXED_LINES == total
    reply = rig.nginx.request("/orders/1", headers, source=CHECKOUT_POD)
    assert reply.status == 200, reply
    [record] = rig.nginx.upstream_requests()
    assert len(record["headers"]) >= total - len(FORGED)  # the fillers all arrived
    assert sorted(cilium_lines(record)) == [
        ("X-Cilium-Identity", "48861"),
        ("X-Cilium-Namespace", "shop"),
        ("X-Cilium-Pod", "checkout-7d9f8-x2x5q"),
        ("X-Cilium-Service-Account", "checkout"),
    ]


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    with FakeIssuer(audience="kong") as fake:
        yield fake


def with_token_check(issuer: FakeIssuer, header: str = "authorization") -> dict[str, Any]:
    doc = copy.deepcopy(kong_yaml())
    for service in doc["services"]:
        for route in service["routes"]:
            for plugin in route.get("plugins") or []:
                if plugin["name"] == PLUGIN:
                    plugin["config"]["token"] = {
                        "enabled": True,
                        "issuer": issuer.issuer,
                        "audiences": ["kong"],
                        "jwks_uri": issuer.jwks_uri,
                        "header": header,
                    }
    return doc


@pytest.mark.parametrize("line", [5, 101, 1001, 4000])
def test_second_authorization_header_is_refused_wherever_it_is(
    make_rig: RigFactory, issuer: FakeIssuer, line: int
) -> None:
    rig = make_rig(with_token_check(issuer))
    token = ("Authorization", f"Bearer {issuer.sign(issuer.claims())}")
    before = [CHECKOUT_KEY, token, *fillers(line - FIXED_LINES - 3)]
    second = ("Authorization", f"Bearer {issuer.sign(issuer.claims(sub='other'))}")
    assert len(before) + FIXED_LINES + 1 == line  # the second token is header line `line`

    alone = rig.nginx.request("/orders/1", before, source=CHECKOUT_POD)
    assert alone.status == 200, alone  # one valid token: allowed
    reply = rig.nginx.request("/orders/1", [*before, second], source=CHECKOUT_POD)
    assert reply.status == 400, reply
    assert rig.nginx.upstream_count() == 1  # only the single-token request


@pytest.mark.parametrize("line", [5, 101, 1001, 4000])
def test_second_custom_token_header_is_refused_by_the_plugin(
    make_rig: RigFactory, issuer: FakeIssuer, line: int
) -> None:
    """nginx refuses a repeated Authorization itself; a custom token header it lets through,
    and the plugin sees every line of it (the companion reads all header lines)."""
    rig = make_rig(with_token_check(issuer, "x-token"))
    token = ("X-Token", issuer.sign(issuer.claims()))
    before = [CHECKOUT_KEY, token, *fillers(line - FIXED_LINES - 3)]
    second = ("X-Token", issuer.sign(issuer.claims(sub="other")))
    assert len(before) + FIXED_LINES + 1 == line

    alone = rig.nginx.request("/orders/1", before, source=CHECKOUT_POD)
    assert alone.status == 200, alone
    reply = rig.nginx.request("/orders/1", [*before, second], source=CHECKOUT_POD)
    assert reply.status == 400, reply
    assert "invalid_token" in str(reply), reply
    assert rig.nginx.upstream_count() == 1

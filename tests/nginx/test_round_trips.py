"""Socket round trips per request through Kong's bridge, counted by the rig (every
StartInstance, HandleEvent and Step is one round trip), after both workers started their
instance."""

from __future__ import annotations

from tests.nginx.conftest import Rig, RigFactory
from tests.nginx.shipped import (
    CHECKOUT_KEY,
    CHECKOUT_POD,
    INSTALLED,
    REPORTS_POD,
    kong_yaml,
    without_guard,
)


def round_trips(rig: Rig, source: str, expected_status: int, n: int = 10) -> float:
    before = rig.nginx.counters()["rpc"]
    for _ in range(n):
        reply = rig.nginx.request("/orders/1", [CHECKOUT_KEY], source=source)
        assert reply.status == expected_status, reply
    return (rig.nginx.counters()["rpc"] - before) / n


def test_with_the_guard_allowed_costs_3_and_denied_2(make_rig: RigFactory) -> None:
    """HandleEvent + kong.cilium_identity.facts + kong.cilium_identity.apply; a denial ends
    inside apply (kong.response.error yields, no Step follows)."""
    rig = make_rig(kong_yaml(), installed=INSTALLED)
    rig.warm()
    assert round_trips(rig, CHECKOUT_POD, 200) == 3
    assert round_trips(rig, REPORTS_POD, 403) == 2


def test_without_the_companion_the_plugin_falls_back_to_pdk_calls(make_rig: RigFactory) -> None:
    """Kong without the guard installed: facts is unknown (answered nil, once per instance),
    then one round trip per PDK call."""
    rig = make_rig(without_guard(kong_yaml()), installed=INSTALLED[:2])
    rig.warm()
    allowed = round_trips(rig, CHECKOUT_POD, 200)
    denied = round_trips(rig, REPORTS_POD, 403)
    assert allowed > 3 and denied > 2
    assert "could not find pdk method: kong.cilium_identity.facts" in rig.nginx.error_log()

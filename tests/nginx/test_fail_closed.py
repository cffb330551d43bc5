"""With the guard configured, no request reaches the upstream without a decision from the
plugin server: server killed, terminated, stopped, never started or flooded, on every
shipped configuration. Each test counts what the real upstream received."""

from __future__ import annotations

import copy
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.kit.fake_kube import FakeKubeApi
from tests.nginx.conftest import Rig, RigFactory
from tests.nginx.peers import NonReadingPeer
from tests.nginx.shipped import (
    CHECKOUT_KEY,
    CHECKOUT_POD,
    PLUGIN,
    REPORTS_KEY,
    REPORTS_POD,
    SHIPPED,
    Shipped,
    guard_gaps,
    plugin_holders,
    shipped_config,
)


@pytest.fixture(params=SHIPPED)
def shipped(request: pytest.FixtureRequest, cluster: FakeKubeApi) -> Shipped:
    return shipped_config(request.param, cluster.url)


@pytest.fixture
def rig_for(make_rig: RigFactory, shipped: Shipped) -> Callable[..., Rig]:
    """make_rig for the shipped configuration under test."""

    def make(**options: Any) -> Rig:
        return make_rig(shipped.doc, path=shipped.path, installed=shipped.installed, **options)

    return make


def test_shipped_config_puts_the_guard_wherever_cilium_identity_is(shipped: Shipped) -> None:
    assert guard_gaps(shipped.doc) == []


def test_guarded_allow_and_deny(rig_for: Callable[..., Rig]) -> None:
    rig = rig_for()
    rig.warm()
    allowed = rig.nginx.request(rig.path, [CHECKOUT_KEY], source=CHECKOUT_POD)
    assert allowed.status == 200, allowed
    assert rig.nginx.upstream_count() == 1
    denied = rig.nginx.request(rig.path, [CHECKOUT_KEY], source=REPORTS_POD)
    assert denied.status == 403, denied
    assert rig.nginx.upstream_count() == 1
    # reports is bound by a consumer tag: the tags travel through Kong's msgpack encoding
    tagged = rig.nginx.request(rig.path, [REPORTS_KEY], source=REPORTS_POD)
    assert tagged.status == 200, tagged
    assert rig.nginx.upstream_count() == 2


@pytest.mark.parametrize("stop", ["kill", "terminate"])
def test_dead_server_lets_nothing_through(rig_for: Callable[..., Rig], stop: str) -> None:
    rig = rig_for()
    rig.warm()
    before = rig.nginx.upstream_count()
    getattr(rig.server, stop)()
    assert rig.stolen_key_requests(10) == [503] * 10
    legit = rig.nginx.request(rig.path, [CHECKOUT_KEY], source=CHECKOUT_POD)
    assert legit.status == 503
    assert legit.json()["message"] == "Service unavailable (no_decision)"
    assert rig.nginx.upstream_count() == before == 0
    request_id = legit.header("X-Kong-Request-Id")
    assert request_id is not None
    logged = rig.nginx.serialized(request_id)
    assert logged == {"cilium_identity": {"decision": "deny", "reason": "no_decision"}}


def test_stopped_server_lets_nothing_through(rig_for: Callable[..., Rig]) -> None:
    rig = rig_for(read_timeout="1s")
    rig.warm()
    rig.server.signal(signal.SIGSTOP)
    try:
        statuses = rig.stolen_key_requests(3)
        legit = rig.nginx.request(rig.path, [CHECKOUT_KEY], source=CHECKOUT_POD)
    finally:
        rig.server.signal(signal.SIGCONT)
    assert statuses == [503] * 3
    assert legit.status == 503
    assert rig.nginx.upstream_count() == 0


def test_never_started_server_lets_nothing_through(rig_for: Callable[..., Rig]) -> None:
    rig = rig_for(start_server=False)
    assert rig.stolen_key_requests(6) == [500] * 6
    legit = rig.nginx.request(rig.path, [CHECKOUT_KEY], source=CHECKOUT_POD)
    assert legit.status == 500
    assert rig.nginx.upstream_count() == 0


def _stolen(rig: Rig) -> int:
    return rig.nginx.request(rig.path, [CHECKOUT_KEY], source=REPORTS_POD).status


def test_flooded_server_lets_nothing_through(rig_for: Callable[..., Rig]) -> None:
    """200 concurrent stolen-key requests while 5 local peers flood the socket with
    requests and never read a reply: every request is refused, none is proxied."""
    rig = rig_for(read_timeout="1s")
    peers = [NonReadingPeer(rig.server.socket) for _ in range(5)]
    try:
        for peer in peers:
            peer.flood()
        with ThreadPoolExecutor(max_workers=50) as pool:
            statuses = list(pool.map(lambda _: _stolen(rig), range(200)))
    finally:
        for peer in peers:
            peer.close()
    tally = {status: statuses.count(status) for status in set(statuses)}
    assert set(statuses) <= {403, 500, 503}, tally
    assert rig.nginx.upstream_count() == 0


def test_restarted_server_is_used_again_through_kongs_instance_reset(
    rig_for: Callable[..., Rig],
) -> None:
    """After a restart the cached instance ids are unknown to the new process: Kong's
    "no plugin instance" path resets and restarts them, and decisions resume."""
    rig = rig_for()
    rig.warm()
    rig.server.kill()
    assert rig.stolen_key_requests(2) == [503, 503]
    rig.server.start()
    rig.warm()  # a kubernetes source answers 503 until it has synced again
    assert rig.stolen_key_requests(4) == [403] * 4
    legit = rig.nginx.request(rig.path, [CHECKOUT_KEY], source=CHECKOUT_POD)
    assert legit.status == 200, legit
    assert rig.nginx.upstream_count() == 1
    assert "no plugin instance" in rig.nginx.error_log()


def test_plugin_skipped_by_kong_is_refused_by_the_guard(
    make_rig: RigFactory, shipped: Shipped
) -> None:
    """Kong 3.4.0-3.4.2 skips an external plugin whose server was not connectable within
    20 s of a worker's start ("plugin server is not ready, ... will not be executed"): the
    request then reaches the guard with no decision. Modelled by the route running the
    guard without cilium-identity (which is what such a worker does)."""
    doc = copy.deepcopy(shipped.doc)
    for _, holder in plugin_holders(doc):
        if "plugins" in holder:
            holder["plugins"] = [p for p in holder["plugins"] if p["name"] != PLUGIN]
    rig = make_rig(doc, path=shipped.path, installed=shipped.installed)
    assert rig.stolen_key_requests(4) == [503] * 4
    legit = rig.nginx.request(rig.path, [CHECKOUT_KEY], source=CHECKOUT_POD)
    assert legit.status == 503
    assert rig.nginx.upstream_count() == 0

"""The classic path through real nginx with Kong's failure semantics, no guard.

These tests pin the rig to Kong 3.9: with the plugin server up, cilium-identity allows and
denies; with it killed after the instance started, Kong logs the error and PROXIES the
request (fail open). That baseline (kong.yaml with the guard taken out) is what the guard
(test_fail_closed.py) changes.
"""

from __future__ import annotations

import signal
import socket
from typing import Any

import pytest

from tests.nginx.conftest import RigFactory
from tests.nginx.shipped import CHECKOUT_KEY as CHECKOUT
from tests.nginx.shipped import CHECKOUT_POD, INSTALLED, REPORTS_POD, kong_yaml, without_guard


def shipped_kong_yaml() -> dict[str, Any]:
    """kong.yaml without the guard: the baseline the guard has to change."""
    return without_guard(kong_yaml())


def test_allowed_request_reaches_upstream_with_identity_headers(make_rig: RigFactory) -> None:
    rig = make_rig(shipped_kong_yaml())
    reply = rig.nginx.request("/orders/1", [CHECKOUT], source=CHECKOUT_POD)
    assert reply.status == 200, reply
    records = rig.nginx.upstream_requests()
    assert len(records) == 1
    seen = {name.lower(): value for name, value in records[0]["headers"]}
    assert seen["x-cilium-identity"] == "48861"
    assert seen["x-cilium-namespace"] == "shop"
    assert seen["x-consumer-username"] == "checkout"
    assert records[0]["uri"] == "/1"


def test_wrong_pod_is_denied_and_upstream_sees_nothing(make_rig: RigFactory) -> None:
    rig = make_rig(shipped_kong_yaml())
    reply = rig.nginx.request("/orders/1", [CHECKOUT], source=REPORTS_POD)
    assert reply.status == 403, reply
    assert reply.json()["request_id"] == reply.header("X-Kong-Request-Id")
    assert rig.nginx.upstream_count() == 0


def test_missing_key_is_refused_by_key_auth(make_rig: RigFactory) -> None:
    rig = make_rig(shipped_kong_yaml())
    reply = rig.nginx.request("/orders/1", source=CHECKOUT_POD)
    assert reply.status == 401
    assert reply.json()["message"] == "No API key found in request"
    assert rig.nginx.upstream_count() == 0


@pytest.mark.parametrize(
    "installed", [INSTALLED, INSTALLED[:2]], ids=["guard-installed", "no-guard"]
)
@pytest.mark.parametrize("stop", ["kill", "terminate"])
def test_kong_fails_open_when_the_server_dies_after_instances_started(
    make_rig: RigFactory, stop: str, installed: tuple[str, ...]
) -> None:
    """Baseline without the guard configured on the route, as in real Kong: HandleEvent
    fails, Kong logs it and proxies. Every stolen-key request reaches the upstream, whether
    the guard is installed in Kong (KONG_PLUGINS) or not: installing it is not enough."""
    rig = make_rig(shipped_kong_yaml(), installed=installed)
    rig.warm()
    getattr(rig.server, stop)()
    statuses = rig.stolen_key_requests(10)
    assert statuses == [200] * 10
    assert rig.nginx.upstream_count() == 10
    assert "trying to connect" in rig.nginx.error_log()


def test_kong_answers_500_when_no_instance_was_ever_started(make_rig: RigFactory) -> None:
    """Server never started: StartInstance fails, error() -> 500; nothing is proxied."""
    rig = make_rig(shipped_kong_yaml(), start_server=False)
    statuses = rig.stolen_key_requests(6)
    assert statuses == [500] * 6
    assert rig.nginx.upstream_count() == 0
    assert "starting instance" in rig.nginx.error_log()


def test_kong_fails_open_after_the_socket_read_timeout_when_stopped(
    make_rig: RigFactory,
) -> None:
    """SIGSTOP: the call times out (lua_socket_read_timeout, Kong's 60 s shortened to 1 s),
    Kong logs it and proxies."""
    rig = make_rig(shipped_kong_yaml(), read_timeout="1s")
    rig.warm()
    rig.server.signal(signal.SIGSTOP)
    try:
        statuses = rig.stolen_key_requests(3)
    finally:
        rig.server.signal(signal.SIGCONT)
    assert statuses == [200] * 3
    assert rig.nginx.upstream_count() == 3


def test_without_the_companion_a_forged_header_past_line_1000_reaches_upstream(
    make_rig: RigFactory,
) -> None:
    """Kong shows a plugin at most 1,000 header lines (kong.request.get_headers(1000)), so
    the Python plugin alone cannot see, and clear, a forged header at line 5,000. This is
    the window the guard's native clearing closes (test_headers.py)."""
    rig = make_rig(shipped_kong_yaml(), installed=INSTALLED[:2])
    fillers = [(f"X-Filler-{i:04d}", "f") for i in range(4996)]
    headers = [CHECKOUT, *fillers, ("X-Cilium-Pod-Uid", "forged")]
    reply = rig.nginx.request("/orders/1", headers, source=CHECKOUT_POD)
    assert reply.status == 200
    [record] = rig.nginx.upstream_requests()
    assert ["X-Cilium-Pod-Uid", "forged"] in record["headers"]


def test_rig_moves_to_a_fresh_port_when_another_process_took_its_own(
    make_rig: RigFactory,
) -> None:
    """The rig's ports are found free before nginx binds them; another process can take one
    in between (seen once in CI). nginx then starts again on fresh ports."""
    rig = make_rig(shipped_kong_yaml())
    rig.nginx.stop()
    taken = rig.nginx.proxy_port
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        rig.nginx.start()
        assert rig.nginx.proxy_port != taken
        reply = rig.nginx.request("/orders/1", [CHECKOUT], source=CHECKOUT_POD)
        assert reply.status == 200, reply

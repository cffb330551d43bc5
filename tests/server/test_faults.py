"""Each kong-pdk 0.36 defect, reproduced on the stock server and absent from ours.

Every test runs both servers through the same Kong harness. For the stock server it asserts
the defect (Kong fails open, deadlocks, runs the wrong config); for ours, the fix.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.harness.conftest import script
from tests.kit.kong import KongHarness, KongRequest, Outcome
from tests.kit.msgpack_rpc import RpcClient
from tests.server.conftest import SERVERS, MakeKong, wait_for_output

FAIL_CLOSED_BODY = "An unexpected error occurred"


def assert_refused(out: Outcome, status: int = 500) -> None:
    assert not out.proxied and not out.failed_open, out.kong_log
    assert out.status == status


def assert_failed_open(out: Outcome) -> None:
    assert out.failed_open is True and out.proxied and out.status == 200


def ok_request(kong: KongHarness) -> Outcome:
    return kong.request(kong.add_plugin(script(["call", "kong.client.get_ip"])))


@pytest.mark.parametrize("server", SERVERS)
def test_exception_before_first_pdk_call_refuses_and_never_deadlocks(
    make_kong: MakeKong, server: str
) -> None:
    kong = make_kong(server, read_timeout=1.0)
    raised = kong.request(kong.add_plugin(script(["raise"])))
    after = ok_request(kong)
    if server == "stock":
        assert_failed_open(raised)
        assert_failed_open(after)  # e_lock was never released: every later event hangs
        return
    assert_refused(raised)
    assert raised.body == {"message": FAIL_CLOSED_BODY, "request_id": raised.request_id}
    assert after.proxied and not after.failed_open


@pytest.mark.parametrize("server", SERVERS)
def test_exception_after_first_pdk_call_refuses(make_kong: MakeKong, server: str) -> None:
    kong = make_kong(server, read_timeout=1.0)
    out = kong.request(kong.add_plugin(script(["call", "kong.client.get_ip"], ["raise"])))
    if server == "stock":
        assert_failed_open(out)
        assert ("err", "no data") in out.kong_log
        return
    assert_refused(out)
    assert out.rpc_calls[-1] == "plugin.Step"
    assert ok_request(kong).proxied


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("server", SERVERS)
def test_hung_plugin_is_refused_at_the_deadline(
    make_kong: MakeKong, server: str, where: str
) -> None:
    # Kong's read timeout is 60 s; the stock case shrinks it to see the fail-open, ours
    # keeps it far above the deadline so a loaded CI machine cannot blur the two.
    kong = make_kong(server, deadline=0.3, read_timeout=1.0 if server == "stock" else 10.0)
    late_calls = [["call", "kong.client.get_ip"], ["call", "kong.response.exit", 200]]
    steps = [["sleep", 1.5], *late_calls]
    if where == "after":
        steps.insert(0, ["call", "kong.client.get_ip"])
    out = kong.request(kong.add_plugin(script(*steps)))
    if server == "stock":
        assert_failed_open(out)
        assert ("err", "lua tcp socket read timed out") in out.kong_log
        return
    assert_refused(out)
    assert wait_for_output(kong, "exceeded the 0.3s deadline")
    # The late plugin code wakes up and makes PDK calls: none reaches Kong, none corrupts
    # another event, and the abandoned event leaves nothing behind.
    assert ok_request(kong).proxied
    time.sleep(1.5)
    assert ok_request(kong).proxied
    status = RpcClient(str(kong.socket_path), read_timeout=5.0, log=lambda *_: None).call(
        "plugin.GetStatus"
    )
    assert status["Events"] == 0


@pytest.mark.parametrize("server", SERVERS)
def test_slow_plugin_code_does_not_hold_other_requests(make_kong: MakeKong, server: str) -> None:
    """kong-pdk holds a server-wide lock until the plugin's first PDK call."""
    slow_kong = make_kong(server, deadline=10.0)
    other_kong = make_kong(server, start=False)  # a second nginx worker, same server
    slow = slow_kong.add_plugin(script(["sleep", 1.0], ["call", "kong.client.get_ip"]))
    fast = other_kong.add_plugin(script(["call", "kong.client.get_ip"]))
    other_kong.request(fast)  # StartInstance out of the way
    moments: dict[str, float] = {}

    def first_pdk_call(method: str) -> None:  # Kong gets the slow plugin's first PDK call
        moments.setdefault("slow reached the PDK", time.monotonic())

    slow_kong.before_pdk_call = first_pdk_call
    thread = threading.Thread(target=lambda: slow_kong.request(slow))
    thread.start()
    time.sleep(0.3)  # the slow plugin is now inside its sleep
    assert other_kong.request(fast).proxied
    moments["fast done"] = time.monotonic()
    thread.join()
    if server == "stock":  # it waited for the lock the slow event held
        assert moments["fast done"] >= moments["slow reached the PDK"]
    else:
        assert moments["fast done"] < moments["slow reached the PDK"]


@pytest.mark.parametrize("server", SERVERS)
def test_invalid_utf8_header_gets_a_decision(make_kong: MakeKong, server: str) -> None:
    kong = make_kong(server, "gate", read_timeout=1.0)
    plugin = kong.add_plugin({})
    out = kong.request(plugin, KongRequest(headers={"x-token": b"op\xffen"}))
    if server == "stock":
        assert_failed_open(out)  # UnicodeDecodeError killed the connection handler
        return
    assert_refused(out, 403)
    assert kong.request(plugin, KongRequest(headers={"x-token": "open"})).proxied


@pytest.mark.parametrize("server", SERVERS)
def test_stale_instance_id_after_restart_never_runs_another_routes_config(
    make_kong: MakeKong, server: str
) -> None:
    """Kong #8370: kong-pdk numbers instances from 0 again after a restart."""
    kong = make_kong(server, workers=2)
    deny_route = kong.add_plugin(script(["call", "kong.response.error", 403]))
    allow_route = kong.add_plugin(script(["call", "kong.client.get_ip"]))
    assert kong.request(deny_route, worker=0).status == 403
    assert kong.request(allow_route, worker=0).proxied
    kong.restart_server()
    assert kong.request(allow_route, worker=1).proxied  # first instance of the new process
    out = kong.request(deny_route, worker=0)  # worker 0 still caches the old ids
    if server == "stock":
        assert out.proxied and out.status == 200  # ran with the allow route's config
        assert out.rpc_calls[0] == "plugin.HandleEvent" and len(out.rpc_calls) == 2
        return
    assert_refused(out, 403)
    assert out.rpc_calls[:3] == ["plugin.HandleEvent", "plugin.StartInstance", "plugin.HandleEvent"]


@pytest.mark.parametrize("server", SERVERS)
def test_server_restart_in_the_middle_of_an_event_refuses(make_kong: MakeKong, server: str) -> None:
    kong = make_kong(server)
    plugin = kong.add_plugin(script(["call", "kong.client.get_ip"], ["call", "kong.client.get_ip"]))
    assert kong.request(plugin).proxied

    def restart_once(method: str) -> None:
        kong.before_pdk_call = None
        kong.restart_server()

    kong.before_pdk_call = restart_once
    out = kong.request(plugin)
    if server == "stock":
        assert_failed_open(out)
        assert any("not found" in message for _, message in out.kong_log)
        return
    assert_refused(out)


@pytest.mark.parametrize("server", SERVERS)
def test_server_killed_mid_event_fails_open_at_kong(make_kong: MakeKong, server: str) -> None:
    """Kong proxies when the server is gone: no server can fix that; the guard does."""
    kong = make_kong(server)
    plugin = kong.add_plugin(script(["call", "kong.client.get_ip"], ["call", "kong.client.get_ip"]))

    def kill_once(method: str) -> None:
        kong.before_pdk_call = None
        kong.kill_server()

    kong.before_pdk_call = kill_once
    assert_failed_open(kong.request(plugin))


@pytest.mark.parametrize("server", SERVERS)
def test_close_instance_calls_the_plugins_close(
    make_kong: MakeKong, prefix: Path, server: str
) -> None:
    kong = make_kong(server, "gate")
    marker = prefix / "closed"
    plugin = kong.add_plugin({"marker": str(marker)})
    kong.request(plugin, KongRequest(headers={"x-token": "open"}))
    kong.update_plugin(plugin, {})
    out = kong.request(plugin, KongRequest(headers={"x-token": "open"}))
    assert out.rpc_calls[:2] == ["plugin.StartInstance", "plugin.CloseInstance"]
    assert marker.exists() is (server == "ours")


@pytest.mark.parametrize("server", SERVERS)
def test_pdk_arguments_msgpack_cannot_carry_refuse_the_request(
    make_kong: MakeKong, server: str
) -> None:
    kong = make_kong(server, "bad-args", read_timeout=1.0)
    out = kong.request(kong.add_plugin({}))
    if server == "stock":
        assert_failed_open(out)  # the encoding error became an error reply
        return
    assert_refused(out)
    assert kong.request(kong.add_plugin({})).status == 500  # and the server still answers

"""Our server speaks Kong's msgpack-RPC protocol: shapes, wording, every Step variant."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from kong_cilium_identity.server.protocol import FAIL_CLOSED, STEP_VARIANTS
from tests.harness.conftest import script
from tests.kit.kong import KongHarness, KongRequest
from tests.kit.msgpack_rpc import RpcClient, RpcError
from tests.server.conftest import MakeKong, wait_for_output


def rpc_for(kong: KongHarness) -> RpcClient:
    return RpcClient(str(kong.socket_path), read_timeout=5.0, log=lambda level, msg: None)


def start(rpc: RpcClient, config: dict[str, Any], name: str = "probe") -> int:
    status = rpc.call("plugin.StartInstance", {"Name": name, "Config": json.dumps(config)})
    instance_id = status["Id"]
    assert isinstance(instance_id, int) and 0 <= instance_id < 2**31
    return instance_id


def test_instance_management_shapes_and_errors(make_kong: MakeKong) -> None:
    kong = make_kong("ours")
    rpc = rpc_for(kong)
    config = script(["call", "kong.client.get_ip"])
    instance_id = start(rpc, config)
    status = rpc.call("plugin.InstanceStatus", instance_id)
    assert status["Name"] == "probe" and status["Id"] == instance_id
    assert status["Config"] == config and isinstance(status["StartTime"], float)
    overall = rpc.call("plugin.GetStatus")
    assert overall["Pid"] == kong.server_pid
    assert [i["Id"] for i in overall["Plugins"]["probe"]["Instances"]] == [instance_id]
    info = rpc.call("plugin.GetPluginInfo", "probe")
    assert info["Name"] == "probe" and info["Phases"] == ["access"]
    assert info["Version"] == kong.info.version and info["Priority"] == kong.info.priority
    closed = rpc.call("plugin.CloseInstance", instance_id)
    assert closed == {"Name": "probe", "Id": instance_id, "Config": config}
    for method, params in [
        ("plugin.InstanceStatus", instance_id),
        ("plugin.CloseInstance", instance_id),
        ("plugin.HandleEvent", {"InstanceId": instance_id, "EventName": "access"}),
    ]:
        with pytest.raises(RpcError, match=f"^no plugin instance #{instance_id}$"):
            rpc.call(method, params)
    with pytest.raises(RpcError, match="not initialized"):
        rpc.call("plugin.StartInstance", {"Name": "other", "Config": "{}"})


def test_instance_ids_differ_across_restarts(make_kong: MakeKong) -> None:
    kong = make_kong("ours")
    first = start(rpc_for(kong), script())
    kong.restart_server()
    assert start(rpc_for(kong), script()) != first


def test_every_step_variant_resumes_the_event(make_kong: MakeKong) -> None:
    kong = make_kong("ours", lua_style=True)
    rpc = rpc_for(kong)
    variants = sorted(STEP_VARIANTS)
    steps = [["call", "kong.client.get_ip"] for _ in variants]
    instance_id = start(rpc, script(*steps, ["report"]))
    reply = rpc.call("plugin.HandleEvent", {"InstanceId": instance_id, "EventName": "access"})
    event_id = reply["EventId"]
    for n, variant in enumerate(variants):
        assert reply["Data"] == {"Method": "kong.client.get_ip", "Args": []}
        reply = rpc.call(variant, {"EventId": event_id, "Data": f"10.0.0.{n}"})
        assert reply["EventId"] == event_id
    report = reply["Data"]
    assert report["Method"] == "kong.service.request.set_header"
    results = json.loads(report["Args"][1])
    assert results == [[f"10.0.0.{n}", None] for n in range(len(variants))]  # Lua style
    assert rpc.call("plugin.Step", {"EventId": event_id}) == {"EventId": event_id, "Data": "ret"}


def test_steps_of_one_event_may_use_different_connections(make_kong: MakeKong) -> None:
    kong = make_kong("ours")
    first_pool, second_pool = rpc_for(kong), rpc_for(kong)
    instance_id = start(first_pool, script(["call", "kong.client.get_ip"], ["report"]))
    one = first_pool.call("plugin.HandleEvent", {"InstanceId": instance_id, "EventName": "access"})
    two = second_pool.call("plugin.HandleEvent", {"InstanceId": instance_id, "EventName": "access"})
    one = second_pool.call("plugin.Step", {"EventId": one["EventId"], "Data": "10.0.0.1"})
    two = first_pool.call("plugin.Step", {"EventId": two["EventId"], "Data": "10.0.0.2"})
    assert json.loads(one["Data"]["Args"][1]) == ["10.0.0.1"]
    assert json.loads(two["Data"]["Args"][1]) == ["10.0.0.2"]


@pytest.mark.parametrize("lua_style", [True, False], ids=["lua-style", "no-lua-style"])
def test_step_error_is_delivered_as_an_error(make_kong: MakeKong, lua_style: bool) -> None:
    kong = make_kong("ours", lua_style=lua_style)
    rpc = rpc_for(kong)
    instance_id = start(rpc, script(["call", "kong.client.get_ip"], ["report"]))
    reply = rpc.call("plugin.HandleEvent", {"InstanceId": instance_id, "EventName": "access"})
    reply = rpc.call("plugin.StepError", {"EventId": reply["EventId"], "Data": "boom"})
    if lua_style:
        assert json.loads(reply["Data"]["Args"][1]) == [[None, "boom"]]
    else:  # PDKException, uncaught by the plugin: the request is refused
        assert reply["Data"] == FAIL_CLOSED


def test_unknown_event_id_is_refused_not_an_error(make_kong: MakeKong) -> None:
    kong = make_kong("ours")
    reply = rpc_for(kong).call("plugin.StepConsumer", {"EventId": 12345, "Data": None})
    assert reply == {"EventId": 12345, "Data": FAIL_CLOSED}
    assert "event id 12345 not found" in wait_for_output(kong, "not found")


def test_log_arguments_are_sent_as_kong_pdk_sends_them(make_kong: MakeKong) -> None:
    kong = make_kong("ours")
    rpc = rpc_for(kong)
    instance_id = start(rpc, script(["call", "kong.log.info", True, None, 1.5, "x", 2, [1]]))
    reply = rpc.call("plugin.HandleEvent", {"InstanceId": instance_id, "EventName": "access"})
    assert reply["Data"] == {
        "Method": "kong.log.info",
        "Args": ["True", "None", "1.5", "x", 2, [1]],
    }


@pytest.mark.parametrize("lua_style", [True, False], ids=["lua-style", "no-lua-style"])
def test_pdk_calls_after_exit_return_at_once(make_kong: MakeKong, lua_style: bool) -> None:
    kong = make_kong("ours", "after-exit", lua_style=lua_style)
    out = kong.request(kong.add_plugin({}))
    assert out.status == 403 and out.pdk_calls == ["kong.response.exit"]
    line = wait_for_output(kong, "after exit:")
    if lua_style:
        assert "log=(None, None) call=(None, 'kong.client.get_ip: the request already" in line
    else:
        assert "log=None call='raised PDKException'" in line
    assert rpc_for(kong).call("plugin.GetStatus")["Events"] == 0


def test_invalid_utf8_reaches_the_plugin_as_surrogates(make_kong: MakeKong) -> None:
    kong = make_kong("ours")
    plugin = kong.add_plugin(script(["call", "kong.request.get_headers"], ["report"]))
    out = kong.request(plugin, KongRequest(headers={"x-bad": b"a\xffb"}))
    assert out.proxied and not out.failed_open
    seen = json.loads(out.upstream_headers["x-probe"][0].encode("utf-8", "surrogateescape"))
    assert seen[0]["x-bad"] == ["a\udcffb"]


def test_events_kong_stopped_stepping_are_dropped(make_kong: MakeKong) -> None:
    """An nginx worker that dies mid-request never sends the next Step."""
    kong = make_kong("ours", idle_event_limit=0.2)
    rpc = rpc_for(kong)
    instance_id = start(rpc, script(["call", "kong.client.get_ip"]))
    parked = rpc.call("plugin.HandleEvent", {"InstanceId": instance_id, "EventName": "access"})
    assert rpc.call("plugin.GetStatus")["Events"] == 1
    wait_for_output(kong, f"event {parked['EventId']} got no Step")
    assert rpc.call("plugin.GetStatus")["Events"] == 0
    late = rpc.call("plugin.Step", {"EventId": parked["EventId"], "Data": "10.0.0.1"})
    assert late["Data"] == FAIL_CLOSED


def test_exception_in_the_log_phase_just_ends_the_event(make_kong: MakeKong) -> None:
    """The response is gone: a 500 exit would be a Lua error in Kong's log timer."""
    kong = make_kong("ours", "log-raise")
    out = kong.request(kong.add_plugin({}), phases=("access", "log"))
    assert out.proxied and out.status == 200
    assert out.rpc_calls[-2:] == ["plugin.HandleEvent", "plugin.Step"]
    assert not any("log phase" in message for _, message in out.kong_log)
    wait_for_output(kong, "log phase failed on purpose")


def test_slow_start_instance_is_refused_and_the_late_instance_closed(
    make_kong: MakeKong, prefix: Path
) -> None:
    kong = make_kong("ours", "gate", deadline=0.3)
    marker = prefix / "late-instance-closed"
    out = kong.request(kong.add_plugin({"marker": str(marker), "init_sleep": 1.0}))
    assert out.status == 500 and not out.proxied and not out.failed_open
    assert any("exceeded the deadline" in message for _, message in out.kong_log)
    deadline = time.monotonic() + 5.0
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    assert rpc_for(kong).call("plugin.GetStatus")["Plugins"]["gate"]["Instances"] == []


def test_a_map_key_python_cannot_hash_drops_the_connection_not_the_server(
    make_kong: MakeKong,
) -> None:
    """Found by tests/e2e/test_server_fuzz.py: msgpack allows an array as a map key; the
    decoder raises TypeError for it, which escaped the event loop and killed the server
    (and with it every later request, which Kong then proxies unenforced)."""
    kong = make_kong("ours")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    sock.connect(str(kong.socket_path))
    # [0, 1, "plugin.GetStatus", [{[1]: 2}]]
    sock.sendall(b"\x94\x00\x01\xb0plugin.GetStatus\x91\x81\x91\x01\x02")
    assert sock.recv(1024) == b""  # dropped, no reply
    sock.close()
    assert wait_for_output(kong, "malformed msgpack")
    assert "Pid" in rpc_for(kong).call("plugin.GetStatus")
    assert kong.request(kong.add_plugin({}), KongRequest()).status == 200


def test_a_message_type_of_false_is_not_a_request(make_kong: MakeKong) -> None:
    """Found by tests/e2e/test_server_fuzz.py: [false, nil, nil, nil] was answered as a
    request because False == 0 in Python. Only the integer 0 marks a request."""
    kong = make_kong("ours")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    sock.connect(str(kong.socket_path))
    sock.sendall(b"\x94\xc2\xc0\xc0\xc0")  # [false, nil, nil, nil]
    assert sock.recv(1024) == b""  # dropped, no reply
    sock.close()
    assert "Pid" in rpc_for(kong).call("plugin.GetStatus")

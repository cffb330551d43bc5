"""End to end against stock kong-pdk 0.36's dedicated server (threads mode, --no-lua-style)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.harness.conftest import MakeHarness, script
from tests.kit.kong import KongRequest

CONSUMER: dict[str, Any] = {
    "id": "8a1b5c52-6a0e-4c39-9a53-3b8b8f0f6d11",
    "username": "checkout",
    "custom_id": None,
    "created_at": 1700000000,
    "tags": [],
}
CREDENTIAL = {"id": "5f1c1c2e-0000-4000-8000-000000000001", "consumer": {"id": CONSUMER["id"]}}


def test_header_plugin_step_names_defaults_and_headers(make_harness: MakeHarness) -> None:
    harness = make_harness("header_plugin.py")
    plugin = harness.add_plugin({})
    out = harness.request(
        plugin,
        KongRequest(
            headers={"X-Multi": ["a", "b"], "Flag": ""}, consumer=CONSUMER, credential=CREDENTIAL
        ),
    )
    assert out.proxied and out.status == 200 and not out.failed_open, out.kong_log
    assert out.rpc_calls == [
        "plugin.StartInstance",
        "plugin.HandleEvent",
        "plugin.StepConsumer",  # kong.client.get_consumer
        "plugin.StepCredential",  # kong.client.get_credential
        "plugin.StepMultiMap",  # kong.request.get_headers
        "plugin.StepRoute",  # kong.router.get_route
        "plugin.StepService",  # kong.router.get_service
        "plugin.Step",  # kong.ctx.shared.get -> nil
        "plugin.Step",  # kong.service.request.set_header
        "plugin.Step",  # kong.service.request.set_headers
    ]
    assert out.upstream_headers["x-consumer-id"] == [CONSUMER["id"]]
    assert out.upstream_headers["x-missing"] == ["None"]
    seen = json.loads(out.upstream_headers["x-seen-headers"][0])
    assert seen == {"flag": [""], "host": ["kong.local"], "x-multi": ["a", "b"]}
    conf = json.loads(out.upstream_headers["x-config"][0])
    assert conf["header"] == "x-consumer-id" and conf["mode"] == "enforce"
    assert conf["limits"] == {"max": 5, "note": None}
    assert conf["tags"] is None and conf["route_id"] is None
    assert conf["__plugin_id"] == plugin.id and conf["__seq__"] == plugin.seq


def test_instance_is_reused_then_replaced_on_update(make_harness: MakeHarness) -> None:
    harness = make_harness("header_plugin.py")
    plugin = harness.add_plugin({"header": "x-a"})
    harness.request(plugin)
    again = harness.request(plugin)
    assert again.rpc_calls[0] == "plugin.HandleEvent"
    harness.update_plugin(plugin, {"header": "x-b"})
    updated = harness.request(plugin)
    assert updated.rpc_calls[:3] == [
        "plugin.StartInstance",
        "plugin.CloseInstance",
        "plugin.HandleEvent",
    ]
    assert "x-b" in updated.upstream_headers


def test_instances_are_per_worker(make_harness: MakeHarness) -> None:
    harness = make_harness("header_plugin.py", workers=2)
    plugin = harness.add_plugin({})
    assert harness.request(plugin, worker=0).rpc_calls[0] == "plugin.StartInstance"
    assert harness.request(plugin, worker=1).rpc_calls[0] == "plugin.StartInstance"
    assert harness.request(plugin, worker=0).rpc_calls[0] == "plugin.HandleEvent"


def test_log_phase_gets_serialize_as_json_string(make_harness: MakeHarness) -> None:
    harness = make_harness("header_plugin.py")
    out = harness.request(harness.add_plugin({}), phases=("access", "log"))
    assert out.rpc_calls[-3:] == ["plugin.HandleEvent", "plugin.Step", "plugin.Step"]
    assert ("notice", "serialize type: str") in out.plugin_log


def test_unknown_pdk_method_answers_none(make_harness: MakeHarness) -> None:
    harness = make_harness("probe_plugin.py")
    plugin = harness.add_plugin(script(["call", "kong.nope.missing", 1], ["report"]))
    out = harness.request(plugin)
    assert ("err", "could not find pdk method: kong.nope.missing") in out.kong_log
    assert json.loads(out.upstream_headers["x-probe"][0]) == [None]
    assert out.proxied and not out.failed_open


@pytest.mark.parametrize("first", [True, False], ids=["first-call", "after-a-call"])
def test_response_error_ends_the_event_without_reply(
    make_harness: MakeHarness, first: bool
) -> None:
    harness = make_harness("probe_plugin.py")
    steps = [] if first else [["call", "kong.client.get_ip"]]
    plugin = harness.add_plugin(script(*steps, ["call", "kong.response.error", 403]))
    out = harness.request(plugin)
    assert not out.proxied and out.status == 403
    assert out.body == {"message": "Forbidden", "request_id": out.request_id}
    assert out.pdk_calls[-1] == "kong.response.error"
    assert out.rpc_calls[-1] == ("plugin.HandleEvent" if first else "plugin.Step")
    assert out.response_headers["content-type"] == ["application/json; charset=utf-8"]


def test_response_exit_with_table_body_and_headers(make_harness: MakeHarness) -> None:
    harness = make_harness("probe_plugin.py")
    plugin = harness.add_plugin(
        script(["call", "kong.response.exit", 401, {"message": "no"}, {"WWW-Authenticate": "x"}])
    )
    out = harness.request(plugin)
    assert (out.status, out.body) == (401, {"message": "no"})
    assert out.response_headers["www-authenticate"] == ["x"]


@pytest.mark.parametrize("where", ["before", "after"])
def test_plugin_exception_fails_open(make_harness: MakeHarness, where: str) -> None:
    harness = make_harness("probe_plugin.py", read_timeout=0.5)
    steps = [["raise"]] if where == "before" else [["call", "kong.client.get_ip"], ["raise"]]
    out = harness.request(harness.add_plugin(script(*steps)))
    assert out.proxied and out.failed_open and out.status == 200
    assert ("err", "no data") in out.kong_log
    # Before the first PDK call kong-pdk never releases its event lock: every later
    # HandleEvent on that server hangs (here: times out and fails open too).
    later = harness.request(harness.add_plugin(script(["call", "kong.client.get_ip"])))
    assert later.failed_open is (where == "before")


def test_read_timeout_fails_open(make_harness: MakeHarness) -> None:
    harness = make_harness("probe_plugin.py", read_timeout=0.3)
    plugin = harness.add_plugin(script(["call", "kong.client.get_ip"], ["sleep", 1.0]))
    out = harness.request(plugin)
    assert out.failed_open and out.proxied
    assert ("err", "lua tcp socket read timed out") in out.kong_log
    assert out.elapsed < 1.0


def test_start_instance_error_is_500(make_harness: MakeHarness) -> None:
    harness = make_harness("probe_plugin.py")
    out = harness.request(harness.add_plugin({"fail_init": True}))
    assert not out.proxied and out.status == 500
    assert out.body == {"message": "An unexpected error occurred", "request_id": out.request_id}
    assert any(m.startswith("starting instance: ") for _, m in out.kong_log)


def test_socket_missing_at_start_instance_is_500(make_harness: MakeHarness) -> None:
    harness = make_harness("probe_plugin.py", start=False)
    out = harness.request(harness.add_plugin({}))
    assert out.status == 500 and not out.failed_open
    assert ("err", "trying to connect: no such file or directory") in out.kong_log


def test_server_killed_after_start_fails_open(make_harness: MakeHarness) -> None:
    harness = make_harness("probe_plugin.py")
    plugin = harness.add_plugin(script(["call", "kong.client.get_ip"]))
    assert harness.request(plugin).proxied
    harness.kill_server()
    out = harness.request(plugin)
    assert out.failed_open and out.proxied and out.rpc_calls == ["plugin.HandleEvent"]


def test_no_plugin_instance_after_restart_resets_and_retries(make_harness: MakeHarness) -> None:
    harness = make_harness("probe_plugin.py", workers=2)
    plugin = harness.add_plugin(script(["call", "kong.client.get_ip"], ["report"]))
    harness.request(plugin, worker=0)
    harness.request(plugin, worker=1)
    harness.restart_server()
    out = harness.request(plugin, worker=0)
    assert out.proxied and not out.failed_open
    assert out.rpc_calls[:3] == ["plugin.HandleEvent", "plugin.StartInstance", "plugin.HandleEvent"]
    assert any(level == "warn" and "no plugin instance" in m for level, m in out.kong_log)
    # 3.9 resets every worker's cache: worker 1 starts a fresh instance without an error.
    assert harness.request(plugin, worker=1).rpc_calls[0] == "plugin.StartInstance"


def test_invalid_utf8_header_kills_the_connection_and_fails_open(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness("probe_plugin.py", read_timeout=2.0)
    plugin = harness.add_plugin(script(["call", "kong.request.get_headers"], ["report"]))
    out = harness.request(plugin, KongRequest(headers={"x-bad": b"\xff\xfe"}))
    assert out.failed_open and out.proxied
    assert out.rpc_calls[-1] == "plugin.StepMultiMap"
    assert ("err", "no data") in out.kong_log
    assert out.upstream_headers["x-bad"] == ["\udcff\udcfe"]


def test_lua_error_in_pdk_function_is_500(make_harness: MakeHarness) -> None:
    harness = make_harness("probe_plugin.py")
    plugin = harness.add_plugin(
        script(["call", "kong.service.request.set_header", "x-a", {"nested": "table"}])
    )
    out = harness.request(plugin)
    assert out.status == 500 and not out.proxied and not out.failed_open
    assert out.rpc_calls[-1] == "plugin.HandleEvent"  # the plugin never got a reply


def test_authenticate_and_load_consumer(make_harness: MakeHarness) -> None:
    harness = make_harness("probe_plugin.py")
    plugin = harness.add_plugin(
        script(
            ["call", "kong.client.load_consumer", "checkout", True],
            ["call", "kong.client.load_consumer", "not-a-uuid-but-unknown", True],
            ["call", "kong.client.authenticate", CONSUMER, None],
            ["call", "kong.client.get_consumer"],
            ["report"],
        )
    )
    out = harness.request(plugin, KongRequest(consumers=[CONSUMER]))
    results = json.loads(out.upstream_headers["x-probe"][0])
    # A None map value sent by the plugin is no key in the Lua table Kong stores.
    as_lua = {k: v for k, v in CONSUMER.items() if v is not None}
    assert results == [CONSUMER, None, None, as_lua]
    assert out.authenticated_consumer == as_lua and out.authenticated_credential is None
    assert out.rpc_calls.count("plugin.StepConsumer") == 3
    assert out.rpc_calls.count("plugin.StepCredential") == 1

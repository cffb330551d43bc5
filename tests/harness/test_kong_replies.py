"""What Kong 3.9 does with each kind of reply from a plugin server (fake server on the wire)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.harness.fake_server import FakePluginServer
from tests.harness.test_wire import _harness
from tests.kit.kong import EventLoopRunaway, KongRequest
from tests.kit.msgpack_rpc import encode


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "fake.socket"


def _error_reply(msgid: int, error: Any) -> bytes:
    return msgpack.packb([1, msgid, error, None])


def _steps(server: FakePluginServer) -> list[dict[str, Any]]:
    return [r[3][0] for r in server.requests if str(r[2]).startswith("plugin.Step")]


def test_invalid_utf8_and_bin_from_the_server_pass_on_as_bytes(tmp_path: Path, sock: Path) -> None:
    # set_header("x-raw", <str with bytes ff fe>) and set_header("x-bin", <bin 00 ff>)
    bad_str = b"\x92" + b"\xa5x-raw" + b"\xa2\xff\xfe"
    as_bin = b"\x92" + b"\xa5x-bin" + b"\xc4\x02\x00\xff"
    server = FakePluginServer(
        sock,
        [
            b"\x82\xa6Method\xbfkong.service.request.set_header\xa4Args" + bad_str,
            b"\x82\xa6Method\xbfkong.service.request.set_header\xa4Args" + as_bin,
        ],
    )
    harness = _harness(tmp_path, sock)
    out = harness.request(harness.add_plugin({}))
    assert out.proxied and not out.failed_open and out.status == 200, out.kong_log
    assert out.upstream_headers["x-raw"] == ["\udcff\udcfe"]  # the bytes, undecoded
    assert out.upstream_headers["x-bin"] == ["\x00\udcff"]
    server.close()


def test_failed_start_instance_is_retried_on_every_request(tmp_path: Path, sock: Path) -> None:
    def hook(method: str, params: list[Any], msgid: int) -> bytes | None:
        return _error_reply(msgid, "bad config") if method == "plugin.StartInstance" else None

    server = FakePluginServer(sock, [], hook=hook)
    harness = _harness(tmp_path, sock)
    plugin = harness.add_plugin({})
    outs = [harness.request(plugin) for _ in range(6)]  # twice the old harness cap
    assert [o.status for o in outs] == [500] * 6
    assert all(o.rpc_calls == ["plugin.StartInstance"] for o in outs)
    assert server.methods().count("plugin.StartInstance") == 6
    server.close()


def test_no_plugin_instance_is_retried_without_a_cap(tmp_path: Path, sock: Path) -> None:
    refusals = {"left": 7}

    def hook(method: str, params: list[Any], msgid: int) -> bytes | None:
        if method == "plugin.HandleEvent" and refusals["left"]:
            refusals["left"] -= 1
            return _error_reply(msgid, "No plugin instance 0")
        return None

    server = FakePluginServer(sock, [{"Method": "kong.client.get_ip", "Args": []}], hook=hook)
    harness = _harness(tmp_path, sock)
    out = harness.request(harness.add_plugin({}))
    assert out.proxied and not out.failed_open
    assert out.rpc_calls.count("plugin.StartInstance") == 8
    assert out.rpc_calls[-2:] == ["plugin.HandleEvent", "plugin.Step"]
    assert sum(1 for level, _ in out.kong_log if level == "warn") == 7
    server.close()


def test_a_runaway_retry_can_be_turned_into_a_test_failure(tmp_path: Path, sock: Path) -> None:
    def hook(method: str, params: list[Any], msgid: int) -> bytes | None:
        return _error_reply(msgid, "no plugin instance") if method == "plugin.HandleEvent" else None

    server = FakePluginServer(sock, [], hook=hook)
    harness = _harness(tmp_path, sock, max_event_retries=20)
    with pytest.raises(EventLoopRunaway):
        harness.request(harness.add_plugin({}))
    assert server.methods().count("plugin.HandleEvent") == 21
    server.close()


@pytest.mark.parametrize(
    ("error", "status", "logged"),
    [
        pytest.param("boom", 200, ("err", "boom"), id="string-logged-fail-open"),
        pytest.param(b"\xffbad", 200, ("err", "\udcffbad"), id="bytes-logged-fail-open"),
        pytest.param(False, 200, None, id="false-silent-fail-open"),
        pytest.param(42, 500, None, id="number-err-lower-raises"),
        pytest.param({"a": 1}, 500, None, id="table-err-lower-raises"),
    ],
)
def test_handle_event_error_values(
    tmp_path: Path, sock: Path, error: Any, status: int, logged: tuple[str, str] | None
) -> None:
    def hook(method: str, params: list[Any], msgid: int) -> bytes | None:
        if method == "plugin.HandleEvent":
            return b"\x94\x01" + msgpack.packb(msgid) + encode(error) + b"\xc0"
        return None

    server = FakePluginServer(sock, [], hook=hook)
    harness = _harness(tmp_path, sock)
    out = harness.request(harness.add_plugin({}))
    assert out.status == status and out.proxied is (status == 200)
    if status == 200:
        assert out.failed_open
        errors = [entry for entry in out.kong_log if entry[0] == "err"]
        assert errors == ([logged] if logged else [])
    server.close()


def test_reply_with_neither_result_nor_error_ends_the_event_silently(
    tmp_path: Path, sock: Path
) -> None:
    def hook(method: str, params: list[Any], msgid: int) -> bytes | None:
        return msgpack.packb([1, msgid, None, None]) if method == "plugin.Step" else None

    server = FakePluginServer(sock, [{"Method": "kong.client.get_ip", "Args": []}], hook=hook)
    harness = _harness(tmp_path, sock)
    out = harness.request(harness.add_plugin({}))
    assert out.proxied and out.failed_open and out.status == 200
    assert not [entry for entry in out.kong_log if entry[0] == "err"]
    server.close()


def test_reply_cut_mid_message_is_a_lua_error(tmp_path: Path, sock: Path) -> None:
    def hook(method: str, params: list[Any], msgid: int) -> bytes | None:
        if method == "plugin.HandleEvent":
            return msgpack.packb([1, msgid, None, {"EventId": 1, "Data": "ret"}])[:-3]
        return None

    server = FakePluginServer(sock, [], hook=hook)
    harness = _harness(tmp_path, sock, read_timeout=0.5)
    out = harness.request(harness.add_plugin({}))
    assert out.status == 500 and not out.proxied  # "missing bytes" raised in the unpacker
    server.close()


def test_close_before_any_reply_byte_is_no_data_and_fails_open(tmp_path: Path, sock: Path) -> None:
    def hook(method: str, params: list[Any], msgid: int) -> bytes | None:
        return b"" if method == "plugin.HandleEvent" else None

    server = FakePluginServer(sock, [], hook=hook)
    harness = _harness(tmp_path, sock)
    out = harness.request(harness.add_plugin({}))
    assert out.proxied and out.failed_open and ("err", "no data") in out.kong_log
    server.close()


def test_unknown_and_odd_pdk_method_names(tmp_path: Path, sock: Path) -> None:
    server = FakePluginServer(
        sock,
        [
            {"Method": "kong.request.no_such_thing", "Args": []},
            {"Method": 12, "Args": []},
            {"Method": "kong/client/get_ip", "Args": []},  # index_table walks \w+ segments
        ],
    )
    harness = _harness(tmp_path, sock)
    out = harness.request(harness.add_plugin({}))
    assert out.proxied and not out.failed_open
    assert ("err", "could not find pdk method: kong.request.no_such_thing") in out.kong_log
    assert ("err", "could not find pdk method: 12") in out.kong_log
    steps = _steps(server)
    assert steps[0] == {"EventId": 7} and steps[1] == {"EventId": 7}  # answered nil
    assert steps[2]["Data"] == "10.0.1.200"
    server.close()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"Method": "kong.request", "Args": []}, id="namespace-is-a-table"),
        pytest.param({"Args": []}, id="nil-method"),
        pytest.param("not-a-table", id="string-data"),
    ],
)
def test_uncallable_step_data_is_a_lua_error(tmp_path: Path, sock: Path, data: Any) -> None:
    server = FakePluginServer(sock, [data])
    harness = _harness(tmp_path, sock)
    out = harness.request(harness.add_plugin({}))
    assert out.status == 500 and not out.proxied
    server.close()


def test_args_follow_unpack(tmp_path: Path, sock: Path) -> None:
    server = FakePluginServer(
        sock,
        [
            # a map with keys 1..n unpacks like an array
            b"\x82\xa6Method\xbfkong.service.request.set_header\xa4Args"
            + b"\x82\x01\xa3x-m\x02\xa1v",
            # a map with string keys unpacks to no arguments: get_ip() works
            {"Method": "kong.client.get_ip", "Args": {"ignored": 1}},
            # a scalar Args is the one argument
            {"Method": "kong.request.get_header", "Args": "x-m"},
        ],
    )
    harness = _harness(tmp_path, sock)
    out = harness.request(harness.add_plugin({}), KongRequest(headers={"X-M": "client"}))
    assert out.upstream_headers["x-m"] == ["v"]
    steps = _steps(server)
    assert steps[1]["Data"] == "10.0.1.200" and steps[2]["Data"] == "v"
    server.close()


def test_start_instance_without_id_is_cached_as_nil(tmp_path: Path, sock: Path) -> None:
    def hook(method: str, params: list[Any], msgid: int) -> bytes | None:
        return msgpack.packb([1, msgid, None, {"Name": "fake"}]) if "Start" in method else None

    server = FakePluginServer(sock, [], hook=hook)
    harness = _harness(tmp_path, sock)
    plugin = harness.add_plugin({})
    first = harness.request(plugin)
    handle = next(r for r in server.requests if r[2] == "plugin.HandleEvent")
    assert handle[3][0] == {"EventName": "access"}  # InstanceId nil: no key
    assert first.proxied
    # Kong polls 10 s for the "claim" to resolve, then gives up with an error: fail-open
    second = harness.request(plugin)
    assert second.rpc_calls == [] and second.failed_open and second.proxied
    assert any("Could not claim instance_id" in m for _, m in second.kong_log)
    server.close()


def test_extension_types_decode_as_nil(tmp_path: Path, sock: Path) -> None:
    ext = msgpack.packb(msgpack.ExtType(5, b"xx"))
    server = FakePluginServer(
        sock, [b"\x82\xa6Method\xb2kong.ctx.shared.set\xa4Args\x92\xa1k" + ext]
    )
    harness = _harness(tmp_path, sock)
    out = harness.request(harness.add_plugin({}))
    assert out.proxied and "k" not in out.ctx_shared  # set("k", nil) stores nothing
    server.close()


def test_server_pid_that_is_no_number_counts_as_a_new_pid(tmp_path: Path, sock: Path) -> None:
    server = FakePluginServer(sock, [], notify=True)
    harness = _harness(tmp_path, sock)
    plugin = harness.add_plugin({})
    harness.request(plugin)
    assert harness.request(plugin).rpc_calls == ["plugin.HandleEvent"]
    server.pid = "4242"  # type: ignore[assignment]  # tonumber("4242") == 4242: same pid
    harness.request(plugin)
    assert harness.request(plugin).rpc_calls == ["plugin.HandleEvent"]
    server.pid = "pid?"  # type: ignore[assignment]  # tonumber -> nil ~= 4242
    harness.request(plugin)
    assert harness.request(plugin).rpc_calls[0] == "plugin.StartInstance"
    server.close()

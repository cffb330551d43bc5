"""Wire-level checks: Kong's Lua-value encoding and what the gateway sends (fake server)."""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.harness.fake_server import FakePluginServer
from tests.kit.kong import KongHarness, KongRequest
from tests.kit.msgpack_rpc import (
    Binary,
    MultiMap,
    RpcClient,
    encode,
)

DUMP = [
    {
        "Name": "fake",
        "Phases": ["access"],
        "Priority": 1,
        "Version": "1.0.0",
        "Schema": {"name": "fake", "fields": [{"config": {"type": "record", "fields": []}}]},
    }
]


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        pytest.param(b"\xff\xfe", b"\xa2\xff\xfe", id="bytes-are-str-typed"),
        pytest.param("a" * 40, b"\xda\x00\x28" + b"a" * 40, id="no-str8-like-string-compat"),
        pytest.param(Binary(b"\x00\x01"), b"\xc4\x02\x00\x01", id="raw-body-is-bin"),
        pytest.param({}, b"\x90", id="empty-table-is-array"),
        pytest.param([], b"\x90", id="empty-list-is-array"),
        pytest.param(MultiMap({}), b"\x80", id="empty-multimap-is-map"),
        pytest.param(MultiMap({"a": True}), b"\x81\xa1a\x90", id="flag-is-empty-array"),
        pytest.param(MultiMap({"a": "x"}), b"\x81\xa1a\x91\xa1x", id="string-wrapped"),
        pytest.param(2.0, b"\x02", id="integral-number-is-integer"),
        pytest.param(2**53, b"\xcb" + struct.pack(">d", 2.0**53), id="beyond-2^53-is-double"),
        pytest.param(2**53 - 2, b"\xcf" + struct.pack(">Q", 2**53 - 2), id="inside-is-integer"),
        pytest.param({1: "a", 2: "b"}, b"\x92\xa1a\xa1b", id="keys-1-to-n-are-an-array"),
        pytest.param({1: "a", 3: "c"}, b"\x82\x01\xa1a\x03\xa1c", id="a-hole-makes-a-map"),
        pytest.param({"a": None}, b"\x81\xa1a\xc0", id="none-in-a-table-is-cjson-null"),
        pytest.param(None, b"\xc0", id="nil"),
    ],
)
def test_lua_value_encoding(value: Any, wire: bytes) -> None:
    assert encode(value) == wire


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "fake.socket"


def _harness(tmp_path: Path, sock: Path, **kwargs: Any) -> KongHarness:
    query = [sys.executable, "-c", f"print({json.dumps(json.dumps(DUMP))})"]
    return KongHarness(query, None, prefix=tmp_path, socket_name=sock.name, **kwargs)


def test_nil_data_is_omitted_and_exit_gets_no_reply(tmp_path: Path, sock: Path) -> None:
    server = FakePluginServer(
        sock,
        [
            {"Method": "kong.ctx.shared.get", "Args": ["missing"]},
            {"Method": "kong.request.get_headers", "Args": []},
            {"Method": "kong.request.get_raw_body", "Args": []},
            {"Method": "kong.response.error", "Args": [401]},
            {"Method": "kong.client.get_ip", "Args": []},
        ],
    )
    harness = _harness(tmp_path, sock)
    out = harness.request(
        harness.add_plugin({}), KongRequest(headers={"x-bad": b"\xff"}, raw_body=b"\x00body")
    )
    steps = [r[3][0] for r in server.requests if str(r[2]).startswith("plugin.Step")]
    assert steps[0] == {"EventId": 7}  # no Data key for nil
    assert steps[1]["Data"] == {"x-bad": ["\udcff"], "host": ["kong.local"]}
    assert steps[2]["Data"] == b"\x00body"
    assert len(steps) == 3 and out.status == 401 and out.body is not None
    assert b"\xa1\xff" in server.raw  # the invalid UTF-8 value went out as a str
    assert server.methods() == [
        "plugin.StartInstance",
        "plugin.HandleEvent",
        "plugin.Step",
        "plugin.StepMultiMap",
        "plugin.Step",
    ]
    assert server.connections == 1  # one pooled keep-alive connection for all five RPCs
    server.close()


def test_args_are_applied_positionally(tmp_path: Path, sock: Path) -> None:
    server = FakePluginServer(
        sock,
        [
            {"Method": "kong.service.request.set_header", "Args": ["X-A", "", "extra"]},
            {
                "Method": "kong.service.request.set_headers",
                "Args": [{"x-b": ["1", "2"], "x-c": []}],
            },
            {"Method": "kong.service.request.add_header", "Args": ["x-b", 3]},
        ],
    )
    harness = _harness(tmp_path, sock)
    out = harness.request(harness.add_plugin({}), KongRequest(headers={"x-c": "old"}))
    assert out.upstream_headers["x-a"] == [" "]  # normalize_header: "" -> " "
    assert out.upstream_headers["x-b"] == ["1", "2", "3"]
    assert "x-c" not in out.upstream_headers  # empty table clears the header
    server.close()


def test_server_pid_notification_resets_instances_on_change(tmp_path: Path, sock: Path) -> None:
    server = FakePluginServer(sock, [], notify=True)
    harness = _harness(tmp_path, sock)
    plugin = harness.add_plugin({})
    assert harness.request(plugin).proxied
    assert harness.request(plugin).rpc_calls == ["plugin.HandleEvent"]  # same pid: reuse
    server.pid = 4343
    harness.request(plugin)  # learns the new pid while handling this event
    assert harness.request(plugin).rpc_calls[0] == "plugin.StartInstance"
    server.close()


def test_reply_id_mismatch_is_a_lua_error(tmp_path: Path, sock: Path) -> None:
    server = FakePluginServer(sock, [], wrong_msgid=True)
    harness = _harness(tmp_path, sock)
    out = harness.request(harness.add_plugin({}))
    assert out.status == 500
    assert ("err", "unexpected RPC response ID from Go plugin server") in out.kong_log
    server.close()


def test_rpc_client_frames_requests(tmp_path: Path, sock: Path) -> None:
    server = FakePluginServer(sock, [])
    client = RpcClient(str(sock), read_timeout=1.0, log=lambda *_: None)
    client.call("plugin.CloseInstance", 3)
    client.call("plugin.CloseInstance", 4)
    assert server.requests == [
        [0, 1, "plugin.CloseInstance", [3]],
        [0, 2, "plugin.CloseInstance", [4]],
    ]
    # no length prefix: a plain concatenation of msgpack arrays, one per call
    assert (
        bytes(server.raw)
        == b"".join(msgpack.packb(r) for r in server.requests)
        == encode([0, 1, "plugin.CloseInstance", [3]]) + encode([0, 2, "plugin.CloseInstance", [4]])
    )
    client.close()
    server.close()

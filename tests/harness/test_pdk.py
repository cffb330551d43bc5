"""PDK functions answered like Kong 3.9 (argument checks, return values, side effects)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.kit.msgpack_rpc import LuaError
from tests.kit.pdk import (
    KongRequest,
    Pdk,
    RequestState,
    ResponseExit,
    SavedForLog,
)


def _pdk(request: KongRequest | None = None, saved: SavedForLog | None = None) -> Pdk:
    state = RequestState.start(request or KongRequest())
    return Pdk(state, plugin_id="p", route=None, service=None, node_id="n", saved=saved)


@pytest.mark.parametrize(
    ("method", "args", "message"),
    [
        (
            "kong.service.request.set_header",
            [1, "v"],
            'invalid header name "1": got number, expected string',
        ),
        (
            "kong.service.request.set_header",
            ["x", {"a": "b"}],
            'invalid header value for "x": got table, expected string, number or boolean',
        ),
        (
            "kong.service.request.set_headers",
            [{"x": [1]}],
            'invalid header value in array "x": got number, expected string',
        ),
        ("kong.service.request.clear_header", [5], "header must be a string"),
        ("kong.request.get_header", [], "header name must be a string"),
        ("kong.request.get_headers", [0], "max_headers must be >= 1"),
        ("kong.client.authenticate", [], "either credential or consumer must be provided"),
        (
            "kong.client.load_consumer",
            ["bob"],
            "cannot load a consumer with an id that is not a uuid",
        ),
        ("kong.response.error", [200], "code must be a number between 400 and 599"),
        ("kong.response.exit", ["403"], "code must be a number"),
    ],
)
def test_bad_arguments_are_lua_errors(method: str, args: list[Any], message: str) -> None:
    with pytest.raises(LuaError, match=re.escape(message)):
        _pdk().call(method, args)


def test_header_functions_follow_kong_semantics() -> None:
    pdk = _pdk(KongRequest(headers={"X-Keep": "1", "X-Gone": ["a", "b"]}))
    pdk.call("kong.service.request.set_headers", [{"x-gone": [], "x-num": 5, "x-e": ""}])
    pdk.call("kong.service.request.add_header", ["X-Keep", True])
    headers = pdk.state.headers.grouped()
    assert "x-gone" not in headers
    assert headers["x-num"] == ["5"] and headers["x-e"] == [" "]
    assert headers["x-keep"] == ["1", "true"]
    # ngx.var.http_x_keep joins every line (nginx >= 1.23, Kong 3.9's OpenResty 1.25)
    assert pdk.call("kong.request.get_header", ["x_keep"]) == "1, true"
    # set_header kept the first X-Keep line in place and appended the second at the end
    assert pdk.state.headers.lines == [
        ("Host", "kong.local"),
        ("X-Keep", "1"),
        ("x-num", "5"),
        ("x-e", " "),
        ("X-Keep", "true"),
    ]
    assert pdk.call("kong.request.get_headers", [2]) == {"host": "kong.local", "x-keep": "1"}


def test_response_error_uses_kong_default_messages() -> None:
    pdk = _pdk()
    with pytest.raises(ResponseExit) as caught:
        pdk.call("kong.response.error", [401, None, {"WWW-Authenticate": "Bearer"}])
    assert caught.value.status == 401
    assert b'"message": "Unauthorized"' in (caught.value.body or b"")
    assert caught.value.headers["www-authenticate"] == ["Bearer"]


def test_log_timer_refuses_ngx_var_functions_but_serves_saved_data() -> None:
    saved = SavedForLog(
        serialize_data={"a": 1},
        request_headers={"h": "v"},
        response_headers={},
        response_status=403,
        ngx_ctx={},
        ctx_shared={"k": "v"},
        req_start_time=0.0,
    )
    pdk = _pdk(saved=saved)
    with pytest.raises(LuaError, match=r"ngx\.timer"):
        pdk.call("kong.client.get_ip", [])
    assert pdk.call("kong.log.serialize", []) == '{"a": 1}'
    assert pdk.call("kong.ctx.shared.get", ["k"]) == "v"
    assert pdk.call("kong.request.get_header", ["h"]) == "v"
    assert pdk.call("kong.response.get_status", []) == 403


def test_extra_args_are_ignored_and_logs_concatenate() -> None:
    pdk = _pdk()
    assert pdk.call("kong.client.get_ip", ["ignored"]) == "10.0.1.200"
    pdk.call("kong.log.err", ["a", 1, None, True])
    pdk.call("kong.log.set_serialize_value", ["x.y", 1])
    assert pdk.state.plugin_log == [("err", "a1niltrue")]
    assert pdk.state.serialize_values == {"x.y": 1}

"""Request headers as nginx keeps them: lines in arrival order, windows, joins, refusals."""

from __future__ import annotations

from pathlib import Path

from tests.harness.fake_server import FakePluginServer
from tests.harness.test_wire import _harness
from tests.kit.kong import KongHarness
from tests.kit.nginx_headers import HeaderList, receive
from tests.kit.pdk import KongRequest, Pdk, RequestState

FILLERS = [(f"X-Filler-{i}", "f") for i in range(100)]


def _pdk(headers: object) -> Pdk:
    state = RequestState.start(KongRequest(headers=headers))  # type: ignore[arg-type]
    return Pdk(state, plugin_id="p", route=None, service=None, node_id="n")


def test_get_headers_counts_lines_in_arrival_order() -> None:
    # Host arrives first (as clients send it), then 99 fillers fill the 100-line window.
    pdk = _pdk([*FILLERS[:99], ("X-Cilium-Pod-Uid", "forged"), ("X-Late", "x")])
    window = pdk.call("kong.request.get_headers", [])
    assert len(window) == 100 and "x-cilium-pod-uid" not in window
    assert "x-cilium-pod-uid" in pdk.call("kong.request.get_headers", [101])
    # get_header reads ngx.var, which looks at every line wherever it is
    assert pdk.call("kong.request.get_header", ["X-Cilium-Pod-Uid"]) == "forged"


def test_a_repeated_header_uses_one_slot_per_line() -> None:
    lines = [("X-Rep", str(i)) for i in range(60)] + [("X-Rep", "60"), ("Authorization", "t")]
    lines = [*lines[:50], ("X-Mid", "m"), *lines[50:]]
    window = _pdk(lines).call("kong.request.get_headers", [52])
    assert window["x-rep"] == [str(i) for i in range(50)]  # host + 50 lines of X-Rep + X-Mid
    assert window["x-mid"] == "m" and "authorization" not in window


def test_get_header_joins_every_line_of_the_name() -> None:
    pdk = _pdk([("X-A", "1"), *FILLERS, ("x-a", "2"), ("Cookie", "a=1"), ("Cookie", "b=2")])
    assert pdk.call("kong.request.get_header", ["x_a"]) == "1, 2"
    assert pdk.call("kong.request.get_header", ["cookie"]) == "a=1; b=2"
    assert pdk.call("kong.request.get_header", ["x-none"]) is None


def test_set_header_overwrites_the_first_line_in_place_and_appends_the_rest() -> None:
    headers = HeaderList([("A", "1"), ("B", "x"), ("a", "2"), ("C", "y")])
    headers.set("a", ["n1", "n2"])
    assert headers.lines == [("A", "n1"), ("B", "x"), ("C", "y"), ("a", "n2")]
    headers.set("B", [])
    assert headers.lines == [("A", "n1"), ("C", "y"), ("a", "n2")]


def test_add_header_loses_lines_past_the_default_window() -> None:
    pdk = _pdk([*FILLERS, ("X-Add", "old")])
    pdk.call("kong.service.request.add_header", ["X-Add", "new"])
    # Kong reads get_headers()[name] (100 lines), so "old" was not seen and is replaced
    assert pdk.state.headers.values("x-add") == ["new"]


def test_invalid_header_names_are_dropped_at_arrival() -> None:
    state = RequestState.start(KongRequest(headers={"X_Cilium_Pod": "u", "X.Dot": "d", "Ok": "1"}))
    assert state.headers.grouped() == {"host": ["kong.local"], "ok": ["1"]}
    assert ("info", 'client sent invalid header line: "x_cilium_pod"') in state.kong_log


def test_buffer_limits_follow_nginx_defaults() -> None:
    line = "GET / HTTP/1.1"
    assert receive({"X": "v" * 8000}, host="h", request_line=line).refusal is None
    too_long = receive({"X": "v" * 8200}, host="h", request_line=line)
    assert too_long.refusal == "client sent too long header line"
    # 5,000 short lines are about 100 KB: more than 1k + 4 x 8k of header buffers
    flood = {f"X-F{i}": "v" * 10 for i in range(5000)}
    assert receive(flood, host="h", request_line=line).refusal == (
        "client sent too large request header"
    )
    fits = {f"X-F{i}": "v" * 10 for i in range(1000)}  # about 20 KB
    assert receive(fits, host="h", request_line=line).refusal is None


def _no_server_harness(tmp_path: Path) -> KongHarness:
    return _harness(tmp_path, tmp_path / "absent.socket")


def test_nginx_refusals_answer_400_before_any_plugin(tmp_path: Path) -> None:
    harness = _no_server_harness(tmp_path)  # no server at all: nothing may be called
    plugin = harness.add_plugin({})
    duplicate = harness.request(
        plugin, KongRequest(headers=[("Authorization", "a"), ("Authorization", "b")])
    )
    assert duplicate.status == 400 and not duplicate.proxied and duplicate.rpc_calls == []
    assert duplicate.upstream_headers == {}
    flood = harness.request(plugin, KongRequest(headers={f"X-F{i}": "v" for i in range(5000)}))
    assert flood.status == 400 and flood.rpc_calls == []
    assert isinstance(flood.body, dict)
    assert flood.body["message"] == "Request header or cookie too large"


def test_plugin_sees_the_window_over_the_wire(tmp_path: Path) -> None:
    sock = tmp_path / "fake.socket"
    server = FakePluginServer(sock, [{"Method": "kong.request.get_headers", "Args": []}])
    harness = _harness(tmp_path, sock)
    out = harness.request(
        harness.add_plugin({}), KongRequest(headers=[*FILLERS, ("X-Cilium-Pod", "forged")])
    )
    step = next(r for r in server.requests if r[2] == "plugin.StepMultiMap")
    data = step[3][0]["Data"]
    assert len(data) == 100 and "x-cilium-pod" not in data  # and no "truncated" anywhere
    assert set(step[3][0]) == {"EventId", "Data"}
    assert out.upstream_headers["x-cilium-pod"] == ["forged"]  # nobody cleared it
    server.close()

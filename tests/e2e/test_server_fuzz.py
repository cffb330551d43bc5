"""Hostile input on the plugin server's socket (hypothesis), against the real server process.

Whatever arrives (random msgpack values, requests with wrong types, arity, methods or ids,
text that is not UTF-8, frames cut short by a dying nginx worker, Steps for events that do
not exist or already ended), the server answers every request it can read with a
well-formed ``[1, msgid, error, result]`` for that very request, or drops a connection it
cannot read. After every example it is still alive: an allowed request is still proxied
with its identity headers and a denied one is still refused, through the Kong harness.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import running_server
from tests.e2e.wire_fuzz import (
    RawClient,
    RawMap,
    call,
    decode_all,
    is_request,
    pack,
    same,
)
from tests.kit.kong import ConfiguredPlugin, KongHarness, KongRequest
from tests.scenario import (
    CHECKOUT,
    CHECKOUT_APP_ENTRY,
    CHECKOUT_BINDING,
    CHECKOUT_IP,
    PAYMENTS_ENTRY,
    PAYMENTS_IP,
)

CONFIG: dict[str, Any] = {
    "sources": ["static"],
    "static": {
        "entries": [CHECKOUT_APP_ENTRY, PAYMENTS_ENTRY],
    },
    "bindings": [CHECKOUT_BINDING],
}
CREDENTIAL = {"id": "7a0e1e4c-5d3b-4b1d-8f6e-000000000001"}
FAIL_CLOSED = {"Method": "kong.response.error", "Args": [500]}
TERMINAL = ("kong.response.error", "kong.response.exit")

STEPS = [
    "plugin.Step",
    "plugin.StepError",
    "plugin.StepConsumer",
    "plugin.StepCredential",
    "plugin.StepRoute",
    "plugin.StepService",
    "plugin.StepPlugin",
    "plugin.StepMemoryStats",
    "plugin.StepMultiMap",
]
METHODS = [
    *STEPS,
    "plugin.HandleEvent",
    "plugin.StartInstance",
    "plugin.CloseInstance",
    "plugin.InstanceStatus",
    "plugin.GetStatus",
    "plugin.GetPluginInfo",
]

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[KongHarness, ConfiguredPlugin, int]]:
    """The server, a plugin entity for harness requests, and an instance id of our own for
    raw events."""
    with running_server() as kong:
        plugin = kong.add_plugin(CONFIG)
        error, status = call(
            kong.socket_path,
            "plugin.StartInstance",
            {"Name": "cilium-identity", "Config": json.dumps(plugin.conf)},
        )
        assert error is None, error
        yield kong, plugin, status["Id"]


def assert_still_serving(kong: KongHarness, plugin: ConfiguredPlugin) -> None:
    allowed = kong.request(
        plugin, KongRequest(client_ip=CHECKOUT_IP, consumer=CHECKOUT, credential=CREDENTIAL)
    )
    assert allowed.proxied and not allowed.failed_open, allowed.kong_log
    assert allowed.upstream_headers["x-cilium-identity"] == ["48861"]
    denied = kong.request(
        plugin, KongRequest(client_ip=PAYMENTS_IP, consumer=CHECKOUT, credential=CREDENTIAL)
    )
    assert not denied.proxied and not denied.failed_open, denied.kong_log
    assert denied.status == 403


def assert_answers(reply: Any, request: list[Any]) -> None:
    """A well-formed reply to ``request``."""
    assert type(reply) is list and len(reply) == 4, reply
    assert type(reply[0]) is int and reply[0] == 1, reply
    assert same(reply[1], request[1]), (reply, request)
    error, result = reply[2], reply[3]
    assert error is None or (isinstance(error, str) and error and result is None), reply


# --------------------------------------------------------------------------- strategies

not_utf8 = st.binary(min_size=1, max_size=8).map(
    lambda b: (b"\xff" + b).decode("utf-8", "surrogateescape")
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=12),
    not_utf8,
    st.binary(max_size=12),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=6)),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=6), not_utf8, st.integers(-(2**63), 2**63)),
            inner,
            max_size=4,
        ),
        st.lists(st.tuples(inner, inner), max_size=3).map(lambda p: RawMap(tuple(p))),
    ),
    max_leaves=10,
)
msgids = st.one_of(
    st.integers(0, 2**31),
    st.sampled_from([0, -1, 2**32, 2**63 - 1, 2**64 - 1, -(2**63)]),
    scalars,
)
methods = st.one_of(
    st.sampled_from(METHODS), st.text(max_size=20), not_utf8.map(lambda s: "plugin." + s), scalars
)
event_names = st.one_of(st.sampled_from(["access", "log", "rewrite", "header_filter"]), scalars)
request_maps = st.one_of(
    st.fixed_dictionaries({"InstanceId": values, "EventName": event_names}),
    st.fixed_dictionaries({"EventId": values}, optional={"Data": values}),
    st.fixed_dictionaries(
        {"Name": st.one_of(st.just("cilium-identity"), values)},
        optional={"Config": st.one_of(st.just("{}"), st.text(max_size=20), not_utf8, values)},
    ),
)
params = st.one_of(st.lists(st.one_of(request_maps, values), max_size=3), values)


# --------------------------------------------------------------------------- properties


@settings(FUZZ, max_examples=200)
@given(frames=st.lists(values, min_size=1, max_size=3))
def test_random_msgpack_values(
    served: tuple[KongHarness, ConfiguredPlugin, int], frames: list[Any]
) -> None:
    kong, plugin, _ = served
    data = b"".join(pack(frame) for frame in frames)
    decoded, complete = decode_all(data)
    requests: list[list[Any]] = []
    for value in decoded:
        if not is_request(value):
            break
        requests.append(value)
    must_close = len(requests) < len(decoded) or not complete
    client = RawClient(kong.socket_path)
    try:
        client.send(data)
        replies, closed = client.replies(len(requests))
        # Bytes it cannot decode end the connection; requests read with them in the same
        # chunk may go unanswered (Kong never pipelines, so it never sends such a chunk).
        assert len(replies) == len(requests) or (not complete and closed), (replies, requests)
        for reply, request in zip(replies, requests, strict=True):
            assert_answers(reply, request)
        if must_close:
            assert closed or client.closed_by_server()
    finally:
        client.close()
    assert_still_serving(kong, plugin)


@settings(FUZZ, max_examples=250)
@given(msgid=msgids, method=methods, params=params)
def test_well_formed_requests_with_wrong_contents(
    served: tuple[KongHarness, ConfiguredPlugin, int], msgid: Any, method: Any, params: Any
) -> None:
    kong, plugin, _ = served
    data = pack([0, msgid, method, params])
    decoded, complete = decode_all(data)
    client = RawClient(kong.socket_path)
    try:
        client.send(data)
        if complete:
            assert_answers_request(client, decoded[0])
        else:  # e.g. a map key that is an array: the connection is dropped
            assert client.closed_by_server()
    finally:
        client.close()
    assert_still_serving(kong, plugin)


def assert_answers_request(client: RawClient, request: list[Any]) -> None:
    replies, _ = client.replies(1)
    assert len(replies) == 1
    assert_answers(replies[0], request)
    if request[2] in STEPS:  # an event that does not exist: refused, not an error
        params = request[3]
        first = params[0] if type(params) is list and params else params
        event_id = first.get("EventId") if type(first) is dict else None
        assert replies[0][2] is None
        assert same(replies[0][3], {"EventId": event_id, "Data": FAIL_CLOSED})


@settings(FUZZ, max_examples=100)
@given(request=st.builds(lambda *a: [0, *a], msgids, methods, params), cut=st.floats(0, 1))
def test_frames_cut_short_then_disconnect(
    served: tuple[KongHarness, ConfiguredPlugin, int], request: list[Any], cut: float
) -> None:
    """An nginx worker dies mid-message: the server keeps serving everyone else."""
    kong, plugin, instance = served
    data = pack(request)
    client = RawClient(kong.socket_path)
    try:
        client.send(data[: max(1, int(len(data) * cut)) - 1] if len(data) > 1 else data)
    finally:
        client.close()
    # And a worker that dies with an event parked in a PDK call.
    client = RawClient(kong.socket_path)
    try:
        client.send(
            pack([0, 1, "plugin.HandleEvent", [{"InstanceId": instance, "EventName": "access"}]])
        )
        (reply,), _ = client.replies(1)
        assert reply[3]["Data"]["Method"] == "kong.cilium_identity.facts"
    finally:
        client.close()
    assert_still_serving(kong, plugin)


step_data = st.one_of(
    values,
    st.fixed_dictionaries(
        {"id": st.one_of(st.just(CHECKOUT["id"]), values)},
        optional={"username": st.one_of(st.just("checkout"), not_utf8, values), "tags": values},
    ),
    st.sampled_from([CHECKOUT_IP, PAYMENTS_IP, "::ffff:10.0.1.200", "10.0.1.200%eth0"]),
)


@settings(FUZZ, max_examples=150)
@given(
    event_name=st.one_of(st.just("access"), event_names),
    steps=st.lists(
        st.tuples(
            st.sampled_from(STEPS),
            st.sampled_from(["live", "live", "live", "finished", "random"]),
            st.one_of(st.none(), step_data),
            st.integers(-(2**40), 2**40),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_steps_for_live_unknown_and_finished_events(
    served: tuple[KongHarness, ConfiguredPlugin, int],
    event_name: Any,
    steps: list[tuple[str, str, Any, int]],
) -> None:
    """Random answers to the plugin's PDK calls, and Steps naming the wrong event: each Step
    is answered for its own event id, and an event that ended stays ended (a 500 exit)."""
    kong, plugin, instance = served
    client = RawClient(kong.socket_path)
    try:
        client.send(
            pack([0, 0, "plugin.HandleEvent", [{"InstanceId": instance, "EventName": event_name}]])
        )
        (reply,), _ = client.replies(1)
        assert_answers(reply, [0, 0])
        assert reply[2] is None, reply
        live = reply[3]["EventId"]
        finished: set[int] = set()
        data = reply[3]["Data"]
        if data == "ret" or (type(data) is dict and data.get("Method") in TERMINAL):
            finished.add(live)
        for msgid, (method, which, answer, random_id) in enumerate(steps, start=1):
            if which == "finished" and not finished:
                which = "live"
            event_id = {"live": live, "finished": min(finished or {live}), "random": random_id}[
                which
            ]
            body: dict[str, Any] = {"EventId": event_id}
            if answer is not None:
                body["Data"] = answer
            request = [0, msgid, method, [body]]
            client.send(pack(request))
            if not decode_all(pack(request))[1]:  # undecodable: the connection is dropped
                assert client.closed_by_server()
                break
            (reply,), _ = client.replies(1)
            assert_answers(reply, request)
            assert reply[2] is None, reply
            assert same(reply[3]["EventId"], event_id), reply
            data = reply[3]["Data"]
            if event_id in finished or (which == "random" and event_id != live):
                assert same(data, FAIL_CLOSED), reply
            if data == "ret" or (type(data) is dict and data.get("Method") in TERMINAL):
                finished.add(event_id)
            assert data == "ret" or (type(data) is dict and isinstance(data.get("Method"), str))
    finally:
        client.close()
    assert_still_serving(kong, plugin)

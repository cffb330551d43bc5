"""Strict shapes: mutated real and synthetic objects fed to every parser of Cilium data
this package reads (flows in JSON form, the agent's ``IPListEntry[]`` and ``Identity``).

Property: a parser never raises anything but its own refusal, and a field it reads that
has the wrong JSON type never yields an identity. Fields it does not read may change
freely without changing the answer. The mutation sites are every field the parser
reads, found in each object; the replacement is any JSON value of another type.
"""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kong_cilium_identity.identity.model import LookupStatus, Peer
from kong_cilium_identity.identity.sources.agent import AgentSource, parse_settings
from kong_cilium_identity.identity.sources.agent_json import (
    AnswerError,
    read_identity_answer,
    read_ip_answer,
)
from kong_cilium_identity.identity.sources.hubble_flows import read_lookup_stream
from kong_cilium_identity.identity.sources.hubble_json import read_response
from kong_cilium_identity.proto.observer import observer_pb2
from tests.kit.fake_agent import FakeAgent, identity_model, ip_entry
from tests.kit.fake_relay import make_flow

from .conftest import FIXTURES, HUBBLE_FIXTURES

Path_ = tuple[str | int, ...]

# -- JSON values by kind ------------------------------------------------------------------


def kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "str", list: "list", dict: "dict"}[type(value)]


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def other_kind(accepted: frozenset[str]) -> st.SearchStrategy[Any]:
    return JSON_VALUES.filter(lambda value: kind(value) not in accepted)


def get_at(obj: Any, path: Path_) -> Any:
    for step in path:
        obj = obj[step]
    return obj


def set_at(obj: Any, path: Path_, value: Any) -> Any:
    mutated = copy.deepcopy(obj)
    parent = get_at(mutated, path[:-1])
    parent[path[-1]] = value
    return mutated


# -- flows in JSON form ---------------------------------------------------------------------

_INT_KINDS = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_SFIXED32,
}
_INT64_KINDS = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}
_WRAPPED = {
    "google.protobuf.BoolValue": frozenset({"bool"}),
    "google.protobuf.Int32Value": frozenset({"int"}),
    "google.protobuf.UInt32Value": frozenset({"int"}),
    "google.protobuf.Timestamp": frozenset({"str"}),
}


def _accepted(field: FieldDescriptor) -> frozenset[str]:
    """The JSON kinds a field may have in Hubble's output (strings for 64-bit ints)."""
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
        return _WRAPPED.get(field.message_type.full_name, frozenset({"dict"}))
    if field.type == FieldDescriptor.TYPE_BOOL:
        return frozenset({"bool"})
    if field.type in _INT_KINDS:
        return frozenset({"int"})
    if field.type in _INT64_KINDS:
        return frozenset({"int", "str"})
    return frozenset({"str"})  # strings and enum names


def flow_sites(obj: Any, descriptor: Any, prefix: Path_ = ()) -> list[tuple[Path_, frozenset[str]]]:
    """Every field of ``obj`` the flow subset defines (what the reader reads), with the
    JSON kinds it may have."""
    sites: list[tuple[Path_, frozenset[str]]] = []
    fields = {f.name: f for f in descriptor.fields} | {f.json_name: f for f in descriptor.fields}
    for key, value in obj.items():
        field = fields.get(key)
        if field is None:
            continue
        here = (*prefix, key)
        nested = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
        plain_message = nested is not None and nested.full_name not in _WRAPPED
        if field.is_repeated:
            sites.append((here, frozenset({"list"})))
            for index, element in enumerate(value):
                sites.append(((*here, index), _accepted(field)))
                if plain_message:
                    sites += flow_sites(element, nested, (*here, index))
        else:
            sites.append((here, _accepted(field)))
            if plain_message:
                sites += flow_sites(value, nested, here)
    return sites


RESPONSE: Descriptor = observer_pb2.GetFlowsResponse.DESCRIPTOR  # type: ignore[assignment]
PEERS_AT = 1_800_000_000.0


def _synthetic_flows() -> list[dict[str, Any]]:
    flows = [
        make_flow("10.0.0.5", 48861, ["k8s:app=checkout"], pod="checkout-1", namespace="shop"),
        make_flow("10.0.0.6", 1, ["reserved:host"], endpoint_id=0),
        make_flow("10.0.0.7", 52000, ["k8s:app=a"], cluster="east", is_reply=True),
    ]
    return [
        json_format.MessageToDict(
            observer_pb2.GetFlowsResponse(flow=f, node_name="n1"), preserving_proto_field_name=True
        )
        for f in flows
    ]


def _real_flows() -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in HUBBLE_FIXTURES
        for line in path.read_text().splitlines()
        if line.strip()
    ]


FLOW_OBJECTS = _synthetic_flows() + _real_flows()


def _answer(obj: Any) -> tuple[str, int | None]:
    response = read_response(obj)
    if response is None:
        return ("refused", None)
    address = response.flow.IP.source
    if not address:
        return ("no address", None)
    result = read_lookup_stream([response], Peer(address), False, 0, now=PEERS_AT)
    return (result.status.value, result.identity.id if result.identity else None)


def test_every_flow_object_reads_unmutated() -> None:
    assert len(FLOW_OBJECTS) == 3 + len(_real_flows())
    for obj in FLOW_OBJECTS:
        assert read_response(obj) is not None, obj


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_flow_with_a_wrongly_typed_field_is_refused(data: st.DataObject) -> None:
    obj = data.draw(st.sampled_from(FLOW_OBJECTS))
    sites = flow_sites(obj, RESPONSE)
    path, accepted = data.draw(st.sampled_from(sites))
    mutated = set_at(obj, path, data.draw(other_kind(accepted)))
    assert read_response(mutated) is None, path
    assert _answer(mutated) == ("refused", None)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_flow_fields_not_read_do_not_change_the_answer(data: st.DataObject) -> None:
    obj = data.draw(st.sampled_from(FLOW_OBJECTS))
    unread = [("Summary",), ("ethernet",), ("l7",), ("interface",)]
    path = data.draw(st.sampled_from(unread))
    mutated = set_at({**obj, "flow": dict(obj["flow"])}, ("flow", *path), data.draw(JSON_VALUES))
    assert _answer(mutated) == _answer(obj)


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES)
def test_any_json_value_as_a_flow_line_never_raises(value: Any) -> None:
    response = read_response(value)
    if response is not None:
        read_lookup_stream([response], Peer("10.0.0.5"), False, 0, now=PEERS_AT)


# -- the agent's answers ------------------------------------------------------------------------

IP_SITES: list[tuple[Path_, frozenset[str]]] = [
    ((0,), frozenset({"dict"})),
    ((0, "cidr"), frozenset({"str"})),
    ((0, "identity"), frozenset({"int"})),
    ((0, "metadata"), frozenset({"dict"})),
    ((0, "metadata", "namespace"), frozenset({"str"})),
    ((0, "metadata", "name"), frozenset({"str"})),
]
IDENTITY_SITES: list[tuple[Path_, frozenset[str]]] = [
    (("id",), frozenset({"int"})),
    (("labels",), frozenset({"list"})),
    (("labels", 0), frozenset({"str"})),
]
IP_ANSWERS = [
    [ip_entry("10.0.1.200/32", 48861, host_ip="172.18.0.3", namespace="shop", pod="c-1")],
    [
        ip_entry("10.0.1.200/32", 5_439_489, namespace="east-ns", pod="x", source="clustermesh"),
        ip_entry("10.0.1.0/24", 16777217),
    ],
]


def _identity_objects() -> list[dict[str, Any]]:
    objects = [
        identity_model(48861, ["k8s:app=checkout", "k8s:io.kubernetes.pod.namespace=shop"]),
        identity_model(1, ["reserved:host"]),
    ]
    reserved_host = FIXTURES / "cilium-api" / "identity-1-reserved-host-hubble-issue191.json"
    if reserved_host.exists():
        objects.append(json.loads(reserved_host.read_text()))
    endpoint = FIXTURES / "cilium-api" / "endpoint-get-33-coredns-2025.json"
    if endpoint.exists():
        loaded = json.loads(endpoint.read_text())
        for item in loaded if isinstance(loaded, list) else [loaded]:
            objects.append(item["status"]["identity"])
    return objects


IDENTITY_OBJECTS = _identity_objects()


def test_agent_objects_read_unmutated() -> None:
    for answer in IP_ANSWERS:
        assert read_ip_answer(answer, "10.0.1.200/32").identity == answer[0]["identity"]
    for obj in IDENTITY_OBJECTS:
        assert read_identity_answer(obj, obj["id"]) == tuple(obj["labels"])


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_ip_answer_with_a_wrongly_typed_field_is_refused(data: st.DataObject) -> None:
    answer = data.draw(st.sampled_from(IP_ANSWERS))
    sites = [(path, ok) for path, ok in IP_SITES if _has(answer, path)]
    path, accepted = data.draw(st.sampled_from(sites))
    mutated = set_at(answer, path, data.draw(other_kind(accepted)))
    with pytest.raises(AnswerError):
        read_ip_answer(mutated, "10.0.1.200/32")


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_identity_with_a_wrongly_typed_field_is_refused(data: st.DataObject) -> None:
    obj = data.draw(st.sampled_from(IDENTITY_OBJECTS))
    path, accepted = data.draw(st.sampled_from(IDENTITY_SITES))
    mutated = set_at(obj, path, data.draw(other_kind(accepted)))
    with pytest.raises(AnswerError):
        read_identity_answer(mutated, obj["id"])


@settings(max_examples=200, deadline=None)
@given(answer=JSON_VALUES, identity=JSON_VALUES)
def test_any_agent_answer_is_read_or_refused(answer: Any, identity: Any) -> None:
    """Only the readers' own outcomes: an entry, NoEntry (a LookupError), ambiguity (a
    ValueError) or AnswerError (a ValueError); never anything else."""
    with contextlib.suppress(LookupError, ValueError):
        read_ip_answer(answer, "10.0.1.200/32")
    with contextlib.suppress(AnswerError):
        read_identity_answer(identity, 48861)


def _has(obj: Any, path: Path_) -> bool:
    try:
        get_at(obj, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


# -- through the socket: the named shapes of the issue ----------------------------------------


@pytest.fixture
def agent_source() -> Iterator[tuple[FakeAgent, AgentSource]]:
    with tempfile.TemporaryDirectory(prefix="kci-") as scratch:
        fake = FakeAgent(Path(scratch) / "cilium.sock").start()
        source = AgentSource(parse_settings({"socket_path": str(fake.socket_path)}))
        try:
            yield fake, source
        finally:
            source.close()
            fake.stop()


LABELS = ["k8s:app=checkout", "k8s:io.kubernetes.pod.namespace=shop"]
GOOD_ENTRY = ip_entry("10.0.1.200/32", 48861, namespace="shop", pod="checkout-1")


@pytest.mark.parametrize(
    ("ip_answer", "identity_answer"),
    [
        ([GOOD_ENTRY], {"id": 48861, "labels": "app"}),  # labels as a string
        ([GOOD_ENTRY], {"id": "48861", "labels": LABELS}),  # id as a string
        ([GOOD_ENTRY], {"id": True, "labels": LABELS}),  # id as a bool
        ([GOOD_ENTRY], [{"id": 48861, "labels": LABELS}]),  # object as a list
        ([GOOD_ENTRY], {"id": 48861, "labels": [["k8s:app=checkout"]]}),
        ([{**GOOD_ENTRY, "identity": "48861"}], None),
        ([{**GOOD_ENTRY, "identity": True}], None),
        ([{**GOOD_ENTRY, "identity": 48861.0}], None),
        ([{**GOOD_ENTRY, "metadata": [["namespace", "shop"]]}], None),
        ([{**GOOD_ENTRY, "metadata": {"namespace": 7, "name": "checkout-1"}}], None),
        ([{**GOOD_ENTRY, "cidr": ["10.0.1.200/32"]}], None),
        ([GOOD_ENTRY, {"cidr": 1, "identity": 50000}], None),  # a second, broken entry
        ({"cidr": "10.0.1.200/32", "identity": 48861}, None),  # list as an object
    ],
)
def test_agent_source_never_matches_a_wrong_shape(
    agent_source: tuple[FakeAgent, AgentSource], ip_answer: Any, identity_answer: Any
) -> None:
    fake, source = agent_source
    fake.state.raw_ip_answers["10.0.1.200/32"] = ip_answer
    fake.state.identities[48861] = LABELS
    if identity_answer is not None:
        fake.state.raw_identities[48861] = identity_answer
    result = source.lookup(Peer("10.0.1.200"), 2.0)
    assert result.status is LookupStatus.UNAVAILABLE, result
    assert "unreadable" in result.detail

"""Strict shapes: a Cilium object with a wrong-typed field never yields a match.

The property tests take real and synthetic CiliumEndpoint, CiliumEndpointSlice and
CiliumIdentity objects, replace one node anywhere in them by a value of another JSON type,
and check the parser against an expectation written here: a field the parser reads
rejects the object (a slice member: drops that member), any other field changes nothing.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kong_cilium_identity.identity.cep_index import EndpointIndex
from kong_cilium_identity.identity.ces_decode import SLICE_CODEC
from kong_cilium_identity.identity.ces_parse import slice_entries
from kong_cilium_identity.identity.crd_parse import (
    EndpointEntry,
    LabelInterner,
    identity_labels,
    identity_number,
    parse_endpoint,
)
from kong_cilium_identity.identity.crd_shapes import MalformedObject
from kong_cilium_identity.identity.model import Identity, LookupStatus
from tests.kit.fake_kube import (
    FakeKubeApi,
    cilium_endpoint,
    cilium_endpoint_slice,
    cilium_identity,
    core_endpoint,
)
from tests.kubernetes.conftest import SourceFactory
from tests.kubernetes.helpers import ask, found_id, load_real_cep, load_real_ces, wait_until

Path = tuple[str | int, ...]

# -- the expectation: which fields each parser reads ---------------------------------------

METADATA = {"metadata", "metadata.name", "metadata.namespace", "metadata.uid"}
METADATA |= {"metadata.resourceVersion"}
NETWORKING = {
    "networking",
    "networking.addressing",
    "networking.addressing[]",
    "networking.addressing[].ipv4",
    "networking.addressing[].ipv6",
    "networking.node",
}
EXTRAS = {
    "id",
    "encryption",
    "encryption.key",
    "named-ports",
    "named-ports[]",
    "named-ports[].name",
    "named-ports[].port",
    "named-ports[].protocol",
    "external-identifiers",
}
CEP_READ = (
    {"", "status", "status.state", "status.service-account", "status.identity"}
    | {"status.identity.id", "status.identity.labels", "status.identity.labels[]"}
    | {"metadata.ownerReferences", "metadata.ownerReferences[]"}
    | {"metadata.ownerReferences[].kind", "metadata.ownerReferences[].uid"}
    | METADATA
    | {f"status.{field}" for field in NETWORKING | EXTRAS}
)
SLICE_READ = {"", "namespace", "endpoints"} | METADATA
MEMBER_READ = {"", "name", "pod-uid", "service-account"} | NETWORKING | EXTRAS
IDENTITY_READ = {"", "security-labels"} | METADATA


def pattern(path: Path) -> str:
    """``status.networking.addressing[].ipv4`` for ``("status", "networking", ...)``."""
    text = ""
    for step in path:
        text += "[]" if isinstance(step, int) else (f".{step}" if text else step)
    return text


STRING_MAPS = ("external-identifiers", "security-labels")  # every value is read


def reads(read: set[str], path: Path) -> bool:
    text = pattern(path)
    return text in read or any(
        text.startswith(f"{field}.") for field in read if field.endswith(STRING_MAPS)
    )


def nodes(value: Any, path: Path = ()) -> Iterator[Path]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from nodes(item, (*path, key))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from nodes(item, (*path, position))


def replaced(obj: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    copied = copy.deepcopy(obj)
    holder = copied
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = value
    return copied


def json_type(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string")):
        if isinstance(value, kind):
            return name
    return "array" if isinstance(value, list) else "object"


OTHER_VALUES = st.one_of(
    st.text(max_size=4),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
)


def mutation(seed: Any) -> st.SearchStrategy[tuple[Path, Any]]:
    """One node of ``seed`` and a non-null value of another JSON type for it."""

    def pick(path: Path) -> st.SearchStrategy[tuple[Path, Any]]:
        original = seed
        for step in path:
            original = original[step]
        return OTHER_VALUES.filter(lambda v: json_type(v) != json_type(original)).map(
            lambda v: (path, v)
        )

    return st.sampled_from(list(nodes(seed))).flatmap(pick)


# -- seeds ---------------------------------------------------------------------------------


def synthetic_ceps() -> list[dict[str, Any]]:
    dual = cilium_endpoint(
        "dual", "shop", ipv4="10.3.0.1", ipv6="fd00::3:1", identity_id=7001, service_account="sa"
    )
    dual["status"]["named-ports"] = [{"name": "http", "port": 8080, "protocol": "TCP"}]
    dual["status"]["encryption"] = {"key": 3}
    dual["metadata"]["uid"] = "uid-dual"
    dual["metadata"]["resourceVersion"] = "77"
    dual["metadata"]["labels"] = {"app": "dual"}
    return [dual, cilium_endpoint("v6", "shop", ipv6="fd00::3:2", identity_id=7002)]


def synthetic_slices() -> list[dict[str, Any]]:
    members = [
        core_endpoint("a", 7001, ipv4="10.3.1.1", ipv6="fd00::3:11", pod_uid="u-a"),
        core_endpoint("b", 7002, ipv4="10.3.1.2", service_account="sa-b"),
    ]
    members[1]["named-ports"] = [{"name": "grpc", "port": 9090, "protocol": "TCP"}]
    members[0]["encryption"] = {"key": 1}
    found = cilium_endpoint_slice("ces-shop", "shop", members)
    found["metadata"].update({"uid": "uid-ces", "resourceVersion": "88", "generation": 1})
    return [found]


def synthetic_identities() -> list[dict[str, Any]]:
    found = cilium_identity(7001, {"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "shop"})
    found["metadata"]["labels"] = {"app": "web"}
    return [found, cilium_identity(1, {"reserved:host": ""})]


SEEDS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "synthetic CiliumEndpoints": synthetic_ceps,
    "the real CiliumEndpoint": lambda: [load_real_cep()],
    "synthetic CiliumEndpointSlice": synthetic_slices,
    "the real CiliumEndpointSlice": lambda: [load_real_ces()],
    "synthetic CiliumIdentities": synthetic_identities,
}

# -- the parsers, summarised ---------------------------------------------------------------


def summary(entry: EndpointEntry) -> tuple[Any, ...]:
    identity = entry.identity
    return (
        entry.key,
        entry.claim,
        entry.uid,
        entry.state,
        entry.addresses,
        entry.node_ip,
        None if identity is None else identity.id,
        None if identity is None else identity.label_strings(),
        None if identity is None else (identity.namespace, identity.pod, identity.pod_uid),
        None if identity is None else (identity.service_account, identity.cluster),
    )


def read_endpoint(obj: Any) -> tuple[Any, ...]:
    return summary(parse_endpoint(obj, LabelInterner(), "kubernetes", 0.0))


def read_slice(obj: Any) -> list[tuple[Any, ...]]:
    _, entries = slice_entries(obj, "kubernetes", 0.0)
    return [summary(entry) for entry in entries]


def read_watched_slice(obj: Any) -> list[tuple[Any, ...]]:
    """The same, from the JSON line as the watch decodes it (members kept as text)."""
    line = json.dumps({"type": "MODIFIED", "object": obj}).encode()
    return read_slice(SLICE_CODEC.event(line)["object"])


def read_identity(obj: Any) -> tuple[int, list[str]]:
    number = identity_number(obj)
    return number, sorted(str(label) for label in identity_labels(obj, LabelInterner()).labels)


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("seeds", ["synthetic CiliumEndpoints", "the real CiliumEndpoint"])
@PROPERTY
@given(data=st.data())
def test_ciliumendpoint_with_a_wrong_typed_field_is_rejected(
    seeds: str, data: st.DataObject
) -> None:
    seed = data.draw(st.sampled_from(SEEDS[seeds]()))
    path, value = data.draw(mutation(seed))
    mutated = replaced(seed, path, value)
    if reads(CEP_READ, path):
        with pytest.raises(MalformedObject):
            read_endpoint(mutated)
    else:
        assert read_endpoint(mutated) == read_endpoint(seed)


@pytest.mark.parametrize("seeds", ["synthetic CiliumEndpointSlice", "the real CiliumEndpointSlice"])
@pytest.mark.parametrize("reader", [read_slice, read_watched_slice], ids=["decoded", "as watched"])
@PROPERTY
@given(data=st.data())
def test_ciliumendpointslice_with_a_wrong_typed_field_loses_what_it_touched(
    seeds: str, reader: Callable[[Any], list[tuple[Any, ...]]], data: st.DataObject
) -> None:
    seed = data.draw(st.sampled_from(SEEDS[seeds]()))
    path, value = data.draw(mutation(seed))
    mutated = replaced(seed, path, value)
    expected = reader(seed)
    if reads(SLICE_READ, path):
        with pytest.raises(MalformedObject):
            reader(mutated)
    elif path[0] == "endpoints" and reads(MEMBER_READ, path[2:]):
        dropped = path[1]
        assert reader(mutated) == [e for i, e in enumerate(expected) if i != dropped]
    else:
        assert reader(mutated) == expected


@PROPERTY
@given(data=st.data())
def test_ciliumidentity_with_a_wrong_typed_field_is_rejected(data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(synthetic_identities()))
    path, value = data.draw(mutation(seed))
    mutated = replaced(seed, path, value)
    if reads(IDENTITY_READ, path):
        with pytest.raises(MalformedObject):
            read_identity(mutated)
    else:
        assert read_identity(mutated) == read_identity(seed)


@PROPERTY
@given(data=st.data())
def test_a_mangled_update_never_answers_with_anything_but_the_old_identity(
    data: st.DataObject,
) -> None:
    """Through the index: after a good object, a mangled update of it either changes
    nothing (a field not read) or takes the address out (never another match)."""
    seed = data.draw(st.sampled_from(synthetic_ceps()))
    address = seed["status"]["networking"]["addressing"][0].get("ipv4") or "fd00::3:2"
    index = EndpointIndex("kubernetes")
    index.apply("ADDED", seed)
    before = index.lookup(address)
    assert before is not None and before.status is LookupStatus.FOUND
    path, value = data.draw(mutation(seed))
    index.apply("MODIFIED", replaced(seed, path, value))
    after = index.lookup(address)
    if after is not None and after.status is LookupStatus.FOUND:
        assert who(after.identity) == who(before.identity)
        # a read field rejects the update; only an unreadable key leaves the old answer
        assert not reads(CEP_READ, path) or pattern(path) in METADATA | {""}


def who(identity: Identity | None) -> tuple[Any, ...]:
    assert identity is not None
    return (
        identity.id,
        identity.labels,
        identity.namespace,
        identity.pod,
        identity.pod_uid,
        identity.service_account,
        identity.cluster,
    )


# -- the reported case ---------------------------------------------------------------------


def string_labels() -> dict[str, Any]:
    obj = cilium_endpoint("web", "shop", ipv4="10.3.2.1", identity_id=7001)
    obj["status"]["identity"]["labels"] = "app"
    return obj


def test_string_labels_are_not_read_character_by_character() -> None:
    with pytest.raises(MalformedObject, match=r"identity.labels is a str, not an array"):
        parse_endpoint(string_labels(), LabelInterner(), "kubernetes", 0.0)
    index = EndpointIndex("kubernetes")
    relist = index.begin_relist()
    relist.add([string_labels()])
    relist.commit("1")
    assert index.lookup("10.3.2.1") is None


def test_string_labels_through_the_source_are_not_found(
    fake: FakeKubeApi, make_source: SourceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    good = cilium_endpoint("web", "shop", ipv4="10.3.2.1", identity_id=7001)
    fake.put(good)
    source = make_source()
    assert source.wait_ready(10) and found_id(source, "10.3.2.1") == 7001
    assert fake.wait_for_watchers("CiliumEndpoint")
    fake.put(string_labels())  # MODIFIED: the old answer is evicted, not kept
    wait_until(lambda: ask(source, "10.3.2.1").status is LookupStatus.UNKNOWN)
    assert "evicting shop/web" in caplog.text and "not an array" in caplog.text
    fake.put(good)
    wait_until(lambda: found_id(source, "10.3.2.1") == 7001)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (("status", "identity", "id"), "7001"),
        (("status", "identity", "id"), True),
        (("status", "identity", "id"), 7001.0),
        (("status", "identity", "id"), -1),
        (("status", "identity", "id"), 2**32),
        (("status", "identity", "labels"), {"k8s:app": "web"}),
        (("status", "identity", "labels"), ["k8s:app=web", 7]),
        (("status", "networking", "addressing"), {"ipv4": "10.3.2.1"}),
        (("status", "networking", "addressing"), [["10.3.2.1"]]),
        (("status", "state"), ["ready"]),
        (("status",), "ready"),
        (("status", "service-account"), ["sa"]),
    ],
)
def test_each_wrong_type_is_named(field: Path, value: Any) -> None:
    obj = replaced(cilium_endpoint("web", "shop", ipv4="10.3.2.1"), field, value)
    with pytest.raises(MalformedObject, match="shop/web"):
        parse_endpoint(obj, LabelInterner(), "kubernetes", 0.0)

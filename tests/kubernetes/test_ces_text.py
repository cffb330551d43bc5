"""CiliumEndpointSlice members kept by their JSON text: the codec the watch decodes slice
lines and list pages with, and the reader matching members wherever they are listed.

The Cilium operator builds a slice's ``endpoints`` from a Go set, so every write may list
the members in another order; a member is known by its text, never by its position.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
from typing import Any

import msgspec
import pytest

from kong_cilium_identity.identity import ces_parse
from kong_cilium_identity.identity.cep_index import EndpointIndex
from kong_cilium_identity.identity.cep_watch import gc_paused
from kong_cilium_identity.identity.ces_decode import (
    SLICE_CODEC,
    decode_slice_event,
    decode_slice_page,
)
from kong_cilium_identity.identity.crd_shapes import MalformedObject
from kong_cilium_identity.identity.model import Lookup, LookupStatus
from tests.kit.fake_kube import cilium_endpoint_slice, core_endpoint
from tests.kubernetes.test_ces import found, indexed, shop_slice


def line(kind: str, obj: Any) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode()


def as_watched(kind: str, obj: Any) -> dict[str, Any]:
    """The event as the watch hands it to the index."""
    event = SLICE_CODEC.event(line(kind, obj))
    assert isinstance(event, dict)
    return event


def apply(index: EndpointIndex, kind: str, obj: Any) -> None:
    event = as_watched(kind, obj)
    index.apply_slice(event["type"], event["object"])


def text_of(member: Any) -> bytes:
    return json.dumps(member, separators=(",", ":")).encode()


# -- the codec -----------------------------------------------------------------------------


def test_slice_event_members_are_their_own_json_texts() -> None:
    found_slice = shop_slice()
    event = decode_slice_event(line("MODIFIED", found_slice))
    assert event["type"] == "MODIFIED"
    obj = event["object"]
    assert obj["namespace"] == "shop" and obj["metadata"] == found_slice["metadata"]
    members = obj["endpoints"]
    assert [type(member) for member in members] == [bytes, bytes, bytes]
    assert members == [text_of(member) for member in found_slice["endpoints"]]
    assert [json.loads(member) for member in members] == found_slice["endpoints"]


def test_slice_page_members_are_their_own_json_texts() -> None:
    slices = [shop_slice("ces-a"), shop_slice("ces-b")]
    body = {"metadata": {"resourceVersion": "9", "continue": "x"}, "items": slices}
    page = decode_slice_page(json.dumps(body).encode())
    assert page["metadata"] == {"resourceVersion": "9", "continue": "x"}
    assert [item["metadata"]["name"] for item in page["items"]] == ["ces-a", "ces-b"]
    first = page["items"][0]["endpoints"]
    assert [json.loads(member) for member in first] == slices[0]["endpoints"]
    assert decode_slice_page(b'{"metadata":{"resourceVersion":"1"},"items":null}') == {
        "metadata": {"resourceVersion": "1"},
        "items": None,
    }


def test_error_and_bookmark_events_keep_their_whole_object() -> None:
    gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
    assert decode_slice_event(line("ERROR", gone)) == {"type": "ERROR", "object": gone}
    bookmark = {"kind": "CiliumEndpointSlice", "metadata": {"resourceVersion": "12"}}
    assert decode_slice_event(line("BOOKMARK", bookmark))["object"] == bookmark


@pytest.mark.parametrize(
    "endpoints", ["web-1", 7, {"name": "web-1"}, True], ids=["string", "number", "object", "bool"]
)
def test_slice_whose_endpoints_are_not_an_array_is_rejected(endpoints: Any) -> None:
    broken = shop_slice()
    broken["endpoints"] = endpoints
    event = decode_slice_event(line("MODIFIED", broken))
    assert event["object"]["endpoints"] == endpoints  # decoded whole, as it came
    with pytest.raises(MalformedObject, match=r"CiliumEndpointSlice ces-shop-1\.endpoints is a"):
        ces_parse.read_slice(event["object"], "kubernetes", 0.0)


def test_line_that_is_not_json_raises_as_the_generic_decoding_does() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_slice_event(b'{"type":"MODIFIED","object":{"endpoints":[{')


def test_an_index_fed_by_the_codec_answers_like_one_fed_decoded_slices() -> None:
    by_text = indexed()
    apply(by_text, "ADDED", shop_slice())
    by_object = indexed(shop_slice())
    for address in ("10.2.0.1", "fd00::2:1", "10.2.0.2", "fd00::2:3", "10.2.0.9"):
        assert untimed(by_text.lookup(address)) == untimed(by_object.lookup(address))


def untimed(answer: Lookup | None) -> Lookup | None:
    """The answer without the time it was read at."""
    if answer is None or answer.identity is None:
        return answer
    return dataclasses.replace(answer, identity=dataclasses.replace(answer.identity, observed_at=0))


# -- members matched by text ---------------------------------------------------------------


def test_members_listed_in_another_order_keep_their_entries() -> None:
    index = indexed(shop_slice())
    before = {address: index.slice_entries(address)[0] for address in ("10.2.0.1", "10.2.0.2")}
    shuffled = shop_slice()
    shuffled["endpoints"].reverse()
    apply(index, "MODIFIED", shuffled)
    for address, entry in before.items():
        assert index.slice_entries(address)[0] is entry
    assert found(index, "fd00::2:3") == 7002


def test_only_the_new_members_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    index = indexed()
    apply(index, "ADDED", shop_slice())
    read: list[bytes] = []
    real = ces_parse.member_fields

    def counted(text: bytes) -> ces_parse.Fields:
        read.append(text)
        return real(text)

    monkeypatch.setattr(ces_parse, "member_fields", counted)
    changed = shop_slice()
    changed["endpoints"][1] = core_endpoint("web-3", 7001, ipv4="10.2.0.3")
    changed["endpoints"].reverse()
    apply(index, "MODIFIED", changed)
    assert [json.loads(text)["name"] for text in read] == ["web-3"]
    assert index.lookup("10.2.0.2") is None  # web-2 left
    assert found(index, "10.2.0.3") == 7001 and found(index, "10.2.0.1") == 7001


def test_member_changed_in_any_position_replaces_its_pod() -> None:
    index = indexed()
    apply(index, "ADDED", shop_slice())
    changed = shop_slice()
    changed["endpoints"][0]["id"] = 7002  # web-1 relabelled
    changed["endpoints"] = changed["endpoints"][1:] + changed["endpoints"][:1]
    apply(index, "MODIFIED", changed)
    assert found(index, "10.2.0.1") == 7002 and found(index, "fd00::2:1") == 7002
    assert len(index.slice_entries("10.2.0.1")) == 1  # replaced, not doubled


def test_pods_added_and_removed_in_a_reshuffled_slice() -> None:
    index = indexed()
    apply(index, "ADDED", shop_slice())
    grown = shop_slice()
    grown["endpoints"].insert(1, core_endpoint("web-4", 7001, ipv4="10.2.0.4"))
    grown["endpoints"].reverse()
    apply(index, "MODIFIED", grown)
    assert found(index, "10.2.0.4") == 7001 and len(index) == 4
    shrunk = shop_slice()
    del shrunk["endpoints"][0]  # web-1 gone
    apply(index, "MODIFIED", shrunk)
    assert index.lookup("10.2.0.1") is None and index.lookup("fd00::2:1") is None
    assert index.lookup("10.2.0.4") is None
    assert found(index, "10.2.0.2") == 7001 and len(index) == 2


def test_the_same_member_text_listed_twice_drops_the_pod(caplog: pytest.LogCaptureFixture) -> None:
    index = indexed()
    apply(index, "ADDED", shop_slice())
    doubled = shop_slice()
    doubled["endpoints"].insert(1, doubled["endpoints"][0])  # members after it still count
    with caplog.at_level(logging.WARNING):
        apply(index, "MODIFIED", doubled)
    assert "CiliumEndpointSlice ces-shop-1 lists endpoint shop/web-1 more than once" in caplog.text
    assert index.lookup("10.2.0.1") is None and index.lookup("fd00::2:1") is None
    assert found(index, "10.2.0.2") == 7001 and found(index, "fd00::2:3") == 7002
    apply(index, "MODIFIED", shop_slice())
    assert found(index, "10.2.0.1") == 7001


def test_new_member_naming_a_held_pod_drops_both_and_leaves_nothing_stale() -> None:
    index = indexed()
    apply(index, "ADDED", shop_slice())
    clash = shop_slice()
    clash["endpoints"].append(core_endpoint("web-2", 7002, ipv4="10.2.0.8"))
    apply(index, "MODIFIED", clash)
    assert index.lookup("10.2.0.2") is None and index.lookup("10.2.0.8") is None
    assert found(index, "10.2.0.1") == 7001
    apply(index, "MODIFIED", shop_slice())
    assert found(index, "10.2.0.2") == 7001 and index.lookup("10.2.0.8") is None
    assert len(index) == 3


def test_member_text_that_is_not_json_is_dropped_alone(caplog: pytest.LogCaptureFixture) -> None:
    obj = shop_slice()
    obj["endpoints"] = [b'{"name":"web-1",', text_of(obj["endpoints"][1])]
    with caplog.at_level(logging.WARNING):
        name, entries = ces_parse.slice_entries(obj, "kubernetes", 0.0)
    assert name == "ces-shop-1" and [entry.key for entry in entries] == ["shop/web-2"]
    assert "endpoints[0]" in caplog.text and "not JSON" in caplog.text


def test_slice_moving_to_another_namespace_drops_every_old_member() -> None:
    index = indexed()
    apply(index, "ADDED", shop_slice())
    moved = shop_slice()
    moved["namespace"] = "shop-2"
    apply(index, "MODIFIED", moved)
    entry = index.slice_entries("10.2.0.1")
    assert [e.key for e in entry] == ["shop-2/web-1"] and len(index) == 3


def test_relabel_then_back_follows_every_version() -> None:
    index = indexed()
    apply(index, "ADDED", shop_slice())
    for version, identity in enumerate((7002, 7001, 7002, 7001)):
        changed = shop_slice()
        for member in changed["endpoints"]:
            member["id"] = identity
        changed["metadata"]["resourceVersion"] = str(200 + version)
        apply(index, "MODIFIED", changed)
        assert found(index, "10.2.0.1") == identity == found(index, "fd00::2:3")


def test_deleted_slice_event_removes_every_member() -> None:
    index = indexed()
    apply(index, "ADDED", shop_slice())
    apply(index, "DELETED", shop_slice())
    assert len(index) == 0 and index.slices() == []


def test_slice_named_with_a_namespace_in_its_metadata_is_one_slice() -> None:
    """Slices are cluster-scoped; one carrying metadata.namespace anyway is still known by
    its name alone, so its next version replaces (not doubles) its members."""
    index = indexed()
    odd = cilium_endpoint_slice("ces-odd", "shop", [core_endpoint("a", 7001, ipv4="10.2.1.1")])
    odd["metadata"]["namespace"] = "shop"
    apply(index, "ADDED", odd)
    odd["endpoints"] = [core_endpoint("a", 7002, ipv4="10.2.1.2")]
    apply(index, "MODIFIED", odd)
    assert index.lookup("10.2.1.1") is None and found(index, "10.2.1.2") == 7002
    apply(index, "DELETED", odd)
    assert len(index) == 0


def test_member_without_identity_yet_answers_unknown_through_the_codec() -> None:
    index = indexed()
    pending = cilium_endpoint_slice("ces-y", "shop", [core_endpoint("y", 0, ipv4="10.2.9.8")])
    apply(index, "ADDED", pending)
    answer = index.lookup("10.2.9.8")
    assert answer is not None and answer.status is LookupStatus.UNKNOWN


# -- the collector -------------------------------------------------------------------------


def test_a_finished_list_is_frozen_out_of_full_collections() -> None:
    was_enabled = gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        built = [[n] for n in range(1000)]  # stands for what a list builds (lists stay tracked)
        assert tracked_among(built) == len(built)
    assert gc.isenabled() == was_enabled
    assert tracked_among(built) == 0  # in the permanent generation: no collection walks it


def tracked_among(objects: list[Any]) -> int:
    """How many of ``objects`` a collection would walk."""
    wanted = {id(item) for item in objects}
    return sum(id(item) in wanted for item in gc.get_objects())


def test_members_around_a_clash_keep_their_very_entries() -> None:
    """A name listed twice makes the whole slice be placed again; the members not involved
    keep their entries (they are not read again)."""
    index = indexed()
    apply(index, "ADDED", shop_slice())
    kept = index.slice_entries("fd00::2:3")[0]
    clash = shop_slice()
    clash["endpoints"].append(core_endpoint("web-2", 7002, ipv4="10.2.0.8"))
    apply(index, "MODIFIED", clash)
    assert index.slice_entries("fd00::2:3")[0] is kept


def test_new_members_after_a_malformed_one_are_all_read(caplog: pytest.LogCaptureFixture) -> None:
    index = indexed()
    apply(index, "ADDED", shop_slice())
    grown = shop_slice()
    broken = core_endpoint("bad", 7001, ipv4="10.2.0.20")
    broken["networking"] = "10.2.0.20"
    grown["endpoints"].insert(0, broken)
    grown["endpoints"] += [
        core_endpoint(f"new-{n}", 7001, ipv4=f"10.2.0.{30 + n}") for n in range(5)
    ]
    with caplog.at_level(logging.WARNING):
        apply(index, "MODIFIED", grown)
    assert "ignoring endpoints[0] of CiliumEndpointSlice ces-shop-1" in caplog.text
    assert [found(index, f"10.2.0.{30 + n}") for n in range(5)] == [7001] * 5
    assert index.lookup("10.2.0.20") is None


def test_a_pod_whose_member_changed_is_replaced_not_removed() -> None:
    """Its claim is not in ``gone``: removing it first would let a reader miss the pod."""
    first = ces_parse.read_slice(shop_slice(), "kubernetes", 1.0)
    changed = shop_slice()
    changed["endpoints"][0]["id"] = 7002
    update = ces_parse.read_slice(changed, "kubernetes", 2.0, {first.name: first.state})
    assert [entry.key for entry in update.fresh] == ["shop/web-1"]
    assert update.gone == []
    left = shop_slice()
    del left["endpoints"][0]
    update = ces_parse.read_slice(left, "kubernetes", 3.0, {first.name: first.state})
    assert update.fresh == [] and update.gone == ["ces-shop-1/shop/web-1"]


def test_entries_carry_the_source_time_and_version_they_were_read_with() -> None:
    obj = shop_slice()
    obj["metadata"]["resourceVersion"] = "321"
    first = ces_parse.read_slice(obj, "kubernetes", 5.0)
    bare = shop_slice()
    bare["metadata"].pop("resourceVersion", None)
    bare["endpoints"][0]["id"] = 7002
    update = ces_parse.read_slice(bare, "kubernetes", 9.0, {first.name: first.state})
    for entry, when, version in ((first.fresh[0], 5.0, "321"), (update.fresh[0], 9.0, "")):
        assert entry.identity is not None
        assert (entry.identity.source, entry.identity.observed_at) == ("kubernetes", when)
        assert entry.resource_version == version


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({"kind": "CiliumEndpointSlice"}, "CiliumEndpointSlice without metadata"),
        ({"metadata": {"name": "ces-q"}, "endpoints": []}, r"CiliumEndpointSlice ces-q\.namespace"),
    ],
)
def test_unreadable_slices_are_named_in_the_error(broken: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedObject, match=message):
        ces_parse.read_slice(broken, "kubernetes", 0.0)


def test_unreadable_deleted_event_is_ignored_with_its_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    index = indexed(shop_slice())
    with caplog.at_level(logging.WARNING):
        index.apply_slice("DELETED", {"kind": "CiliumEndpointSlice"})
    assert "CiliumEndpointSlice without metadata" in caplog.text
    assert found(index, "10.2.0.1") == 7001


def test_null_endpoints_and_unreadable_pages_decode_as_they_came() -> None:
    empty = shop_slice()
    empty["endpoints"] = None
    assert decode_slice_event(line("MODIFIED", empty))["object"]["endpoints"] is None
    odd = shop_slice("ces-odd")
    odd["endpoints"] = "web-1"
    body = {"metadata": {"resourceVersion": "3"}, "items": [shop_slice(), odd]}
    page = decode_slice_page(json.dumps(body).encode())
    assert page == body  # decoded whole: the reader rejects the odd slice, keeps the other


def test_every_field_of_a_slice_entry() -> None:
    update = ces_parse.read_slice(shop_slice(), "kubernetes", 4.0)
    web_1, web_2, db_0 = update.fresh
    assert (web_1.key, web_1.claim, web_1.state) == ("shop/web-1", "ces-shop-1/shop/web-1", "")
    assert web_1.addresses == ("10.2.0.1", "fd00::2:1") and web_1.node_ip == "172.18.0.2"
    assert web_2.uid == "uid-web-2" and web_1.uid == ""
    assert db_0.identity is not None and db_0.identity.service_account == "db-sa"
    for entry in update.fresh:
        assert entry.identity is not None and entry.identity.namespace == "shop"
        assert entry.labels_missing
        assert entry.answer.status is LookupStatus.UNKNOWN and entry.answer.source == "kubernetes"


def test_members_handed_over_decoded_or_mixed_are_read_alike(
    caplog: pytest.LogCaptureFixture,
) -> None:
    obj = shop_slice()
    web_1, web_2, db_0 = obj["endpoints"]
    obj["endpoints"] = [text_of(web_1), web_2, {"name": object()}, db_0]  # not JSON
    with caplog.at_level(logging.WARNING):
        _, entries = ces_parse.slice_entries(obj, "kubernetes", 0.0)
    assert [entry.key for entry in entries] == ["shop/web-1", "shop/web-2", "shop/db-0"]
    assert "ignoring endpoints[2] of CiliumEndpointSlice ces-shop-1: not JSON" in caplog.text


def test_the_index_lists_each_slice_once_by_name() -> None:
    index = indexed()
    apply(index, "ADDED", shop_slice())
    changed = shop_slice()
    changed["endpoints"][0]["id"] = 7002
    apply(index, "MODIFIED", changed)
    assert index.slices() == ["ces-shop-1"]


def test_a_rebuilt_slice_replaces_a_changed_pod_rather_than_removing_it() -> None:
    first = ces_parse.read_slice(shop_slice(), "kubernetes", 1.0)
    changed = shop_slice()
    changed["endpoints"][0]["id"] = 7002  # web-1 changed
    changed["endpoints"].append(changed["endpoints"][2])  # db-0 twice: placed again
    update = ces_parse.read_slice(changed, "kubernetes", 2.0, {first.name: first.state})
    assert [entry.key for entry in update.fresh] == ["shop/web-1"]
    assert update.gone == ["ces-shop-1/shop/db-0"]

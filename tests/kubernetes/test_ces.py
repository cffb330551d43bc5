"""CiliumEndpointSlices: the pure index, and the source against a fake API server that
serves slices only (the CiliumEndpoint resource is a 404), both kinds, or neither."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import pytest

from kong_cilium_identity.identity.cep_index import EndpointIndex
from kong_cilium_identity.identity.crd_discovery import Served
from kong_cilium_identity.identity.model import LookupStatus
from kong_cilium_identity.identity.sources.kubernetes import (
    KubernetesSource,
    create,
    parse_settings,
    plan_watches,
)
from tests.kit.fake_kube import (
    ALL_SERVED,
    FakeKubeApi,
    cilium_endpoint,
    cilium_endpoint_slice,
    cilium_identity,
    core_endpoint,
)
from tests.kubernetes.conftest import SourceFactory
from tests.kubernetes.helpers import (
    FAST,
    ask,
    found_id,
    load_real_ces,
    shared_file,
    synced_at,
    wait_until,
)

CES = "CiliumEndpointSlice"
CEP = "CiliumEndpoint"
SLICES_ONLY = ("ciliumendpointslices", "ciliumidentities")

WEB = {
    "k8s:app": "web",
    "k8s:io.kubernetes.pod.namespace": "shop",
    "k8s:io.cilium.k8s.policy.serviceaccount": "web-sa",
    "k8s:io.cilium.k8s.policy.cluster": "east",
}
DB = {"k8s:app": "db", "k8s:io.kubernetes.pod.namespace": "shop"}
WLUO = {"k8s:app": "wluo", "k8s:io.kubernetes.pod.namespace": "default"}


def shop_slice(name: str = "ces-shop-1") -> dict[str, Any]:
    return cilium_endpoint_slice(
        name,
        "shop",
        [
            core_endpoint("web-1", 7001, ipv4="10.2.0.1", ipv6="fd00::2:1", node="172.18.0.2"),
            core_endpoint("web-2", 7001, ipv4="10.2.0.2", pod_uid="uid-web-2"),
            core_endpoint("db-0", 7002, ipv6="fd00::2:3", service_account="db-sa"),
        ],
    )


def indexed(*slices: dict[str, Any]) -> EndpointIndex:
    index = EndpointIndex("kubernetes")
    relist = index.begin_slice_relist()
    relist.add(slices)
    relist.commit("100")
    identities = index.begin_identity_relist()
    identities.add([cilium_identity(7001, WEB), cilium_identity(7002, DB)])
    identities.commit("100")
    return index


# -- the pure index ------------------------------------------------------------------------


def test_real_slice_is_indexed_with_labels_from_its_ciliumidentity() -> None:
    real = load_real_ces()
    index = EndpointIndex("kubernetes")
    relist = index.begin_slice_relist()
    relist.add([real])
    relist.commit("6124")
    expected = {
        "10.0.1.241": ("wluo-k64rg", "172.18.0.3"),
        "10.0.2.211": ("wluo-x6wp4", "172.18.0.4"),
        "10.0.0.187": ("wluo-whztw", "172.18.0.2"),
    }
    for address in expected:  # the slice names identity 6704; its labels are not known yet
        answer = index.lookup(address)
        assert answer is not None and answer.status is LookupStatus.UNKNOWN
        assert "labels of identity 6704 unknown" in answer.detail
    index.apply_identity("ADDED", cilium_identity(6704, WLUO))
    for address, (pod, node) in expected.items():
        answer = index.lookup(address)
        assert answer is not None and answer.status is LookupStatus.FOUND, address
        identity = answer.identity
        assert identity is not None
        assert (identity.id, identity.namespace, identity.pod) == (6704, "default", pod)
        assert identity.label_strings() == sorted(f"{k}={v}" for k, v in WLUO.items())
        (entry,) = index.slice_entries(address)
        assert entry.node_ip == node and entry.resource_version == "6124"
    assert index.slices() == ["ces-g2mw9wrrx-chnfb"] and len(index) == 3


JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
}


def schema_problems(value: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """The subset of JSON Schema the CRD uses for these fields: type, properties,
    required, items, additionalProperties."""
    wanted = schema.get("type")
    if wanted is not None:
        ok = isinstance(value, JSON_TYPES[wanted])
        if wanted == "integer" and isinstance(value, bool):
            ok = False
        if not ok:
            return [f"{where or '.'} is not {wanted}"]
    problems = []
    if isinstance(value, dict):
        for name in schema.get("required", ()):
            if name not in value:
                problems.append(f"{where}.{name} is required")
        properties = schema.get("properties", {})
        for name, item in value.items():
            below = properties.get(name, schema.get("additionalProperties"))
            if isinstance(below, dict):
                problems += schema_problems(item, below, f"{where}.{name}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for position, item in enumerate(value):
            problems += schema_problems(item, schema["items"], f"{where}[{position}]")
    return problems


def test_synthetic_and_real_slices_match_the_crd_schema() -> None:
    schema_path = shared_file("schemas/cilium/ciliumendpointslice-v2alpha1.schema.json")
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    assert schema_problems(shop_slice(), schema) == []
    assert schema_problems(load_real_ces(), schema) == []
    wrong = shop_slice()
    wrong["endpoints"][0]["id"] = "7001"
    assert schema_problems(wrong, schema) == [".endpoints[0].id is not integer"]


def test_every_member_address_answers_with_id_labels_and_namespace() -> None:
    index = indexed(shop_slice())
    for address, (identity_id, pod) in {
        "10.2.0.1": (7001, "web-1"),
        "fd00::2:1": (7001, "web-1"),
        "10.2.0.2": (7001, "web-2"),
        "fd00::2:3": (7002, "db-0"),
    }.items():
        answer = index.lookup(address)
        assert answer is not None and answer.status is LookupStatus.FOUND, address
        identity = answer.identity
        assert identity is not None
        assert (identity.id, identity.pod, identity.namespace) == (identity_id, pod, "shop")
    web = index.lookup("10.2.0.1")
    assert web is not None and web.identity is not None
    assert "k8s:app=web" in web.identity.label_strings()
    assert (web.identity.service_account, web.identity.cluster) == ("web-sa", "east")
    web2 = index.lookup("10.2.0.2")
    assert web2 is not None and web2.identity is not None and web2.identity.pod_uid == "uid-web-2"
    db = index.lookup("fd00::2:3")
    assert db is not None and db.identity is not None and db.identity.service_account == "db-sa"
    assert index.lookup("10.2.0.9") is None


def test_member_without_identity_is_unknown() -> None:
    waiting = cilium_endpoint_slice(
        "ces-w", "shop", [core_endpoint("new", None, ipv4="10.2.1.1"), core_endpoint("zero", 0)]
    )
    waiting["endpoints"][1]["networking"]["addressing"] = [{"ipv4": "10.2.1.2"}]
    index = indexed(waiting)
    for address in ("10.2.1.1", "10.2.1.2"):
        answer = index.lookup(address)
        assert answer is not None and answer.status is LookupStatus.UNKNOWN
        assert "has no identity yet" in answer.detail


def test_modified_slice_replaces_its_members() -> None:
    index = indexed(shop_slice())
    changed = shop_slice()
    changed["endpoints"] = [
        core_endpoint("web-1", 7002, ipv4="10.2.0.1"),  # new identity, IPv6 gone
        core_endpoint("web-3", 7001, ipv4="10.2.0.4"),  # added; web-2 and db-0 removed
    ]
    index.apply_slice("MODIFIED", changed)
    assert found(index, "10.2.0.1") == 7002
    assert index.lookup("fd00::2:1") is None
    assert index.lookup("10.2.0.2") is None and index.lookup("fd00::2:3") is None
    assert found(index, "10.2.0.4") == 7001
    assert sorted(index.slice_keys()) == ["shop/web-1", "shop/web-3"]
    index.apply_slice("DELETED", changed)
    assert index.lookup("10.2.0.1") is None and index.slice_keys() == []


def test_endpoint_moving_between_slices_is_never_lost_nor_doubled() -> None:
    index = indexed(shop_slice("ces-a"))
    moved = cilium_endpoint_slice("ces-b", "shop", shop_slice()["endpoints"][:1])
    index.apply_slice("ADDED", moved)  # the new slice first: the pod is in both for a while
    assert found(index, "10.2.0.1") == 7001
    left = shop_slice("ces-a")
    left["endpoints"] = left["endpoints"][1:]
    index.apply_slice("MODIFIED", left)
    assert found(index, "10.2.0.1") == 7001
    assert len(index) == 3


def test_two_pods_on_one_address_are_ambiguous() -> None:
    index = indexed(shop_slice())
    other = cilium_endpoint_slice("ces-x", "shop", [core_endpoint("old", 7002, ipv4="10.2.0.1")])
    index.apply_slice("ADDED", other)
    answer = index.lookup("10.2.0.1")
    assert answer is not None and answer.status is LookupStatus.AMBIGUOUS
    assert "shop/web-1" in answer.detail and "shop/old" in answer.detail


def test_slice_listing_a_pod_twice_drops_it(caplog: pytest.LogCaptureFixture) -> None:
    twice = cilium_endpoint_slice(
        "ces-t",
        "shop",
        [core_endpoint("p", 7001, ipv4="10.2.2.1"), core_endpoint("p", 7002, ipv4="10.2.2.2")],
    )
    index = indexed(twice)
    assert index.lookup("10.2.2.1") is None and index.lookup("10.2.2.2") is None
    assert "more than once" in caplog.text


# -- both resources served -----------------------------------------------------------------


def both(*objects: dict[str, Any]) -> EndpointIndex:
    index = indexed(*(o for o in objects if o["kind"] == CES))
    relist = index.begin_relist()
    relist.add([o for o in objects if o["kind"] == CEP])
    relist.commit("100")
    return index


def test_pod_described_by_both_kinds_alike_is_one_endpoint() -> None:
    index = both(
        cilium_endpoint("web-1", "shop", ipv4="10.2.0.1", ipv6="fd00::2:1", identity_id=7001),
        shop_slice(),
    )
    answer = index.lookup("10.2.0.1")
    assert answer is not None and answer.status is LookupStatus.FOUND
    assert answer.identity is not None and answer.identity.pod_uid is not None  # the CEP's
    assert found(index, "fd00::2:1") == 7001
    assert found(index, "10.2.0.2") == 7001  # only in the slice
    assert len(index) == 3  # web-1 counted once


def test_kinds_disagreeing_on_a_pod_make_it_ambiguous() -> None:
    index = both(cilium_endpoint("web-1", "shop", ipv4="10.2.0.1", identity_id=9999), shop_slice())
    answer = index.lookup("10.2.0.1")
    assert answer is not None and answer.status is LookupStatus.AMBIGUOUS
    assert "described twice" in answer.detail and "9999" in answer.detail
    # the slice's IPv6 address for web-1 is not in the CEP: the pod's views disagree there too
    answer = index.lookup("fd00::2:1")
    assert answer is not None and answer.status is LookupStatus.AMBIGUOUS


def test_different_pods_across_kinds_on_one_address_are_ambiguous() -> None:
    index = both(cilium_endpoint("other", "shop", ipv4="10.2.0.2", identity_id=7001), shop_slice())
    answer = index.lookup("10.2.0.2")
    assert answer is not None and answer.status is LookupStatus.AMBIGUOUS


def found(index: EndpointIndex, address: str) -> int | None:
    answer = index.lookup(address)
    if answer is None or answer.status is not LookupStatus.FOUND or answer.identity is None:
        return None
    return answer.identity.id


# -- discovery -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("served", "watch_identities", "watched", "note"),
    [
        (Served("v2", None, "v2"), False, ["ciliumendpoints"], None),
        (Served("v2", None, "v2"), True, ["ciliumendpoints", "ciliumidentities"], None),
        (Served(None, "v2alpha1", "v2"), False, ["ciliumendpointslices", "ciliumidentities"], None),
        (
            Served("v2", "v2alpha1", "v2"),
            False,
            ["ciliumendpoints", "ciliumendpointslices", "ciliumidentities"],
            None,
        ),
        (Served("v2", "v2alpha1", None), False, ["ciliumendpoints"], "kvstore"),
        (Served(None, "v2alpha1", None), False, [], "kvstore"),
        (Served(None, None, "v2"), False, [], "neither"),
    ],
)
def test_watch_plan_follows_what_is_served(
    served: Served, watch_identities: bool, watched: list[str], note: str | None
) -> None:
    plan, said = plan_watches(served, watch_identities)
    assert [plural for plural, _ in plan] == watched
    assert [served.version_of(plural) for plural, _ in plan] == [v for _, v in plan]
    assert (said is None) if note is None else (said is not None and note in said)


# -- against the fake API server -----------------------------------------------------------


@pytest.fixture
def slices_only() -> Any:
    with FakeKubeApi(served=SLICES_ONLY) as server:
        yield server


def source_for(fake: FakeKubeApi, make: Any, **overrides: Any) -> KubernetesSource:
    source = create(parse_settings({"api_url": fake.url, **FAST, **overrides}))
    make.append(source)
    return source


@pytest.fixture
def made() -> Any:
    sources: list[KubernetesSource] = []
    yield sources
    for source in sources:
        source.close()


def test_slices_only_cluster_resolves_every_address(slices_only: FakeKubeApi, made: Any) -> None:
    fake = slices_only
    fake.put(cilium_identity(7001, WEB))
    fake.put(cilium_identity(7002, DB))
    fake.put(shop_slice())
    source = source_for(fake, made)
    assert source.wait_ready(10)
    assert [w.plural for w in source.watches] == ["ciliumendpointslices", "ciliumidentities"]
    assert source.slices is not None and source.slices.version == "v2alpha1"
    assert source.endpoints is None
    assert not fake.requests_for("ciliumendpoints", watch=False)  # never asked for
    for address, (identity_id, pod, app) in {
        "10.2.0.1": (7001, "web-1", "web"),
        "fd00::2:1": (7001, "web-1", "web"),
        "fd00:0::2:1": (7001, "web-1", "web"),  # any spelling of the address
        "10.2.0.2": (7001, "web-2", "web"),
        "fd00::2:3": (7002, "db-0", "db"),
    }.items():
        answer = ask(source, address)
        assert answer.status is LookupStatus.FOUND, (address, answer)
        identity = answer.identity
        assert identity is not None
        assert (identity.id, identity.pod, identity.namespace) == (identity_id, pod, "shop")
        assert f"k8s:app={app}" in identity.label_strings()
    assert ask(source, "10.2.0.9").status is LookupStatus.UNKNOWN


def test_slices_only_cluster_follows_modified_deleted_and_gone(
    slices_only: FakeKubeApi, made: Any
) -> None:
    fake = slices_only
    fake.put(cilium_identity(7001, WEB))
    fake.put(cilium_identity(7002, DB))
    fake.put(shop_slice())
    source = source_for(fake, made)
    assert source.wait_ready(10) and fake.wait_for_watchers(CES)
    changed = shop_slice()
    changed["endpoints"][0]["id"] = 7002  # web-1 relabelled
    del changed["endpoints"][1]  # web-2 gone
    fake.put(changed)
    wait_until(lambda: found_id(source, "10.2.0.1") == 7002)
    assert ask(source, "10.2.0.2").status is LookupStatus.UNKNOWN
    fake.delete(CES, "ces-shop-1")
    wait_until(lambda: ask(source, "fd00::2:3").status is LookupStatus.UNKNOWN)
    assert source.slices is not None and source.slices.stats["lists"] == 1
    # 410: history compacted while the stream is cut; the slice watch lists again
    fake.go_down()
    fake.put(cilium_endpoint_slice("ces-new", "shop", [core_endpoint("n", 7001, ipv4="10.2.9.1")]))
    fake.compact()
    fake.come_back()
    wait_until(lambda: found_id(source, "10.2.9.1") == 7001)
    wait_until(synced_at(source, fake.resource_version))
    assert source.slices.stats["gone"] >= 1 and source.slices.stats["lists"] == 2
    assert source.index.slices() == ["ces-new"]


def test_slices_only_labels_follow_the_identity_watch(slices_only: FakeKubeApi, made: Any) -> None:
    fake = slices_only
    fake.put(shop_slice())
    source = source_for(fake, made)
    assert source.wait_ready(10)
    answer = ask(source, "10.2.0.1")
    assert answer.status is LookupStatus.UNKNOWN and "labels of identity 7001" in answer.detail
    fake.put(cilium_identity(7001, WEB))
    wait_until(lambda: found_id(source, "10.2.0.1") == 7001)
    fake.put(cilium_identity(7001, {**WEB, "k8s:app": "web2"}))
    wait_until(lambda: "k8s:app=web2" in labels_of(source, "10.2.0.1"))
    fake.delete("CiliumIdentity", "7001")
    wait_until(lambda: ask(source, "10.2.0.1").status is LookupStatus.UNKNOWN)


def labels_of(source: KubernetesSource, address: str) -> list[str]:
    identity = ask(source, address).identity
    return identity.label_strings() if identity is not None else []


def test_cluster_serving_both_counts_each_pod_once(made: Any) -> None:
    with FakeKubeApi(served=ALL_SERVED) as fake:
        fake.put(cilium_identity(7001, WEB))
        fake.put(cilium_identity(7002, DB))
        fake.put(shop_slice())
        fake.put(
            cilium_endpoint("web-1", "shop", ipv4="10.2.0.1", ipv6="fd00::2:1", identity_id=7001)
        )
        fake.put(cilium_endpoint("db-0", "shop", ipv6="fd00::2:3", identity_id=7003))  # disagrees
        source = source_for(fake, made)
        assert source.wait_ready(10)
        assert sorted(w.plural for w in source.watches) == sorted(ALL_SERVED)
        assert found_id(source, "10.2.0.1") == 7001
        assert found_id(source, "10.2.0.2") == 7001
        assert ask(source, "fd00::2:3").status is LookupStatus.AMBIGUOUS
        assert len(source.index) == 3
        fake.put(cilium_endpoint("db-0", "shop", ipv6="fd00::2:3", identity_id=7002))  # agrees
        wait_until(lambda: found_id(source, "fd00::2:3") == 7002)


def test_neither_resource_served_is_unavailable_with_a_clear_log(
    made: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeKubeApi(served=("ciliumidentities",)) as fake:
        source = source_for(fake, made)
        assert not source.wait_ready(0.5)
        answer = ask(source, "10.2.0.1")
        assert answer.status is LookupStatus.UNAVAILABLE
        assert "neither ciliumendpoints.cilium.io/v2 nor ciliumendpointslices" in answer.detail
        wait_until(lambda: "denying (503)" in caplog.text)
        (record,) = [r for r in caplog.records if "denying (503)" in r.getMessage()][:1]
        assert record.levelno == logging.ERROR and "is Cilium installed" in record.getMessage()
        # the CRD is installed later: discovery asks again and the source syncs
        fake.served.add("ciliumendpointslices")
        fake.put(cilium_endpoint_slice("s", "shop", [core_endpoint("w", 7001, ipv4="10.2.0.1")]))
        fake.put(cilium_identity(7001, WEB))
        assert source.wait_ready(10) and found_id(source, "10.2.0.1") == 7001


def test_slices_without_identities_are_unavailable(made: Any) -> None:
    with FakeKubeApi(served=("ciliumendpointslices",)) as fake:
        source = source_for(fake, made)
        wait_until(lambda: "kvstore" in ask(source, "10.2.0.1").detail)
        assert ask(source, "10.2.0.1").status is LookupStatus.UNAVAILABLE


def test_rbac_refusal_is_unavailable_and_named(
    slices_only: FakeKubeApi, made: Any, caplog: pytest.LogCaptureFixture
) -> None:
    slices_only.forbid("ciliumendpointslices")
    source = source_for(slices_only, made)
    wait_until(lambda: "forbidden (RBAC)" in ask(source, "10.2.0.1").detail)
    answer = ask(source, "10.2.0.1")
    assert answer.status is LookupStatus.UNAVAILABLE
    assert "ciliumendpointslices.cilium.io/v2alpha1" in answer.detail
    assert "forbidden (RBAC)" in caplog.text and "denying (503)" in caplog.text


def test_unreadable_slice_event_evicts_its_members(slices_only: FakeKubeApi, made: Any) -> None:
    fake = slices_only
    fake.put(cilium_identity(7001, WEB))
    fake.put(cilium_identity(7002, DB))
    fake.put(shop_slice())
    source = source_for(fake, made)
    assert source.wait_ready(10) and fake.wait_for_watchers(CES)
    broken = copy.deepcopy(shop_slice())
    broken["namespace"] = ["shop"]
    fake.put(broken)
    wait_until(lambda: ask(source, "10.2.0.1").status is LookupStatus.UNKNOWN)
    assert ask(source, "fd00::2:3").status is LookupStatus.UNKNOWN


def test_cep_only_cluster_watches_ciliumendpoints_alone(
    fake: FakeKubeApi, make_source: SourceFactory
) -> None:
    """The default fake serves CiliumEndpoints (and identities) only."""
    source = make_source()
    assert source.wait_ready(10)
    assert [w.plural for w in source.watches] == ["ciliumendpoints"]


# -- a slice changed in place (same length: only the differing members are read) ----------


def test_member_renamed_in_place_replaces_the_old_pod() -> None:
    index = indexed(shop_slice())
    changed = shop_slice()
    changed["endpoints"][1] = core_endpoint("web-9", 7002, ipv4="10.2.0.2")
    index.apply_slice("MODIFIED", changed)
    answer = index.lookup("10.2.0.2")
    assert answer is not None and answer.identity is not None
    assert (answer.identity.pod, answer.identity.id) == ("web-9", 7002)
    assert sorted(index.slice_keys()) == ["shop/db-0", "shop/web-1", "shop/web-9"]


def test_member_turning_unreadable_in_place_is_dropped_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    index = indexed(shop_slice())
    changed = shop_slice()
    changed["endpoints"][0]["networking"]["addressing"] = "10.2.0.1"
    index.apply_slice("MODIFIED", changed)
    assert index.lookup("10.2.0.1") is None and index.lookup("fd00::2:1") is None
    assert found(index, "10.2.0.2") == 7001 and found(index, "fd00::2:3") == 7002
    assert "ignoring endpoints[0]" in caplog.text
    index.apply_slice("MODIFIED", shop_slice())  # readable again
    assert found(index, "10.2.0.1") == 7001


def test_member_taking_the_name_of_another_drops_both() -> None:
    index = indexed(shop_slice())
    changed = shop_slice()
    changed["endpoints"][2] = core_endpoint("web-1", 7002, ipv4="10.2.0.7")
    index.apply_slice("MODIFIED", changed)
    assert index.lookup("10.2.0.1") is None and index.lookup("10.2.0.7") is None
    assert index.lookup("fd00::2:3") is None  # db-0 is gone from the slice
    assert found(index, "10.2.0.2") == 7001
    index.apply_slice("MODIFIED", shop_slice())  # fixed: every member answers again
    assert found(index, "10.2.0.1") == 7001 and found(index, "fd00::2:3") == 7002


def test_unchanged_members_keep_their_entries() -> None:
    index = indexed(shop_slice())
    before = {address: index.slice_entries(address) for address in ("10.2.0.1", "10.2.0.2")}
    changed = shop_slice()
    changed["endpoints"][1]["id"] = 7002
    changed["metadata"]["resourceVersion"] = "555"
    index.apply_slice("MODIFIED", changed)
    assert index.slice_entries("10.2.0.1") == before["10.2.0.1"]  # the very same entry
    assert index.slice_entries("10.2.0.1")[0] is before["10.2.0.1"][0]
    (moved,) = index.slice_entries("10.2.0.2")
    assert moved is not before["10.2.0.2"][0] and moved.resource_version == "555"
    assert found(index, "10.2.0.2") == 7002

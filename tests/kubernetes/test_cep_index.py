"""The pure CiliumEndpoint index: parsing, answers, ambiguity, eviction, relist."""

from __future__ import annotations

import copy
from typing import Any

from kong_cilium_identity.identity.cep_index import EndpointIndex
from kong_cilium_identity.identity.model import LookupStatus
from kong_cilium_identity.policy.labels import Label
from tests.kit.fake_kube import cilium_endpoint, cilium_identity
from tests.kubernetes.helpers import wluo_endpoint

POD_UID = "90b353f5-53a1-4d98-8204-8adf1156ecec"


def listed(*objects: dict[str, Any], version: str = "100") -> EndpointIndex:
    index = EndpointIndex("kubernetes")
    relist = index.begin_relist()
    relist.add(objects)
    relist.commit(version)
    return index


def test_real_fixture_is_indexed_field_by_field(real_cep: dict[str, Any]) -> None:
    index = listed(real_cep)
    answer = index.lookup("10.0.1.200")
    assert answer is not None and answer.status is LookupStatus.FOUND
    identity = answer.identity
    assert identity is not None
    assert identity.id == 48861
    assert identity.label_strings() == [
        "k8s:app=wluo",
        "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=default",
        "k8s:io.cilium.k8s.policy.cluster=cilium-kpr",
        "k8s:io.cilium.k8s.policy.serviceaccount=default",
        "k8s:io.kubernetes.pod.namespace=default",
    ]
    assert identity.namespace == "default"
    assert identity.pod == "wluo-mvz4t"
    assert identity.pod_uid == POD_UID
    assert identity.service_account == "default"  # from the label: 1.15 has no field
    assert identity.cluster == "cilium-kpr"
    assert identity.source == "kubernetes"
    (entry,) = index.entries("10.0.1.200")
    assert entry.node_ip == "172.18.0.3"
    assert entry.state == "ready"
    assert entry.resource_version == "933"
    assert entry.uid == "798c2fec-5eb1-4906-a301-517607560d90"
    assert index.resource_version == "100"


def test_status_service_account_wins_over_the_label() -> None:
    newer = copy.deepcopy(wluo_endpoint())
    newer["status"]["service-account"] = "wluo-sa"  # Cilium >= 1.19
    answer = listed(newer).lookup("10.0.1.200")
    assert answer is not None and answer.identity is not None
    assert answer.identity.service_account == "wluo-sa"


def test_ipv4_and_ipv6_addresses_both_answer() -> None:
    dual = cilium_endpoint("dual", ipv4="10.0.2.7", ipv6="FD00:10:244:0::7", identity_id=5001)
    index = listed(dual)
    for address in ("10.0.2.7", "fd00:10:244::7"):
        answer = index.lookup(address)
        assert answer is not None and answer.identity is not None
        assert answer.identity.id == 5001


def test_endpoint_that_is_not_ready_is_unknown_and_names_its_state() -> None:
    index = listed(cilium_endpoint("slow", ipv4="10.0.2.8", state="waiting-for-identity"))
    answer = index.lookup("10.0.2.8")
    assert answer is not None and answer.status is LookupStatus.UNKNOWN
    assert "waiting-for-identity" in answer.detail and "default/slow" in answer.detail


def test_ready_endpoint_without_identity_is_unknown() -> None:
    index = listed(cilium_endpoint("bare", ipv4="10.0.2.9", identity_id=None))
    answer = index.lookup("10.0.2.9")
    assert answer is not None and answer.status is LookupStatus.UNKNOWN
    assert "no identity" in answer.detail


def test_two_endpoints_claiming_one_address_are_ambiguous_until_one_goes() -> None:
    first = cilium_endpoint("a", ipv4="10.0.3.1", identity_id=1000)
    second = cilium_endpoint("b", ipv4="10.0.3.1", identity_id=2000)
    index = listed(first)
    index.apply("ADDED", second)
    answer = index.lookup("10.0.3.1")
    assert answer is not None and answer.status is LookupStatus.AMBIGUOUS
    assert "default/a" in answer.detail and "default/b" in answer.detail
    index.apply("DELETED", first)
    answer = index.lookup("10.0.3.1")
    assert answer is not None and answer.identity is not None and answer.identity.id == 2000


def test_not_ready_claimant_still_makes_the_address_ambiguous() -> None:
    ready = cilium_endpoint("a", ipv4="10.0.3.2", identity_id=1000)
    leaving = cilium_endpoint("b", ipv4="10.0.3.2", identity_id=2000, state="disconnecting")
    answer = listed(ready, leaving).lookup("10.0.3.2")
    assert answer is not None and answer.status is LookupStatus.AMBIGUOUS


def test_delete_evicts_at_once_and_reuse_answers_the_new_pod() -> None:
    old = cilium_endpoint("old", ipv4="10.0.4.1", identity_id=1000, pod_uid="uid-old")
    new = cilium_endpoint("new", ipv4="10.0.4.1", identity_id=2000, pod_uid="uid-new")
    index = listed(old)
    index.apply("DELETED", old)
    assert index.lookup("10.0.4.1") is None
    index.apply("ADDED", new)
    answer = index.lookup("10.0.4.1")
    assert answer is not None and answer.identity is not None
    assert (answer.identity.id, answer.identity.pod_uid) == (2000, "uid-new")


def test_modified_endpoint_moves_its_address() -> None:
    index = listed(cilium_endpoint("m", ipv4="10.0.5.1", identity_id=1000))
    index.apply("MODIFIED", cilium_endpoint("m", ipv4="10.0.5.2", identity_id=1001))
    assert index.lookup("10.0.5.1") is None
    answer = index.lookup("10.0.5.2")
    assert answer is not None and answer.identity is not None and answer.identity.id == 1001
    assert len(index) == 1


def test_unreadable_update_evicts_the_old_answer() -> None:
    index = listed(cilium_endpoint("m", ipv4="10.0.5.3", identity_id=1000))
    broken = cilium_endpoint("m", ipv4="10.0.5.3")
    broken["status"]["identity"] = {"id": "not-a-number", "labels": []}
    index.apply("MODIFIED", broken)
    assert index.lookup("10.0.5.3") is None and index.get("default/m") is None


def test_relist_replaces_everything() -> None:
    index = listed(
        cilium_endpoint("keep", ipv4="10.0.6.1", identity_id=1000),
        cilium_endpoint("gone", ipv4="10.0.6.2", identity_id=1000),
    )
    relist = index.begin_relist()
    relist.add([cilium_endpoint("keep", ipv4="10.0.6.1", identity_id=1001)])
    assert index.lookup("10.0.6.2") is not None  # nothing changes before commit
    relist.commit("200")
    assert index.lookup("10.0.6.2") is None
    assert index.keys() == ["default/keep"] and index.resource_version == "200"


def test_label_sets_are_shared_between_endpoints_of_one_identity() -> None:
    labels = ["k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop"]
    index = listed(
        cilium_endpoint("w1", "shop", ipv4="10.0.7.1", labels=labels),
        cilium_endpoint("w2", "shop", ipv4="10.0.7.2", labels=labels),
    )
    one, two = index.lookup("10.0.7.1"), index.lookup("10.0.7.2")
    assert one is not None and two is not None
    assert one.identity is not None and two.identity is not None
    assert one.identity.labels is two.identity.labels
    assert one.identity.pod != two.identity.pod


def test_id_only_endpoint_takes_labels_from_ciliumidentity() -> None:
    index = listed(cilium_endpoint("ces", "shop", ipv4="10.0.8.1", identity_id=7001, labels=()))
    answer = index.lookup("10.0.8.1")
    assert answer is not None and answer.status is LookupStatus.UNKNOWN
    assert "labels of identity 7001" in answer.detail
    index.apply_identity(
        "ADDED",
        cilium_identity(
            7001,
            {
                "k8s:app": "web",
                "k8s:io.kubernetes.pod.namespace": "shop",
                "k8s:io.cilium.k8s.policy.serviceaccount": "web-sa",
            },
        ),
    )
    answer = index.lookup("10.0.8.1")
    assert answer is not None and answer.identity is not None
    assert Label("k8s", "app", "web") in answer.identity.labels
    assert answer.identity.service_account == "web-sa"
    assert answer.identity.namespace == "shop"
    index.apply_identity("DELETED", cilium_identity(7001, {}))
    answer = index.lookup("10.0.8.1")
    assert answer is not None and answer.status is LookupStatus.UNKNOWN


def test_identity_relist_replaces_the_label_table() -> None:
    index = listed(cilium_endpoint("ces", ipv4="10.0.8.2", identity_id=7002, labels=()))
    relist = index.begin_identity_relist()
    relist.add([cilium_identity(7002, {"reserved:host": ""}), {"metadata": {"name": "x"}}])
    relist.commit("300")
    answer = index.lookup("10.0.8.2")
    assert answer is not None and answer.identity is not None
    assert answer.identity.label_strings() == ["reserved:host"]

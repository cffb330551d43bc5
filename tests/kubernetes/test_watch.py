"""The kubernetes source against the fake API server: sync gate, events, resumption,
410 Gone, outages, paging, auth."""

from __future__ import annotations

import gc
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from kong_cilium_identity.identity.cep_watch import backoff_delay, gc_paused
from kong_cilium_identity.identity.model import LookupStatus
from kong_cilium_identity.identity.sources.kubernetes import (
    KubernetesSource,
    create,
    parse_settings,
)
from tests.kit.fake_kube import FakeKubeApi, cilium_endpoint, cilium_identity
from tests.kubernetes.conftest import SourceFactory
from tests.kubernetes.helpers import FAST, ask, found_id, synced_at, wait_until, wluo_endpoint

CEP = "CiliumEndpoint"


def started(make_source: SourceFactory, fake: FakeKubeApi, **overrides: Any) -> KubernetesSource:
    source = make_source(**overrides)
    assert source.wait_ready(10)
    assert fake.wait_for_watchers(CEP)
    return source


def assert_converged(source: KubernetesSource, fake: FakeKubeApi) -> None:
    """The index holds exactly the server's endpoints, each at the server's version."""
    wait_until(synced_at(source, fake.resource_version) if fake.objects(CEP) else lambda: True)
    expected = fake.objects(CEP)
    wait_until(lambda: sorted(source.index.keys()) == sorted(expected))
    for key, obj in expected.items():
        entry = source.index.get(key)
        assert entry is not None, key
        assert entry.uid == obj["metadata"]["uid"]
        assert entry.resource_version == obj["metadata"]["resourceVersion"]
        identity = obj["status"]["identity"]
        assert entry.identity is not None and entry.identity.id == identity["id"]
        assert entry.addresses == (obj["status"]["networking"]["addressing"][0]["ipv4"],)


def test_not_synced_until_the_first_list_is_applied(
    fake: FakeKubeApi,
    make_source: SourceFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    fake.put(wluo_endpoint())
    fake.go_down()
    source = make_source()
    answer = ask(source, "10.0.1.200")
    assert answer.status is LookupStatus.UNAVAILABLE and "not synced" in answer.detail
    assert not source.ready()
    wait_until(lambda: "cannot read the cilium.io discovery documents" in caplog.text)
    assert "denying (503)" in caplog.text
    fake.come_back()
    assert source.wait_ready(10)
    assert "waiting for the first list of ciliumendpoints" in caplog.text
    assert found_id(source, "10.0.1.200") == 48861


def test_real_fixture_is_served_listed_and_answered(
    fake: FakeKubeApi, make_source: SourceFactory, real_cep: dict[str, Any]
) -> None:
    stored = fake.put(real_cep)
    source = started(make_source, fake)
    answer = ask(source, "10.0.1.200")
    assert answer.status is LookupStatus.FOUND and answer.identity is not None
    identity = answer.identity
    assert (identity.id, identity.namespace, identity.pod) == (48861, "default", "wluo-mvz4t")
    assert identity.pod_uid == "90b353f5-53a1-4d98-8204-8adf1156ecec"
    assert identity.service_account == "default"
    assert "k8s:app=wluo" in identity.label_strings()
    (entry,) = source.index.entries("10.0.1.200")
    assert entry.node_ip == "172.18.0.3" and entry.uid == stored["metadata"]["uid"]
    (listing,) = fake.requests_for("ciliumendpoints", watch=False)
    assert listing["limit"] == "500"
    watch = fake.requests_for("ciliumendpoints", watch=True)[0]
    assert watch["allowWatchBookmarks"] == "true"
    assert watch["resourceVersion"] == str(fake.resource_version)
    assert watch["timeoutSeconds"] == "30"


def test_added_modified_deleted_events_are_applied(
    fake: FakeKubeApi, make_source: SourceFactory
) -> None:
    source = started(make_source, fake)
    fake.put(cilium_endpoint("web", ipv4="10.1.0.1", identity_id=1000))
    wait_until(lambda: found_id(source, "10.1.0.1") == 1000)
    fake.put(cilium_endpoint("web", ipv4="10.1.0.1", identity_id=1001))
    wait_until(lambda: found_id(source, "10.1.0.1") == 1001)
    fake.delete(CEP, "web", "default")
    wait_until(lambda: ask(source, "10.1.0.1").status is LookupStatus.UNKNOWN)
    assert_converged(source, fake)


def test_cut_stream_resumes_from_the_last_version_without_relisting(
    fake: FakeKubeApi, make_source: SourceFactory
) -> None:
    source = started(make_source, fake)
    first = fake.put(cilium_endpoint("a", ipv4="10.1.1.1", identity_id=1000))
    wait_until(synced_at(source, fake.resource_version))
    fake.cut_streams()
    fake.delete(CEP, "a", "default")
    fake.put(cilium_endpoint("b", ipv4="10.1.1.2", identity_id=1001))
    fake.put(cilium_endpoint("c", ipv4="10.1.1.3", identity_id=1002))
    assert_converged(source, fake)
    assert source.endpoints.stats["lists"] == 1
    watches = fake.requests_for("ciliumendpoints", watch=True)
    assert watches[1]["resourceVersion"] == first["metadata"]["resourceVersion"]


def test_bookmark_keeps_the_resume_point_fresh_across_compaction(
    fake: FakeKubeApi, make_source: SourceFactory
) -> None:
    source = started(make_source, fake)
    fake.put(cilium_endpoint("a", ipv4="10.1.2.1", identity_id=1000))
    fake.bump(50)  # other resources change: the endpoint watch sees nothing of it
    fake.bookmark()
    wait_until(lambda: source.endpoints.resource_version == str(fake.resource_version))
    fake.compact()  # the version of "a" is now too old to resume from; the bookmark's is not
    fake.cut_streams()
    fake.put(cilium_endpoint("b", ipv4="10.1.2.2", identity_id=1001))
    assert_converged(source, fake)
    assert source.endpoints.stats["bookmarks"] >= 1
    assert (source.endpoints.stats["lists"], source.endpoints.stats["gone"]) == (1, 0)


@pytest.mark.parametrize("as_http_status", [False, True], ids=["error-event", "http-410"])
def test_gone_relists_and_converges(
    fake: FakeKubeApi, make_source: SourceFactory, as_http_status: bool
) -> None:
    fake.gone_as_status = as_http_status
    source = started(make_source, fake)
    for n in range(4):
        fake.put(cilium_endpoint(f"p{n}", ipv4=f"10.1.3.{n}", identity_id=1000 + n))
    wait_until(synced_at(source, fake.resource_version))
    fake.go_down()
    fake.delete(CEP, "p0", "default")  # this DELETE is compacted away: only a relist shows it
    fake.put(cilium_endpoint("p1", ipv4="10.1.3.1", identity_id=2001))
    fake.put(cilium_endpoint("p9", ipv4="10.1.3.9", identity_id=1009))
    fake.compact()
    fake.come_back()
    assert_converged(source, fake)
    assert ask(source, "10.1.3.0").status is LookupStatus.UNKNOWN
    assert found_id(source, "10.1.3.1") == 2001
    assert source.endpoints.stats["gone"] >= 1 and source.endpoints.stats["lists"] == 2


def test_api_server_down_goes_stale_then_converges_when_back(
    fake: FakeKubeApi, make_source: SourceFactory
) -> None:
    source = started(make_source, fake, max_stale=1)
    for n in range(3):
        fake.put(cilium_endpoint(f"s{n}", ipv4=f"10.1.4.{n}", identity_id=1000 + n))
    wait_until(synced_at(source, fake.resource_version))
    fake.go_down()
    fake.delete(CEP, "s0", "default")
    fake.put(cilium_endpoint("s1", ipv4="10.1.4.1", identity_id=2001))
    fake.put(cilium_endpoint("s5", ipv4="10.1.4.5", identity_id=1005))
    wait_until(lambda: "stale" in ask(source, "10.1.4.2").detail)
    assert ask(source, "10.1.4.2").status is LookupStatus.UNAVAILABLE
    assert not source.ready()
    fake.come_back()
    assert_converged(source, fake)
    wait_until(source.ready)
    assert found_id(source, "10.1.4.1") == 2001 and found_id(source, "10.1.4.5") == 1005
    assert ask(source, "10.1.4.0").status is LookupStatus.UNKNOWN
    assert source.endpoints.stats["lists"] == 1  # resumed: the history was still there


def test_server_side_timeout_ends_streams_and_the_watch_goes_on(
    fake: FakeKubeApi, make_source: SourceFactory
) -> None:
    source = started(make_source, fake, watch_timeout=1)
    wait_until(lambda: len(fake.requests_for("ciliumendpoints", watch=True)) >= 3)
    fake.put(cilium_endpoint("late", ipv4="10.1.5.1", identity_id=1000))
    wait_until(lambda: found_id(source, "10.1.5.1") == 1000)
    watches = fake.requests_for("ciliumendpoints", watch=True)
    assert {w["timeoutSeconds"] for w in watches} == {"1"}
    assert source.endpoints.stats["lists"] == 1 and source.endpoints.stats["errors"] == 0


def test_list_is_paged_and_an_expired_continue_restarts_it(
    fake: FakeKubeApi, make_source: SourceFactory
) -> None:
    for n in range(5):
        fake.put(cilium_endpoint(f"q{n}", ipv4=f"10.1.6.{n}", identity_id=1000 + n))
    fake.fail_next(410, after=1)  # the second page's continue token has expired
    source = started(make_source, fake, page_size=2)
    assert_converged(source, fake)
    pages = fake.requests_for("ciliumendpoints", watch=False)
    assert [p["limit"] for p in pages] == ["2"] * 5
    assert ["continue" in p for p in pages] == [False, True, False, True, True]
    assert source.endpoints.stats["gone"] == 1


def test_errors_are_retried_with_backoff(fake: FakeKubeApi, make_source: SourceFactory) -> None:
    fake.put(cilium_endpoint("r", ipv4="10.1.7.1", identity_id=1000))
    fake.fail_next(500, count=3)
    source = started(make_source, fake)
    assert found_id(source, "10.1.7.1") == 1000
    assert source.endpoints.stats["errors"] == 3


def test_backoff_grows_is_capped_and_jittered() -> None:
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (10, 30.0), (60, 30.0)]:
        delays = {backoff_delay(attempt, 0.5, 30.0) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1


def test_bearer_token_from_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with FakeKubeApi(token="s3cret") as fake:
        fake.put(cilium_endpoint("t", ipv4="10.1.8.1", identity_id=1000))
        good = create(parse_settings({"api_url": fake.url, "token_file": str(token), **FAST}))
        wrong_file = tmp_path / "wrong"
        wrong_file.write_text("nope")
        wrong = create(parse_settings({"api_url": fake.url, "token_file": str(wrong_file), **FAST}))
        try:
            assert good.wait_ready(10) and found_id(good, "10.1.8.1") == 1000
            wait_until(lambda: "HTTP 401" in ask(wrong, "10.1.8.1").detail)
            assert "not synced" in ask(wrong, "10.1.8.1").detail
            assert not wrong.ready()
        finally:
            good.close()
            wrong.close()


def test_identity_watch_fills_labels_of_id_only_endpoints(
    fake: FakeKubeApi, make_source: SourceFactory
) -> None:
    fake.put(cilium_endpoint("ces", "shop", ipv4="10.1.9.1", identity_id=7001, labels=()))
    fake.put(cilium_identity(7001, {"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "shop"}))
    source = make_source(watch_identities=True)
    assert source.wait_ready(10)
    answer = ask(source, "10.1.9.1")
    assert answer.identity is not None and "k8s:app=web" in answer.identity.label_strings()
    assert fake.wait_for_watchers("CiliumIdentity")
    fake.delete("CiliumIdentity", "7001")
    wait_until(lambda: ask(source, "10.1.9.1").status is LookupStatus.UNKNOWN)


def test_close_stops_the_watch(fake: FakeKubeApi, make_source: SourceFactory) -> None:
    source = started(make_source, fake)
    source.close()
    wait_until(lambda: fake.watchers(CEP) == 0)
    assert not source.endpoints._thread.is_alive()


def test_kubeconfig_path_reaches_the_api_server(fake: FakeKubeApi, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
                "users": [{"name": "reader", "user": {"token": "unused"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "reader"}}],
                "current-context": "other",
            }
        )
    )
    fake.put(cilium_endpoint("k", ipv4="10.1.10.1", identity_id=1000))
    settings = {"kubeconfig": str(kubeconfig), "context": "fake", **FAST}
    source = create(parse_settings(settings))
    try:
        assert source.wait_ready(10) and found_id(source, "10.1.10.1") == 1000
    finally:
        source.close()


def test_watch_connections_use_tcp_keepalive(fake: FakeKubeApi, make_source: SourceFactory) -> None:
    source = started(make_source, fake)
    wait_until(lambda: source.endpoints._response is not None)
    sock = source.endpoints._response.connection.sock
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10


def test_gc_pause_nests_and_restores_the_collector() -> None:
    assert gc.isenabled()
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()

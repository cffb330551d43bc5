"""``/healthz`` and ``/readyz`` on the metrics listener of a real ``serve`` process."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kong_cilium_identity.ops.readiness import loop_health
from tests.e2e.conftest import running_server
from tests.kit.fake_kube import (
    FakeKubeApi,
    cilium_endpoint_slice,
    cilium_identity,
    core_endpoint,
)
from tests.kit.kong import KongRequest
from tests.kubernetes.helpers import FAST, wait_until
from tests.kubernetes.test_e2e_plugin import CHECKOUT, CREDENTIAL

SLICES_ONLY = ("ciliumendpointslices", "ciliumidentities")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    """Status and body of one GET, retrying while the listener is not up yet."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def plugin_config(api_url: str, **kubernetes: Any) -> dict[str, Any]:
    return {
        "sources": ["kubernetes"],
        "kubernetes": {"api_url": api_url, **FAST, **kubernetes},
        "bindings": [{"consumer": "checkout", "selectors": ["k8s:app=web"]}],
    }


def cluster(fake: FakeKubeApi) -> None:
    fake.put(
        cilium_endpoint_slice("ces-shop", "shop", [core_endpoint("web-1", 7001, ipv4="10.4.0.1")])
    )
    fake.put(cilium_identity(7001, {"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "shop"}))


def test_readyz_is_503_before_the_first_sync_and_200_after(tmp_path: Path) -> None:
    port = free_port()
    with FakeKubeApi(served=SLICES_ONLY) as fake:
        cluster(fake)
        fake.go_down()  # the API server cannot be reached yet
        config = plugin_config(fake.url, max_stale=1)
        path = tmp_path / "plugin.json"
        path.write_text(json.dumps(config))
        flags = ("--metrics-port", str(port), "--preload-config", str(path))
        with running_server(*flags) as kong:
            status, body = get(port, "/readyz")
            assert status == 503, body
            assert "kubernetes: not synced" in body
            assert get(port, "/healthz")[0] == 200
            fake.come_back()
            wait_until(lambda: get(port, "/readyz")[0] == 200, timeout=15)
            assert get(port, "/readyz")[1] == "kubernetes: ready\n"
            # the plugin instance Kong starts shares the preloaded, synced source: the very
            # first request is answered from the index, not refused as "not synced"
            request = KongRequest(client_ip="10.4.0.1", consumer=CHECKOUT, credential=CREDENTIAL)
            out = kong.request(kong.add_plugin(config), request)
            assert out.proxied and out.status == 200, out.kong_log
            assert out.upstream_headers["x-cilium-identity"] == ["7001"]
            # the API server goes away: past max_stale the pod is taken out again
            fake.go_down()
            wait_until(lambda: get(port, "/readyz")[0] == 503, timeout=15)
            assert "stale" in get(port, "/readyz")[1]
            assert "cilium_identity_decisions_total" in get(port, "/metrics")[1]


def test_readyz_without_preload_waits_for_the_sources_kong_starts() -> None:
    port = free_port()
    with FakeKubeApi(served=SLICES_ONLY) as fake:
        cluster(fake)
        with running_server("--metrics-port", str(port)) as kong:
            status, body = get(port, "/readyz")
            assert status == 503 and "no identity source started yet" in body
            request = KongRequest(client_ip="10.4.0.1", consumer=CHECKOUT, credential=CREDENTIAL)
            kong.request(kong.add_plugin(plugin_config(fake.url)), request)
            wait_until(lambda: get(port, "/readyz")[0] == 200, timeout=15)


def test_healthz_fails_when_the_event_loop_does_not_answer(tmp_path: Path) -> None:
    missing = loop_health(tmp_path / "none.socket", timeout=0.3)
    assert not missing.ok and missing.status == 503 and "no answer" in missing.text
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(str(tmp_path / "silent.socket"))
        silent.listen(1)  # accepts connections (backlog), never reads nor replies
        started = time.monotonic()
        verdict = loop_health(tmp_path / "silent.socket", timeout=0.3)
        assert not verdict.ok and "no answer" in verdict.text
        assert time.monotonic() - started < 2


def test_healthz_through_the_listener_answers_from_the_event_loop() -> None:
    port = free_port()
    with running_server("--metrics-port", str(port)):
        status, body = get(port, "/healthz")
    assert (status, body) == (200, "ok: event loop responsive\n")

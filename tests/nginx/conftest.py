"""Fixtures of the nginx rig: a temp prefix, nginx with the Kong stand-in, the plugin server."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.kit.fake_kube import FakeKubeApi, cilium_endpoint
from tests.nginx.rig import Declarative, Nginx, PluginServer, missing_reason, run_dump
from tests.nginx.shipped import CHECKOUT_KEY, CHECKOUT_POD, INSTALLED, REPORTS_POD

_MISSING = missing_reason()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.nginx)
            if _MISSING is not None:
                item.add_marker(pytest.mark.skip(reason=_MISSING))


@dataclass
class Rig:
    nginx: Nginx
    server: PluginServer
    path: str  # a request path on the protected route

    def stolen_key_requests(self, n: int) -> list[int]:
        """n requests with checkout's key from the reports pod: none may ever pass."""
        return [
            self.nginx.request(self.path, [CHECKOUT_KEY], source=REPORTS_POD).status
            for _ in range(n)
        ]

    def warm(self) -> None:
        """Start the plugin instance in both workers (each has its own instance cache) and
        wait for the identity source (a kubernetes source answers 503 until synced)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = self.nginx.request(self.path, [CHECKOUT_KEY], source=REPORTS_POD).status
            assert status in (403, 503), status
            if status == 403 and self.nginx.counters()["start_instance"] >= 2:
                return
            time.sleep(0.02)
        raise AssertionError("not both workers started an instance, or the source never synced")


RigFactory = Callable[..., Rig]


@pytest.fixture(scope="session")
def cluster() -> Iterator[FakeKubeApi]:
    """The Kubernetes API the shipped manifests' kubernetes source reads: the checkout and
    reports pods at the rig's loopback pod addresses."""
    with FakeKubeApi() as fake:
        for pod, address, identity in (
            ("checkout-7d9f8-x2x5q", CHECKOUT_POD, 48861),
            ("reports-5c6b7-q8r2m", REPORTS_POD, 51022),
        ):
            app = pod.split("-")[0]
            labels = [f"k8s:app={app}", "k8s:io.kubernetes.pod.namespace=shop"]
            fake.put(
                cilium_endpoint(pod, "shop", ipv4=address, identity_id=identity, labels=labels)
            )
        yield fake


@pytest.fixture(scope="session")
def dump() -> dict[str, Any]:
    return run_dump()


@pytest.fixture
def make_rig(dump: dict[str, Any]) -> Iterator[RigFactory]:
    """make_rig(doc, read_timeout="60s", start_server=True, installed=INSTALLED,
    path="/orders/1") -> Rig (nginx running; ``installed`` is KONG_PLUGINS)."""
    made: list[Rig] = []
    # a short prefix: Unix socket paths are limited to 107 bytes
    prefixes: list[Path] = []

    def factory(
        doc: Mapping[str, Any],
        *,
        read_timeout: str = "60s",
        start_server: bool = True,
        installed: tuple[str, ...] = INSTALLED,
        path: str = "/orders/1",
    ) -> Rig:
        prefix = Path(tempfile.mkdtemp(prefix="rig-"))
        prefixes.append(prefix)
        server = PluginServer(prefix)
        nginx = Nginx(
            prefix,
            Declarative(doc, dump, installed).to_rig(server.socket),
            read_timeout=read_timeout,
        )
        rig = Rig(nginx, server, path)
        made.append(rig)
        if start_server:
            server.start()
        nginx.start()
        return rig

    yield factory
    for rig in made:
        rig.nginx.stop()
        rig.server.close()
    for prefix in prefixes:
        shutil.rmtree(prefix, ignore_errors=True)

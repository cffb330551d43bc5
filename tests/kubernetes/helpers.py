"""Small helpers shared by the kubernetes source tests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from kong_cilium_identity.identity.model import Lookup, LookupStatus, Peer
from kong_cilium_identity.identity.sources.kubernetes import KubernetesSource
from tests.kit.fake_kube import cilium_endpoint
from tests.shared_captures import real_capture, shared_path

REAL_CEP = ("k8s-crd", "ciliumendpoint-v1.15.0-rc.1-wcni-kind.json")
REAL_CES = ("k8s-crd", "ciliumendpointslice-wluo-2024.yaml")


def shared_file(relative: str) -> Path:
    """A file of ``../shared`` beside the repository (as CI clones it); the test is
    skipped, naming the path, when it is absent."""
    return shared_path(*relative.split("/"))


def load_real_cep() -> dict[str, Any]:
    """The captured ``kubectl get ciliumendpoint wluo-mvz4t -o json`` from ``../shared``
    (the calling test is skipped when it is not there)."""
    text = real_capture(*REAL_CEP).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def load_real_ces() -> dict[str, Any]:
    """The captured ``kubectl get ces ces-g2mw9wrrx-chnfb -o yaml`` (identity 6704)."""
    text = real_capture(*REAL_CES).read_text(encoding="utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def wluo_endpoint() -> dict[str, Any]:
    """Our own CiliumEndpoint for pod ``default/wluo-mvz4t`` at 10.0.1.200 (identity 48861,
    ``k8s:app=wluo``, service account from the policy label as Cilium 1.15 reports it)."""
    return cilium_endpoint(
        "wluo-mvz4t",
        ipv4="10.0.1.200",
        identity_id=48861,
        labels=[
            "k8s:app=wluo",
            "k8s:io.cilium.k8s.policy.serviceaccount=default",
            "k8s:io.kubernetes.pod.namespace=default",
        ],
    )


# Quick retries and a short server-side watch timeout keep the suite fast.
FAST = {
    "backoff_initial": 0.02,
    "backoff_max": 0.1,
    "request_timeout": 2,
    "watch_timeout": 30,
    "max_stale": 60,
}


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.005)


def ask(source: KubernetesSource, address: str) -> Lookup:
    return source.lookup(Peer(address), timeout=1.0)


def found_id(source: KubernetesSource, address: str) -> int | None:
    answer = ask(source, address)
    if answer.status is LookupStatus.FOUND and answer.identity is not None:
        return answer.identity.id
    return None


def synced_at(source: KubernetesSource, version: int) -> Callable[[], bool]:
    """True once the index has applied everything up to ``version``."""

    def check() -> bool:
        applied = source.index.resource_version
        return applied is not None and int(applied) >= version

    return check

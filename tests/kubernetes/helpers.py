"""Small helpers shared by the kubernetes source tests."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kong_cilium_identity.identity.model import Lookup, LookupStatus, Peer
from kong_cilium_identity.identity.sources.kubernetes import KubernetesSource

REPO_ROOT = Path(__file__).resolve().parents[2]
# ``../shared`` beside the repository; a checkout elsewhere may name it in this variable.
SHARED = Path(os.environ.get("KONG_CILIUM_IDENTITY_SHARED") or REPO_ROOT.parent / "shared")
REAL_CEP = "k8s-crd/ciliumendpoint-v1.15.0-rc.1-wcni-kind.json"
REAL_CES = "k8s-crd/ciliumendpointslice-wluo-2024.yaml"


def shared_file(relative: str) -> Path:
    """A file of ``../shared`` beside the repository (as CI clones it); the test is
    skipped, naming the path, when it is absent."""
    path = SHARED / relative
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared fixtures are not beside the repository)")
    return path


def load_real_cep() -> dict[str, Any]:
    """The captured ``kubectl get ciliumendpoint wluo-mvz4t -o json``."""
    text = shared_file(f"fixtures/real/{REAL_CEP}").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def load_real_ces() -> dict[str, Any]:
    """The captured ``kubectl get ces ces-g2mw9wrrx-chnfb -o yaml`` (identity 6704)."""
    text = shared_file(f"fixtures/real/{REAL_CES}").read_text(encoding="utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    return data


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

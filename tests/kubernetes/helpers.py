"""Small helpers shared by the kubernetes source tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from kong_cilium_identity.identity.model import Lookup, LookupStatus, Peer
from kong_cilium_identity.identity.sources.kubernetes import KubernetesSource

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

"""The hook functions other modules call, read back from the live registry."""

from __future__ import annotations

import gc
import threading

from prometheus_client import REGISTRY

from kong_cilium_identity.identity.model import Lookup
from kong_cilium_identity.ops import metrics


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


class Index:
    """Stands in for an endpoint index: anything with a length."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def test_endpoint_index_size_is_read_at_scrape_time() -> None:
    first, second = Index(3), Index(4)
    metrics.track_endpoint_index("ciliumendpointslices-test", first)
    metrics.track_endpoint_index("ciliumendpointslices-test", second)
    name = "cilium_identity_endpoint_index_entries"
    assert sample(name, resource="ciliumendpointslices-test") == 7
    first.size = 10
    assert sample(name, resource="ciliumendpointslices-test") == 14
    del first, second
    gc.collect()
    assert sample(name, resource="ciliumendpointslices-test") is None  # index gone


def test_watch_counters() -> None:
    before = sample("cilium_identity_watch_relists_total", resource="ciliumendpoints") or 0
    metrics.watch_relisted("ciliumendpoints")
    metrics.watch_relisted("ciliumendpoints")
    assert sample("cilium_identity_watch_relists_total", resource="ciliumendpoints") == before + 2
    labels = {"resource": "ciliumidentities", "cause": "expired"}
    restarts = sample("cilium_identity_watch_restarts_total", **labels) or 0
    metrics.watch_restarted("ciliumidentities", "expired")
    assert sample("cilium_identity_watch_restarts_total", **labels) == restarts + 1


class Follower:
    def __init__(self) -> None:
        self.connected = threading.Event()


def test_hubble_follow_state() -> None:
    name = "cilium_identity_hubble_follow_streams"
    base_up = sample(name, state="connected") or 0
    base_down = sample(name, state="disconnected") or 0
    follower = Follower()
    metrics.track_hubble_follower(follower)
    assert sample(name, state="disconnected") == base_down + 1
    follower.connected.set()
    assert sample(name, state="connected") == base_up + 1
    assert sample(name, state="disconnected") == base_down
    restarts = sample("cilium_identity_hubble_follow_restarts_total") or 0
    metrics.hubble_follow_restarted()
    assert sample("cilium_identity_hubble_follow_restarts_total") == restarts + 1
    del follower
    gc.collect()
    assert sample(name, state="connected") == base_up


class Broken:
    name = "broken-test"

    def ready(self) -> bool:
        raise RuntimeError("readiness check failed")


def test_a_source_whose_readiness_raises_is_down() -> None:
    source = Broken()
    metrics.track_sources([source])
    metrics.observe_lookup("broken-test", Lookup.unknown("broken-test"), 0.001)
    assert sample("cilium_identity_source_synced", source="broken-test") == 0
    assert sample("cilium_identity_source_up", source="broken-test") == 0
    metrics.untrack_sources([source])


def test_consecutive_failures_reset_on_success() -> None:
    name = "cilium_identity_source_consecutive_failures"
    for _ in range(3):
        metrics.observe_lookup("flaky-test", Lookup.unavailable("flaky-test", "down"), 0.01)
    assert sample(name, source="flaky-test") == 3
    metrics.observe_lookup("flaky-test", Lookup.unknown("flaky-test"), 0.01)
    assert sample(name, source="flaky-test") == 0

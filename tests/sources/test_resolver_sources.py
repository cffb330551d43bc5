"""Both sources behind the shared resolver and the decision core.

Until the plugin server and the Kong harness land, these show the request outcomes one
level below the wire: resolver lookup (cache, singleflight, timeouts) + ``decide``.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kong_cilium_identity.identity.model import LookupStatus, Peer
from kong_cilium_identity.identity.resolver import (
    RESOLVERS,
    SOURCES,
    CacheSettings,
    Resolver,
    ResolverSettings,
)
from kong_cilium_identity.identity.sources import SOURCE_KINDS
from kong_cilium_identity.identity.sources.hubble import CHANNELS
from kong_cilium_identity.policy.decision import Consumer, Facts, Policy, Reason, decide
from tests.kit.fake_agent import FakeAgent
from tests.kit.fake_relay import FakeRelay, make_flow

CHECKOUT = ["k8s:app=checkout", "k8s:io.kubernetes.pod.namespace=shop"]
OTHER = ["k8s:app=other", "k8s:io.kubernetes.pod.namespace=shop"]
# address -> (identity, labels, pod name as the source reports it)
WORKLOADS: dict[str, tuple[int, list[str], str]] = {
    "10.0.0.5": (48861, CHECKOUT, "checkout-1"),
    "10.0.0.6": (50000, OTHER, "other-1"),
    "10.0.0.11": (1, ["reserved:host"], ""),
    "10.0.0.12": (2, ["reserved:world"], "node-local-dns-x"),  # Hubble's caveat
    "10.0.0.13": (6, ["reserved:remote-node"], ""),
    "10.0.0.14": (8, ["reserved:ingress"], ""),
}
POLICY = Policy.build(bindings=[("alice", ["k8s:app=checkout"])])
ALICE = Facts(consumer=Consumer(id="c-1", username="alice"), has_credential=True)


@dataclass
class Backend:
    """One fake upstream with the handful of controls these tests need."""

    kind: str
    relay: FakeRelay | None = None
    agent: FakeAgent | None = None
    port: int = 0

    def record(self) -> dict[str, Any]:
        if self.relay is not None:
            return {"address": self.relay.address, "reconnect_backoff_max": 0.2}
        assert self.agent is not None
        return {"socket_path": str(self.agent.socket_path)}

    def add(self, address: str, identity: int, labels: list[str], pod: str) -> None:
        if self.relay is not None:
            self.relay.publish(make_flow(address, identity, labels, namespace="shop", pod=pod))
        else:
            assert self.agent is not None
            self.agent.add(address, identity, labels, namespace="shop", pod=pod or None)

    def calls(self) -> int:
        if self.relay is not None:
            return self.relay.request_count
        assert self.agent is not None
        return self.agent.requests("/v1/ip")

    def slow(self, delay: float) -> None:
        if self.relay is not None:
            self.relay.delay = delay
        else:
            assert self.agent is not None
            self.agent.set_mode("ok", delay)

    def stall(self) -> None:
        if self.relay is not None:
            self.relay.mode = "stall"
        else:
            assert self.agent is not None
            self.agent.set_mode("stall")

    def down(self) -> None:
        (self.relay or self.agent).stop()  # type: ignore[union-attr]

    def up(self) -> None:
        if self.relay is not None:
            self.relay.start(self.port)
        else:
            assert self.agent is not None
            self.agent.start()


@pytest.fixture(params=["hubble", "agent"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "hubble":
        relay = FakeRelay().start()
        try:
            yield Backend("hubble", relay=relay, port=relay.port)
        finally:
            relay.stop()
    else:
        with tempfile.TemporaryDirectory(prefix="kci-") as scratch:
            agent = FakeAgent(Path(scratch) / "cilium.sock").start()
            try:
                yield Backend("agent", agent=agent)
            finally:
                agent.stop()


def settings_for(backend: Backend, timeout: float = 2.0, **record: Any) -> ResolverSettings:
    parsed = SOURCE_KINDS[backend.kind].parse({**backend.record(), **record})
    return ResolverSettings(
        sources=((backend.kind, parsed),),
        timeout=timeout,
        cache=CacheSettings(ttl=5.0, negative_ttl=1.0),
    )


@pytest.fixture
def resolver_for(backend: Backend) -> Iterator[Any]:
    acquired: list[ResolverSettings] = []

    def acquire(timeout: float = 2.0, **record: Any) -> Resolver:
        settings = settings_for(backend, timeout, **record)
        acquired.append(settings)
        return RESOLVERS.acquire(settings)

    yield acquire
    for settings in acquired:
        RESOLVERS.release(settings)


def outcome(resolver: Resolver, address: str) -> tuple[int, Reason]:
    decision = decide(ALICE, resolver.lookup(Peer(address)), POLICY)
    return decision.status, decision.reason


def test_request_outcomes(backend: Backend, resolver_for: Any) -> None:
    for address, (identity, labels, pod) in WORKLOADS.items():
        backend.add(address, identity, labels, pod)
    resolver = resolver_for()
    assert outcome(resolver, "10.0.0.5") == (200, Reason.ALLOWED)
    assert outcome(resolver, "10.0.0.6") == (403, Reason.IDENTITY_MISMATCH)
    assert outcome(resolver, "10.0.0.7") == (403, Reason.IDENTITY_UNKNOWN)
    for reserved_address in ("10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14"):
        assert outcome(resolver, reserved_address) == (403, Reason.IDENTITY_RESERVED)


def test_source_down_is_503_and_recovers(backend: Backend, resolver_for: Any) -> None:
    backend.add("10.0.0.5", 48861, CHECKOUT, "checkout-1")
    resolver = resolver_for(timeout=0.5)
    backend.down()
    assert outcome(resolver, "10.0.0.5") == (503, Reason.SOURCE_UNAVAILABLE)
    backend.up()
    deadline = threading.Event()
    for _ in range(200):  # gRPC reconnects with backoff; failures are never cached
        if outcome(resolver, "10.0.0.5") == (200, Reason.ALLOWED):
            break
        deadline.wait(0.05)
    assert outcome(resolver, "10.0.0.5") == (200, Reason.ALLOWED)


def test_slow_source_is_503_not_a_hang(backend: Backend, resolver_for: Any) -> None:
    backend.add("10.0.0.5", 48861, CHECKOUT, "checkout-1")
    backend.stall()
    resolver = resolver_for(timeout=0.3)
    status, reason = outcome(resolver, "10.0.0.5")
    assert (status, reason) == (503, Reason.SOURCE_UNAVAILABLE)


def test_thousand_concurrent_misses_make_one_upstream_call(
    backend: Backend, resolver_for: Any
) -> None:
    backend.add("10.0.0.5", 48861, CHECKOUT, "checkout-1")
    backend.slow(0.3)  # keep the first call in flight while the others arrive
    resolver = resolver_for(timeout=10.0)
    before = backend.calls()
    start = threading.Barrier(1000)
    statuses: list[LookupStatus] = []
    lock = threading.Lock()

    def ask() -> None:
        start.wait()
        status = resolver.lookup(Peer("10.0.0.5")).status
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=ask) for _ in range(1000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [LookupStatus.FOUND] * 1000
    assert backend.calls() - before == 1


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _threads() -> list[str]:
    """Our threads. The fakes' own are skipped, and so is the resolver's lookup pool,
    which is process-wide and bounded (32), not per config."""
    return sorted(
        t.name
        for t in threading.enumerate()
        if not t.name.startswith(("cilium-identity-lookup", "fake-"))
    )


def _settled(check: Any, within: float = 5.0) -> bool:
    """Wait for asynchronous teardown (sockets close on both ends a moment apart)."""
    waiter = threading.Event()
    for _ in range(int(within / 0.05)):
        if check():
            return True
        waiter.wait(0.05)
    return bool(check())


def test_config_reload_leaks_no_thread_channel_or_socket(tmp_path: Path) -> None:
    with (
        FakeRelay().start() as relay,
        tempfile.TemporaryDirectory(prefix="kci-") as scratch,
    ):
        agent = FakeAgent(Path(scratch) / "cilium.sock").start()
        agent.add("10.0.0.5", 48861, CHECKOUT)
        relay.publish(make_flow("10.0.0.5", 48861, CHECKOUT))

        def reload(generation: int) -> None:
            hubble = SOURCE_KINDS["hubble"].parse(
                {
                    "address": relay.address,
                    "flows": generation + 1,  # other settings: a new source each time
                    "reconnect_backoff_max": generation + 1,  # ... and a new channel
                    "follow": True,
                    "follow_destination_pods": ["kong/"],
                }
            )
            agent_settings = SOURCE_KINDS["agent"].parse(
                {"socket_path": str(agent.socket_path), "identity_cache_ttl": generation + 1}
            )
            settings = ResolverSettings(
                sources=(("agent", agent_settings), ("hubble", hubble)),
                require_agreement=True,
            )
            resolver = RESOLVERS.acquire(settings)
            assert resolver.lookup(Peer("10.0.0.5")).status is LookupStatus.FOUND
            RESOLVERS.release(settings)

        try:
            reload(0)  # warm up process-wide pieces (gRPC core, lookup pool)
            threads, fds = _threads(), _open_fds()
            pools = (len(SOURCES), len(RESOLVERS), len(CHANNELS))
            for generation in range(1, 6):
                reload(generation)
            assert (len(SOURCES), len(RESOLVERS), len(CHANNELS)) == pools
            assert _settled(lambda: _threads() == threads), (_threads(), threads)
            assert _settled(lambda: _open_fds() <= fds), (_open_fds(), fds)
        finally:
            agent.stop()

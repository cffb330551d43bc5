"""The resolver: chain order, agreement, cache, singleflight, timeouts, sharing."""

import threading
import time
from collections.abc import Callable

import pytest

from kong_cilium_identity.identity.model import Identity, Lookup, LookupStatus, Peer
from kong_cilium_identity.identity.resolver import (
    CachedSource,
    CacheSettings,
    Resolver,
    ResolverSettings,
)
from kong_cilium_identity.pools import SharedPool

A = Identity.build(50000, ["k8s:app=a"])
B = Identity.build(50001, ["k8s:app=b"])


class ScriptedSource:
    """A source whose answer is a function of the call count."""

    def __init__(self, name: str, answer: Callable[[int], Lookup], delay: float = 0.0) -> None:
        self.name = name
        self.cacheable = True
        self.calls = 0
        self._answer = answer
        self._delay = delay
        self._lock = threading.Lock()

    def lookup(self, peer: Peer, timeout: float) -> Lookup:
        with self._lock:
            self.calls += 1
            count = self.calls
        time.sleep(self._delay)
        return self._answer(count)

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        pass


def found(identity: Identity) -> Callable[[int], Lookup]:
    return lambda _: Lookup.found(identity, "s")


def unknown(_: int) -> Lookup:
    return Lookup.unknown("s", "none")


def down(_: int) -> Lookup:
    return Lookup.unavailable("s", "down")


def resolver(*sources: ScriptedSource, agreement: bool = False) -> Resolver:
    return Resolver(list(sources), ResolverSettings((), timeout=0.5, require_agreement=agreement))


PEER = Peer("10.0.0.5")


@pytest.mark.parametrize(
    ("answers", "status", "identity"),
    [
        ([found(A)], LookupStatus.FOUND, A),
        ([unknown, found(A)], LookupStatus.FOUND, A),
        ([down, found(A)], LookupStatus.FOUND, A),
        ([found(A), found(B)], LookupStatus.FOUND, A),  # first answer wins
        ([unknown, down], LookupStatus.UNKNOWN, None),
        ([down, down], LookupStatus.UNAVAILABLE, None),
        ([lambda _: Lookup.ambiguous("s", "two"), found(A)], LookupStatus.AMBIGUOUS, None),
    ],
)
def test_chain(
    answers: list[Callable[[int], Lookup]], status: LookupStatus, identity: Identity | None
) -> None:
    sources = [ScriptedSource(f"s{i}", answer) for i, answer in enumerate(answers)]
    result = resolver(*sources).lookup(PEER)
    assert result.status is status
    assert result.identity == identity


@pytest.mark.parametrize(
    ("answers", "status"),
    [
        ([found(A), found(A)], LookupStatus.FOUND),
        ([found(A), found(B)], LookupStatus.AMBIGUOUS),
        ([found(A), unknown], LookupStatus.AMBIGUOUS),
        ([unknown, unknown], LookupStatus.UNKNOWN),
        ([found(A), down], LookupStatus.UNAVAILABLE),
    ],
)
def test_require_agreement(answers: list[Callable[[int], Lookup]], status: LookupStatus) -> None:
    sources = [ScriptedSource(f"s{i}", answer) for i, answer in enumerate(answers)]
    assert resolver(*sources, agreement=True).lookup(PEER).status is status


def test_raising_source_fails_closed() -> None:
    def explode(_: int) -> Lookup:
        raise RuntimeError("boom")

    result = resolver(ScriptedSource("s", explode)).lookup(PEER)
    assert result.status is LookupStatus.UNAVAILABLE and "boom" in result.detail


def cached(source: ScriptedSource, ttl: float = 5, negative_ttl: float = 1) -> CachedSource:
    return CachedSource(source, CacheSettings(ttl=ttl, negative_ttl=negative_ttl, size=100))


def test_hits_are_cached_errors_are_not() -> None:
    flaky = ScriptedSource("s", lambda n: down(n) if n == 1 else Lookup.found(A, "s"))
    source = cached(flaky)
    assert source.lookup(PEER, 0.5).status is LookupStatus.UNAVAILABLE
    assert source.lookup(PEER, 0.5).status is LookupStatus.FOUND
    assert source.lookup(PEER, 0.5).status is LookupStatus.FOUND
    assert flaky.calls == 2


def test_negative_answers_expire_sooner() -> None:
    inner = ScriptedSource("s", unknown)
    source = cached(inner, ttl=60, negative_ttl=0.05)
    source.lookup(PEER, 0.5)
    source.lookup(PEER, 0.5)
    assert inner.calls == 1
    time.sleep(0.1)
    source.lookup(PEER, 0.5)
    assert inner.calls == 2


def test_singleflight() -> None:
    inner = ScriptedSource("s", found(A), delay=0.2)
    source = cached(inner)
    results: list[Lookup] = []
    threads = [
        threading.Thread(target=lambda: results.append(source.lookup(PEER, 2.0)))
        for _ in range(200)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert inner.calls == 1
    assert len(results) == 200 and all(r.identity == A for r in results)


def test_slow_source_times_out_and_a_later_call_retries() -> None:
    inner = ScriptedSource("s", found(A), delay=0.3)
    source = cached(inner)
    started = time.monotonic()
    result = source.lookup(PEER, 0.05)
    assert result.status is LookupStatus.UNAVAILABLE
    assert time.monotonic() - started < 0.25
    time.sleep(0.35)  # the slow call finished and filled the cache
    assert source.lookup(PEER, 0.05).status is LookupStatus.FOUND


def test_shared_pool_counts_references() -> None:
    closed: list[str] = []
    pool: SharedPool[str, str] = SharedPool(lambda key: key.upper(), closed.append)
    assert pool.acquire("a") == "A" and pool.acquire("a") == "A"
    pool.release("a")
    assert closed == [] and len(pool) == 1
    pool.release("a")
    assert closed == ["A"] and len(pool) == 0


class GatedSource:
    """Call n waits for gates[n], then gives answers[n]."""

    def __init__(self, answers: list[Lookup]) -> None:
        self.name = "s"
        self.cacheable = True
        self.calls = 0
        self.answers = answers
        self.gates = [threading.Event() for _ in answers]
        self._lock = threading.Lock()

    def lookup(self, peer: Peer, timeout: float) -> Lookup:
        with self._lock:
            number = self.calls
            self.calls += 1
        self.gates[number].wait(10)
        return self.answers[number]

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        pass


def test_a_superseded_late_answer_neither_ends_nor_overwrites_the_newer_call() -> None:
    inner = GatedSource([Lookup.found(A, "s"), Lookup.found(B, "s")])
    source = CachedSource(inner, CacheSettings(ttl=60, negative_ttl=60, size=100))
    assert source.lookup(PEER, 0.05).status is LookupStatus.UNAVAILABLE  # call 1 hangs
    first_call = source._inflight[PEER.address][0]
    second: list[Lookup] = []
    waiter = threading.Thread(target=lambda: second.append(source.lookup(PEER, 10.0)))
    waiter.start()
    while inner.calls < 2:  # call 2 started: call 1 outlived its timeout
        time.sleep(0.01)
    inner.gates[0].set()
    first_call.result(10)
    # Call 1's answer came after call 2 was asked; it must not stand in for call 2.
    third = source.lookup(PEER, 0.05)
    assert third.status is LookupStatus.UNAVAILABLE  # joined call 2, still running
    assert inner.calls == 2
    inner.gates[1].set()
    waiter.join()
    assert second[0].identity == B
    assert source.lookup(PEER, 0.05).identity == B
    assert inner.calls == 2


def test_shared_pool_release_from_inside_create_does_not_deadlock() -> None:
    """Plugin instances release their resolver from a weakref finalizer, which the cyclic
    garbage collector may run on any allocation, including inside ``acquire``'s create."""
    closed: list[str] = []
    pools: list[SharedPool[str, str]] = []

    def create(key: str) -> str:
        if key == "new":
            pools[0].release("old")  # what a finalizer run by the GC here would do
        return key

    pool: SharedPool[str, str] = SharedPool(create, closed.append)
    pools.append(pool)
    pool.acquire("old")
    worker = threading.Thread(target=pool.acquire, args=("new",), daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive()
    assert closed == ["old"] and len(pool) == 1


def test_calls_queued_past_their_deadline_never_reach_the_source() -> None:
    inner = ScriptedSource("s", found(A), delay=0.3)
    source = cached(inner)
    results: list[Lookup] = []
    threads = [
        threading.Thread(
            target=lambda n=n: results.append(source.lookup(Peer(f"10.1.0.{n}"), 0.05))
        )
        for n in range(40)  # more distinct addresses than the 32 lookup workers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(0.4)  # the 32 running calls finish; the 8 queued ones start late
    assert all(r.status is LookupStatus.UNAVAILABLE for r in results)
    assert 0 < inner.calls <= 32  # only calls a worker picked up in time reach the source


def test_pending_lookups_are_bounded() -> None:
    inner = ScriptedSource("s", found(A), delay=0.3)
    source = CachedSource(inner, CacheSettings(max_pending=4))
    for n in range(4):
        source.lookup(Peer(f"10.2.0.{n}"), 0.01)
    refused = source.lookup(Peer("10.2.0.99"), 1.0)
    assert refused.status is LookupStatus.UNAVAILABLE and "pending" in refused.detail
    time.sleep(0.4)
    assert inner.calls == 4
    assert source.lookup(Peer("10.2.0.99"), 1.0).status is LookupStatus.FOUND

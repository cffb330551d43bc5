"""The resolver: chain order, agreement, cache, singleflight, timeouts, sharing.

Time is a fake clock moved by hand and slow sources wait on gates the test opens, so no
test here sleeps or depends on how fast a busy machine schedules threads.
"""

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from kong_cilium_identity.identity.model import Identity, Lookup, LookupStatus, Peer
from kong_cilium_identity.identity.resolver import (
    CachedSource,
    CacheSettings,
    Resolver,
    ResolverSettings,
)
from kong_cilium_identity.pools import SharedPool
from tests.fake_clock import SAFETY, FakeClock

A = Identity.build(50000, ["k8s:app=a"])
B = Identity.build(50001, ["k8s:app=b"])


class ScriptedSource:
    """A source whose answer is a function of the call count; with a ``gate`` every call
    waits until the test opens it."""

    def __init__(
        self, name: str, answer: Callable[[int], Lookup], gate: threading.Event | None = None
    ) -> None:
        self.name = name
        self.cacheable = True
        self.calls = 0
        self._answer = answer
        self._gate = gate
        self._lock = threading.Condition()

    def lookup(self, peer: Peer, timeout: float) -> Lookup:
        with self._lock:
            self.calls += 1
            count = self.calls
            self._lock.notify_all()
        if self._gate is not None:
            assert self._gate.wait(SAFETY), "the test never opened the gate"
        return self._answer(count)

    def until_called(self, count: int) -> None:
        with self._lock:
            assert self._lock.wait_for(lambda: self.calls >= count, SAFETY), self.calls

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        pass


class Call:
    """``source.lookup(peer, timeout)`` on its own thread."""

    def __init__(self, source: CachedSource, peer: Peer, timeout: float) -> None:
        self.result: Lookup | None = None
        self._thread = threading.Thread(target=self._run, args=(source, peer, timeout))
        self._thread.start()

    def _run(self, source: CachedSource, peer: Peer, timeout: float) -> None:
        self.result = source.lookup(peer, timeout)

    def join(self) -> Lookup:
        self._thread.join(SAFETY)
        assert self.result is not None, "the lookup never returned"
        return self.result


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def workers() -> Iterator[ThreadPoolExecutor]:
    """A pool of the test's own: calls left running by other tests cannot delay these."""
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-lookup")
    yield pool
    pool.shutdown(wait=True)


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


def cached(
    source: ScriptedSource,
    clock: FakeClock,
    workers: ThreadPoolExecutor,
    ttl: float = 5,
    negative_ttl: float = 1,
    max_pending: int = 1024,
) -> CachedSource:
    settings = CacheSettings(ttl=ttl, negative_ttl=negative_ttl, size=100, max_pending=max_pending)
    return CachedSource(source, settings, clock=clock, workers=workers)


def test_hits_are_cached_errors_are_not(clock: FakeClock, workers: ThreadPoolExecutor) -> None:
    flaky = ScriptedSource("s", lambda n: down(n) if n == 1 else Lookup.found(A, "s"))
    source = cached(flaky, clock, workers)
    assert source.lookup(PEER, 0.5).status is LookupStatus.UNAVAILABLE
    assert source.lookup(PEER, 0.5).status is LookupStatus.FOUND
    assert source.lookup(PEER, 0.5).status is LookupStatus.FOUND
    assert flaky.calls == 2


def test_answers_expire_after_their_ttl(clock: FakeClock, workers: ThreadPoolExecutor) -> None:
    inner = ScriptedSource("s", lambda n: unknown(n) if n % 2 else Lookup.found(A, "s"))
    source = cached(inner, clock, workers, ttl=60, negative_ttl=0.05)
    assert source.lookup(PEER, 0.5).status is LookupStatus.UNKNOWN
    clock.advance(0.04)
    assert source.lookup(PEER, 0.5).status is LookupStatus.UNKNOWN
    assert inner.calls == 1
    clock.advance(0.02)  # the negative answer expired: call 2 finds A
    assert source.lookup(PEER, 0.5).identity == A
    clock.advance(59.9)
    assert source.lookup(PEER, 0.5).cached is True
    assert inner.calls == 2
    clock.advance(0.2)  # the hit expired too
    assert source.lookup(PEER, 0.5).status is LookupStatus.UNKNOWN
    assert inner.calls == 3


def test_singleflight(clock: FakeClock, workers: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    inner = ScriptedSource("s", found(A), gate)
    source = cached(inner, clock, workers)
    calls = [Call(source, PEER, 2.0) for _ in range(50)]
    clock.until_waiting(50)  # every caller is waiting for the one upstream call
    gate.set()
    results = [call.join() for call in calls]
    assert inner.calls == 1
    assert all(r.identity == A for r in results)
    assert [r.cached for r in results] == [False] * 50


def test_slow_source_times_out_and_a_later_call_retries(
    clock: FakeClock, workers: ThreadPoolExecutor
) -> None:
    gate = threading.Event()
    inner = ScriptedSource("s", found(A), gate)
    source = cached(inner, clock, workers)
    call = Call(source, PEER, 0.05)
    inner.until_called(1)
    clock.until_waiting(1)
    clock.advance(0.04)
    assert clock.waiting() == 1  # not timed out yet
    clock.advance(0.02)
    result = call.join()
    assert result.status is LookupStatus.UNAVAILABLE and "within 0.05s" in result.detail
    pending = source._inflight[PEER.address][0]
    gate.set()  # the slow call finishes and fills the cache
    pending.result(SAFETY)
    assert source.lookup(PEER, 0.05).status is LookupStatus.FOUND
    assert inner.calls == 1


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
        self._lock = threading.Condition()

    def lookup(self, peer: Peer, timeout: float) -> Lookup:
        with self._lock:
            number = self.calls
            self.calls += 1
            self._lock.notify_all()
        assert self.gates[number].wait(SAFETY), "the test never opened the gate"
        return self.answers[number]

    def until_called(self, count: int) -> None:
        with self._lock:
            assert self._lock.wait_for(lambda: self.calls >= count, SAFETY), self.calls

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        pass


def cached_gated(
    source: GatedSource, clock: FakeClock, workers: ThreadPoolExecutor
) -> CachedSource:
    settings = CacheSettings(ttl=60, negative_ttl=60, size=100)
    return CachedSource(source, settings, clock=clock, workers=workers)


def test_a_superseded_late_answer_neither_ends_nor_overwrites_the_newer_call(
    clock: FakeClock, workers: ThreadPoolExecutor
) -> None:
    inner = GatedSource([Lookup.found(A, "s"), Lookup.found(B, "s")])
    source = cached_gated(inner, clock, workers)
    first = Call(source, PEER, 0.05)
    clock.until_waiting(1)
    clock.advance(0.06)
    assert first.join().status is LookupStatus.UNAVAILABLE  # call 1 hangs
    first_call = source._inflight[PEER.address][0]
    second = Call(source, PEER, 10.0)  # call 1 outlived its timeout: call 2 starts
    inner.until_called(2)
    inner.gates[0].set()
    first_call.result(SAFETY)
    # Call 1's answer came after call 2 was asked; it must not stand in for call 2.
    third = Call(source, PEER, 0.05)
    clock.until_waiting(2)
    clock.advance(0.06)
    assert third.join().status is LookupStatus.UNAVAILABLE  # joined call 2, still running
    assert inner.calls == 2
    inner.gates[1].set()
    assert second.join().identity == B
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


def test_calls_queued_past_their_deadline_never_reach_the_source(clock: FakeClock) -> None:
    gate = threading.Event()
    inner = ScriptedSource("s", found(A), gate)
    with ThreadPoolExecutor(max_workers=1) as one_worker:
        source = cached(inner, clock, one_worker)
        running = Call(source, Peer("10.1.0.1"), 0.05)
        inner.until_called(1)  # the only worker is stuck in the source
        queued = Call(source, Peer("10.1.0.2"), 0.05)
        clock.until_waiting(2)
        clock.advance(0.06)
        assert running.join().status is LookupStatus.UNAVAILABLE
        assert queued.join().status is LookupStatus.UNAVAILABLE
        gate.set()  # the worker is free; the queued call starts past its deadline
    assert inner.calls == 1


def test_pending_lookups_are_bounded(clock: FakeClock, workers: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    inner = ScriptedSource("s", found(A), gate)
    source = cached(inner, clock, workers, max_pending=4)
    calls = [Call(source, Peer(f"10.2.0.{n}"), 0.01) for n in range(4)]
    inner.until_called(4)
    clock.until_waiting(4)
    clock.advance(0.02)
    assert all(call.join().status is LookupStatus.UNAVAILABLE for call in calls)
    refused = source.lookup(Peer("10.2.0.99"), 1.0)  # answered at once: nothing queued
    assert refused.status is LookupStatus.UNAVAILABLE and "4 lookups already pending" in (
        refused.detail
    )
    assert inner.calls == 4
    pending = [entry[0] for entry in source._inflight.values()]
    gate.set()
    for future in pending:
        future.result(SAFETY)
    assert source.lookup(Peer("10.2.0.99"), 1.0).status is LookupStatus.FOUND
    assert inner.calls == 5

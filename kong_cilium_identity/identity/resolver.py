"""The ordered chain of sources behind one lookup, with caching and singleflight.

Chain: sources are asked in order; the first FOUND or AMBIGUOUS answer ends the chain,
UNKNOWN and UNAVAILABLE fall through to the next source. When no source found the
address, the answer is UNKNOWN if any source said so, else UNAVAILABLE (every source
failed: fail closed with 503). With ``require_agreement`` every source is asked and any
disagreement (another identity, or found vs unknown) is AMBIGUOUS; a failed source makes
the whole answer UNAVAILABLE because agreement cannot be proven.

Remote sources (``cacheable``) are wrapped: hits are kept ``ttl`` seconds, UNKNOWN and
AMBIGUOUS answers ``negative_ttl`` seconds, failures never; concurrent misses for one
address share one upstream call, which runs on a bounded worker pool so that a source
that hangs costs the caller its timeout and nothing more. Answers say whether they came
from the cache (``Lookup.cached``).

Every source's answer is timed and counted (``metrics``), and traced when OpenTelemetry is
configured (``tracing``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace

from cachetools import TLRUCache

from kong_cilium_identity.clock import REAL_CLOCK, Clock
from kong_cilium_identity.identity.model import Lookup, LookupStatus, Peer
from kong_cilium_identity.identity.sources import SOURCE_KINDS, Source
from kong_cilium_identity.ops import metrics, tracing
from kong_cilium_identity.pools import SharedPool

_WORKERS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="cilium-identity-lookup")


@dataclass(frozen=True)
class CacheSettings:
    ttl: float = 5.0
    negative_ttl: float = 1.0
    size: int = 65536
    max_pending: int = 1024  # distinct addresses waiting for the source, per source


class CachedSource:
    """A remote source behind a TTL cache with singleflight on misses.

    ``clock`` and ``workers`` are the process's own unless a test hands in others."""

    def __init__(
        self,
        inner: Source,
        settings: CacheSettings,
        *,
        clock: Clock = REAL_CLOCK,
        workers: Executor = _WORKERS,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.cacheable = True
        self._settings = settings
        self._clock = clock
        self._workers = workers
        self._lock = threading.Lock()
        self._cache: TLRUCache[str, Lookup] = TLRUCache(
            maxsize=settings.size, ttu=self._expires_at, timer=clock.monotonic
        )
        self._inflight: dict[str, tuple[Future[Lookup], float, object]] = {}

    def _expires_at(self, _key: str, value: Lookup, now: float) -> float:
        if value.status is LookupStatus.FOUND:
            return now + self._settings.ttl
        return now + self._settings.negative_ttl

    def lookup(self, peer: Peer, timeout: float) -> Lookup:
        key = peer.address
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                metrics.cache_hit(self.name)
                return cached
            future = self._join_or_start(peer, timeout)
        metrics.cache_miss(self.name)
        try:
            return replace(self._clock.result(future, timeout), cached=False)
        except FutureTimeout:
            detail = f"no answer within {timeout:g}s"
            return Lookup(LookupStatus.UNAVAILABLE, None, self.name, detail, cached=False)

    def _join_or_start(self, peer: Peer, timeout: float) -> Future[Lookup]:
        """Called with the lock held. A call that outlived its timeout is not joined.

        While a source hangs, callers give up after their timeout but their calls stay
        queued; past ``max_pending`` addresses no more are queued (the answer is an
        immediate UNAVAILABLE), so a long outage under load cannot grow the queue."""
        now = self._clock.monotonic()
        inflight = self._inflight.get(peer.address)
        if inflight is not None and inflight[1] > now:
            return inflight[0]
        if inflight is None and len(self._inflight) >= self._settings.max_pending:
            overloaded: Future[Lookup] = Future()
            overloaded.set_result(
                Lookup.unavailable(self.name, f"{len(self._inflight)} lookups already pending")
            )
            return overloaded
        ticket = object()
        deadline = now + timeout
        future = self._workers.submit(self._fetch, peer, timeout, ticket, deadline)
        self._inflight[peer.address] = (future, deadline, ticket)
        return future

    def _fetch(self, peer: Peer, timeout: float, ticket: object, deadline: float) -> Lookup:
        if self._clock.monotonic() >= deadline:  # queued behind a hung source: the caller is gone
            result = Lookup.unavailable(self.name, "lookup waited in the queue past its deadline")
        else:
            try:
                result = self.inner.lookup(peer, timeout)
            except Exception as error:  # a source must not raise; if it does, fail closed
                result = Lookup.unavailable(self.name, f"source raised {error!r}")
        with self._lock:
            inflight = self._inflight.get(peer.address)
            if inflight is None or inflight[2] is not ticket:
                return result  # superseded: a newer call for the address was started
            del self._inflight[peer.address]
            if result.status is not LookupStatus.UNAVAILABLE:
                self._cache[peer.address] = replace(result, cached=True)
        return result

    def ready(self) -> bool:
        return self.inner.ready()

    def cache_size(self) -> int:
        """Answers held now (expired ones dropped first)."""
        with self._lock:
            self._cache.expire()
            return len(self._cache)

    def close(self) -> None:
        with self._lock:
            self._cache.clear()


@dataclass(frozen=True)
class ResolverSettings:
    sources: tuple[tuple[str, Hashable], ...]  # (kind name, parsed settings), in order
    timeout: float = 0.5
    require_agreement: bool = False
    cache: CacheSettings = CacheSettings()

    @property
    def wants_ports(self) -> bool:
        """True when a source pins the very connection (Hubble's ``match_ports``): the
        plugin then asks Kong for the client's and its own port (two more PDK calls)."""
        return any(getattr(settings, "match_ports", False) for _, settings in self.sources)


class Resolver:
    def __init__(self, sources: Sequence[Source], settings: ResolverSettings) -> None:
        self.sources = list(sources)
        self.settings = settings
        metrics.track_sources(self.sources)

    def lookup(self, peer: Peer) -> Lookup:
        if self.settings.require_agreement:
            return self._agreed(peer)
        unknown: Lookup | None = None
        failures: list[str] = []
        for source in self.sources:
            result = _ask(source, peer, self.settings.timeout)
            if result.status in (LookupStatus.FOUND, LookupStatus.AMBIGUOUS):
                return result
            if result.status is LookupStatus.UNKNOWN:
                unknown = unknown or result
            else:
                failures.append(f"{source.name}: {result.detail}")
        if unknown is not None:
            return unknown
        return Lookup.unavailable(",".join(s.name for s in self.sources), "; ".join(failures))

    def _agreed(self, peer: Peer) -> Lookup:
        answers = [_ask(source, peer, self.settings.timeout) for source in self.sources]
        failed = [a for a in answers if a.status is LookupStatus.UNAVAILABLE]
        if failed:
            detail = "; ".join(f"{a.source}: {a.detail}" for a in failed)
            return Lookup.unavailable(failed[0].source, f"cannot check agreement: {detail}")
        for answer in answers:
            if answer.status is LookupStatus.AMBIGUOUS:
                return answer
        ids = {a.identity.id if a.identity else None for a in answers}
        if len(ids) > 1:
            seen = ", ".join(
                f"{a.source}={a.identity.id if a.identity else 'unknown'}" for a in answers
            )
            return Lookup.ambiguous("resolver", f"sources disagree: {seen}")
        return answers[0]

    def ready(self) -> bool:
        return all(source.ready() for source in self.sources)


def _ask(source: Source, peer: Peer, timeout: float) -> Lookup:
    if tracing.enabled():
        traceparent = peer.extra.get(tracing.TRACEPARENT)
        return tracing.traced_lookup(
            source.name, peer.address, traceparent, lambda: _timed(source, peer, timeout)
        )
    return _timed(source, peer, timeout)


def _timed(source: Source, peer: Peer, timeout: float) -> Lookup:
    started = time.perf_counter()
    try:
        result = source.lookup(peer, timeout)
    except Exception as error:  # a source must not raise; if it does, fail closed
        result = Lookup.unavailable(source.name, f"source raised {error!r}")
    metrics.observe_lookup(source.name, result, time.perf_counter() - started)
    return result


def _create_source(key: tuple[str, Hashable]) -> Source:
    kind, settings = key
    return SOURCE_KINDS[kind].create(settings)


def _close_source(source: Source) -> None:
    source.close()


SOURCES: SharedPool[tuple[str, Hashable], Source] = SharedPool(_create_source, _close_source)


def _create_resolver(settings: ResolverSettings) -> Resolver:
    sources: list[Source] = []
    try:
        for key in settings.sources:
            source = SOURCES.acquire(key)
            sources.append(CachedSource(source, settings.cache) if source.cacheable else source)
    except Exception:
        for key in settings.sources[: len(sources)]:
            SOURCES.release(key)
        raise
    return Resolver(sources, settings)


def _close_resolver(resolver: Resolver) -> None:
    metrics.untrack_sources(resolver.sources)
    for source in resolver.sources:
        if isinstance(source, CachedSource):
            source.close()
    for key in resolver.settings.sources:
        SOURCES.release(key)


RESOLVERS: SharedPool[ResolverSettings, Resolver] = SharedPool(_create_resolver, _close_resolver)

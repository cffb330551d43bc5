"""Prometheus metrics of the plugin server process.

Every family carries the prefix ``cilium_identity_`` and only bounded labels: reason codes,
modes, source kinds, resource names, phases. Never an address, a consumer or an identity.
Recording is cheap (no PDK call, no I/O on the request path); values that already live in
some object (cache sizes, readiness, index sizes, stream state, in-flight events) are read
when Prometheus scrapes, not kept up to date per request. The families are listed with their
meaning in docs/metrics.md; they are exposed over HTTP only when ``serve --metrics-port`` is
given (``endpoint``, whose listener also answers the probes ``/healthz`` and ``/readyz``).
"""

from __future__ import annotations

import platform
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kong_cilium_identity import __version__
from kong_cilium_identity.identity.model import Lookup, LookupStatus
from kong_cilium_identity.policy.decision import Decision, Reason

PREFIX = "cilium_identity_"
MODES = ("enforce", "monitor")
EXCEPTION_STAGES = ("access", "apply", "phase")
"""Where plugin code raised: inside the access phase (the request is denied with
internal_error), while applying a decision, or out of the phase handler itself."""

DECISIONS = Counter(
    "cilium_identity_decisions",
    "Decisions of the cilium-identity plugin, by reason code and mode",
    ["reason", "mode", "enforced"],
)
LOOKUP_SECONDS = Histogram(
    "cilium_identity_lookup_duration_seconds",
    "Time one identity source took to answer a lookup (cache hits included), by outcome",
    ["source", "outcome"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
CACHE_HITS = Counter(
    "cilium_identity_cache_hits", "Lookups answered from the resolver's cache", ["source"]
)
CACHE_MISSES = Counter(
    "cilium_identity_cache_misses",
    "Lookups the resolver's cache could not answer (the source was asked)",
    ["source"],
)
WATCH_RELISTS = Counter(
    "cilium_identity_watch_relists",
    "Full lists of a watched Kubernetes resource (the first list included)",
    ["resource"],
)
WATCH_RESTARTS = Counter(
    "cilium_identity_watch_restarts",
    "Watches of a Kubernetes resource that ended and were started again, by cause",
    ["resource", "cause"],
)
HUBBLE_FOLLOW_RESTARTS = Counter(
    "cilium_identity_hubble_follow_restarts",
    "Hubble follow streams that were interrupted and reconnected",
)
JWKS_REFRESHES = Counter("cilium_identity_jwks_refreshes", "JWKS fetches that completed")
JWKS_FAILURES = Counter(
    "cilium_identity_jwks_refresh_failures", "JWKS fetches that failed (last good keys kept)"
)
PLUGIN_EXCEPTIONS = Counter(
    "cilium_identity_plugin_exceptions",
    "Exceptions raised by plugin code (each request concerned was refused), by stage",
    ["stage"],
)
DEADLINE_HITS = Counter(
    "cilium_identity_event_deadline_hits",
    "Kong calls the server answered itself at --event-deadline, by phase ('instance' for "
    "instance management)",
    ["phase"],
)
CONNECTIONS = Gauge(
    "cilium_identity_server_connections", "Open connections from Kong's nginx workers"
)
IN_FLIGHT = Gauge(
    "cilium_identity_server_inflight_events", "Kong events the plugin server is working on"
)
BUILD_INFO = Gauge(
    "cilium_identity_build_info",
    "Always 1; the labels say which build runs",
    ["version", "python"],
)
BUILD_INFO.labels(__version__, platform.python_version()).set(1)

# Bounded label sets start at zero so rate() and alerts see the first increment.
for _reason in Reason:
    for _mode in MODES:
        _enforced = _mode == "enforce" and _reason is not Reason.ALLOWED
        DECISIONS.labels(str(_reason), _mode, "true" if _enforced else "false")
for _stage in EXCEPTION_STAGES:
    PLUGIN_EXCEPTIONS.labels(_stage)
DEADLINE_HITS.labels("access")
DEADLINE_HITS.labels("instance")


def count(decision: Decision, mode: str, enforced: bool) -> None:
    DECISIONS.labels(str(decision.reason), mode, "true" if enforced else "false").inc()


# ---------------------------------------------------------------- sources


class TrackedSource(Protocol):
    """What the collector reads from a source at scrape time."""

    name: str

    def ready(self) -> bool: ...


class _Health:
    __slots__ = ("failures", "last_success")

    def __init__(self) -> None:
        self.failures = 0
        self.last_success: float | None = None


_health: dict[str, _Health] = {}
_sources: weakref.WeakSet[TrackedSource] = weakref.WeakSet()
_lock = threading.Lock()
# Labelled children by label values: ``labels()`` validates and locks on every call, a
# dict lookup does not (the hot path pays about 1.5 us less per call).
_latency: dict[tuple[str, LookupStatus], Histogram] = {}
_hits: dict[str, Counter] = {}
_misses: dict[str, Counter] = {}


def observe_lookup(source: str, result: Lookup, seconds: float) -> None:
    """One source's answer to one lookup: latency by outcome, and the source's health (a
    failure is an UNAVAILABLE answer; any other answer is a success)."""
    key = (source, result.status)
    child = _latency.get(key)
    if child is None:
        child = _latency.setdefault(key, LOOKUP_SECONDS.labels(source, result.status.value))
    child.observe(seconds)
    health = _health.get(source)
    if health is None:
        with _lock:
            health = _health.setdefault(source, _Health())
    if result.status is LookupStatus.UNAVAILABLE:
        health.failures += 1
    else:
        health.failures = 0
        health.last_success = time.time()


def cache_hit(source: str) -> None:
    child = _hits.get(source)
    if child is None:
        child = _hits.setdefault(source, CACHE_HITS.labels(source))
    child.inc()


def cache_miss(source: str) -> None:
    child = _misses.get(source)
    if child is None:
        child = _misses.setdefault(source, CACHE_MISSES.labels(source))
    child.inc()


def track_sources(sources: Iterable[TrackedSource]) -> None:
    """Report these sources' readiness (and cache size, if they have ``cache_size()``)."""
    with _lock:
        for source in sources:
            _sources.add(source)


def untrack_sources(sources: Iterable[TrackedSource]) -> None:
    with _lock:
        for source in sources:
            _sources.discard(source)


# ---------------------------------------------------------------- Kubernetes, Hubble


class _Connected(Protocol):
    connected: threading.Event


_indexes: list[tuple[str, weakref.ref[Sized]]] = []
_followers: weakref.WeakSet[_Connected] = weakref.WeakSet()


def track_endpoint_index(resource: str, index: Sized) -> None:
    """Report ``len(index)`` as the number of endpoints indexed from ``resource``
    (``ciliumendpoints``, ``ciliumendpointslices``) while the index lives."""
    with _lock:
        _indexes.append((resource, weakref.ref(index)))


def watch_relisted(resource: str) -> None:
    """A full list of ``resource`` was applied (first list or relist)."""
    WATCH_RELISTS.labels(resource).inc()


def watch_restarted(resource: str, cause: str) -> None:
    """The watch of ``resource`` ended and starts again; ``cause``: ``expired`` (HTTP 410,
    a relist follows) or ``error``."""
    WATCH_RESTARTS.labels(resource, cause).inc()


def track_hubble_follower(follower: _Connected) -> None:
    """Report whether this follow stream is connected (its ``connected`` event)."""
    with _lock:
        _followers.add(follower)


def hubble_follow_restarted() -> None:
    HUBBLE_FOLLOW_RESTARTS.inc()


# ---------------------------------------------------------------- server


def connection_opened() -> None:
    CONNECTIONS.inc()


def connection_closed() -> None:
    CONNECTIONS.dec()


def count_in_flight(events: Callable[[], float]) -> None:
    """Read the number of in-flight events from ``events`` at scrape time."""
    IN_FLIGHT.set_function(events)


def deadline_hit(phase: str) -> None:
    DEADLINE_HITS.labels(phase).inc()


def plugin_exception(stage: str) -> None:
    PLUGIN_EXCEPTIONS.labels(stage).inc()


def jwks_refreshed(ok: bool) -> None:
    (JWKS_REFRESHES if ok else JWKS_FAILURES).inc()


# ---------------------------------------------------------------- scrape-time values


class _StateCollector(Collector):
    """Gauges computed from live objects when Prometheus scrapes."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with _lock:
            sources = list(_sources)
            indexes = [(resource, ref()) for resource, ref in _indexes]
            _indexes[:] = [(r, weakref.ref(i)) for r, i in indexes if i is not None]
            followers = list(_followers)
            health = dict(_health)
        yield from _source_families(sources, health)
        entries = GaugeMetricFamily(
            PREFIX + "endpoint_index_entries",
            "Endpoints held by a Kubernetes endpoint index, by the resource they were read from",
            labels=["resource"],
        )
        sizes: dict[str, int] = {}
        for resource, index in indexes:
            if index is not None:
                sizes[resource] = sizes.get(resource, 0) + len(index)
        for resource, size in sorted(sizes.items()):
            entries.add_metric([resource], size)
        yield entries
        streams = GaugeMetricFamily(
            PREFIX + "hubble_follow_streams",
            "Hubble follow streams, by state (connected: Relay's node status was received)",
            labels=["state"],
        )
        connected = sum(1 for follower in followers if follower.connected.is_set())
        streams.add_metric(["connected"], connected)
        streams.add_metric(["disconnected"], len(followers) - connected)
        yield streams


def _source_families(
    sources: list[TrackedSource], health: dict[str, _Health]
) -> Iterator[GaugeMetricFamily]:
    names = sorted({source.name for source in sources} | set(health))
    synced: dict[str, bool] = {}
    entries: dict[str, int] = {}
    for source in sources:
        synced[source.name] = synced.get(source.name, True) and _ready(source)
        size = getattr(source, "cache_size", None)
        if callable(size):
            entries[source.name] = entries.get(source.name, 0) + int(size())
    families = {
        "up": GaugeMetricFamily(
            PREFIX + "source_up",
            "1 when the source is synced and its latest lookup did not fail",
            labels=["source"],
        ),
        "synced": GaugeMetricFamily(
            PREFIX + "source_synced",
            "1 when the source can answer (first list applied, connected, keys loaded)",
            labels=["source"],
        ),
        "failures": GaugeMetricFamily(
            PREFIX + "source_consecutive_failures",
            "Lookups in a row that the source failed (unavailable)",
            labels=["source"],
        ),
        "success": GaugeMetricFamily(
            PREFIX + "source_last_success_timestamp_seconds",
            "Unix time of the source's latest lookup that did not fail",
            labels=["source"],
        ),
        "entries": GaugeMetricFamily(
            PREFIX + "cache_entries", "Answers held in the resolver's cache", labels=["source"]
        ),
    }
    for name in names:
        state = health.get(name)
        failures = state.failures if state is not None else 0
        is_synced = synced.get(name, False)
        families["synced"].add_metric([name], 1 if is_synced else 0)
        families["up"].add_metric([name], 1 if is_synced and failures == 0 else 0)
        families["failures"].add_metric([name], failures)
        if state is not None and state.last_success is not None:
            families["success"].add_metric([name], state.last_success)
        if name in entries:
            families["entries"].add_metric([name], entries[name])
    yield from families.values()


def _ready(source: TrackedSource) -> bool:
    try:
        return bool(source.ready())
    except Exception:  # a broken readiness check is a source that is not ready
        return False


REGISTRY.register(_StateCollector())

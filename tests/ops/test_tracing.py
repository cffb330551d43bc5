"""OpenTelemetry spans around source lookups, children of Kong's trace via traceparent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the [otel] extra is not installed")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kong_cilium_identity.identity.model import Identity, Lookup, Peer
from kong_cilium_identity.identity.resolver import (
    RESOLVERS,
    CachedSource,
    CacheSettings,
    Resolver,
    ResolverSettings,
)
from kong_cilium_identity.kong.access import facts_request, handle_access
from kong_cilium_identity.ops import tracing
from kong_cilium_identity.schema import Config, parse_config
from tests.ops.companion import CompanionKong, PdkOnlyKong
from tests.scenario import CHECKOUT, CHECKOUT_APP_ENTRY, CHECKOUT_BINDING, CHECKOUT_IP

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
CONFIG: dict[str, Any] = {
    "sources": ["static"],
    "static": {"entries": [CHECKOUT_APP_ENTRY]},
    "bindings": [CHECKOUT_BINDING],
}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)
        provider.shutdown()


@pytest.fixture
def config() -> Iterator[Config]:
    parsed = parse_config(CONFIG)
    RESOLVERS.acquire(parsed.resolver)
    yield parsed
    RESOLVERS.release(parsed.resolver)


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    finished = exporter.get_finished_spans()
    assert len(finished) == 1, finished
    return finished[0]


def test_lookup_span_is_a_child_of_kongs_trace(spans: InMemorySpanExporter, config: Config) -> None:
    kong = CompanionKong(consumer=CHECKOUT, ip=CHECKOUT_IP, traceparent=TRACEPARENT)
    decision = handle_access(kong, config, RESOLVERS.acquire(config.resolver))
    RESOLVERS.release(config.resolver)
    assert decision.allowed
    span = only_span(spans)
    assert span.name == "cilium_identity.lookup static"
    assert span.context is not None and span.parent is not None
    assert span.context.trace_id == int(TRACE_ID, 16)
    assert span.parent.span_id == int(PARENT_ID, 16)
    assert span.attributes is not None
    assert span.attributes["cilium_identity.outcome"] == "found"
    assert span.attributes["cilium_identity.identity"] == 48861
    assert "cilium_identity.cache_hit" not in span.attributes  # static: no cache


def test_the_plugin_asks_kong_for_the_trace_only_while_tracing(
    spans: InMemorySpanExporter, config: Config
) -> None:
    assert facts_request(config, None)["traceparent"] is True
    tracing.use(None)
    assert not tracing.enabled()  # no provider configured in this process
    assert facts_request(config, None)["traceparent"] is False
    kong = CompanionKong(consumer=CHECKOUT, ip=CHECKOUT_IP, traceparent=TRACEPARENT)
    assert handle_access(kong, config, RESOLVERS.acquire(config.resolver)).allowed
    RESOLVERS.release(config.resolver)
    assert spans.get_finished_spans() == ()


def test_pdk_only_path_reads_the_header(spans: InMemorySpanExporter, config: Config) -> None:
    kong = PdkOnlyKong(
        consumer=CHECKOUT,
        credential={"id": "c1"},
        ip=CHECKOUT_IP,
        headers={"traceparent": TRACEPARENT},
    )
    assert handle_access(kong, config, RESOLVERS.acquire(config.resolver)).allowed
    RESOLVERS.release(config.resolver)
    span = only_span(spans)
    assert span.context is not None and span.context.trace_id == int(TRACE_ID, 16)


@pytest.mark.parametrize(
    "value",
    [
        "not-a-traceparent",
        f"00-{TRACE_ID}-{PARENT_ID}",
        f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",
        ["a", "b"],
        42,
    ],
)
def test_malformed_traceparent_starts_a_new_trace(
    spans: InMemorySpanExporter, config: Config, value: Any
) -> None:
    assert tracing.valid_traceparent(value) is None
    kong = CompanionKong(consumer=CHECKOUT, ip=CHECKOUT_IP, traceparent=value)
    assert handle_access(kong, config, RESOLVERS.acquire(config.resolver)).allowed
    RESOLVERS.release(config.resolver)
    span = only_span(spans)
    assert span.parent is None


class Remote:
    name = "agent"
    cacheable = True

    def lookup(self, peer: Peer, timeout: float) -> Lookup:
        return Lookup.found(Identity.build(48861, ["k8s:app=checkout"], source="agent"))

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        pass


def test_cached_and_failed_lookups_are_marked(spans: InMemorySpanExporter) -> None:
    class Down(Remote):
        name = "hubble"

        def lookup(self, peer: Peer, timeout: float) -> Lookup:
            return Lookup.unavailable("hubble", "relay unreachable")

    resolver = Resolver(
        [CachedSource(Down(), CacheSettings()), CachedSource(Remote(), CacheSettings())],
        ResolverSettings((), timeout=1.0),
    )
    peer = Peer(CHECKOUT_IP, extra={tracing.TRACEPARENT: TRACEPARENT})
    assert resolver.lookup(peer).cached is False
    assert resolver.lookup(peer).cached is True
    finished = spans.get_finished_spans()
    by_source = [(s.name.split()[-1], dict(s.attributes or {})) for s in finished]
    assert [name for name, _ in by_source] == ["hubble", "agent", "hubble", "agent"]
    assert [attrs.get("cilium_identity.cache_hit") for _, attrs in by_source] == [
        False,
        False,
        False,
        True,
    ]
    failed = finished[0]
    assert failed.status.status_code.name == "ERROR"
    assert failed.status.description == "relay unreachable"
    assert all(s.context is not None and s.context.trace_id == int(TRACE_ID, 16) for s in finished)

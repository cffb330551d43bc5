"""Optional OpenTelemetry spans around identity source lookups.

Off unless the ``[otel]`` extra is installed *and* a tracer provider is configured: either
the process-wide one (``opentelemetry-instrument kong-cilium-identity serve …`` sets it from
the ``OTEL_*`` environment variables) or one handed to :func:`use`. Otherwise every function
here returns at once and nothing is imported on the request path.

Each span is a child of Kong's trace when the request carries a W3C ``traceparent``
(``00-<trace id>-<span id>-<flags>``): the plugin passes it to the resolver in
``Peer.extra["traceparent"]``. A malformed value starts a new trace; it is never logged.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kong_cilium_identity.identity.model import Lookup, LookupStatus

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

try:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the [otel] extra is not installed
    trace = None  # type: ignore[assignment]

TRACEPARENT = "traceparent"
_TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_SCOPE = "kong_cilium_identity"
RECHECK = 1.0
"""Seconds between looks at the process-wide provider while none is configured."""
_provider: TracerProvider | None = None
_configured = False
_checked_at = float("-inf")


def available() -> bool:
    """True when the OpenTelemetry API is importable."""
    return trace is not None


def use(provider: TracerProvider | None) -> None:
    """Send spans to ``provider`` instead of the process-wide provider (None: go back)."""
    global _provider
    _provider = provider


def enabled() -> bool:
    """True when spans would go somewhere: a provider was given, or the process-wide one
    is configured (not OpenTelemetry's default proxy or no-op provider). The process-wide
    provider can be set once only: once seen configured it stays so; until then it is
    looked at no more than once per ``RECHECK`` seconds (this runs on every request)."""
    global _configured, _checked_at
    if trace is None:
        return False
    if _provider is not None or _configured:
        return True
    now = time.monotonic()
    if now - _checked_at < RECHECK:
        return False
    _checked_at = now
    provider = trace.get_tracer_provider()
    _configured = not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
    return _configured


def valid_traceparent(value: Any) -> str | None:
    """The value when it has the W3C ``traceparent`` shape (version 00 layout), else None."""
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else None
    if isinstance(value, str) and _TRACEPARENT_RE.match(value.strip().lower()):
        return value.strip().lower()
    return None


def traced_lookup(
    source: str, address: str, traceparent: str | None, ask: Callable[[], Lookup]
) -> Lookup:
    """Run ``ask`` inside a span named ``cilium_identity.lookup <source>``."""
    if trace is None:
        return ask()
    provider = _provider or trace.get_tracer_provider()
    tracer = provider.get_tracer(_SCOPE)
    context = None
    if traceparent is not None:
        context = TraceContextTextMapPropagator().extract({TRACEPARENT: traceparent})
    with tracer.start_as_current_span(
        f"cilium_identity.lookup {source}",
        context=context,
        kind=trace.SpanKind.CLIENT,
        attributes={"cilium_identity.source": source, "network.peer.address": address},
    ) as span:
        result = ask()
        span.set_attribute("cilium_identity.outcome", result.status.value)
        if result.cached is not None:
            span.set_attribute("cilium_identity.cache_hit", result.cached)
        if result.identity is not None:
            span.set_attribute("cilium_identity.identity", result.identity.id)
        if result.status is LookupStatus.UNAVAILABLE:
            span.set_status(trace.Status(trace.StatusCode.ERROR, result.detail[:200]))
        return result

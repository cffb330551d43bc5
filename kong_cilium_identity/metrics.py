"""Prometheus metrics of the plugin server process.

Counters are cheap (no PDK call, no I/O on the request path); they are exposed over HTTP
only when ``serve --metrics-port`` is given.
"""

from __future__ import annotations

from prometheus_client import Counter, start_http_server

from kong_cilium_identity.decision import Decision

DECISIONS = Counter(
    "cilium_identity_decisions",
    "Decisions of the cilium-identity plugin, by reason code and mode",
    ["reason", "mode", "enforced"],
)


def count(decision: Decision, mode: str, enforced: bool) -> None:
    DECISIONS.labels(str(decision.reason), mode, "true" if enforced else "false").inc()


def serve_metrics(port: int, address: str = "127.0.0.1") -> None:
    """Expose /metrics on ``address:port`` from a daemon thread."""
    start_http_server(port, addr=address)

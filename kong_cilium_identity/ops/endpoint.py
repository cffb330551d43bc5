"""The process's HTTP endpoint for Prometheus and Kubernetes probes: /metrics, /healthz and
/readyz, served from a daemon thread (``serve --metrics-port``).

Apart from metrics.py so that the metric families, which the sources record into, never
import readiness, which imports the sources.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from kong_cilium_identity.ops.readiness import Verdict, loop_health, sources_readiness


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsServer

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._verdict(self.server.health())
        elif path == "/readyz":
            self._verdict(sources_readiness())
        else:
            encoder, content_type = choose_encoder(self.headers.get("Accept") or "")
            self._send(200, content_type, encoder(REGISTRY))

    def _verdict(self, verdict: Verdict) -> None:
        self._send(verdict.status, "text/plain; charset=utf-8", f"{verdict.text}\n".encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: probes come every few seconds."""


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], health: Callable[[], Verdict]) -> None:
        super().__init__(address, _Handler)
        self.health = health


def serve_metrics(port: int, address: str, socket_path: Path) -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz on ``address:port`` from a daemon thread.

    ``socket_path`` is the plugin socket /healthz sends its GetStatus probe to."""
    server = _MetricsServer((address, port), lambda: loop_health(socket_path))
    threading.Thread(
        target=server.serve_forever, name="cilium-identity-metrics", daemon=True
    ).start()
    return server

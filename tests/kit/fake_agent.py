"""A fake Cilium agent REST API on a Unix socket (HTTP/1.1 keep-alive, base path ``/v1``).

Serves ``GET /v1/ip?cidr=``, ``GET /v1/identity/{id}`` and ``GET /v1/healthz`` with the
agent's JSON keys and status codes (``IPListEntry``: ``cidr``, ``identity``, ``hostIP``,
``encryptKey``, ``metadata{source,namespace,name}``; ``Identity``: ``id``, ``labels``,
``labelsSHA256``). Counts requests and connections; modes make it fail (500), stall,
send garbage, refuse as administratively disabled (403), rate limit (429) or report the
identity storage unreachable (520).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import socket
import socketserver
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

_NOTHING = object()
MODES = ("ok", "fail", "stall", "garbage", "forbidden", "rate_limited", "storage")


@dataclass
class AgentState:
    ip_entries: list[dict[str, Any]] = field(default_factory=list)
    identities: dict[int, list[str]] = field(default_factory=dict)
    # Raw bodies served as they are (e.g. wrongly typed objects), keyed like the requests.
    raw_ip_answers: dict[str, Any] = field(default_factory=dict)  # by cidr query
    raw_identities: dict[int, Any] = field(default_factory=dict)
    mode: str = "ok"
    delay: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def ip_entry(
    cidr: str,
    identity: int,
    *,
    host_ip: str | None = None,
    namespace: str | None = None,
    pod: str | None = None,
    source: str = "custom-resource",
) -> dict[str, Any]:
    """An ``IPListEntry`` as the agent marshals it (omitempty keys left out)."""
    entry: dict[str, Any] = {"cidr": cidr, "identity": identity}
    if host_ip:
        entry["hostIP"] = host_ip
    if namespace or pod:
        entry["metadata"] = {"source": source, "namespace": namespace or "", "name": pod or ""}
    return entry


def identity_model(identity: int, labels: Sequence[str]) -> dict[str, Any]:
    digest = hashlib.sha256("".join(sorted(labels)).encode()).hexdigest()
    return {"id": identity, "labels": sorted(labels), "labelsSHA256": digest}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.state.lock:
            self.server.state.connections += 1
            self.server.open_sockets.add(self.connection)

    def finish(self) -> None:
        with self.server.state.lock:
            self.server.open_sockets.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def address_string(self) -> str:
        return "unix"

    def do_GET(self) -> None:
        state = self.server.state
        url = urllib.parse.urlsplit(self.path)
        with state.lock:
            state.requests[url.path] += 1
            mode, delay = state.mode, state.delay
        if delay:
            time.sleep(delay)
        if mode == "stall":
            self.server.stopping.wait(30)
            self.close_connection = True
            return
        if mode == "garbage":
            self._send(200, b"\x00{not json", "application/json")
            return
        if mode == "forbidden":
            text = b"This API is administratively disabled. Contact your administrator."
            self._send(403, text, "text/plain")
            return
        if mode == "rate_limited":
            self._send(429, b"", "text/plain")
            return
        if mode == "fail":
            self._json(500, "fake agent told to fail")
            return
        if url.path == "/v1/healthz":
            self._json(200, {"cilium": {"state": "Ok", "msg": ""}})
        elif url.path == "/v1/ip":
            self._ip(urllib.parse.parse_qs(url.query).get("cidr", [""])[0])
        elif url.path.startswith("/v1/identity/"):
            if mode == "storage":
                self._json(520, "identity storage unreachable")
                return
            self._identity(url.path.removeprefix("/v1/identity/"))
        else:
            self._send(404, b"", "text/plain")

    def _ip(self, cidr: str) -> None:
        state = self.server.state
        try:
            wanted = ipaddress.ip_network(cidr) if cidr else None
        except ValueError:
            self._json(400, f"invalid CIDR address: {cidr}")
            return
        with state.lock:
            entries = list(state.ip_entries)
            raw = state.raw_ip_answers.get(cidr, _NOTHING)
        if raw is not _NOTHING:
            self._json(200, raw)
            return
        found = [
            entry
            for entry in entries
            if wanted is None or _inside(ipaddress.ip_network(entry["cidr"]), wanted)
        ]
        if found:
            self._json(200, found)
        else:
            self._send(404, b"", "application/json")

    def _identity(self, text: str) -> None:
        try:
            identity = int(text)
        except ValueError:
            self._json(400, f"invalid identity {text!r}")
            return
        with self.server.state.lock:
            labels = self.server.state.identities.get(identity)
            raw = self.server.state.raw_identities.get(identity, _NOTHING)
        if raw is not _NOTHING:
            self._json(200, raw)
        elif labels is None:
            self._send(404, b"", "application/json")
        else:
            self._json(200, identity_model(identity, labels))

    def _json(self, status: int, body: Any) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _inside(entry: Any, wanted: Any) -> bool:
    """Cilium's containsSubnet: the entry's prefix lies inside the filter prefix."""
    return bool(
        entry.version == wanted.version
        and entry.prefixlen >= wanted.prefixlen
        and entry.subnet_of(wanted)
    )


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, state: AgentState) -> None:
        self.state = state
        self.stopping = threading.Event()
        self.open_sockets: set[socket.socket] = set()
        super().__init__(path, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """As ThreadingMixIn does, with threads named for leak checks that skip the fake."""
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="fake-agent-connection",
            daemon=True,
        )
        thread.start()

    def drop_connections(self) -> None:
        """Close every client connection, as a dying agent would."""
        with self.state.lock:
            sockets, self.open_sockets = self.open_sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class FakeAgent:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.state = AgentState()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def add(self, address: str, identity: int, labels: Sequence[str], **metadata: Any) -> FakeAgent:
        """Map one address (as /32 or /128) to an identity with these labels."""
        network = ipaddress.ip_network(address)
        with self.state.lock:
            self.state.ip_entries.append(ip_entry(str(network), identity, **metadata))
            self.state.identities[identity] = list(labels)
        return self

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(mode)
        with self.state.lock:
            self.state.mode, self.state.delay = mode, delay

    def requests(self, path: str) -> int:
        with self.state.lock:
            return self.state.requests[path]

    def drop_connections(self) -> None:
        """Close open client connections (an agent closing idle keep-alive connections)."""
        if self._server is not None:
            self._server.drop_connections()

    def start(self) -> FakeAgent:
        self.socket_path.unlink(missing_ok=True)
        self._server = _Server(str(self.socket_path), self.state)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._server.drop_connections()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None
        self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> FakeAgent:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""A fake Kubernetes API server for ``cilium.io`` discovery, list + watch, on 127.0.0.1.

It speaks the real protocol the kubernetes client uses for cluster-wide custom objects:

- ``GET /apis/cilium.io/<version>``: the APIResourceList of the resources served in that
  version (CiliumEndpoint and CiliumIdentity in ``v2``, CiliumEndpointSlice in
  ``v2alpha1``); a version serving none of them is a 404, as is any resource not served.
- ``GET /apis/cilium.io/<version>/<plural>``: a list with ``metadata.resourceVersion``, paged by
  ``limit``/``continue`` over a consistent snapshot (an expired ``continue`` is a 410).
- ``GET ...?watch=true&resourceVersion=N``: a chunked stream of ``{"type","object"}``
  JSON lines (ADDED, MODIFIED, DELETED, BOOKMARK when ``allowWatchBookmarks``), ended
  cleanly after ``timeoutSeconds``. A version older than the last ``compact()`` gets an
  ERROR event carrying a 410 Status (or, with ``gone_as_status``, an HTTP 410).

Resource versions are one counter shared by every kind, as etcd's are. Tests drive it:
``put``/``delete`` objects, ``bookmark()``, ``compact()``, ``cut_streams()``,
``go_down()`` (connections refused) and ``come_back()`` (same port). Which resources are
served is chosen per server (``served=``), and ``forbid()`` answers one with 403 (RBAC).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

GROUP = "cilium.io"
GROUP_VERSION = "cilium.io/v2"
KINDS = {
    "ciliumendpoints": "CiliumEndpoint",
    "ciliumidentities": "CiliumIdentity",
    "ciliumendpointslices": "CiliumEndpointSlice",
}
PLURALS = {kind: plural for plural, kind in KINDS.items()}
VERSIONS = {"ciliumendpoints": "v2", "ciliumidentities": "v2", "ciliumendpointslices": "v2alpha1"}
# What a cluster with CiliumEndpoints (Cilium's default) serves; slices are opt-in.
DEFAULT_SERVED = ("ciliumendpoints", "ciliumidentities")
ALL_SERVED = tuple(KINDS)
DEFAULT_WATCH_TIMEOUT = 1800
PEER_CHECK = 0.2  # how often an idle watch stream checks that its client is still there


def status_object(code: int, reason: str, message: str) -> dict[str, Any]:
    """A ``meta/v1`` Status, as the API server sends for errors."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def cilium_endpoint(
    name: str,
    namespace: str = "default",
    *,
    ipv4: str | None = None,
    ipv6: str | None = None,
    identity_id: int | None = 48861,
    labels: Iterable[str] | None = None,
    pod_uid: str | None = None,
    state: str = "ready",
    node: str = "172.18.0.3",
    service_account: str | None = None,
) -> dict[str, Any]:
    """A CiliumEndpoint shaped like the real ones (see the captured fixture).

    ``labels`` default to an app label and the namespace label; pass ``()`` for an
    endpoint that carries only the numeric id.
    """
    if labels is None:
        labels = [f"k8s:app={name}", f"k8s:io.kubernetes.pod.namespace={namespace}"]
    pod_uid = pod_uid or str(uuid.uuid4())
    addressing: dict[str, str] = {}
    if ipv4:
        addressing["ipv4"] = ipv4
    if ipv6:
        addressing["ipv6"] = ipv6
    status: dict[str, Any] = {
        "external-identifiers": {
            "k8s-namespace": namespace,
            "k8s-pod-name": name,
            "pod-name": f"{namespace}/{name}",
        },
        "id": 457,
        "networking": {"addressing": [addressing], "node": node},
        "state": state,
    }
    if identity_id is not None:
        status["identity"] = {"id": identity_id, "labels": sorted(labels)}
    if service_account is not None:
        status["service-account"] = service_account
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "CiliumEndpoint",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": pod_uid}],
        },
        "status": status,
    }


def core_endpoint(
    name: str,
    identity_id: int | None,
    *,
    ipv4: str | None = None,
    ipv6: str | None = None,
    node: str = "172.18.0.3",
    pod_uid: str | None = None,
    service_account: str | None = None,
) -> dict[str, Any]:
    """One member of a CiliumEndpointSlice's ``endpoints`` (shaped like the captured slice;
    ``pod-uid`` and ``service-account`` are set only when given, as on newer Cilium)."""
    addressing: dict[str, str] = {}
    if ipv4:
        addressing["ipv4"] = ipv4
    if ipv6:
        addressing["ipv6"] = ipv6
    member: dict[str, Any] = {
        "encryption": {},
        "name": name,
        "networking": {"addressing": [addressing], "node": node},
    }
    if identity_id is not None:
        member["id"] = identity_id
    if pod_uid is not None:
        member["pod-uid"] = pod_uid
    if service_account is not None:
        member["service-account"] = service_account
    return member


def cilium_endpoint_slice(
    name: str, namespace: str, endpoints: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """A CiliumEndpointSlice: cluster-scoped, the namespace is a top-level field."""
    return {
        "apiVersion": f"{GROUP}/{VERSIONS['ciliumendpointslices']}",
        "kind": "CiliumEndpointSlice",
        "metadata": {"name": name},
        "namespace": namespace,
        "endpoints": [dict(member) for member in endpoints],
    }


def cilium_identity(identity_id: int, security_labels: Mapping[str, str]) -> dict[str, Any]:
    """A CiliumIdentity: named by its id, labels in the top-level ``security-labels``."""
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "CiliumIdentity",
        "metadata": {"name": str(identity_id)},
        "security-labels": dict(security_labels),
    }


@dataclass
class _Event:
    version: int
    plural: str
    kind: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    line: bytes


@dataclass
class _Watcher:
    plural: str
    bookmarks: bool
    connection: socket.socket
    cut: bool = False


@dataclass
class _Snapshot:
    version: int
    items: list[bytes]
    created: float = field(default_factory=time.monotonic)


def _key(obj: Mapping[str, Any]) -> str:
    metadata = obj["metadata"]
    return f"{metadata.get('namespace') or ''}/{metadata['name']}"


class FakeKubeApi:
    """The fake server; usable as a context manager."""

    def __init__(
        self,
        *,
        token: str | None = None,
        gone_as_status: bool = False,
        served: Iterable[str] = DEFAULT_SERVED,
    ) -> None:
        self.token = token
        self.gone_as_status = gone_as_status
        self.served = set(served)  # plurals; the others are 404, as without their CRD
        self.forbidden: set[str] = set()  # plurals answered 403, as RBAC would
        self._cond = threading.Condition()
        self._version = 100
        self._compacted = 0
        self._objects: dict[str, dict[str, dict[str, Any]]] = {plural: {} for plural in KINDS}
        self._log: list[_Event] = []
        self._log_base = 0  # sequence number of self._log[0]
        self._watchers: list[_Watcher] = []
        self._connections: set[socket.socket] = set()
        self._snapshots: dict[str, _Snapshot] = {}
        self._failures: list[int | None] = []
        self._server: ThreadingHTTPServer | None = None
        self._port = 0
        self.requests: list[tuple[str, dict[str, str]]] = []

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> FakeKubeApi:
        server = ThreadingHTTPServer(("127.0.0.1", self._port), _Handler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        self._port = server.server_address[1]
        self._server = server
        threading.Thread(
            target=server.serve_forever, args=(0.05,), name="fake-kube", daemon=True
        ).start()  # a short poll: shutdown waits for it (the default is half a second)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def go_down(self) -> None:
        """Stop listening and drop every connection: clients get connection refused."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        self.cut_streams()
        with self._cond:
            connections = list(self._connections)
        for connection in connections:
            _shut(connection)

    def come_back(self) -> None:
        """Listen again on the same port, with the same state."""
        if self._server is None:
            self.start()

    def close(self) -> None:
        self.go_down()

    def __enter__(self) -> FakeKubeApi:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- state changes --------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._version

    def put(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace an object (ADDED or MODIFIED); returns the stored copy."""
        stored = copy.deepcopy(dict(obj))
        plural = PLURALS[stored["kind"]]
        metadata = stored.setdefault("metadata", {})
        with self._cond:
            previous = self._objects[plural].get(_key(stored))
            if previous is not None:
                metadata["uid"] = previous["metadata"]["uid"]
            metadata.setdefault("uid", str(uuid.uuid4()))
            self._version += 1
            metadata["resourceVersion"] = str(self._version)
            self._objects[plural][_key(stored)] = stored
            self._emit(plural, "MODIFIED" if previous is not None else "ADDED", stored)
        return stored

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        """Delete an object (DELETED event carrying its last state at a new version)."""
        plural = PLURALS[kind]
        with self._cond:
            stored = self._objects[plural].pop(f"{namespace or ''}/{name}")
            self._version += 1
            gone = copy.deepcopy(stored)
            gone["metadata"]["resourceVersion"] = str(self._version)
            self._emit(plural, "DELETED", gone)

    def bump(self, count: int = 1) -> None:
        """Advance the version as changes to other resources would."""
        with self._cond:
            self._version += count

    def bookmark(self) -> None:
        """Send a BOOKMARK at the current version to watchers that asked for them."""
        with self._cond:
            for plural, kind in KINDS.items():
                marker = {
                    "kind": kind,
                    "apiVersion": f"{GROUP}/{VERSIONS[plural]}",
                    "metadata": {"resourceVersion": str(self._version)},
                }
                self._emit(plural, "BOOKMARK", marker)

    def compact(self) -> None:
        """Forget history up to now: resuming from an older version is 410 Gone."""
        with self._cond:
            self._compacted = self._version
            self._log_base += len(self._log)
            self._log.clear()
            self._cond.notify_all()

    def cut_streams(self) -> None:
        """Break every open watch stream mid-flight (no terminating chunk)."""
        with self._cond:
            watchers = list(self._watchers)
            for watcher in watchers:
                watcher.cut = True
            self._cond.notify_all()
        for watcher in watchers:
            _shut(watcher.connection)

    def forbid(self, plural: str) -> None:
        """Answer list and watch of ``plural`` with 403 Forbidden from now on."""
        with self._cond:
            self.forbidden.add(plural)

    def fail_next(self, status: int, count: int = 1, after: int = 0) -> None:
        """Serve ``after`` more list/watch requests normally, then answer ``count`` of them
        with an error Status (discovery requests are not counted)."""
        with self._cond:
            self._failures.extend([None] * after + [status] * count)

    def _emit(self, plural: str, kind: str, obj: Mapping[str, Any]) -> None:
        line = json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"
        self._log.append(_Event(self._version, plural, kind, line))
        self._cond.notify_all()

    # -- inspection -----------------------------------------------------------------------

    def objects(self, kind: str) -> dict[str, dict[str, Any]]:
        """Current objects of a kind by ``namespace/name`` (copies)."""
        with self._cond:
            return copy.deepcopy(self._objects[PLURALS[kind]])

    def watchers(self, kind: str) -> int:
        with self._cond:
            return sum(1 for w in self._watchers if w.plural == PLURALS[kind] and not w.cut)

    def wait_for_watchers(self, kind: str, count: int = 1, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.watchers(kind) >= count:
                return True
            time.sleep(0.005)
        return False

    def requests_for(self, plural: str, *, watch: bool) -> list[dict[str, str]]:
        with self._cond:
            return [
                query
                for path, query in self.requests
                if path.endswith("/" + plural) and (query.get("watch") in ("true", "1")) == watch
            ]

    # -- serving (called by the handler) --------------------------------------------------

    def _register(self, connection: socket.socket, add: bool) -> None:
        with self._cond:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _take_failure(self) -> int | None:
        with self._cond:
            return self._failures.pop(0) if self._failures else None

    def _list(self, plural: str, query: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        limit = int(query.get("limit") or 0)
        token = query.get("continue")
        with self._cond:
            if token:
                snapshot = self._snapshots.get(token)
                if snapshot is None or snapshot.version < self._compacted:
                    message = "The provided continue parameter is too old"
                    return 410, status_object(410, "Expired", message)
                start = int(json.loads(base64.urlsafe_b64decode(token))["start"])
            else:
                items = [
                    json.dumps(self._objects[plural][key], separators=(",", ":")).encode()
                    for key in sorted(self._objects[plural])
                ]
                snapshot = _Snapshot(self._version, items)
                start = 0
        end = len(snapshot.items) if limit <= 0 else min(len(snapshot.items), start + limit)
        metadata: dict[str, Any] = {"resourceVersion": str(snapshot.version)}
        if end < len(snapshot.items):
            next_token = base64.urlsafe_b64encode(
                json.dumps({"v": snapshot.version, "start": end, "id": id(snapshot)}).encode()
            ).decode()
            with self._cond:
                self._snapshots[next_token] = snapshot
            metadata["continue"] = next_token
        page = snapshot.items[start:end]
        return 200, {
            "apiVersion": f"{GROUP}/{VERSIONS[plural]}",
            "kind": KINDS[plural] + "List",
            "metadata": metadata,
            "items": page,  # already-encoded objects, spliced in by the handler
        }

    def _discovery(self, version: str) -> tuple[int, dict[str, Any]]:
        """The APIResourceList of one ``cilium.io`` version, or 404 when it serves nothing."""
        with self._cond:
            plurals = sorted(p for p in self.served if VERSIONS[p] == version)
        if not plurals:
            message = f"the server could not find the requested resource ({GROUP}/{version})"
            return 404, status_object(404, "NotFound", message)
        resources = [
            {
                "name": plural,
                "singularName": KINDS[plural].lower(),
                "namespaced": plural == "ciliumendpoints",
                "kind": KINDS[plural],
                "verbs": ["delete", "get", "list", "patch", "create", "update", "watch"],
            }
            for plural in plurals
        ]
        if "ciliumendpoints" in plurals:
            resources.append(
                {
                    "name": "ciliumendpoints/status",
                    "singularName": "",
                    "namespaced": True,
                    "kind": "CiliumEndpoint",
                    "verbs": ["get", "patch", "update"],
                }
            )
        body = {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{GROUP}/{version}",
            "resources": resources,
        }
        return 200, body

    def _start_watch(
        self, plural: str, query: Mapping[str, str], connection: socket.socket
    ) -> tuple[_Watcher, int, list[bytes]] | dict[str, Any]:
        """Register a watcher; returns it, its first log position and initial lines, or a
        410 Status when the version is too old."""
        requested = query.get("resourceVersion") or "0"
        with self._cond:
            watcher = _Watcher(
                plural, query.get("allowWatchBookmarks") in ("true", "1"), connection
            )
            initial: list[bytes] = []
            if requested == "0":
                for key in sorted(self._objects[plural]):
                    event = {"type": "ADDED", "object": self._objects[plural][key]}
                    initial.append(json.dumps(event, separators=(",", ":")).encode() + b"\n")
                position = self._log_base + len(self._log)
            else:
                version = int(requested)
                if version < self._compacted:
                    message = f"too old resource version: {version} ({self._compacted})"
                    return status_object(410, "Expired", message)
                offset = 0
                while offset < len(self._log) and self._log[offset].version <= version:
                    offset += 1
                position = self._log_base + offset
            self._watchers.append(watcher)
            return watcher, position, initial

    def _next_lines(
        self, watcher: _Watcher, position: int, deadline: float
    ) -> tuple[list[bytes], int, bool]:
        """Wait (at most ``PEER_CHECK`` seconds) for events after ``position``; returns
        lines, the new position, and whether the stream goes on. A watcher left behind by
        compaction gets a 410 ERROR event."""
        wake = min(deadline, time.monotonic() + PEER_CHECK)
        with self._cond:
            while True:
                if watcher.cut:
                    return [], position, False
                if position < self._log_base:
                    gone = status_object(410, "Expired", "watch position compacted away")
                    line = json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n"
                    return [line], position, False
                pending = self._log[position - self._log_base :]
                if pending:
                    lines = [
                        event.line
                        for event in pending
                        if event.plural == watcher.plural
                        and (event.kind != "BOOKMARK" or watcher.bookmarks)
                    ]
                    position += len(pending)
                    if lines:
                        return lines, position, True
                    continue
                now = time.monotonic()
                if now >= deadline:
                    return [], position, False
                if now >= wake:
                    return [], position, True
                self._cond.wait(wake - now)

    def _end_watch(self, watcher: _Watcher) -> None:
        with self._cond:
            if watcher in self._watchers:
                self._watchers.remove(watcher)


def _peer_closed(connection: socket.socket) -> bool:
    readable, _, _ = select.select([connection], [], [], 0)
    if not readable:
        return False
    try:
        return connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _shut(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    @property
    def fake(self) -> FakeKubeApi:
        fake: FakeKubeApi = self.server.fake  # type: ignore[attr-defined]
        return fake

    def setup(self) -> None:
        super().setup()
        self.fake._register(self.connection, True)

    def finish(self) -> None:
        self.fake._register(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``fake.requests`` instead."""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        fake = self.fake
        with fake._cond:
            fake.requests.append((parts.path, query))
        if fake.token is not None and self.headers.get("Authorization") != f"Bearer {fake.token}":
            self._send_json(401, status_object(401, "Unauthorized", "Unauthorized"))
            return
        segments = parts.path.strip("/").split("/")
        if segments[:2] != ["apis", GROUP] or len(segments) not in (3, 4):
            self._send_json(404, status_object(404, "NotFound", f"no route for {parts.path}"))
            return
        version = segments[2]
        if len(segments) == 3:
            self._send_json(*fake._discovery(version))
            return
        plural = segments[3]
        with fake._cond:
            served = plural in fake.served and VERSIONS.get(plural) == version
            forbidden = plural in fake.forbidden
        if not served:
            self._send_json(404, status_object(404, "NotFound", f"no route for {parts.path}"))
            return
        if forbidden:
            message = (
                f'{plural}.{GROUP} is forbidden: User "system:serviceaccount:kong:kong" '
                f'cannot list resource "{plural}" in API group "{GROUP}" at the cluster scope'
            )
            self._send_json(403, status_object(403, "Forbidden", message))
            return
        failure = fake._take_failure()
        if failure is not None:
            reason = "Expired" if failure == 410 else "InternalError"
            self._send_json(failure, status_object(failure, reason, "injected failure"))
            return
        if query.get("watch") in ("true", "1"):
            self._watch(plural, query)
        else:
            status, body = fake._list(plural, query)
            self._send_json(status, body)

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        items = body.pop("items", None)
        if items is None:
            data = json.dumps(body).encode()
        else:
            data = json.dumps(body)[:-1].encode() + b',"items":[' + b",".join(items) + b"]}"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _watch(self, plural: str, query: Mapping[str, str]) -> None:
        fake = self.fake
        started = fake._start_watch(plural, query, self.connection)
        if isinstance(started, dict):
            if fake.gone_as_status:
                self._send_json(410, started)
                return
            self._start_stream()
            self._chunk(json.dumps({"type": "ERROR", "object": started}).encode() + b"\n")
            self._chunk(b"")
            return
        watcher, position, initial = started
        timeout = int(query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        deadline = time.monotonic() + timeout
        try:
            self._start_stream()
            if initial:
                self._chunk(b"".join(initial))
            while True:
                lines, position, more = fake._next_lines(watcher, position, deadline)
                if lines:
                    self._chunk(b"".join(lines))
                elif more and _peer_closed(self.connection):
                    watcher.cut = True  # the client went away: stop like the API server
                if not more or watcher.cut:
                    break
            if not watcher.cut:
                self._chunk(b"")
        except OSError:
            self.close_connection = True
        finally:
            fake._end_watch(watcher)
        if watcher.cut:
            self.close_connection = True

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

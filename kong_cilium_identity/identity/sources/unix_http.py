"""A small keep-alive HTTP/1.1 client over a Unix socket, with a deadline per call.

The standard library's ``http.client`` does the protocol; this module only dials the
socket, keeps idle connections for reuse and spreads one deadline over connect, send and
read. (``http.client`` timeouts apply per socket operation, so each step gets what is left.)
"""

from __future__ import annotations

import http.client
import socket
import threading
import time

_STALE_REUSE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class DeadlineExceeded(TimeoutError):
    pass


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def set_timeout(self, seconds: float) -> None:
        self.timeout = seconds
        if self.sock is not None:
            self.sock.settimeout(seconds)


class UnixHTTPPool:
    """GET requests over ``path``; up to ``max_idle`` connections are kept for reuse."""

    def __init__(self, path: str, max_idle: int) -> None:
        self.path = path
        self._max_idle = max_idle
        self._idle: list[UnixHTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False
        self.opened = 0  # connections dialled so far (for tests and status)

    def get(self, target: str, timeout: float) -> tuple[int, bytes]:
        """Return (status, body). Raises OSError/HTTPException/DeadlineExceeded on failure.

        A reused connection the server already closed is retried once on a fresh one.
        """
        deadline = time.monotonic() + timeout
        connection, reused = self._checkout(deadline)
        try:
            return self._exchange(connection, target, deadline)
        except _STALE_REUSE:
            connection.close()
            if not reused:
                raise
        connection = self._dial(deadline)
        return self._exchange(connection, target, deadline)

    def _exchange(
        self, connection: UnixHTTPConnection, target: str, deadline: float
    ) -> tuple[int, bytes]:
        try:
            connection.set_timeout(_left(deadline))
            connection.request("GET", target, headers={"Accept": "application/json"})
            connection.set_timeout(_left(deadline))
            response = connection.getresponse()
            body = response.read()
        except BaseException:
            connection.close()
            raise
        if response.will_close:
            connection.close()
        else:
            self._checkin(connection)
        return response.status, body

    def _checkout(self, deadline: float) -> tuple[UnixHTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._dial(deadline), False

    def _dial(self, deadline: float) -> UnixHTTPConnection:
        connection = UnixHTTPConnection(self.path, _left(deadline))
        with self._lock:
            self.opened += 1
        return connection

    def _checkin(self, connection: UnixHTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _left(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded("deadline exceeded")
    return remaining

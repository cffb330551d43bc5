"""The Unix socket Kong connects to, and msgpack framing on each connection.

Kong sends a concatenated stream of msgpack arrays without length prefixes, one request at
a time per connection (it waits for the reply before reusing a connection). Lua strings
arrive as msgpack ``str`` even when they are not UTF-8 (header values are client bytes), so
text is decoded with ``surrogateescape``: an invalid byte ``0xNN`` becomes the lone surrogate
``U+DCNN`` instead of an exception, and encoding the reply maps it back to the same byte.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import stat
import time
from pathlib import Path
from typing import Any

import msgpack

from kong_cilium_identity.server import protocol

log = logging.getLogger(__name__)

TEXT_ERRORS = "surrogateescape"
SEND_TIMEOUT = 10.0
RECV_CHUNK = 64 * 1024
# The unpacker's buffer starts this big and grows only for larger messages (raw bodies).
# msgpack's default is 1 MiB per connection, whose pages a long-lived keep-alive
# connection touches one by one: RSS would creep up by 1 MiB per pooled connection.
UNPACK_BUFFER = 64 * 1024
# Replies are packed under the runtime's lock, so one packer serves all connections (a
# failed pack resets it).
_PACKER = msgpack.Packer(use_bin_type=True, unicode_errors=TEXT_ERRORS)


class Listener:
    """The listening socket at ``<prefix>/<socket_name>``; a stale socket file is replaced."""

    def __init__(self, path: Path, backlog: int) -> None:
        self.path = path
        _remove_stale_socket(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(backlog)
        self.sock.setblocking(False)

    def accept_all(self) -> list[Connection]:
        accepted: list[Connection] = []
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return accepted
            except OSError as error:
                log.warning("accept failed: %s", error)
                return accepted
            accepted.append(Connection(sock))

    def close(self) -> None:
        self.sock.close()
        _remove_stale_socket(self.path)


def _remove_stale_socket(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class Connection:
    """One connection from Kong's keep-alive pool."""

    __slots__ = ("closed", "sock", "unpacker")

    def __init__(self, sock: socket.socket) -> None:
        # Non-blocking: with a timeout set, CPython polls before every send and recv; the
        # loop reads only readable sockets and a reply nearly always fits the buffer.
        sock.setblocking(False)
        self.sock = sock
        self.closed = False
        self.unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=False,
            unicode_errors=TEXT_ERRORS,
            read_size=UNPACK_BUFFER,
        )

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> list[Any] | None:
        """The complete messages now readable, or None when the connection is gone or sent
        bytes that are not msgpack (the stream cannot be resynchronised)."""
        try:
            chunk = self.sock.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None
        if not chunk:
            return None
        self.unpacker.feed(chunk)
        try:
            return list(self.unpacker)
        except Exception as error:
            # Not just ValueError: a map whose key is an array or a map (valid msgpack,
            # unhashable in Python) raises TypeError. Whatever the decoder raises, this
            # connection is unreadable; it must never take the server down with it.
            log.warning("closing a connection that sent malformed msgpack: %r", error)
            return None

    def reply(self, msgid: Any, result: Any) -> bool:
        """Send a result; a result msgpack cannot encode is a bug in plugin code and is
        reported to the caller as False (nothing sent)."""
        try:
            data = _PACKER.pack([protocol.RESPONSE, msgid, None, result])
        except (TypeError, ValueError, OverflowError) as error:
            log.error("cannot encode the reply to Kong: %s", error)
            return False
        return self._send(data)

    def reply_error(self, msgid: Any, message: str) -> bool:
        return self._send(_PACKER.pack([protocol.RESPONSE, msgid, message, None]))

    def _send(self, data: bytes) -> bool:
        if self.closed:
            return True  # Kong already gave up on this connection; nothing to do.
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            self._drop(error)
            return True
        if sent < len(data):
            try:
                self._send_rest(memoryview(data)[sent:])
            except OSError as error:
                self._drop(error)
        return True

    def _send_rest(self, data: memoryview) -> None:
        """The slow path: Kong's receive buffer is full; wait for it, within a limit."""
        deadline = time.monotonic() + SEND_TIMEOUT
        poller = select.poll()
        poller.register(self.sock, select.POLLOUT)
        while data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("Kong did not read the reply")
            if poller.poll(remaining * 1000):
                try:
                    data = data[self.sock.send(data) :]
                except (BlockingIOError, InterruptedError):
                    continue

    def _drop(self, error: OSError) -> None:
        log.warning("dropping a connection Kong no longer reads: %s", error)
        self.closed = True
        # The event loop still has the socket registered: shut it down so that the loop
        # sees it readable at EOF, unregisters it and closes it.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Called by the event loop once the socket is unregistered."""
        self.closed = True
        self.sock.close()

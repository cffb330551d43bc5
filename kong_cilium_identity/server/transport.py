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
import socket
import stat
from pathlib import Path
from typing import Any

import msgpack

from kong_cilium_identity.server import protocol

log = logging.getLogger(__name__)

TEXT_ERRORS = "surrogateescape"
SEND_TIMEOUT = 10.0
RECV_CHUNK = 256 * 1024


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
        sock.settimeout(SEND_TIMEOUT)
        self.sock = sock
        self.closed = False
        self.unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, unicode_errors=TEXT_ERRORS
        )

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> list[Any] | None:
        """The complete messages now readable, or None when the connection is gone or sent
        bytes that are not msgpack (the stream cannot be resynchronised)."""
        try:
            chunk = self.sock.recv(RECV_CHUNK)
        except OSError:
            return None
        if not chunk:
            return None
        self.unpacker.feed(chunk)
        try:
            return list(self.unpacker)
        except (ValueError, msgpack.UnpackException) as error:
            log.warning("closing a connection that sent malformed msgpack: %s", error)
            return None

    def reply(self, msgid: Any, result: Any) -> bool:
        """Send a result; a result msgpack cannot encode is a bug in plugin code and is
        reported to the caller as False (nothing sent)."""
        try:
            data = _pack([protocol.RESPONSE, msgid, None, result])
        except (TypeError, ValueError, OverflowError) as error:
            log.error("cannot encode the reply to Kong: %s", error)
            return False
        return self._send(data)

    def reply_error(self, msgid: Any, message: str) -> bool:
        return self._send(_pack([protocol.RESPONSE, msgid, message, None]))

    def _send(self, data: bytes) -> bool:
        if self.closed:
            return True  # Kong already gave up on this connection; nothing to do.
        try:
            self.sock.sendall(data)
        except OSError as error:
            log.warning("dropping a connection Kong no longer reads: %s", error)
            self.closed = True
            # The event loop still has the socket registered: shut it down so that the loop
            # sees it readable at EOF, unregisters it and closes it.
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        return True

    def close(self) -> None:
        """Called by the event loop once the socket is unregistered."""
        self.closed = True
        self.sock.close()


def _pack(message: list[Any]) -> bytes:
    # A fresh packer per message keeps a failed pack from leaving state behind.
    packed: bytes = msgpack.packb(message, use_bin_type=True, unicode_errors=TEXT_ERRORS)
    return packed

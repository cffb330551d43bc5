"""The Unix socket Kong connects to, and msgpack framing on each connection.

Kong sends a concatenated stream of msgpack arrays without length prefixes, one request at
a time per connection (it waits for the reply before reusing a connection). Lua strings
arrive as msgpack ``str`` even when they are not UTF-8 (header values are client bytes), so
text is decoded with ``surrogateescape``: an invalid byte ``0xNN`` becomes the lone surrogate
``U+DCNN`` instead of an exception, and encoding the reply maps it back to the same byte.

Nothing here ever blocks. Replies go out with a non-blocking ``send``; what the peer's
socket buffer cannot take waits in the connection's outbox and is written when the event
loop sees the socket writable. A peer that does not read cannot hold the loop, the
runtime's lock or the deadline supervisor: its outbox grows until ``max_backlog`` bytes,
or stays unsent for ``drain_timeout`` seconds, and then the connection is closed.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgpack

from kong_cilium_identity.server import protocol
from kong_cilium_identity.server.socket_file import SocketFile, bind_socket_file

log = logging.getLogger(__name__)

TEXT_ERRORS: Final = "surrogateescape"
RECV_CHUNK: Final = 64 * 1024
# The unpacker's buffer starts this big and grows only for larger messages (raw bodies).
# msgpack's default is 1 MiB per connection, whose pages a long-lived keep-alive
# connection touches one by one: RSS would creep up by 1 MiB per pooled connection.
UNPACK_BUFFER: Final = 64 * 1024
# Replies are packed under the runtime's lock, so one packer serves all connections (a
# failed pack resets it).
_PACKER = msgpack.Packer(use_bin_type=True, unicode_errors=TEXT_ERRORS)


class _NoMessage:
    """What ``next_message`` returns when no complete message is buffered."""


NO_MESSAGE: Final = _NoMessage()


class Malformed(Exception):
    """The peer sent bytes that are not a msgpack stream; it cannot be resynchronised."""


class Listener:
    """The listening socket at ``<prefix>/<socket_name>`` (see ``socket_file``)."""

    def __init__(self, path: Path, backlog: int, socket_file: SocketFile | None = None) -> None:
        self.path = path
        self.sock = bind_socket_file(path, socket_file or SocketFile())
        info = path.lstat()
        self._file = (info.st_dev, info.st_ino)
        self.sock.listen(backlog)
        self.sock.setblocking(False)

    def accept_all(self) -> list[socket.socket]:
        accepted: list[socket.socket] = []
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return accepted
            except OSError as error:
                log.warning("accept failed: %s", error)
                return accepted
            accepted.append(sock)

    def close(self) -> None:
        """Close, and remove the socket file unless it is no longer ours: on a Kong reload
        the next server may already have replaced it while this one stops."""
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            info = self.path.lstat()
            if (info.st_dev, info.st_ino) == self._file:
                self.path.unlink()


# Called with (connection, backlogged) whenever the outbox turns non-empty or empty.
BacklogWatch = Callable[["Connection", bool], None]


class Connection:
    """One connection from Kong's keep-alive pool. Every method is called with the
    runtime's lock held."""

    __slots__ = (
        "buffered",
        "closed",
        "drain_timeout",
        "max_backlog",
        "outbox",
        "progress_at",
        "sock",
        "unpacker",
        "watch",
    )

    def __init__(
        self, sock: socket.socket, *, max_backlog: int, drain_timeout: float, watch: BacklogWatch
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.closed = False
        self.buffered = False  # messages may remain in the unpacker from the last turn
        self.max_backlog = max_backlog
        self.drain_timeout = drain_timeout
        self.watch = watch
        self.outbox = bytearray()
        self.progress_at = 0.0  # when the outbox last became non-empty or shrank
        self.unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=False,
            unicode_errors=TEXT_ERRORS,
            read_size=UNPACK_BUFFER,
        )

    def fileno(self) -> int:
        return self.sock.fileno()

    # ------------------------------------------------------------------ inbound

    def fill(self) -> bool:
        """Read what the socket holds into the unpacker; False when the peer is gone."""
        try:
            chunk = self.sock.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not chunk:
            return False
        self.unpacker.feed(chunk)
        self.buffered = True
        return True

    def next_message(self) -> Any:
        """The next complete message, or NO_MESSAGE; raises Malformed."""
        try:
            return next(self.unpacker)
        except StopIteration:
            self.buffered = False
            return NO_MESSAGE
        except Exception as error:
            # Not just ValueError: a map whose key is an array or a map (valid msgpack,
            # unhashable in Python) raises TypeError. Whatever the decoder raises, this
            # connection is unreadable; it must never take the server down with it.
            raise Malformed(repr(error)) from None

    # ------------------------------------------------------------------ outbound

    def reply(self, msgid: Any, result: Any) -> bool:
        """Send a result; a result msgpack cannot encode is a bug in plugin code and is
        reported to the caller as False (nothing sent)."""
        try:
            data = _PACKER.pack([protocol.RESPONSE, msgid, None, result])
        except (TypeError, ValueError, OverflowError) as error:
            log.error("cannot encode the reply to Kong: %s", error)
            return False
        self._send(data)
        return True

    def reply_error(self, msgid: Any, message: str) -> None:
        self._send(_PACKER.pack([protocol.RESPONSE, msgid, message, None]))

    def _send(self, data: bytes) -> None:
        if self.closed:
            return  # the peer already gave up on this connection; nothing to do
        if self.outbox:  # keep the order: behind what is already waiting
            self.outbox += data
            if len(self.outbox) > self.max_backlog:
                self.abort(f"more than {self.max_backlog} bytes of replies are unread")
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            self.abort(str(error))
            return
        if sent == len(data):
            return
        self.outbox += memoryview(data)[sent:]
        if len(self.outbox) > self.max_backlog:
            self.abort(f"a {len(data)}-byte reply exceeds the {self.max_backlog}-byte backlog")
            return
        self.progress_at = time.monotonic()
        self.watch(self, True)

    def flush(self) -> None:
        """Write what the socket takes now (the loop saw it writable)."""
        if self.closed or not self.outbox:
            return
        try:
            sent = self.sock.send(self.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self.abort(str(error))
            return
        if sent:
            del self.outbox[:sent]
            self.progress_at = time.monotonic()
        if not self.outbox:
            self.watch(self, False)

    def stalled(self, now: float) -> bool:
        """True when unsent replies have made no progress for ``drain_timeout`` seconds."""
        return bool(self.outbox) and now - self.progress_at > self.drain_timeout

    def abort(self, why: str) -> None:
        """Give up on a peer that does not read (or whose socket failed)."""
        if self.closed:
            return
        log.warning("closing a plugin-socket connection: %s", why)
        self.closed = True
        had_backlog = bool(self.outbox)
        self.outbox = bytearray()
        if had_backlog:
            self.watch(self, False)
        # The event loop still has the socket registered: shut it down so that the loop
        # sees it readable at EOF, unregisters it and closes it.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Called by the event loop once the socket is unregistered."""
        self.closed = True
        self.outbox = bytearray()
        self.sock.close()

"""Local processes' view of the plugin server's socket: a peer that sends and never reads."""

from __future__ import annotations

import socket
from pathlib import Path

import msgpack


class NonReadingPeer:
    """Connects to the plugin-server socket and writes requests until the kernel buffers
    are full, never reading a reply."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.setblocking(False)
        self.sent = 0

    def flood(self, limit: int = 100_000) -> int:
        for msgid in range(limit):
            message = msgpack.packb([0, msgid, "plugin.GetStatus", []])
            try:
                self.sock.send(message)
            except BlockingIOError:
                break
            self.sent += 1
        return self.sent

    def close(self) -> None:
        self.sock.close()

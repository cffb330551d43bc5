"""A scripted stand-in for a plugin server, to look at exactly what the harness puts on the wire."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack


class FakePluginServer:
    """Answers StartInstance/CloseInstance, then replays ``plan`` as the plugin's PDK calls.

    ``plan`` items are the ``Data`` of the HandleEvent reply and of each Step reply
    (``{"Method": ..., "Args": [...]}``); ``"ret"`` follows the last one. A ``bytes`` item is
    packed MessagePack put in the ``Data`` slot as is (to send what Python cannot build).

    ``hook(method, params, msgid)`` may return the raw bytes to answer instead (``b""``
    closes the connection without a reply); ``None`` keeps the scripted answer.
    """

    def __init__(
        self,
        path: Path,
        plan: list[Any],
        *,
        notify: bool = False,
        wrong_msgid: bool = False,
        hook: Callable[[str, list[Any], int], bytes | None] | None = None,
    ) -> None:
        self.plan = list(plan)
        self.hook = hook
        self.notify = notify
        self.wrong_msgid = wrong_msgid
        self.pid = 4242
        self.requests: list[list[Any]] = []
        self.raw = bytearray()
        self.connections = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self._sock.close()

    def methods(self) -> list[str]:
        return [str(r[2]) for r in self.requests]

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, unicode_errors="surrogateescape"
        )
        with conn:
            while chunk := conn.recv(4096):
                self.raw += chunk
                unpacker.feed(chunk)
                for request in unpacker:
                    self.requests.append(request)
                    if not (isinstance(request, list) and len(request) == 4):
                        continue  # not a request (a stray peer): nothing to answer
                    _, msgid, method, params = request
                    if self.notify:
                        conn.sendall(msgpack.packb([2, "serverPid", self.pid]))
                    reply_id = msgid + 1 if self.wrong_msgid else msgid
                    custom = self.hook(method, params, reply_id) if self.hook else None
                    if custom == b"":
                        return
                    conn.sendall(custom or self._reply(reply_id, method, params))

    def _reply(self, msgid: int, method: str, params: list[Any]) -> bytes:
        head = b"\x94" + msgpack.packb(1) + msgpack.packb(msgid) + msgpack.packb(None)
        if method == "plugin.StartInstance":
            answer: Any = {"Name": params[0]["Name"], "Id": 0, "Config": {}, "StartTime": 0}
        elif method == "plugin.CloseInstance":
            answer = {"Id": params[0]}
        else:
            data = self.plan.pop(0) if self.plan else "ret"
            if isinstance(data, bytes):
                return head + b"\x82" + msgpack.packb("EventId") + b"\x07" + b"\xa4Data" + data
            answer = {"EventId": 7, "Data": data}
        return msgpack.packb([1, msgid, None, answer])

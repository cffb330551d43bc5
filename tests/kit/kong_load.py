"""A lean load generator playing Kong's side of the plugin-server protocol.

:class:`~tests.kit.kong.KongHarness` models Kong faithfully and is
the tool for behaviour; this client only does what Kong does on the hot path (HandleEvent,
one ``Step*`` per PDK call, stop at ``kong.response.exit``/``error``) with canned PDK
answers, so that a benchmark measures the plugin server and not the client. It keeps
``concurrency`` requests in flight, each on its own pooled connection, from one thread.
"""

from __future__ import annotations

import json
import selectors
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from tests.kit.msgpack_rpc import STEP_METHOD

TERMINAL = frozenset({"kong.response.exit", "kong.response.error"})


@dataclass(frozen=True)
class LoadRequest:
    """PDK answers for one kind of request (method -> first Lua return value)."""

    answers: Mapping[str, Any]


@dataclass
class LoadResult:
    events: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.events / self.elapsed if self.elapsed else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class _Slot:
    __slots__ = ("conn", "msgid", "request", "started", "unpacker")

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.msgid = 0
        self.started = 0.0
        self.request: LoadRequest | None = None

    def send(self, method: str, params: Any) -> None:
        self.msgid += 1
        self.conn.sendall(msgpack.packb([0, self.msgid, method, [params]]))


class KongLoad:
    def __init__(
        self, socket_path: str, *, plugin_name: str, conf: Mapping[str, Any], concurrency: int = 8
    ) -> None:
        self.socket_path = socket_path
        self.concurrency = concurrency
        start = _Slot(self._connect())
        start.send("plugin.StartInstance", {"Name": plugin_name, "Config": json.dumps(conf)})
        reply = _read_one(start)
        if reply[2] is not None:
            raise RuntimeError(f"StartInstance failed: {reply[2]}")
        self.instance_id: int = reply[3]["Id"]
        start.conn.close()

    def _connect(self) -> socket.socket:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.socket_path)
        return conn

    def run(
        self,
        requests: Sequence[LoadRequest],
        events: int,
        *,
        every: int = 0,
        on_progress: Callable[[int], None] | None = None,
    ) -> LoadResult:
        """Run ``events`` requests, cycling through ``requests``; call ``on_progress(done)``
        every ``every`` completed events."""
        selector = selectors.DefaultSelector()
        slots = [_Slot(self._connect()) for _ in range(min(self.concurrency, events))]
        result = LoadResult()
        started = 0
        handle = {"InstanceId": self.instance_id, "EventName": "access"}

        def begin(slot: _Slot) -> None:
            nonlocal started
            slot.request = requests[started % len(requests)]
            started += 1
            slot.started = time.perf_counter()
            slot.send("plugin.HandleEvent", handle)

        began = time.perf_counter()
        for slot in slots:
            selector.register(slot.conn, selectors.EVENT_READ, slot)
            begin(slot)
        while result.events < events:
            for key, _ in selector.select():
                slot = key.data
                chunk = slot.conn.recv(65536)
                if not chunk:
                    raise ConnectionError("the plugin server closed a connection")
                slot.unpacker.feed(chunk)
                for reply in slot.unpacker:
                    outcome = self._next(slot, reply)
                    if outcome is None:
                        continue
                    result.events += 1
                    result.latencies.append(time.perf_counter() - slot.started)
                    result.outcomes[outcome] += 1
                    if on_progress is not None and every and result.events % every == 0:
                        on_progress(result.events)
                    if started < events:
                        begin(slot)
        result.elapsed = time.perf_counter() - began
        for slot in slots:
            selector.unregister(slot.conn)
            slot.conn.close()
        return result

    def _next(self, slot: _Slot, reply: Any) -> str | None:
        """Answer the plugin's next PDK call; the outcome once the event is over."""
        if reply[2] is not None:
            return f"error: {reply[2]}"
        data = reply[3]["Data"]
        if data == "ret":
            return "proxied"
        method = data["Method"]
        if method in TERMINAL:
            return f"{method.rsplit('.', 1)[1]} {data['Args'][0]}"
        assert slot.request is not None
        answer = slot.request.answers.get(method)
        step: dict[str, Any] = {"EventId": reply[3]["EventId"]}
        if answer is not None:
            step["Data"] = answer
        slot.send(STEP_METHOD.get(method, "plugin.Step"), step)
        return None


def _read_one(slot: _Slot) -> Any:
    while True:
        for message in slot.unpacker:
            return message
        chunk = slot.conn.recv(65536)
        if not chunk:
            raise ConnectionError("the plugin server closed the connection")
        slot.unpacker.feed(chunk)

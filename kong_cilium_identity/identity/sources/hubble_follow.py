"""A background ``follow`` stream of flows towards Kong that pre-warms Hubble answers.

One thread per Hubble source (sources are shared per settings, so one per settings
process-wide). It keeps the evidence flows of the last ``ttl`` seconds per source address,
and per (address, source port, destination port) for pinned lookups, judged by the same
rules as a lookup (``hubble_evidence``): an address whose evidence is ambiguous answers
AMBIGUOUS from the cache too. A lost-events report, and the end of a stream, clear
everything: a newer flow that could have changed an answer may be among the lost, or
among those sent before the next stream started.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from cachetools import TTLCache

from kong_cilium_identity.identity.model import Lookup, Peer
from kong_cilium_identity.identity.sources.hubble_evidence import Evidence, Witness
from kong_cilium_identity.identity.sources.hubble_flows import (
    ports,
    source_address,
    witness_of,
)
from kong_cilium_identity.ops import metrics
from kong_cilium_identity.policy.labels import LabelError
from kong_cilium_identity.proto.flow import flow_pb2
from kong_cilium_identity.proto.observer import observer_pb2

log = logging.getLogger(__name__)

ConnectionKey = tuple[str, int, int]


class WarmFlows:
    """Evidence per source address (and per connection) from the last ``ttl`` seconds."""

    def __init__(self, ttl: float, size: int) -> None:
        self._ttl = ttl
        self._lock = threading.Lock()
        self._by_address: TTLCache[str, Evidence] = TTLCache(size, ttl, timer=time.monotonic)
        self._by_connection: TTLCache[ConnectionKey, Evidence] = TTLCache(
            size, ttl, timer=time.monotonic
        )

    def record(self, flow: flow_pb2.Flow) -> None:
        address = source_address(flow)
        if address is None:
            return
        try:
            witness = witness_of(flow)
        except LabelError as error:
            log.warning("hubble follow: ignored a flow from %s: %s", address, error)
            return
        if isinstance(witness, str):
            return
        flow_ports = ports(flow)
        with self._lock:
            _add(self._by_address, address, witness)
            if flow_ports is not None:
                _add(self._by_connection, (address, *flow_ports), witness)

    def get(
        self, peer: Peer, match_ports: bool, max_age: float = 0.0, now: float | None = None
    ) -> Lookup | None:
        """FOUND or AMBIGUOUS from the evidence of the last ``ttl`` (and ``max_age``, when
        positive) seconds; None when there is none."""
        now = time.time() if now is None else now
        with self._lock:
            if match_ports and peer.port is not None and peer.local_port is not None:
                evidence = self._by_connection.get((peer.address, peer.port, peer.local_port))
            else:
                evidence = self._by_address.get(peer.address)
            if evidence is None:
                return None
            evidence.prune(now - self._ttl)
            if 0 < max_age < self._ttl:
                evidence = evidence.since(now - max_age)
            return evidence.conclude(peer.address) if evidence else None

    def clear(self) -> None:
        with self._lock:
            self._by_address.clear()
            self._by_connection.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_address)


def _add(cache: TTLCache[Any, Evidence], key: Any, witness: Witness) -> None:
    evidence = cache.get(key)
    if evidence is None:
        evidence = cache[key] = Evidence()
    else:
        cache[key] = evidence  # refresh the entry's time to live
    evidence.add(witness)


StartStream = Callable[[observer_pb2.GetFlowsRequest], Any]


class FlowFollower:
    """Runs one ``follow`` GetFlows stream, reconnecting with capped, jittered backoff."""

    def __init__(
        self,
        start_stream: StartStream,
        request: observer_pb2.GetFlowsRequest,
        warm: WarmFlows,
        backoff_max: float,
    ) -> None:
        self._start_stream = start_stream
        self._request = request
        self._warm = warm
        self._backoff_max = backoff_max
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self.connected = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="cilium-identity-hubble-follow", daemon=True
        )
        metrics.track_hubble_follower(self)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        delay = 0.1
        while not self._stopped.is_set():
            try:
                for response in self._stream():
                    delay = 0.1
                    self._apply(response)
            except Exception as error:  # the stream ends with an RpcError; keep following
                if not self._stopped.is_set():
                    log.warning("hubble follow stream interrupted: %s", _describe(error))
            if not self._stopped.is_set():
                metrics.hubble_follow_restarted()
            # A new stream starts from now: flows sent in the gap are never replayed.
            self._warm.clear()
            self.connected.clear()
            self._stopped.wait(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, self._backoff_max)

    def _stream(self) -> Iterator[observer_pb2.GetFlowsResponse]:
        with self._lock:
            if self._stopped.is_set():
                return iter(())
            self._call = self._start_stream(self._request)
            call: Iterator[observer_pb2.GetFlowsResponse] = self._call
        return call

    def _apply(self, response: observer_pb2.GetFlowsResponse) -> None:
        kind = response.WhichOneof("response_types")
        if kind == "flow":
            self._warm.record(response.flow)
        elif kind == "lost_events":
            self._warm.clear()
        elif kind == "node_status":
            self.connected.set()


def _describe(error: Exception) -> str:
    code = getattr(error, "code", None)
    if callable(code):
        return f"{code()}: {error.details()}"  # type: ignore[attr-defined]
    return repr(error)

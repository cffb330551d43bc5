"""Peers that send requests on the plugin socket and never read the replies.

Before replies were sent without blocking, one such local process froze the whole server
for 10 s per connection (a blocking send under the runtime's lock; the deadline
supervisor waited for the same lock). Timing figures are in benchmarks/bench_peers.py;
these tests check behaviour, with bounds far above the expected latency.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path

import msgpack

from tests.harness.conftest import script
from tests.kit.kong import KongHarness
from tests.server.conftest import MakeKong, wait_for_output

PEERS = 10
BATCH = 500  # requests per sendall


def info_requests(count: int, name: str = "probe") -> bytes:
    return b"".join(msgpack.packb([0, n, "plugin.GetPluginInfo", [name]]) for n in range(count))


class NonReader(threading.Thread):
    """Connects, sends requests (``total``, or until the server closes the connection)
    and never reads a reply."""

    def __init__(self, path: Path, total: int | None = None) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.total = total
        self.stop = threading.Event()
        self.closed_by_server = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20.0)
        self.sock.connect(str(path))

    def run(self) -> None:
        blob = info_requests(BATCH)
        sent = 0
        try:
            while not self.stop.is_set() and (self.total is None or sent < self.total):
                self.sock.sendall(blob)
                sent += BATCH
            while not self.stop.wait(0.05):  # now idle: still never reads
                if self._hung_up():
                    raise ConnectionResetError
        except (BrokenPipeError, ConnectionResetError):
            self.closed_by_server.set()
        except OSError:
            pass

    def _hung_up(self) -> bool:
        """True once the server closed its end (checked without reading anything)."""
        poller = select.poll()
        poller.register(self.sock, select.POLLRDHUP | select.POLLHUP)
        return any(events & (select.POLLRDHUP | select.POLLHUP) for _, events in poller.poll(0))

    def close(self) -> None:
        self.stop.set()
        self.join(25.0)
        self.sock.close()


def victim_round(kong: KongHarness, plugin: object, count: int) -> list[float]:
    took = []
    for _ in range(count):
        began = time.monotonic()
        out = kong.request(plugin)  # type: ignore[arg-type]
        took.append(time.monotonic() - began)
        assert out.proxied and not out.failed_open and out.status == 200, out.kong_log
    return took


def test_flooding_non_readers_neither_stall_others_nor_the_deadline(make_kong: MakeKong) -> None:
    """Each peer gets replies until its socket buffer is full; then its requests are no
    longer read (backpressure) and, its replies unread for the drain timeout, it is
    closed."""
    kong = make_kong("ours", deadline=1.0, server_args=["--drain-timeout", "1"])
    victim = kong.add_plugin(script(["call", "kong.client.get_ip"], ["call", "kong.client.get_ip"]))
    hung = kong.add_plugin(script(["sleep", 3.0], ["call", "kong.client.get_ip"]))
    victim_round(kong, victim, 2)  # StartInstance out of the way
    peers = [NonReader(kong.socket_path) for _ in range(PEERS)]
    for peer in peers:
        peer.start()
    try:
        took = victim_round(kong, victim, 40)
        # The supervisor still answers deadlines: a hung event gets its 500 at 1 s, not
        # Kong's read timeout (10 s here) and a fail-open.
        out = kong.request(hung)
        assert out.status == 500 and not out.proxied and not out.failed_open, out.kong_log
        for peer in peers:
            assert peer.closed_by_server.wait(15.0)
    finally:
        for peer in peers:
            peer.close()
    assert max(took) < 2.0, took  # generous: a stall was 10 s per non-reading connection
    assert wait_for_output(kong, "no reply byte was read for 1s")
    victim_round(kong, victim, 5)


def test_replies_over_the_backlog_bound_close_the_connection(make_kong: MakeKong) -> None:
    """Unsent replies are bounded per connection (here below one 177-byte reply)."""
    kong = make_kong("ours", server_args=["--max-backlog", "100"])
    victim = kong.add_plugin(script(["call", "kong.client.get_ip"]))
    peer = NonReader(kong.socket_path, total=20 * BATCH)  # more than the socket buffer holds
    peer.start()
    try:
        assert peer.closed_by_server.wait(15.0)
    finally:
        peer.close()
    assert wait_for_output(kong, "exceeds the 100-byte backlog")
    assert kong.request(victim).proxied


def test_a_peer_that_reads_slowly_gets_every_reply(make_kong: MakeKong) -> None:
    """Replies the socket buffer cannot take wait in the outbox, in order, until read; the
    peer's further requests wait unread meanwhile (backpressure), so however many it sent,
    the backlog never nears its bound."""
    kong = make_kong("ours")
    count = 20 * BATCH
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10.0)
    sock.connect(str(kong.socket_path))
    # The peer's sendall blocks too once the server stops reading: send from a thread.
    sender = threading.Thread(target=sock.sendall, args=(info_requests(count),), daemon=True)
    sender.start()
    time.sleep(0.5)  # the server answers into a full socket buffer meanwhile
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    ids: list[int] = []
    received = 0
    while len(ids) < count:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(ids)} replies"
        received += len(chunk)
        unpacker.feed(chunk)
        ids.extend(reply[1] for reply in unpacker)
    sender.join(5.0)
    sock.close()
    assert ids == list(range(count))
    # More than the 1 MiB backlog bound plus a Unix socket's default send buffer (208 KiB)
    assert received > (1 << 20) + 208 * 1024

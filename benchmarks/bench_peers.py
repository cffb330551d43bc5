#!/usr/bin/env python3
"""Other connections' latency while local peers flood the plugin socket and never read.

    python benchmarks/bench_peers.py [--events 10000] [--rounds 5] [--peers 10]

One server process (ours, full cilium-identity plugin, static source: the cache-hit path,
with the cilium-identity-guard companion's facts: 3 RPCs per event), one victim client
(``tests.kit.kong_load``, the same client in every case). Rounds
alternate between no peers and ``--peers``
non-reading peers; the median round of each case is shown. The peers run in their own
process: each sends requests as fast as the socket takes them, never reads a reply, and
connects again as soon as the server closes it (a persistent local attacker, the worst
case). Target (issue 9): p99 grows by at most 50 ms with 10 peers.

Then a hung remote source: the agent source pointed at a fake agent that never answers,
``lookup_timeout`` 0.3 s, event deadline 10 s: the time to the 503 ``source_unavailable``.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.kit.fake_agent import FakeAgent  # noqa: E402
from tests.kit.kong import KongHarness, KongRequest  # noqa: E402
from tests.kit.kong_load import KongLoad, LoadRequest, LoadResult  # noqa: E402

LAUNCH = ROOT / "tests" / "server" / "launch.py"
FULL = ROOT / "kong_cilium_identity" / "plugin.py"
SOCKET = "bench.socket"
CONFIG: dict[str, Any] = {
    "sources": ["static"],
    "static": {"entries": [{"address": "10.0.1.200", "id": 48861, "labels": ["k8s:app=a"]}]},
    "bindings": [{"consumer": "checkout", "selectors": ["k8s:app=a"]}],
}
CONSUMER = {"id": "0c1f0b0e-1c1a-4e44-9a39-4a0d4b5a0001", "username": "checkout", "tags": []}
CREDENTIAL = {"id": "7a0e1e4c-5d3b-4b1d-8f6e-000000000001", "consumer": {"id": CONSUMER["id"]}}
# With the cilium-identity-guard companion (docs/kong-side.md): HandleEvent, facts, apply.
FACTS = {
    "v": 1,
    "consumer": CONSUMER,
    "credential": True,
    "ip": "10.0.1.200",
    "forged": 0,
    "tokens": [],
    "jwt": False,
}
ALLOW = LoadRequest(
    {
        "kong.cilium_identity.facts": FACTS,
        "kong.client.get_consumer": CONSUMER,
        "kong.client.get_credential": CREDENTIAL,
        "kong.client.get_ip": "10.0.1.200",
        "kong.request.get_headers": {"host": ["api.local"]},
    }
)

# The peers' process: argv = socket path, peer count, method. Prints connections closed
# by the server when it gets SIGTERM.
PEERS_SCRIPT = r"""
import signal, socket, sys, threading
import msgpack
path, count, method = sys.argv[1], int(sys.argv[2]), sys.argv[3]
params = ["cilium-identity"] if method == "plugin.GetPluginInfo" else []
blob = b"".join(msgpack.packb([0, n, method, params]) for n in range(500))
closed = [0] * count
stop = threading.Event()
def flood(i):
    while not stop.is_set():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            while not stop.is_set():
                sock.sendall(blob)
        except OSError:
            closed[i] += 1
        finally:
            sock.close()
for i in range(count):
    threading.Thread(target=flood, args=(i,), daemon=True).start()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stop.wait()
print(sum(closed), flush=True)
"""


def start_server(prefix: Path, *extra: str) -> KongHarness:
    base = [sys.executable, str(LAUNCH), "ours", str(FULL), "cilium-identity"]
    start = [*base, "--kong-prefix", str(prefix), "--socket-name", SOCKET, "--no-lua-style"]
    kong = KongHarness([*base, "--dump"], [*start, *extra], prefix=prefix, socket_name=SOCKET)
    kong.query()
    kong.start()
    return kong


def victim_round(load: KongLoad, events: int) -> LoadResult:
    result = load.run([ALLOW], events)
    assert set(result.outcomes) == {"proxied"}, result.outcomes
    return result


def median_round(results: list[LoadResult]) -> LoadResult:
    return sorted(results, key=lambda r: r.percentile(0.99))[len(results) // 2]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:7.2f} ms"


def peers_case(args: argparse.Namespace) -> None:
    prefix = Path(tempfile.mkdtemp(prefix="kp", dir="/tmp"))
    kong = start_server(prefix)
    try:
        conf = kong.add_plugin(CONFIG).conf
        load = KongLoad(
            str(kong.socket_path),
            plugin_name="cilium-identity",
            conf=conf,
            concurrency=args.concurrency,
        )
        victim_round(load, min(2000, args.events))  # warm-up
        quiet: list[LoadResult] = []
        flooded: list[LoadResult] = []
        closed = 0
        for _ in range(args.rounds):
            quiet.append(victim_round(load, args.events))
            flood = [str(kong.socket_path), str(args.peers), args.method]
            peers = subprocess.Popen(
                [sys.executable, "-c", PEERS_SCRIPT, *flood],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(0.5)  # the peers are flooding before the round starts
            flooded.append(victim_round(load, args.events))
            peers.send_signal(signal.SIGTERM)
            out, _ = peers.communicate(timeout=30)
            closed += int(out.strip() or 0)
    finally:
        kong.close()
        shutil.rmtree(prefix, ignore_errors=True)
    print(
        f"{args.events:,} victim events per round, {args.concurrency} in flight, "
        f"{args.rounds} rounds per case (median round by p99 shown); peers send {args.method}"
    )
    for label, results in (("0 peers", quiet), (f"{args.peers} non-reading peers", flooded)):
        r = median_round(results)
        p99s = ", ".join(f"{x.percentile(0.99) * 1e3:.1f}" for x in results)
        print(
            f"  {label:<24} p50 {ms(r.percentile(0.5))}   p99 {ms(r.percentile(0.99))}"
            f"   {r.rate:6.0f} events/s   (p99 per round, ms: {p99s})"
        )
    grow = median_round(flooded).percentile(0.99) - median_round(quiet).percentile(0.99)
    verdict = "met" if grow <= 0.050 else "MISSED"
    print(f"  p99 increase: {grow * 1e3:+.2f} ms (target <= +50 ms: {verdict})")
    print(f"  peer connections the server closed: {closed:,}")


def hung_source_case(args: argparse.Namespace) -> None:
    prefix = Path(tempfile.mkdtemp(prefix="kh", dir="/tmp"))
    agent = FakeAgent(prefix / "cilium.sock").start()
    agent.set_mode("stall")
    kong = start_server(prefix, "--event-deadline", "10")
    try:
        plugin = kong.add_plugin(
            {
                "sources": ["agent"],
                "agent": {"socket_path": str(agent.socket_path)},
                "lookup_timeout": 0.3,
                "cache": {"ttl": 0, "negative_ttl": 0, "size": 16},
                "bindings": [{"consumer": "checkout", "selectors": ["k8s:app=a"]}],
            }
        )
        request = KongRequest(client_ip="10.0.1.200", consumer=CONSUMER, credential=CREDENTIAL)
        kong.request(plugin, request)  # StartInstance out of the way
        took: list[float] = []
        statuses: set[str] = set()
        for _ in range(args.hung_requests):
            out = kong.request(plugin, request)
            took.append(out.elapsed)
            message = out.body.get("message") if isinstance(out.body, dict) else out.body
            statuses.add(f"{out.status} {message}")
    finally:
        kong.close()
        agent.stop()
        shutil.rmtree(prefix, ignore_errors=True)
    print(
        f"hung agent source, lookup_timeout 300 ms, event deadline 10 s, "
        f"{args.hung_requests} requests: median {ms(statistics.median(took))}, "
        f"max {ms(max(took))}; answers: {sorted(statuses)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument(
        "--method",
        default="plugin.GetStatus",
        choices=["plugin.GetStatus", "plugin.GetPluginInfo", "plugin.NoSuchMethod"],
        help="what the peers send (GetPluginInfo: a 5 KB reply; NoSuchMethod: an error reply)",
    )
    parser.add_argument("--hung-requests", type=int, default=10)
    args = parser.parse_args()
    peers_case(args)
    hung_source_case(args)


if __name__ == "__main__":
    main()

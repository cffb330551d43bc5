#!/usr/bin/env python3
"""Plugin-server throughput and latency, ours vs stock kong-pdk 0.36, plus a memory soak.

    python benchmarks/bench_server.py [--events 20000] [--concurrency 8] [--soak 1000000]

Every case uses the same lean Kong-side client (``tests.kit.kong_load``)
on the same machine, one server process at a time:

  (a) stock kong-pdk, threads mode, no-op plugin (0 PDK calls)
  (b) stock kong-pdk, gevent mode, no-op plugin
  (c) stock kong-pdk, threads mode, full cilium-identity plugin, cache hit (static source)
  (d) our server, full cilium-identity plugin, cache hit

then the soak: our server, full plugin, ``--soak`` events alternating allow and deny, RSS
printed at intervals; the final RSS must be within 10% of the RSS after 10,000 events.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.kit.kong import KongHarness  # noqa: E402
from tests.kit.kong_load import KongLoad, LoadRequest, LoadResult  # noqa: E402

LAUNCH = ROOT / "tests" / "server" / "launch.py"
NOOP = ROOT / "tests" / "server" / "plugins" / "noop_plugin.py"
FULL = ROOT / "kong_cilium_identity" / "plugin.py"
SOCKET = "bench.socket"

ALLOWED_IP, DENIED_IP = "10.0.1.200", "10.0.1.201"
CONFIG: dict[str, Any] = {
    "sources": ["static"],
    "static": {
        "entries": [
            {"address": ALLOWED_IP, "id": 48861, "labels": ["k8s:app=checkout"]},
            {"address": DENIED_IP, "id": 51022, "labels": ["k8s:app=payments"]},
        ]
    },
    "bindings": [{"consumer": "checkout", "selectors": ["k8s:app=checkout"]}],
}
CONSUMER = {"id": "0c1f0b0e-1c1a-4e44-9a39-4a0d4b5a0001", "username": "checkout", "tags": []}
CREDENTIAL = {"id": "7a0e1e4c-5d3b-4b1d-8f6e-000000000001", "consumer": {"id": CONSUMER["id"]}}


def answers(ip: str) -> LoadRequest:
    return LoadRequest(
        {
            "kong.client.get_consumer": CONSUMER,
            "kong.client.get_credential": CREDENTIAL,
            "kong.client.get_ip": ip,
            "kong.request.get_headers": {"host": ["api.local"]},
        }
    )


ALLOW, DENY = answers(ALLOWED_IP), answers(DENIED_IP)


class Server:
    """One plugin server process in its own Kong prefix."""

    def __init__(self, server: str, plugin: Path, name: str, config: dict[str, Any]) -> None:
        self.prefix = Path(tempfile.mkdtemp(prefix="kb", dir="/tmp"))
        base = [sys.executable, str(LAUNCH), server, str(plugin), name]
        start = [*base, "--kong-prefix", str(self.prefix), "--socket-name", SOCKET]
        start.append("--no-lua-style")
        self.kong = KongHarness([*base, "--dump"], start, prefix=self.prefix, socket_name=SOCKET)
        self.kong.query()
        self.kong.start()
        self.conf = self.kong.add_plugin(config).conf
        self.name = name

    def load(self, concurrency: int) -> KongLoad:
        return KongLoad(
            str(self.kong.socket_path),
            plugin_name=self.name,
            conf=self.conf,
            concurrency=concurrency,
        )

    def rss_kib(self) -> int:
        with open(f"/proc/{self.kong.server_pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def close(self) -> None:
        self.kong.close()
        shutil.rmtree(self.prefix, ignore_errors=True)


def measure(server: Server, events: int, concurrency: int) -> LoadResult:
    load = server.load(concurrency)
    load.run([ALLOW], min(2000, events))  # warm-up
    result = load.run([ALLOW], events)
    assert set(result.outcomes) == {"proxied"}, result.outcomes
    return result


def report(label: str, results: list[LoadResult]) -> float:
    """Print the round with the median rate; return that rate."""
    median = sorted(results, key=lambda r: r.rate)[len(results) // 2]
    rates = ", ".join(f"{r.rate:.0f}" for r in results)
    print(
        f"{label:<46} {median.rate:>7.0f} events/s   p50 {median.percentile(0.5) * 1e6:>6.0f} us"
        f"   p99 {median.percentile(0.99) * 1e6:>6.0f} us   (rounds: {rates})"
    )
    return median.rate


def soak(events: int, concurrency: int) -> None:
    server = Server("ours", FULL, "cilium-identity", CONFIG)
    try:
        load = server.load(concurrency)
        samples: list[tuple[int, int]] = []
        every = 10_000 if events >= 100_000 else max(1, events // 10)

        def sample(done: int) -> None:
            samples.append((done, server.rss_kib()))
            if done == every or done % (events // 10 or 1) == 0:
                print(
                    f"  after {done:>9,} events: RSS {samples[-1][1] / 1024:7.1f} MiB", flush=True
                )

        result = load.run([ALLOW, DENY], events, every=every, on_progress=sample)
        baseline, final = samples[0][1], samples[-1][1]
        growth = (final - baseline) / baseline * 100
        print(f"  outcomes: {dict(result.outcomes)}; {result.rate:.0f} events/s")
        print(
            f"  RSS after {samples[0][0]:,}: {baseline / 1024:.1f} MiB; after {samples[-1][0]:,}:"
            f" {final / 1024:.1f} MiB ({growth:+.1f}%, target within 10%:"
            f" {'met' if abs(growth) <= 10 else 'MISSED'})"
        )
        print(
            f"  median RSS over the run: {statistics.median(s[1] for s in samples) / 1024:.1f} MiB"
        )
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--soak", type=int, default=1_000_000)
    args = parser.parse_args()
    cases = [
        ("a", "(a) stock threads, no-op plugin", "stock", NOOP, "noop", {}),
        ("b", "(b) stock gevent, no-op plugin", "stock-gevent", NOOP, "noop", {}),
        (
            "c",
            "(c) stock threads, cilium-identity, cache hit",
            "stock",
            FULL,
            "cilium-identity",
            CONFIG,
        ),
        ("d", "(d) ours, cilium-identity, cache hit", "ours", FULL, "cilium-identity", CONFIG),
    ]
    print(
        f"{args.events:,} events per case and round, {args.concurrency} in flight, same client;"
        f" {args.rounds} interleaved rounds, the median round is shown"
    )
    servers = {
        key: Server(kind, plugin, name, config) for key, _, kind, plugin, name, config in cases
    }
    results: dict[str, list[LoadResult]] = {key: [] for key in servers}
    try:
        for _ in range(args.rounds):  # interleaved, so that machine noise hits every case
            for key, server in servers.items():
                results[key].append(measure(server, args.events, args.concurrency))
    finally:
        for server in servers.values():
            server.close()
    rates = {key: report(label, results[key]) for key, label, *_ in cases}
    print(f"(d)/(a) = {rates['d'] / rates['a']:.2f}   (target >= 1.0)")
    print(f"(d)/(c) = {rates['d'] / rates['c']:.2f}   (target >= 3)")
    print(f"(d)/(b) = {rates['d'] / rates['b']:.2f}")
    if args.soak:
        print(f"soak: ours, cilium-identity, {args.soak:,} events alternating allow/deny")
        soak(args.soak, args.concurrency)


if __name__ == "__main__":
    main()

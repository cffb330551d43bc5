"""Lookup cost of the hubble and agent sources against the fakes (loopback / Unix socket).

    python benchmarks/bench_sources.py [--lookups 2000]

Prints, per source: cold lookups (straight to the source, no resolver cache) p50/p99;
resolver cache hits in µs; Hubble lookups answered by the follow stream's warm cache;
and the upstream call count for 1,000 concurrent misses of one address (singleflight).
Not a test: figures depend on the machine; quote them with the machine they came from.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kong_cilium_identity.identity.model import LookupStatus, Peer  # noqa: E402
from kong_cilium_identity.identity.resolver import RESOLVERS, CacheSettings, ResolverSettings  # noqa: E402
from kong_cilium_identity.identity.sources import SOURCE_KINDS  # noqa: E402
from kong_cilium_identity.identity.sources.agent import AgentSource  # noqa: E402
from kong_cilium_identity.identity.sources.agent import parse_settings as agent_settings  # noqa: E402
from kong_cilium_identity.identity.sources.hubble import HubbleSource  # noqa: E402
from kong_cilium_identity.identity.sources.hubble import parse_settings as hubble_settings  # noqa: E402
from tests.kit.fake_agent import FakeAgent  # noqa: E402
from tests.kit.fake_relay import FakeRelay, make_flow  # noqa: E402

LABELS = ["k8s:app=checkout", "k8s:io.kubernetes.pod.namespace=shop"]
WORKLOADS = 200  # distinct caller addresses known to the fakes


def address(index: int) -> str:
    return f"10.1.{index // 250}.{index % 250 + 1}"


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50 * 1e3:7.3f} ms   p99 {p99 * 1e3:7.3f} ms   (n={len(ordered)})"


def timed(lookups: int, ask: Callable[[int], LookupStatus]) -> list[float]:
    samples = []
    for index in range(lookups):
        started = time.perf_counter()
        status = ask(index)
        samples.append(time.perf_counter() - started)
        if status is not LookupStatus.FOUND:
            raise SystemExit(f"lookup {index} ended {status}")
    return samples


def cache_hit_us(kind: str, record: Mapping[str, object], rounds: int = 100_000) -> float:
    settings = ResolverSettings(
        sources=((kind, SOURCE_KINDS[kind].parse(record)),),
        cache=CacheSettings(ttl=600.0),
    )
    resolver = RESOLVERS.acquire(settings)
    try:
        peer = Peer(address(0))
        assert resolver.lookup(peer).status is LookupStatus.FOUND
        started = time.perf_counter()
        for _ in range(rounds):
            resolver.lookup(peer)
        return (time.perf_counter() - started) / rounds * 1e6
    finally:
        RESOLVERS.release(settings)


def singleflight_calls(kind: str, record: Mapping[str, object], calls: Callable[[], int]) -> int:
    settings = ResolverSettings(sources=((kind, SOURCE_KINDS[kind].parse(record)),), timeout=10.0)
    resolver = RESOLVERS.acquire(settings)
    try:
        before = calls()
        barrier = threading.Barrier(1000)

        def ask() -> None:
            barrier.wait()
            resolver.lookup(Peer(address(1)))

        threads = [threading.Thread(target=ask) for _ in range(1000)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return calls() - before
    finally:
        RESOLVERS.release(settings)


def bench_hubble(lookups: int) -> None:
    relay = FakeRelay().start()
    try:
        for index in range(WORKLOADS):
            relay.publish(
                make_flow(address(index), 50000 + index, LABELS, source_port=40000 + index)
            )
        for match_ports in (False, True):
            source = HubbleSource(
                hubble_settings({"address": relay.address, "match_ports": match_ports})
            )
            try:

                def ask(index: int, source: HubbleSource = source) -> LookupStatus:
                    slot = index % WORKLOADS
                    peer = Peer(address(slot), port=40000 + slot, local_port=8000)
                    return source.lookup(peer, 2.0).status

                timed(50, ask)  # connect and warm up
                label = "match_ports on " if match_ports else "match_ports off"
                print(f"hubble cold lookup ({label}):   {percentiles(timed(lookups, ask))}")
            finally:
                source.close()
        follow = HubbleSource(
            hubble_settings(
                {
                    "address": relay.address,
                    "follow": True,
                    "follow_destination_ips": ["10.0.0.100"],
                }
            )
        )
        try:
            for index in range(WORKLOADS):  # flows that arrive while following
                relay.publish(make_flow(address(index), 50000 + index, LABELS))
            warm = follow.warm
            assert warm is not None
            deadline = time.monotonic() + 10
            while len(warm) < WORKLOADS and time.monotonic() < deadline:
                time.sleep(0.01)
            before = relay.request_count
            samples = timed(
                lookups, lambda index: follow.lookup(Peer(address(index % WORKLOADS)), 2.0).status
            )
            extra = relay.request_count - before
            print(
                f"hubble follow-warmed lookup:      p50 {statistics.median(samples) * 1e6:7.1f} µs"
                f"   ({extra} Relay calls for {lookups} lookups)"
            )
        finally:
            follow.close()
        record = {"address": relay.address}
        print(f"hubble resolver cache hit:        {cache_hit_us('hubble', record):7.2f} µs")
        relay.delay = 0.2
        calls = singleflight_calls("hubble", record, lambda: relay.request_count)
        print(f"hubble 1,000 concurrent misses:   {calls} upstream call(s)")
    finally:
        relay.stop()


def bench_agent(lookups: int) -> None:
    with tempfile.TemporaryDirectory(prefix="kci-") as scratch:
        agent = FakeAgent(Path(scratch) / "cilium.sock").start()
        try:
            for index in range(WORKLOADS):
                agent.add(address(index), 50000 + index, LABELS, namespace="shop", pod=f"p{index}")
            for ttl, label in ((0.0, "2 calls/lookup"), (60.0, "identity cache")):
                source = AgentSource(
                    agent_settings(
                        {"socket_path": str(agent.socket_path), "identity_cache_ttl": ttl}
                    )
                )
                try:

                    def ask(index: int, source: AgentSource = source) -> LookupStatus:
                        return source.lookup(Peer(address(index % WORKLOADS)), 2.0).status

                    timed(WORKLOADS, ask)  # connect; fill the identity cache when on
                    print(f"agent cold lookup ({label}): {percentiles(timed(lookups, ask))}")
                finally:
                    source.close()
            record = {"socket_path": str(agent.socket_path)}
            print(f"agent resolver cache hit:         {cache_hit_us('agent', record):7.2f} µs")
            agent.set_mode("ok", 0.2)
            calls = singleflight_calls("agent", record, lambda: agent.requests("/v1/ip"))
            print(f"agent 1,000 concurrent misses:    {calls} upstream call(s)")
        finally:
            agent.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=2000)
    args = parser.parse_args()
    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs; fakes on loopback / a Unix socket in this process"
    )
    bench_hubble(args.lookups)
    bench_agent(args.lookups)


if __name__ == "__main__":
    main()

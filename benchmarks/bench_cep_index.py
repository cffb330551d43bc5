"""Benchmark of the CiliumEndpoint index behind the ``kubernetes`` source.

Prints, for N endpoints (default 100,000) sharing a few thousand identities:

- build time of the index from list responses (JSON pages of 500, decoded and parsed);
- RSS the built index adds to the process;
- lookup cost (``KubernetesSource.lookup`` and the bare index), hits and misses;
- watch events applied per second (decoded dicts, and JSON lines as the watch reads them);
- the same sync end to end: the source listing N endpoints from the fake API server.

Targets: build <= 3 s, <= 300 MB added RSS, lookup <= 5 us, >= 10,000 events/s.
Run: ``.venv/bin/python benchmarks/bench_cep_index.py [--endpoints N]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.index_bench import PagesApi, address, bench_lookups, rss_bytes  # noqa: E402
from kong_cilium_identity.identity.cep_index import EndpointIndex  # noqa: E402
from kong_cilium_identity.identity.cep_watch import Codec, ListWatch, WatchSettings  # noqa: E402
from kong_cilium_identity.identity.model import Peer  # noqa: E402
from kong_cilium_identity.identity.sources.kubernetes import create, parse_settings  # noqa: E402
from tests.kit.fake_kube import FakeKubeApi, cilium_endpoint  # noqa: E402

PAGE = 500
IDENTITIES = 2000
NAMESPACES = 50


def endpoint(n: int, identity: int | None = None) -> dict[str, Any]:
    """A CEP like the captured one: identity labels shared by many pods."""
    identity = n % IDENTITIES if identity is None else identity
    namespace = f"ns-{identity % NAMESPACES}"
    obj = cilium_endpoint(
        f"pod-{n}",
        namespace,
        ipv4=address(n),
        identity_id=10000 + identity,
        labels=[
            f"k8s:app=app-{identity}",
            f"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name={namespace}",
            "k8s:io.cilium.k8s.policy.cluster=default",
            f"k8s:io.cilium.k8s.policy.serviceaccount=sa-{identity}",
            f"k8s:io.kubernetes.pod.namespace={namespace}",
        ],
        pod_uid=f"00000000-0000-4000-8000-{n:012d}",
        node=f"172.18.{n % 200}.{n % 250 + 1}",
    )
    obj["metadata"]["uid"] = f"10000000-0000-4000-8000-{n:012d}"
    obj["metadata"]["resourceVersion"] = str(1000 + n)
    return obj


def list_pages(count: int) -> list[bytes]:
    """List response bodies as the API server sends them, ``continue`` = next page number."""
    pages = []
    for number, start in enumerate(range(0, count, PAGE)):
        items = [endpoint(n) for n in range(start, min(count, start + PAGE))]
        metadata = {"resourceVersion": str(1000 + count)}
        if start + PAGE < count:
            metadata["continue"] = str(number + 1)
        body: dict[str, Any] = {"apiVersion": "cilium.io/v2", "kind": "CiliumEndpointList"}
        body.update(metadata=metadata, items=items)
        pages.append(json.dumps(body, separators=(",", ":")).encode())
    return pages


def build(pages: list[bytes]) -> EndpointIndex:
    """The production list path (``ListWatch.list_once``) minus the network."""
    index = EndpointIndex("kubernetes")
    watch = ListWatch(
        PagesApi(pages), "ciliumendpoints", index.begin_relist, index.apply, WatchSettings()
    )
    watch.list_once()
    return index


def bench_events(count: int) -> None:
    """Watch lines as the stream carries them: decode, then apply (what the watch does)."""
    index = build(list_pages(count))
    total = 50_000
    lines = []
    for k in range(total):
        n = (k * 104729) % count
        kind = ("MODIFIED", "DELETED", "ADDED")[k % 3]
        obj = endpoint(n, identity=(n + k) % IDENTITIES)
        obj["metadata"]["resourceVersion"] = str(10**6 + k)
        lines.append(json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode())
    start = time.perf_counter()
    decode = Codec().event  # as the watch decodes it
    for line in lines:
        event = decode(line)
        index.apply(event["type"], event["object"])
    rate = total / (time.perf_counter() - start)
    print(f"watch events ({total:,} MODIFIED/DELETED/ADDED lines over {count:,} endpoints)")
    print(f"  decoded and applied: {rate:,.0f} events/s (target >= 10,000)")


def bench_end_to_end(count: int) -> None:
    with FakeKubeApi() as fake:
        for n in range(count):
            fake.put(endpoint(n))
        source = create(parse_settings({"api_url": fake.url, "page_size": PAGE}))
        try:
            start = time.perf_counter()
            if not source.wait_ready(120):
                raise RuntimeError("the source did not sync")
            elapsed = time.perf_counter() - start
            print(f"end to end: source synced {count:,} endpoints over HTTP in {elapsed:.2f} s")
            print("  (list pages of 500 from the fake API server, which serializes them)")
            bench_lookups("KubernetesSource.lookup", lambda p: source.lookup(p, 1.0), Peer, count)
        finally:
            source.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=100_000)
    parser.add_argument("--skip-end-to-end", action="store_true")
    count = parser.parse_args().endpoints

    pages = list_pages(count)
    size = sum(len(page) for page in pages)
    print(f"{count:,} endpoints, {IDENTITIES:,} identities, {len(pages)} list pages, {size:,} B")
    gc.collect()
    baseline = rss_bytes()
    times = []
    start = time.perf_counter()
    index = build(pages)
    times.append(time.perf_counter() - start)
    gc.collect()
    added = rss_bytes() - baseline
    for _ in range(4):
        start = time.perf_counter()
        rebuilt = build(pages)
        times.append(time.perf_counter() - start)
        del rebuilt  # freed outside the timed region
    print("index build from list responses (JSON decode + parse + index)")
    print(f"  median {statistics.median(times):.2f} s  runs {', '.join(f'{t:.2f}' for t in times)}")
    print(f"  added RSS with the index built: {added / 2**20:.0f} MB (target <= 300 MB)")
    assert len(index) == count
    print("lookups (per call, batch means)")
    bench_lookups("EndpointIndex.lookup", index.lookup, str, count)
    del pages
    bench_events(count)
    if not parser.parse_args().skip_end_to_end:
        bench_end_to_end(count)


if __name__ == "__main__":
    main()

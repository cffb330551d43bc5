"""Benchmark of the ``kubernetes`` source on a CiliumEndpointSlice cluster.

Prints, for N endpoints (default 100,000) in S slices (default 1,000, so 100 per slice, the
operator's default batch) sharing 2,000 identities across 50 namespaces:

- build time of the index from list responses (pages of 500 slices, decoded and parsed),
  and of the CiliumIdentity table the slices' ids are joined with;
- RSS the built index (slices and identities) adds to the process;
- lookup cost (``KubernetesSource.lookup`` and the bare index), hits and misses;
- slice watch events applied per second, from JSON lines decoded as the watch decodes
  them: pod churn (one member of the slice replaced, or one added or removed; the members
  in a new order every time, as the operator writes them), every member relabelled, and
  whole slices deleted and added;
- the same sync end to end: the source discovering and listing the fake API server.

Targets: build <= 3 s, <= 300 MB added RSS, lookup <= 5 us, >= 10,000 slice events/s.
Run: ``.venv/bin/python benchmarks/bench_ces.py [--endpoints N] [--slices S]``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.index_bench import PagesApi, address, bench_lookups, rss_bytes  # noqa: E402
from kong_cilium_identity.identity.cep_index import EndpointIndex  # noqa: E402
from kong_cilium_identity.identity.cep_watch import (  # noqa: E402
    Codec,
    ListWatch,
    Relist,
    WatchSettings,
)
from kong_cilium_identity.identity.ces_decode import SLICE_CODEC  # noqa: E402
from kong_cilium_identity.identity.model import Peer  # noqa: E402
from kong_cilium_identity.identity.sources.kubernetes import create, parse_settings  # noqa: E402
from tests.kit.fake_kube import (  # noqa: E402
    FakeKubeApi,
    cilium_endpoint_slice,
    cilium_identity,
    core_endpoint,
)

PAGE = 500
IDENTITIES = 2000
NAMESPACES = 50


def identity_of(n: int) -> int:
    """Each namespace has its own 40 identities, as pod labels include the namespace."""
    namespace = n % NAMESPACES
    return 10000 + namespace * (IDENTITIES // NAMESPACES) + n // NAMESPACES % 40


class Cluster:
    """Slices shaped like the captured one; endpoint n lives in slice n // per_slice."""

    def __init__(self, endpoints: int, slices: int) -> None:
        self.per_slice = endpoints // slices
        self.slices = slices
        self.endpoints = self.per_slice * slices

    def namespace(self, slice_number: int) -> str:
        return f"ns-{slice_number % NAMESPACES}"

    def member(self, n: int, identity: int | None = None) -> dict[str, Any]:
        slice_number = n // self.per_slice
        return core_endpoint(
            f"pod-{n}",
            identity_of(slice_number) if identity is None else identity,
            ipv4=address(n),
            node=f"172.18.{n % 200}.{n % 250 + 1}",
        )

    def slice(self, number: int) -> dict[str, Any]:
        first = number * self.per_slice
        members = [self.member(n) for n in range(first, first + self.per_slice)]
        found = cilium_endpoint_slice(f"ces-{number:05d}", self.namespace(number), members)
        found["metadata"].update(resourceVersion=str(1000 + number), uid=f"uid-{number}")
        return found


def identity_objects() -> list[dict[str, Any]]:
    objects = []
    for identity in range(10000, 10000 + IDENTITIES):
        namespace = f"ns-{(identity - 10000) // (IDENTITIES // NAMESPACES)}"
        labels = {
            "k8s:app": f"app-{identity}",
            "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name": namespace,
            "k8s:io.cilium.k8s.policy.cluster": "default",
            "k8s:io.cilium.k8s.policy.serviceaccount": f"sa-{identity}",
            "k8s:io.kubernetes.pod.namespace": namespace,
        }
        objects.append(cilium_identity(identity, labels))
    return objects


def pages(items: list[dict[str, Any]], kind: str) -> list[bytes]:
    """List response bodies as the API server sends them, ``continue`` = next page number."""
    bodies = []
    for number, start in enumerate(range(0, len(items), PAGE)):
        metadata = {"resourceVersion": "900000"}
        if start + PAGE < len(items):
            metadata["continue"] = str(number + 1)
        body: dict[str, Any] = {"apiVersion": "cilium.io/v2alpha1", "kind": kind}
        body["metadata"] = metadata
        body["items"] = items[start : start + PAGE]
        bodies.append(json.dumps(body, separators=(",", ":")).encode())
    return bodies


def list_into(index: EndpointIndex, plural: str, bodies: list[bytes]) -> None:
    """The production list path (``ListWatch.list_once``) minus the network."""
    relists: dict[str, tuple[Callable[[], Relist], Callable[[str, Any], None], Codec]] = {
        "ciliumendpointslices": (index.begin_slice_relist, index.apply_slice, SLICE_CODEC),
        "ciliumidentities": (index.begin_identity_relist, index.apply_identity, Codec()),
    }
    begin, apply, codec = relists[plural]
    api = PagesApi(bodies)
    ListWatch(api, plural, begin, apply, WatchSettings(), "v2alpha1", codec).list_once()


def line(kind: str, obj: dict[str, Any], version: int) -> bytes:
    obj["metadata"]["resourceVersion"] = str(version)
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode()


def churn_lines(cluster: Cluster, count: int, grow: bool = False) -> list[bytes]:
    """Pod churn as the operator writes it: each event rewrites one slice with one member
    replaced by a new pod (new name, new address), or, with ``grow``, one pod added or
    removed in turn; the members listed in a new order each time (the operator walks a Go
    set, so their order is not stable between writes)."""
    shuffler = random.Random(7)
    current = [cluster.slice(number) for number in range(cluster.slices)]
    lines = []
    for k in range(count):
        number = (k * 7) % cluster.slices
        members = current[number]["endpoints"]
        fresh = cluster.member(cluster.endpoints + k, identity=identity_of(number))
        fresh["name"] = f"pod-new-{k}"  # a new pod, with an address no one had
        if not grow:
            members[shuffler.randrange(len(members))] = fresh
        elif (k // cluster.slices) % 2 == 0:
            members.append(fresh)
        else:
            members.pop(shuffler.randrange(len(members)))
        shuffler.shuffle(members)
        lines.append(line("MODIFIED", copy.deepcopy(current[number]), 10**6 + k))
    return lines


def grow_lines(cluster: Cluster, count: int) -> list[bytes]:
    return churn_lines(cluster, count, grow=True)


def relabel_lines(cluster: Cluster, count: int) -> list[bytes]:
    """Worst case: every member of the slice gets another identity."""
    lines = []
    for k in range(count):
        number = k % cluster.slices
        found = cluster.slice(number)
        for member in found["endpoints"]:
            member["id"] = identity_of(number) + 1 + k % 7
        lines.append(line("MODIFIED", found, 2 * 10**6 + k))
    return lines


def delete_add_lines(cluster: Cluster, count: int) -> list[bytes]:
    """Whole slices deleted, then added again (every member taken out, then back)."""
    lines = []
    for k in range(count):
        number = (k // 2) % cluster.slices
        kind = "DELETED" if k % 2 == 0 else "ADDED"
        lines.append(line(kind, cluster.slice(number), 3 * 10**6 + k))
    return lines


class Clock:
    """Wall time and this process's CPU time (the machine may be shared: both are shown)."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def took(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def apply_rate(index: EndpointIndex, lines: list[bytes]) -> tuple[float, float]:
    """Events per second, by wall time and by CPU time."""
    clock = Clock()
    for raw in lines:
        event = SLICE_CODEC.event(raw)  # as the watch decodes it
        index.apply_slice(event["type"], event["object"])
    wall, cpu = clock.took()
    return len(lines) / wall, len(lines) / cpu


def bench_events(index: EndpointIndex, cluster: Cluster) -> None:
    print(f"slice watch events over {cluster.endpoints:,} endpoints (JSON lines decoded + applied)")
    for label, make, count, batches, target in (
        ("pod churn (1 member replaced)", churn_lines, 10_000, 3, "  (target >= 10,000)"),
        ("pod added or removed", grow_lines, 10_000, 3, ""),
        ("every member relabelled", relabel_lines, 1_000, 1, ""),
        ("slice deleted / added", delete_add_lines, 1_000, 1, ""),
    ):
        lines = make(cluster, count * batches)
        rates = [apply_rate(index, lines[k * count : (k + 1) * count]) for k in range(batches)]
        wall = statistics.median(rate for rate, _ in rates)
        cpu = statistics.median(rate for _, rate in rates)
        size = sum(len(raw) for raw in lines) / len(lines) / 1024
        print(f"  {label:<30} {wall:8,.0f} events/s wall, {cpu:8,.0f} by CPU time{target}")
        each = ", ".join(f"{rate:,.0f}" for rate, _ in rates)
        runs = f"median of {batches} batches: {each}; " if batches > 1 else ""
        print(f"  {'':<30} ({runs}{count:,} events of {size:.1f} KiB each)")


def bench_end_to_end(cluster: Cluster) -> None:
    with FakeKubeApi(served=("ciliumendpointslices", "ciliumidentities")) as fake:
        for obj in identity_objects():
            fake.put(obj)
        for number in range(cluster.slices):
            fake.put(cluster.slice(number))
        source = create(parse_settings({"api_url": fake.url, "page_size": PAGE}))
        try:
            start = time.perf_counter()
            if not source.wait_ready(120):
                raise RuntimeError("the source did not sync")
            elapsed = time.perf_counter() - start
            print(
                f"end to end: discovery + lists of {cluster.slices:,} slices and {IDENTITIES:,} "
                f"identities over HTTP in {elapsed:.2f} s"
            )
            bench_lookups(
                "KubernetesSource.lookup", lambda p: source.lookup(p, 1.0), Peer, cluster.endpoints
            )
        finally:
            source.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=100_000)
    parser.add_argument("--slices", type=int, default=1_000)
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args()
    cluster = Cluster(args.endpoints, args.slices)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"load average {load} on {os.cpu_count()} CPUs")

    slices = [cluster.slice(n) for n in range(cluster.slices)]
    slice_pages = pages(slices, "CiliumEndpointSliceList")
    del slices
    identity_pages = pages(identity_objects(), "CiliumIdentityList")
    size = sum(len(page) for page in slice_pages)
    print(
        f"{cluster.endpoints:,} endpoints in {cluster.slices:,} slices, {IDENTITIES:,} "
        f"identities; {len(slice_pages)} slice list pages, {size:,} B"
    )
    gc.collect()
    baseline = rss_bytes()
    index = EndpointIndex("kubernetes")
    clock = Clock()
    list_into(index, "ciliumidentities", identity_pages)
    identities_took, _ = clock.took()
    times: list[tuple[float, float]] = []
    clock = Clock()
    list_into(index, "ciliumendpointslices", slice_pages)
    times.append(clock.took())
    gc.collect()
    added = rss_bytes() - baseline
    for _ in range(4):
        clock = Clock()
        list_into(index, "ciliumendpointslices", slice_pages)  # a relist replaces the view
        times.append(clock.took())
        gc.collect()
    walls = [wall for wall, _ in times]
    print("index build from list responses (JSON decode + parse + index)")
    print(f"  slices: median {statistics.median(walls):.2f} s wall, ", end="")
    print(f"{statistics.median(cpu for _, cpu in times):.2f} s CPU")
    print(f"  runs (wall): {', '.join(f'{wall:.2f}' for wall in walls)}")
    print(f"  identities ({IDENTITIES:,}): {identities_took:.2f} s")
    print(f"  added RSS with the index built: {added / 2**20:.0f} MB (target <= 300 MB)")
    assert len(index) == cluster.endpoints, len(index)
    print("lookups (per call, batch means; the labels joined from CiliumIdentity)")
    bench_lookups("EndpointIndex.lookup", index.lookup, str, cluster.endpoints)
    del slice_pages
    bench_events(index, cluster)
    if not args.skip_end_to_end:
        bench_end_to_end(cluster)


if __name__ == "__main__":
    main()

"""What the two index benchmarks (``bench_cep_index.py``, ``bench_ces.py``) share: the
process's RSS, the endpoint addresses, list pages served without HTTP, and the timing of
lookups."""

from __future__ import annotations

import ipaddress
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def address(n: int) -> str:
    return str(ipaddress.IPv4Address(0x0A000000 + n))  # 10.0.0.0 + n


class _Page:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def release_conn(self) -> None:
        """Nothing to release: the page is in memory."""


class PagesApi:
    """Stands in for ``CustomObjectsApi``: serves prepared list pages (``continue`` is the
    next page's number), no HTTP."""

    def __init__(self, pages: list[bytes]) -> None:
        self._pages = pages

    def list_cluster_custom_object(self, *_: Any, _continue: str | None = None, **__: Any) -> _Page:
        return _Page(self._pages[int(_continue or 0)])


def per_call_ns(call: Callable[[], object], calls: int, batches: int) -> list[float]:
    """Mean cost of one call in each batch, in nanoseconds."""
    means = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        for _ in range(calls):
            call()
        means.append((time.perf_counter_ns() - start) / calls)
    return means


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_lookups(
    label: str, lookup: Callable[[Any], object], key: Callable[[str], Any], count: int
) -> None:
    """``key`` turns an address into what ``lookup`` takes, before timing starts."""
    hits = [key(address((n * 7919) % count)) for n in range(1000)]
    misses = [key(address(count + 1 + n)) for n in range(1000)]
    for kind, keys in (("hit", hits), ("miss", misses)):
        cursor = iter(range(10**9))

        def one(keys: list[Any] = keys, cursor: Any = cursor) -> object:
            return lookup(keys[next(cursor) % 1000])

        means = per_call_ns(one, 20000, 25)
        print(
            f"  {label:<28} {kind:<4} median {statistics.median(means) / 1000:6.2f} us"
            f"  p90 {quantile(means, 0.9) / 1000:6.2f} us  (25 batches x 20,000)"
        )

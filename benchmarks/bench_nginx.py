#!/usr/bin/env python3
"""Throughput and socket round trips through real nginx + ngx_lua playing Kong (tests/nginx).

    apt-get install wrk    # optional; without it a Python keep-alive client is used
    python benchmarks/bench_nginx.py [--duration 5] [--connections 16] [--runs 3]

Same rig, same client, one run each (the client is printed):

  (a) nginx + key-auth only (no external plugin)
  (b) key-auth + cilium-identity, guard not installed: the Python plugin alone, PDK calls
  (c) key-auth + cilium-identity + cilium-identity-guard: kong.yaml as shipped

For each: req/s (median of --runs runs, allowed requests), and socket round trips per
allowed and per denied request counted in the bridge (StartInstance excluded). Then (c)
with 10 local peers that flood the plugin-server socket and never read: p50/p99 latency of
allowed requests before and with the peers. The benchmark's config maps the checkout
identity to 127.0.0.1 so that any client (wrk cannot pick its source address) is allowed.
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.nginx.peers import NonReadingPeer  # noqa: E402
from tests.nginx.rig import (  # noqa: E402
    Declarative,
    Nginx,
    PluginServer,
    http_request,
    missing_reason,
    run_dump,
)
from tests.nginx.shipped import (  # noqa: E402
    CHECKOUT_KEY,
    GUARD,
    INSTALLED,
    PLUGIN,
    REPORTS_POD,
    kong_yaml,
    without_guard,
)

PATH = "/orders/1"


@dataclass
class Case:
    label: str
    doc: dict[str, Any]
    installed: tuple[str, ...]
    external: bool


def _checkout_on_localhost(doc: dict[str, Any]) -> dict[str, Any]:
    for service in doc["services"]:
        for route in service["routes"]:
            for plugin in route.get("plugins") or []:
                if plugin["name"] == PLUGIN:
                    for entry in plugin["config"]["static"]["entries"]:
                        if entry.get("pod", "").startswith("checkout"):
                            entry["address"] = "127.0.0.1"
    return doc


def _auth_only(doc: dict[str, Any]) -> dict[str, Any]:
    for service in doc["services"]:
        for route in service["routes"]:
            route["plugins"] = [p for p in route["plugins"] if p["name"] not in (PLUGIN, GUARD)]
    return doc


def cases() -> list[Case]:
    shipped = _checkout_on_localhost(kong_yaml())
    return [
        Case("(a) nginx + key-auth only", _auth_only(kong_yaml()), ("key-auth",), False),
        Case("(b) + cilium-identity, no guard", without_guard(shipped), INSTALLED[:2], True),
        Case("(c) + cilium-identity + guard", shipped, INSTALLED, True),
    ]


def wrk_rate(port: int, duration: float, connections: int) -> float:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration:g}s",
            "-H",
            f"{CHECKOUT_KEY[0]}: {CHECKOUT_KEY[1]}",
            f"http://127.0.0.1:{port}{PATH}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw refused requests:\n{out}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert found is not None, out
    return float(found.group(1))


def python_rate(port: int, duration: float, connections: int) -> float:
    """Keep-alive connections, one thread each, for ``duration`` seconds."""
    counts = [0] * connections
    failures: list[int] = []
    stop = time.monotonic() + duration

    def worker(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop:
            conn.request("GET", PATH, headers={CHECKOUT_KEY[0]: CHECKOUT_KEY[1]})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                failures.append(response.status)
            counts[index] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"refused requests: {sorted(set(failures))}")
    return sum(counts) / duration


def _rpc_without_start(nginx: Nginx) -> int:
    counters = nginx.counters()
    return counters["rpc"] - counters["start_instance"]


def warm(running: Running, case: Case, connections: int) -> None:
    """Until every worker has started its plugin instance (each has its own cache)."""
    wrk_or_python = wrk_rate if shutil.which("wrk") else python_rate
    for _ in range(20):
        wrk_or_python(running.nginx.proxy_port, 1.0, connections)
        if not case.external or running.nginx.counters()["start_instance"] >= 2:
            return
    raise RuntimeError("a worker never started its plugin instance")


def settle(nginx: Nginx) -> None:
    """Wait until no request is in flight (nginx finishes requests wrk walked away from)."""
    last = nginx.counters()["rpc"]
    while True:
        time.sleep(0.3)
        now = nginx.counters()["rpc"]
        if now == last:
            return
        last = now


def round_trips(nginx: Nginx, source: str, expected: int, n: int = 20) -> float:
    """Round trips per request once instances run (StartInstance not counted)."""
    settle(nginx)
    before = _rpc_without_start(nginx)
    for _ in range(n):
        status = http_request(nginx.proxy_port, PATH, [CHECKOUT_KEY], source=source).status
        if status != expected:
            raise RuntimeError(f"expected {expected}, got {status}")
    return (_rpc_without_start(nginx) - before) / n


def latencies(port: int, n: int, budget: float = 30.0) -> tuple[list[float], dict[str, int]]:
    """Milliseconds per allowed request (one at a time, at most ``n`` or ``budget``
    seconds), and the failures by kind; a failed request counts with the time it took (a
    timeout: 5 s)."""
    out: list[float] = []
    failures: dict[str, int] = {}
    stop = time.monotonic() + budget
    while len(out) < n and time.monotonic() < stop:
        start = time.perf_counter()
        try:
            status = http_request(port, PATH, [CHECKOUT_KEY], timeout=5).status
            kind = "" if status == 200 else str(status)
        except TimeoutError:
            kind = "timeout"
        out.append((time.perf_counter() - start) * 1000)
        if kind:
            failures[kind] = failures.get(kind, 0) + 1
    return out, failures


def quantiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    cuts = statistics.quantiles(values, n=100)
    return cuts[49], cuts[98]


class Running:
    def __init__(self, case: Case, dump: dict[str, Any]) -> None:
        self.prefix = Path(tempfile.mkdtemp(prefix="rig-bench-"))
        self.server = PluginServer(self.prefix)
        config = Declarative(case.doc, dump, case.installed).to_rig(self.server.socket)
        self.nginx = Nginx(self.prefix, config)
        if case.external:
            self.server.start()
        self.nginx.start()

    def close(self) -> None:
        self.nginx.stop()
        self.server.close()
        shutil.rmtree(self.prefix, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-requests", type=int, default=500)
    args = parser.parse_args()
    reason = missing_reason()
    if reason is not None:
        print(f"cannot run: {reason}")
        return 1
    rate: Callable[[int, float, int], float]
    if shutil.which("wrk"):
        rate, client = wrk_rate, "wrk (1 thread)"
    else:
        rate, client = python_rate, "Python keep-alive threads (wrk not installed)"
    print(f"client: {client}, {args.connections} connections, {args.duration:g} s x {args.runs}")
    dump = run_dump()
    rates: dict[str, float] = {}
    for case in cases():
        running = Running(case, dump)
        try:
            warm(running, case, args.connections)
            runs = [rate(running.nginx.proxy_port, args.duration, args.connections)]
            runs += [
                rate(running.nginx.proxy_port, args.duration, args.connections)
                for _ in range(args.runs - 1)
            ]
            rates[case.label] = statistics.median(runs)
            trips = ""
            if case.external:
                allowed = round_trips(running.nginx, "127.0.0.1", 200)
                denied = round_trips(running.nginx, REPORTS_POD, 403)
                trips = f"  round trips: allowed {allowed:.2f}, denied {denied:.2f}"
            shown = ", ".join(f"{r:,.0f}" for r in runs)
            print(f"{case.label:36} {rates[case.label]:>9,.0f} req/s  [{shown}]{trips}")
            if case.label.startswith("(c)"):
                peers_figures(running, args.latency_requests)
        finally:
            running.close()
    ratio = rates[cases()[2].label] / rates[cases()[1].label]
    print(f"ratio (c)/(b): {ratio:.2f}")
    return 0


def peers_figures(running: Running, n: int) -> None:
    port = running.nginx.proxy_port
    quiet, _ = latencies(port, n)
    peers = [NonReadingPeer(running.server.socket) for _ in range(10)]
    try:
        for peer in peers:
            peer.flood()
        loaded, failures = latencies(port, n)
    finally:
        for peer in peers:
            peer.close()
    (p50, p99), (q50, q99) = quantiles(quiet), quantiles(loaded)
    print(
        f"    10 non-reading peers ({len(quiet)} / {len(loaded)} sequential allowed requests): "
        f"p50 {p50:.2f} -> {q50:.2f} ms, p99 {p99:.2f} -> {q99:.2f} ms (+{q99 - p99:.2f} ms)"
        f", not 200: {failures or 'none'}"
    )


if __name__ == "__main__":
    sys.exit(main())

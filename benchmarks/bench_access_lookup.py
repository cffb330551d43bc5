"""The request path's lookup from Kong's client address to an answer, in process.

    python benchmarks/bench_access_lookup.py [--rounds 50000]

Times ``access._lookup`` (parse and canonicalise the client address, build the peer, ask
the resolver) against the static source (no cache: the source sees every request) and a
cached remote source (an answer from the resolver's cache). Prints the best of seven runs
in µs per lookup. Not a test: figures depend on the machine; quote them with it.
"""

from __future__ import annotations

import argparse
import functools
import platform
import timeit

from kong_cilium_identity.identity.model import Identity, Lookup, Peer
from kong_cilium_identity.identity.resolver import (
    CachedSource,
    CacheSettings,
    Resolver,
    ResolverSettings,
)
from kong_cilium_identity.identity.sources.static import create, parse_settings
from kong_cilium_identity.kong import access

CHECKOUT = Identity.build(48861, ["k8s:app=checkout"], source="remote")


class Remote:
    """A remote source that always knows the caller (only its cache is timed)."""

    name = "remote"
    cacheable = True

    def lookup(self, peer: Peer, timeout: float) -> Lookup:
        return Lookup.found(CHECKOUT, self.name)

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50_000)
    rounds = parser.parse_args().rounds
    static = create(
        parse_settings(
            {
                "entries": [
                    {"address": "10.0.1.200", "id": 48861, "labels": ["k8s:app=checkout"]},
                    {"address": "fd00:10:244::17", "id": 48862, "labels": ["k8s:app=checkout"]},
                ]
            }
        )
    )
    cases = [
        ("static, IPv4", Resolver([static], ResolverSettings(())), "10.0.1.200"),
        ("static, IPv4-mapped IPv6", Resolver([static], ResolverSettings(())), "::ffff:10.0.1.200"),
        ("static, IPv6", Resolver([static], ResolverSettings(())), "fd00:10:244::17"),
        (
            "cache hit, IPv4",
            Resolver([CachedSource(Remote(), CacheSettings())], ResolverSettings(())),
            "10.0.1.200",
        ),
    ]
    print(f"{platform.python_implementation()} {platform.python_version()}, {rounds} rounds")
    for name, resolver, client_ip in cases:
        answer = access._lookup(resolver, client_ip)
        if answer.identity is None:
            raise SystemExit(f"{name}: {answer.status} {answer.detail}")
        runs = timeit.repeat(
            functools.partial(access._lookup, resolver, client_ip), number=rounds, repeat=7
        )
        print(f"{name:26s} {min(runs) / rounds * 1e6:6.2f} µs per lookup")


if __name__ == "__main__":
    main()

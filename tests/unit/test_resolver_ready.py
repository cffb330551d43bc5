"""The resolver is ready only when every source is (identity/resolver.py): readiness
gates the plugin server's health, and one unsynced source must hold it back."""

from __future__ import annotations

from kong_cilium_identity.identity.model import Lookup, Peer
from kong_cilium_identity.identity.resolver import (
    CachedSource,
    CacheSettings,
    Resolver,
    ResolverSettings,
)


class Source:
    def __init__(self, name: str, ready: bool) -> None:
        self.name = name
        self.cacheable = True
        self._ready = ready

    def lookup(self, peer: Peer, timeout: float) -> Lookup:
        return Lookup.unknown(self.name)

    def ready(self) -> bool:
        return self._ready

    def close(self) -> None:
        pass


def _resolver(*ready: bool) -> Resolver:
    sources = [Source(f"s{i}", flag) for i, flag in enumerate(ready)]
    return Resolver(sources, ResolverSettings(()))


def test_ready_only_when_every_source_is() -> None:
    assert _resolver(True, True).ready() is True
    assert _resolver(True, False).ready() is False
    assert _resolver(False).ready() is False


def test_a_cached_source_reports_the_inner_source_s_readiness() -> None:
    assert CachedSource(Source("s", True), CacheSettings()).ready() is True
    assert CachedSource(Source("s", False), CacheSettings()).ready() is False

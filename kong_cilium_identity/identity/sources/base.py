"""The contract every identity source implements, and how it plugs into configuration."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from kong_cilium_identity.identity.model import Lookup, Peer


class Source(Protocol):
    """Maps a peer address to a Cilium identity.

    ``lookup`` must return within ``timeout`` seconds and must not raise: every failure is
    a ``Lookup.unavailable`` with a reason. ``cacheable`` is True for remote sources
    (agent, Hubble) whose answers the resolver may keep for a few seconds; in-memory
    indexes that apply deletions at once (static, kubernetes) set it False.
    """

    name: str
    cacheable: bool

    def lookup(self, peer: Peer, timeout: float) -> Lookup: ...

    def ready(self) -> bool:
        """True once the source can answer (e.g. its first list has been applied)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SourceKind:
    """One source type: its Kong schema record and how to build it from that record.

    ``parse`` turns the record from the plugin config into hashable, frozen settings
    (raising ConfigError); sources are shared process-wide per (kind, settings).
    """

    name: str
    schema: Mapping[str, Any]
    parse: Callable[[Mapping[str, Any]], Hashable]
    create: Callable[[Any], Source]

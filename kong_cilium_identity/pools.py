"""Process-wide, reference-counted objects shared by plugin instances.

Kong starts one plugin instance per nginx worker and config, and new ones on every
config reload. Clients, channels, watches and caches must not follow that churn: they
live once per process and per settings, and close when the last instance lets go.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedPool(Generic[K, V]):
    def __init__(self, create: Callable[[K], V], close: Callable[[V], None]) -> None:
        self._create = create
        self._close = close
        # Re-entrant: a plugin instance's finalizer releases its resources, and the garbage
        # collector may run it on this thread while ``acquire`` holds the lock.
        self._lock = threading.RLock()
        self._entries: dict[K, tuple[V, int]] = {}

    def acquire(self, key: K) -> V:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                value = self._create(key)
                self._entries[key] = (value, 1)
                return value
            value, count = entry
            self._entries[key] = (value, count + 1)
            return value

    def release(self, key: K) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            value, count = entry
            if count > 1:
                self._entries[key] = (value, count - 1)
                return
            del self._entries[key]
        self._close(value)

    def values(self) -> list[V]:
        """A snapshot of the live objects (for health reporting)."""
        with self._lock:
            return [value for value, _ in self._entries.values()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

"""The plugin served and its instances (one per Kong worker and plugin config).

Instance ids start at a random point of the 31-bit space: after a restart, ids Kong still
caches from the previous process answer "no plugin instance", so Kong starts fresh
instances, instead of naming another route's instance of the new process (Kong #8370,
where kong-pdk counts from 0 again).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from kong_cilium_identity.kong_contract import plugin_info
from kong_cilium_identity.server import protocol

log = logging.getLogger(__name__)

ID_SPACE = 2**31


@dataclass(frozen=True)
class PluginSpec:
    """What ``serve`` was given: the kong-pdk plugin module contract."""

    plugin_cls: Callable[[dict[str, Any]], Any]
    name: str
    version: str
    priority: int
    schema: Sequence[Any]
    loaded_at: float = field(default_factory=time.time)

    @property
    def phases(self) -> list[str]:
        return [phase for phase in protocol.PHASES if hasattr(self.plugin_cls, phase)]

    def info(self) -> dict[str, Any]:
        return plugin_info(self.name, self.version, self.priority, self.phases, self.schema)


@dataclass
class Instance:
    id: int
    name: str
    config: dict[str, Any]
    plugin: Any
    started_at: float = field(default_factory=time.time)

    def status(self) -> dict[str, Any]:
        return {
            "Name": self.name,
            "Id": self.id,
            "Config": self.config,
            "StartTime": self.started_at,
        }

    def close(self) -> None:
        """Release what the plugin instance holds, if it says how (optional ``close()``)."""
        close = getattr(self.plugin, "close", None)
        if not callable(close):
            return
        try:
            close()
        except Exception:
            log.exception("closing instance #%s of %s failed", self.id, self.name)


class InstanceTable:
    def __init__(self) -> None:
        self._instances: dict[int, Instance] = {}
        self._next = secrets.randbelow(ID_SPACE)
        self.last_start = 0.0
        self.last_close = 0.0

    def __iter__(self) -> Iterator[Instance]:
        return iter(list(self._instances.values()))

    def new_id(self) -> int:
        instance_id = self._next
        while instance_id in self._instances:
            instance_id = (instance_id + 1) % ID_SPACE
        self._next = (instance_id + 1) % ID_SPACE
        return instance_id

    def add(self, instance: Instance) -> None:
        self._instances[instance.id] = instance
        self.last_start = time.time()

    def get(self, instance_id: Any) -> Instance | None:
        return self._instances.get(instance_id) if isinstance(instance_id, int) else None

    def remove(self, instance: Instance) -> None:
        self._instances.pop(instance.id, None)
        self.last_close = time.time()

"""Health and readiness of the plugin server, for Kubernetes probes.

- **Health** (``/healthz``): the process is alive and its event loop responds. The check
  sends Kong's own ``plugin.GetStatus`` RPC over the plugin socket and needs the reply
  within ``HEALTH_TIMEOUT``: a wedged loop, or a socket nobody serves, fails it.
- **Readiness** (``/readyz``): every identity source the process runs is ready (synced,
  or reachable). Kong starts the plugin's sources with the first request a worker sends
  it, so a fresh server has none: it is not ready until sources are started, either by
  traffic or at launch with ``serve --preload-config``, and have synced.
"""

from __future__ import annotations

import itertools
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import yaml

from kong_cilium_identity.errors import ConfigError
from kong_cilium_identity.identity.resolver import RESOLVERS, SOURCES, Resolver
from kong_cilium_identity.identity.sources import Source
from kong_cilium_identity.server import protocol

HEALTH_TIMEOUT = 0.8  # below the kubelet's default probe timeout of 1 s

_msgids = itertools.count(1)
# Resolvers started by --preload-config: held for the life of the process.
_preloaded: list[Resolver] = []


@dataclass(frozen=True)
class Verdict:
    ok: bool
    text: str

    @property
    def status(self) -> int:
        return 200 if self.ok else 503


def loop_health(socket_path: Path, timeout: float = HEALTH_TIMEOUT) -> Verdict:
    """Ask the plugin server for its status over its socket, as Kong would."""
    msgid = next(_msgids)
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(socket_path))
            conn.sendall(msgpack.packb([protocol.REQUEST, msgid, protocol.GET_STATUS, []]))
            reply = _read_one(conn, deadline)
    except (OSError, ValueError) as error:
        return Verdict(False, f"event loop: no answer on {socket_path}: {error}")
    if not (isinstance(reply, list) and len(reply) == 4 and reply[:2] == [1, msgid]):
        return Verdict(False, f"event loop: unexpected reply {reply!r:.200}")
    if reply[2] is not None:
        return Verdict(False, f"event loop: GetStatus failed: {reply[2]!r:.200}")
    return Verdict(True, "ok: event loop responsive")


def _read_one(conn: socket.socket, deadline: float) -> Any:
    unpacker = msgpack.Unpacker(raw=False)
    while True:
        conn.settimeout(max(0.001, deadline - time.monotonic()))
        data = conn.recv(65536)
        if not data:
            raise ValueError("connection closed before a reply")
        unpacker.feed(data)
        for message in unpacker:
            return message


def _problem(source: Source) -> str:
    describe = getattr(source, "problem", None)
    found = describe() if callable(describe) else None
    return str(found) if found else "not ready"


def sources_readiness() -> Verdict:
    """Ready when at least one source runs and every running source is ready."""
    sources = SOURCES.values()
    if not sources:
        return Verdict(
            False,
            "no identity source started yet: Kong starts them with its first request, "
            "or start them at launch with serve --preload-config",
        )
    lines = []
    every = True
    for source in sources:
        ready = source.ready()
        every = every and ready
        lines.append(f"{source.name}: {'ready' if ready else _problem(source)}")
    return Verdict(every, "\n".join(lines))


def preload(path: Path) -> int:
    """Start the sources of every cilium-identity plugin config in ``path`` (a plugin
    config, or a kong.yaml) and hold them for the life of the process. Plugin instances
    Kong starts later with the same settings share them. Returns how many were found."""
    from kong_cilium_identity.ops.tools import load_config, plugin_configs

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: {error}") from None
    configs = plugin_configs(document)
    if not configs:
        raise ConfigError(f"{path}: no cilium-identity plugin config found")
    for where, raw in configs:
        try:
            config = load_config(raw)
        except ConfigError as error:
            raise ConfigError(f"{path} {where}: {error}") from None
        _preloaded.append(RESOLVERS.acquire(config.resolver))
    return len(configs)

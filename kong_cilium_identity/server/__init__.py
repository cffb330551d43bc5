"""The dedicated plugin server for Kong's msgpack-RPC protocol (``kong-cilium-identity serve``).

Plugin code keeps kong-pdk's contract (a ``Plugin`` class built with the config dict, phase
methods taking the ``kong`` proxy, ``(data, err)`` returns unless ``lua_style=False``), so
the same plugin also runs under stock ``kong-python-pluginserver``. What differs is how
faults end: every exception, deadline, lost event or undecodable byte ends the request with
a 500 instead of leaving Kong to time out and proxy it unenforced. See docs/server.md.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from kong_cilium_identity.server.instances import PluginSpec
from kong_cilium_identity.server.runtime import Limits, Runtime
from kong_cilium_identity.server.transport import Listener

__all__ = ["Limits", "PluginSpec", "plugin_info", "serve"]

log = logging.getLogger(__name__)

SUPERVISOR_TICK = 0.01
EXIT_OK = 0
EXIT_STUCK = 70  # EX_SOFTWARE: plugin code wedged every thread; Kong respawns us


def plugin_info(
    plugin_cls: Callable[[dict[str, Any]], Any],
    *,
    name: str,
    version: str,
    priority: int,
    schema: Sequence[Any],
) -> dict[str, Any]:
    """The entry Kong's ``query_cmd`` prints (``json.dumps([plugin_info(...)])``)."""
    return PluginSpec(plugin_cls, name, version, priority, schema).info()


def serve(
    plugin_cls: Callable[[dict[str, Any]], Any],
    *,
    name: str,
    version: str,
    priority: int,
    schema: Sequence[Any],
    prefix: str | Path,
    socket_name: str,
    lua_style: bool = True,
    event_deadline: float = Limits.event_deadline,
    stall_after: float = Limits.stall_after,
    idle_event_limit: float = Limits.idle_event_limit,
    max_threads: int = Limits.max_threads,
    listen_backlog: int = 4096,
) -> NoReturn:
    """Serve ``plugin_cls`` on ``<prefix>/<socket_name>`` until SIGTERM/SIGINT or until
    Kong (the parent process) is gone; then remove the socket and exit the process.

    The process exits rather than returns: plugin libraries may leave non-daemon threads
    (thread pools waiting on a hung lookup) that would otherwise hold the exit.
    """
    spec = PluginSpec(plugin_cls, name, version, priority, schema)
    limits = Limits(event_deadline, stall_after, idle_event_limit, max_threads)
    listener = Listener(Path(prefix) / socket_name, listen_backlog)
    runtime = Runtime(spec, listener, lua_style=lua_style, limits=limits)
    log.info(
        "%s %s serving on %s (lua_style=%s, event_deadline=%gs)",
        name,
        version,
        listener.path,
        lua_style,
        event_deadline,
    )
    runtime.start()
    code = _supervise(runtime)
    listener.close()
    log.info("plugin server stopped (exit %d)", code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _supervise(runtime: Runtime) -> int:
    """Main thread: signals, parent watch, deadlines and stalls."""

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        runtime.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    parent = os.getppid()
    while not runtime.stopping:
        time.sleep(SUPERVISOR_TICK)
        if os.getppid() != parent:
            log.info("Kong (pid %d) is gone: stopping", parent)
            runtime.stopping = True
            break
        if runtime.lock.acquire(timeout=SUPERVISOR_TICK):
            try:
                runtime.check()
            finally:
                runtime.lock.release()
        if runtime.fatal:
            return EXIT_STUCK
    return EXIT_OK

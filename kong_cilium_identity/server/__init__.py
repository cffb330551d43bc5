"""The dedicated plugin server for Kong's msgpack-RPC protocol (``kong-cilium-identity serve``).

Plugin code keeps kong-pdk's contract (a ``Plugin`` class built with the config dict, phase
methods taking the ``kong`` proxy, ``(data, err)`` returns unless ``lua_style=False``), so
the same plugin also runs under stock ``kong-python-pluginserver``. What differs is how
faults end: every exception, deadline, lost event or undecodable byte ends the request with
a 500 instead of leaving Kong to time out and proxy it unenforced. See docs/server.md.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from kong_cilium_identity import hosting
from kong_cilium_identity.server.instances import PluginSpec
from kong_cilium_identity.server.runtime import Limits, Runtime
from kong_cilium_identity.server.socket_file import SocketFile
from kong_cilium_identity.server.transport import Listener

__all__ = ["Limits", "PluginSpec", "SocketFile", "StdinWatch", "plugin_info", "serve"]

log = logging.getLogger(__name__)

SUPERVISOR_TICK = 0.01
EXIT_OK = 0
EXIT_STUCK = 70  # EX_SOFTWARE: plugin code wedged every thread; Kong respawns us

DEFAULT_SOCKET_FILE = SocketFile()


class StdinWatch(enum.StrEnum):
    """How the server learns that Kong is gone.

    Kong starts the server with ``ngx.pipe.spawn``, which gives it a pipe as stdin: when
    the nginx worker that spawned it exits, the pipe reaches end-of-file. Under external
    process management (systemd, s6, supervisord, a Kubernetes sidecar) stdin is usually
    ``/dev/null`` and the server must outlive whatever launched it.
    """

    AUTO = "auto"  # watch when stdin is a pipe or a socket, otherwise not
    ON = "on"  # EOF on stdin (whatever it is) stops the server
    OFF = "off"  # never watch; stop only on SIGTERM/SIGINT


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
    max_backlog: int = Limits.max_backlog,
    drain_timeout: float = Limits.drain_timeout,
    listen_backlog: int = 4096,
    socket_file: SocketFile = DEFAULT_SOCKET_FILE,
    stdin_watch: StdinWatch = StdinWatch.AUTO,
) -> NoReturn:
    """Serve ``plugin_cls`` on ``<prefix>/<socket_name>`` until SIGTERM/SIGINT, or until
    stdin reaches end-of-file when it is watched (see StdinWatch); then remove the socket
    and exit the process.

    The process exits rather than returns: plugin libraries may leave non-daemon threads
    (thread pools waiting on a hung lookup) that would otherwise hold the exit.
    """
    spec = PluginSpec(plugin_cls, name, version, priority, schema)
    limits = Limits(
        event_deadline, stall_after, idle_event_limit, max_threads, max_backlog, drain_timeout
    )
    watch_stdin = _watches_stdin(stdin_watch)
    listener = Listener(Path(prefix) / socket_name, listen_backlog, socket_file)
    runtime = Runtime(spec, listener, lua_style=lua_style, limits=limits)
    hosting.set_event_deadline(event_deadline)
    log.info(
        "%s %s serving on %s (mode %04o, lua_style=%s, event_deadline=%gs, stdin watch %s)",
        name,
        version,
        listener.path,
        socket_file.mode,
        lua_style,
        event_deadline,
        "on" if watch_stdin else "off",
    )
    runtime.start()
    if watch_stdin:
        _watch_stdin(runtime)
    code = _supervise(runtime)
    listener.close()
    log.info("plugin server stopped (exit %d)", code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _watches_stdin(mode: StdinWatch) -> bool:
    if mode is StdinWatch.OFF:
        return False
    try:
        kind = os.fstat(sys.stdin.fileno() if sys.stdin else 0).st_mode
    except (OSError, ValueError):
        if mode is StdinWatch.ON:
            raise RuntimeError("--stdin-watch on, but there is no stdin to watch") from None
        return False
    return mode is StdinWatch.ON or stat.S_ISFIFO(kind) or stat.S_ISSOCK(kind)


def _watch_stdin(runtime: Runtime) -> None:
    """A daemon thread that reads (and discards) stdin; end-of-file stops the server."""
    fd = sys.stdin.fileno() if sys.stdin else 0

    def watch() -> None:
        try:
            while os.read(fd, 4096):
                pass
        except OSError as error:
            log.info("stdin failed (%s): treating it as closed", error)
        log.info("stdin reached end-of-file: Kong is gone, stopping")
        runtime.stopping = True

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def _supervise(runtime: Runtime) -> int:
    """Main thread: signals, deadlines, stalls and peers that stopped reading. Never
    waits for a peer: every send is non-blocking (see transport.py)."""

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        runtime.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not runtime.stopping:
        time.sleep(SUPERVISOR_TICK)
        if runtime.lock.acquire(timeout=SUPERVISOR_TICK):
            try:
                runtime.check()
            finally:
                runtime.lock.release()
        if runtime.fatal:
            return EXIT_STUCK
    return EXIT_OK

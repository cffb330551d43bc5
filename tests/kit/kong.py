"""A fake Kong 3.9 gateway that drives an external plugin server over its real wire protocol.

:class:`KongHarness` plays Kong's side of ``kong/runloop/plugin_servers`` (3.9): it runs the
``query_cmd`` and checks the dump, spawns the ``start_cmd`` in its own process group, keeps
one instance cache and one RPC object per nginx worker, and runs each phase through Kong's
event loop (``bridge_loop``) with Kong's failure semantics:

* ``StartInstance`` fails: Kong raises a Lua error, the client gets 500;
* ``HandleEvent``/``Step`` fails (refused, timeout, closed, error reply): Kong logs it and the
  request goes upstream anyway (fail-open);
* an error containing "no plugin instance": the plugin's instances are reset in every worker
  and the event is retried, without bound, as Kong's ``Rpc:handle_event`` recurses (set
  ``max_event_retries`` only to turn a test that would spin forever into a failure);
* a reply that carries neither a result nor an error (or the error ``false``): Kong's loop
  ends without a word and the request goes upstream;
* an error value that is not a string (a number, a table): ``err:lower()`` raises, HTTP 500;
* a Lua ``error()`` inside a PDK function, or a reply cut mid-message: the client gets 500
  and the plugin gets no reply.

A failed ``StartInstance`` leaves no cached instance, so every later request on that worker
sends ``StartInstance`` again (and gets 500 again while it fails).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from kong_cilium_identity.kong.kong_schema import (
    ConfigRejected,
    SchemaError,
    config_field,
    validate_config,
)
from tests.kit.msgpack_rpc import (
    LuaError,
    RpcClient,
    RpcError,
    fix_result,
    lua_text,
    lua_type,
    step_method,
)
from tests.kit.pdk import (
    HTTP_MESSAGES,
    KongRequest,
    Pdk,
    RequestState,
    ResponseExit,
    SavedForLog,
    serialize,
)

__all__ = [
    "ConfigRejected",
    "ConfiguredPlugin",
    "DumpRejected",
    "EventLoopRunaway",
    "KongHarness",
    "KongRequest",
    "Outcome",
    "PluginInfo",
]

KONG_PHASES = frozenset({"certificate", "rewrite", "access", "response", "preread", "log"})
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+")  # Lua's "^%d+%.%d+%.%d+": anchored at the start only
_WS_ID = "0dc6f45b-8f8d-40d2-a504-473544ee190b"


class EventLoopRunaway(Exception):
    """Kong would retry this event forever ("no plugin instance" on every attempt)."""


class DumpRejected(Exception):
    """Kong would refuse to start with this ``query_cmd`` output."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PluginInfo:
    """The first entry of the dump, as Kong 3.9 registers it."""

    name: str
    version: str
    priority: int
    phases: tuple[str, ...]
    schema: dict[str, Any]
    protocol: str = "MsgPack:1"


@dataclass
class ConfiguredPlugin:
    """A plugin entity: validated config plus the conf table Kong hands the server."""

    id: str
    config: dict[str, Any]
    conf: dict[str, Any]
    route_id: str | None = None
    service_id: str | None = None
    consumer_id: str | None = None
    instance_name: str | None = None

    @property
    def seq(self) -> int:
        return int(self.conf["__seq__"])


@dataclass
class Outcome:
    """What one request through the fake gateway produced."""

    proxied: bool
    status: int
    body: dict[str, Any] | bytes | None
    response_headers: dict[str, list[str]]
    upstream_headers: dict[str, list[str]]
    pdk_calls: list[str]
    rpc_calls: list[str]
    kong_log: list[tuple[str, str]]
    plugin_log: list[tuple[str, str]]
    ctx_shared: dict[str, Any]
    authenticated_consumer: Any
    authenticated_credential: Any
    serialize_values: dict[str, Any]
    failed_open: bool
    elapsed: float
    request_id: str = ""


@dataclass
class _Instance:
    id: Any
    seq: int
    plugin_id: str


@dataclass
class _Worker:
    """One nginx worker: its own RPC object (pool, msg ids) and instance cache."""

    rpc: RpcClient
    instances: dict[str, _Instance] = field(default_factory=dict)
    server_pid: float | None = None


@dataclass
class _PhaseResult:
    failed_open: bool = False
    exit: ResponseExit | None = None
    lua_error: str | None = None


def _parse_dump(stdout: bytes, command: Sequence[str]) -> PluginInfo:
    """Validate ``query_cmd`` output the way Kong 3.9 does (first entry only)."""
    text = stdout.decode("utf-8", "replace")
    try:
        dump = json.loads(text)
    except ValueError:
        dump = None
    if not isinstance(dump, dict | list):
        raise DumpRejected(f"Not a plugin info table: \n{' '.join(command)}\n{text}")
    entries = dump.get("Plugins", dump) if isinstance(dump, dict) else dump
    protocol = dump.get("Protocol", "MsgPack:1") if isinstance(dump, dict) else "MsgPack:1"
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise DumpRejected("no plugin info in the dump")
    info = entries[0]
    name, version, priority = info.get("Name"), info.get("Version"), info.get("Priority")
    if not isinstance(name, str) or not name:
        raise DumpRejected("Name must be a string")
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise DumpRejected(f'plugin "{name}": VERSION must be a string in the form x.y.z')
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int | float)
        or (isinstance(priority, float) and not priority.is_integer())
    ):
        raise DumpRejected(f'plugin "{name}": PRIORITY must be an integer')
    phases = info.get("Phases")
    if not isinstance(phases, list) or not all(isinstance(p, str) for p in phases):
        raise DumpRejected(f'plugin "{name}": Phases must be an array of strings')
    unknown = sorted(set(phases) - KONG_PHASES)
    if unknown:
        raise DumpRejected(f'plugin "{name}": unknown phase "{unknown[0]}"')
    schema = info.get("Schema")
    if schema is None:
        raise DumpRejected(f'plugin "{name}": no Schema in the dump')
    try:
        config_field(schema)
    except SchemaError as exc:
        raise DumpRejected(f'plugin "{name}": invalid schema: {exc}') from exc
    return PluginInfo(name, version, int(priority), tuple(phases), schema, str(protocol))


class KongHarness:
    """Kong 3.9's external-plugin machinery for one plugin server."""

    def __init__(
        self,
        query_cmd: Sequence[str],
        start_cmd: Sequence[str] | None = None,
        *,
        prefix: Path,
        socket_name: str = "cilium-identity.socket",
        read_timeout: float = 60.0,
        workers: int = 1,
        start_timeout: float = 10.0,
        max_event_retries: int | None = None,
    ) -> None:
        self.query_cmd = list(query_cmd)
        self.start_cmd = list(start_cmd) if start_cmd is not None else None
        self.prefix = Path(prefix)
        self.socket_path = self.prefix / socket_name
        self.read_timeout = read_timeout
        self.start_timeout = start_timeout
        self.max_event_retries = max_event_retries
        self.node_id = str(uuid.uuid4())
        self.kong_log: list[tuple[str, str]] = []
        self.server_output: list[str] = []
        self._info: PluginInfo | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._seq = 0
        self._active_log: list[tuple[str, str]] | None = None
        self._route_id = str(uuid.uuid4())
        self._service_id = str(uuid.uuid4())
        # Fault injection: called with each PDK method the plugin asks for, before Kong runs
        # it (e.g. kill or restart the plugin server while an event is half done).
        self.before_pdk_call: Callable[[str], None] | None = None
        self._workers = [
            _Worker(RpcClient(str(self.socket_path), read_timeout=read_timeout, log=self._log))
            for _ in range(workers)
        ]
        for w in self._workers:
            w.rpc.on_notification = functools.partial(self._notification, w)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> KongHarness:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def info(self) -> PluginInfo:
        if self._info is None:
            self._info = self.query()
        return self._info

    @property
    def server_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def query(self) -> PluginInfo:
        """Run ``query_cmd`` like ``io.popen`` (stdout only) and validate the dump."""
        done = subprocess.run(self.query_cmd, capture_output=True, timeout=60, check=False)
        self._info = _parse_dump(done.stdout, self.query_cmd)
        return self._info

    def start(self) -> None:
        """Spawn ``start_cmd`` in its own process group and wait until the socket answers."""
        if self.start_cmd is None:
            self._log("warn", "no start_cmd: the plugin server is managed externally")
            return
        if self._proc is not None and self._proc.poll() is None:
            return
        self.prefix.mkdir(parents=True, exist_ok=True)
        self._log("notice", f"Starting {self.info.name}")
        proc = subprocess.Popen(
            self.start_cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._proc = proc
        self._reader = threading.Thread(target=self._grab_logs, args=(proc,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._socket_answers():
            if proc.poll() is not None:
                self._join_reader()
                raise RuntimeError(
                    f"plugin server exited with {proc.returncode}: "
                    + "\n".join(self.server_output[-20:])
                )
            if time.monotonic() > deadline:
                self.kill_server()
                raise TimeoutError(f"plugin server socket {self.socket_path} did not answer")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM the server's process group (Kong's shutdown), SIGKILL after 5 s."""
        self._close_pools()
        self._signal_server(signal.SIGTERM, wait=5.0)

    def kill_server(self) -> None:
        """SIGKILL the server's process group; Kong's caches and pools are left as they are."""
        self._signal_server(signal.SIGKILL, wait=5.0)

    def restart_server(self) -> None:
        self.kill_server()
        self.start()

    def close(self) -> None:
        self.stop()

    # ------------------------------------------------------------------ plugins

    def add_plugin(
        self,
        config: dict[str, Any],
        *,
        route_id: str | None = None,
        service_id: str | None = None,
        consumer_id: str | None = None,
        instance_name: str | None = None,
    ) -> ConfiguredPlugin:
        """Validate ``config`` against the dumped schema and build Kong's conf table."""
        plugin = ConfiguredPlugin(
            id=str(uuid.uuid4()),
            config={},
            conf={},
            route_id=route_id,
            service_id=service_id,
            consumer_id=consumer_id,
            instance_name=instance_name,
        )
        self._configure(plugin, config)
        return plugin

    def update_plugin(self, plugin: ConfiguredPlugin, config: dict[str, Any]) -> ConfiguredPlugin:
        """New config, new ``__seq__``: the next request starts a fresh instance."""
        self._configure(plugin, config)
        return plugin

    def _configure(self, plugin: ConfiguredPlugin, config: dict[str, Any]) -> None:
        filled = validate_config(config_field(self.info.schema), config)
        self._seq += 1  # ngx.shared.kong:incr("plugins_iterator:__seq__", 1, 0, 0)
        key = (
            f"plugins:{self.info.name}:{plugin.route_id or ''}:{plugin.service_id or ''}:"
            f"{plugin.consumer_id or ''}::{_WS_ID}"
        )
        plugin.config = filled
        plugin.conf = {
            **filled,
            "route_id": plugin.route_id,
            "service_id": plugin.service_id,
            "consumer_id": plugin.consumer_id,
            "plugin_instance_name": plugin.instance_name,
            "__plugin_id": plugin.id,
            "__ws_id": _WS_ID,
            "__key__": key,
            "__seq__": self._seq,
        }

    # ------------------------------------------------------------------ requests

    def request(
        self,
        plugin: ConfiguredPlugin,
        request: KongRequest | None = None,
        *,
        worker: int = 0,
        phases: Sequence[str] = ("access",),
    ) -> Outcome:
        """Run ``request`` through the plugin's phases, then the upstream, then ``log``."""
        started = time.monotonic()
        state = RequestState.start(request or KongRequest())
        rpc_calls: list[str] = []
        failed_open = False
        result = _PhaseResult()
        if state.refusal is not None:  # nginx answered while reading the header block
            return self._refused(state, started)
        with self._logging_to(state.kong_log):
            for phase in phases:
                if phase == "log" or phase not in self.info.phases:
                    continue
                result = self._run_phase(worker, plugin, phase, state, rpc_calls, None)
                failed_open = failed_open or result.failed_open
                if result.exit is not None or result.lua_error is not None:
                    break
            outcome = self._respond(state, result)
            if "log" in phases and "log" in self.info.phases:
                saved = SavedForLog(
                    serialize_data=serialize(state, status=outcome.status),
                    request_headers=state.headers.window(),  # ngx.req.get_headers(): 100
                    response_headers={
                        k: v[0] if len(v) == 1 else list(v)
                        for k, v in outcome.response_headers.items()
                    },
                    response_status=outcome.status,
                    ngx_ctx=dict(state.ngx_ctx),
                    ctx_shared=state.ctx_shared,
                    req_start_time=state.started_at,
                )
                self._run_phase(worker, plugin, "log", state, rpc_calls, saved)
        outcome.rpc_calls = rpc_calls
        outcome.failed_open = failed_open
        outcome.pdk_calls = state.pdk_calls
        outcome.serialize_values = state.serialize_values
        outcome.elapsed = time.monotonic() - started
        return outcome

    def _refused(self, state: RequestState, started: float) -> Outcome:
        """400 from nginx itself (Kong's error handler renders it); no plugin, no upstream."""
        refusal = state.refusal or ""
        state.kong_log.append(("info", refusal))
        too_large = "too long" in refusal or "too large" in refusal
        message = "Request header or cookie too large" if too_large else HTTP_MESSAGES[400]
        outcome = self._respond(state, _PhaseResult())
        outcome.proxied, outcome.status = False, 400
        outcome.body = {"message": message, "request_id": state.request_id}
        outcome.upstream_headers = {}
        outcome.response_headers = {"content-type": ["application/json; charset=utf-8"]}
        outcome.elapsed = time.monotonic() - started
        return outcome

    def _respond(self, state: RequestState, result: _PhaseResult) -> Outcome:
        upstream = {k: [lua_text(v) for v in vs] for k, vs in state.headers.grouped().items()}
        headers = {k: list(v) for k, v in state.response_headers.items()}
        body: dict[str, Any] | bytes | None
        if result.exit is not None:
            status, raw, headers = result.exit.status, result.exit.body, result.exit.headers
            body = _decode_body(raw, headers)
            proxied = False
        elif result.lua_error is not None:
            status, proxied = 500, False
            headers.setdefault("content-type", ["application/json; charset=utf-8"])
            body = {"message": HTTP_MESSAGES[500], "request_id": state.request_id}
        else:
            status, proxied = 200, True
            headers.setdefault("content-type", ["application/json"])
            request = state.request
            body = {"method": request.method, "path": request.path, "headers": upstream}
        return Outcome(
            proxied=proxied,
            status=status,
            body=body,
            response_headers=headers,
            upstream_headers=upstream,
            pdk_calls=[],
            rpc_calls=[],
            kong_log=state.kong_log,
            plugin_log=state.plugin_log,
            ctx_shared=state.ctx_shared,
            authenticated_consumer=state.ngx_ctx.get("authenticated_consumer"),
            authenticated_credential=state.ngx_ctx.get("authenticated_credential"),
            serialize_values={},
            failed_open=False,
            elapsed=0.0,
            request_id=state.request_id,
        )

    def _run_phase(
        self,
        worker: int,
        plugin: ConfiguredPlugin,
        phase: str,
        state: RequestState,
        rpc_calls: list[str],
        saved: SavedForLog | None,
    ) -> _PhaseResult:
        """One plugin handler call: ``Rpc:handle_event`` inside the runloop's coroutine."""
        pdk = Pdk(
            state,
            plugin_id=plugin.id,
            route=self._route(plugin),
            service=self._service(plugin),
            node_id=self.node_id,
            saved=saved,
        )
        try:
            return self._handle_event(worker, plugin, phase, pdk, rpc_calls)
        except ResponseExit as exit_:
            if saved is not None:  # exit is not allowed in the log timer
                self._log("err", "function cannot be called in log phase")
                return _PhaseResult(lua_error="function cannot be called in log phase")
            return _PhaseResult(exit=exit_)
        except LuaError as exc:
            self._log("err", str(exc))
            return _PhaseResult(lua_error=str(exc))

    def _handle_event(
        self,
        worker: int,
        plugin: ConfiguredPlugin,
        phase: str,
        pdk: Pdk,
        rpc_calls: list[str],
    ) -> _PhaseResult:
        """``Rpc:handle_event``: its tail call on "no plugin instance" as a loop."""
        retries = 0
        while True:
            instance_id, err = self._get_instance_id(worker, plugin, rpc_calls)
            if err is None:
                done, err = self._bridge_loop(worker, instance_id, phase, pdk, rpc_calls)
                if done:
                    return _PhaseResult()
            if err is None or err is False:  # `if err then` is not taken: silence
                return _PhaseResult(failed_open=True)
            if not isinstance(err, str | bytes):
                raise LuaError(f"attempt to index a {lua_type(err)} value (err:lower())")
            text = lua_text(err)
            if "no plugin instance" not in text.lower():
                self._log("err", text)
                return _PhaseResult(failed_open=True)
            for w in self._workers:  # reset_instances_for_plugin + worker event (3.9: all)
                w.instances.clear()
            self._log("warn", text)
            retries += 1
            if self.max_event_retries is not None and retries > self.max_event_retries:
                raise EventLoopRunaway(f"{retries - 1} retries on {text!r}")

    def _get_instance_id(
        self, worker: int, plugin: ConfiguredPlugin, rpc_calls: list[str]
    ) -> tuple[Any, str | None]:
        """``get_instance_id``: ``(id, None)``, or ``(None, err)``; a failed StartInstance is a
        Lua ``error()`` (HTTP 500) and leaves nothing cached, so the next request retries."""
        w = self._workers[worker]
        cached = w.instances.get(plugin.id)
        if cached is not None and (cached.id is None or cached.id is False):
            # Kong polls 10 s for another coroutine to finish starting it, then gives up.
            del w.instances[plugin.id]
            return None, f"Could not claim instance_id for {self.info.name} (key: {plugin.id})"
        if cached is not None and cached.seq == plugin.seq and cached.plugin_id == plugin.id:
            return cached.id, None
        old_id = cached.id if cached is not None else None
        try:
            status = self._call(
                w,
                rpc_calls,
                "plugin.StartInstance",
                {"Name": self.info.name, "Config": json.dumps(plugin.conf)},
            )
        except RpcError as exc:
            w.instances.pop(plugin.id, None)
            self._log("err", f"starting instance: {exc}")
            raise LuaError(str(exc)) from exc
        if status is None or status is False:  # `status == nil` -> return nil, nil
            w.instances.pop(plugin.id, None)
            self._log("err", "starting instance: nil")
            raise LuaError("nil")
        new_id = _index(status, "Id")  # Kong does not check it: a missing Id is cached as nil
        w.instances[plugin.id] = _Instance(id=new_id, seq=plugin.seq, plugin_id=plugin.id)
        if old_id is not None:
            with contextlib.suppress(RpcError):  # "maybe other thread closed it first"
                self._call(w, rpc_calls, "plugin.CloseInstance", old_id)
        return new_id, None

    def _bridge_loop(
        self, worker: int, instance_id: Any, phase: str, pdk: Pdk, rpc_calls: list[str]
    ) -> tuple[bool, Any]:
        """Kong's ``bridge_loop``: ``(True, None)`` at "ret", else ``(False, err)``.

        ``err`` is the Lua value Kong got: a string, ``False``, any other reply error, or
        ``None`` when a reply carried neither result nor error (``nil, nil``).
        """
        w = self._workers[worker]
        try:
            event = {"InstanceId": instance_id, "EventName": phase}
            step_in = self._call(w, rpc_calls, "plugin.HandleEvent", _lua_table(event))
        except RpcError as exc:
            return False, exc.value
        if step_in is None or step_in is False:  # `if not step_in then return step_in, err`
            return False, None
        event_id = _index(step_in, "EventId")
        while True:
            data = _index(step_in, "Data")
            if data == "ret":
                return True, None
            if not isinstance(data, dict | list):
                raise LuaError(f"attempt to index field 'Data' (a {lua_type(data)} value)")
            table = data if isinstance(data, dict) else dict(enumerate(data, start=1))
            result = self._call_pdk_method(pdk, table.get("Method"), table.get("Args"))
            payload = _lua_table({"EventId": event_id, "Data": result})
            try:
                step_in = self._call(w, rpc_calls, step_method(table["Method"], result), payload)
            except RpcError as exc:
                return False, exc.value
            if step_in is None or step_in is False:
                return False, None

    def _call_pdk_method(self, pdk: Pdk, method: Any, args: Any) -> Any:
        """``call_pdk_method``: look the name up like ``rpc_util.index_table``, apply the
        args like ``method(unpack(args))``, keep the first return value, apply ``must_fix``."""
        name = pdk.resolve(method)  # a Lua error for a name that is no string
        pdk.state.pdk_calls.append(name)
        if self.before_pdk_call is not None:
            self.before_pdk_call(name)
        if not pdk.has(name):
            self._log("err", f"could not find pdk method: {name}")
            return None
        try:
            result = pdk.call(name, args)
        except (ResponseExit, LuaError):
            raise
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            # What a Lua runtime error (bad comparison, indexing nil, ...) would be.
            raise LuaError(f"{name}: {exc}") from exc
        return fix_result(name, result)

    def _call(self, w: _Worker, rpc_calls: list[str], method: str, *params: Any) -> Any:
        rpc_calls.append(method)
        return w.rpc.call(method, *params)

    # ------------------------------------------------------------------ internals

    def _route(self, plugin: ConfiguredPlugin) -> dict[str, Any]:
        return {
            "id": plugin.route_id or self._route_id,
            "name": "harness-route",
            "paths": ["/"],
            "protocols": ["http", "https"],
            "service": {"id": self._service(plugin)["id"]},
            "ws_id": _WS_ID,
        }

    def _service(self, plugin: ConfiguredPlugin) -> dict[str, Any]:
        return {
            "id": plugin.service_id or self._service_id,
            "name": "harness-service",
            "host": "upstream.local",
            "port": 80,
            "protocol": "http",
            "ws_id": _WS_ID,
        }

    @staticmethod
    def _notification(w: _Worker, label: Any, args: Any) -> None:
        """``rpc_notifications:serverPid``: ``tonumber(n)``; a pid that differs from a known
        one (a value that is no number counts as nil, so it differs too) drops this RPC's
        instances."""
        if label != "serverPid":
            return
        pid = _lua_tonumber(args)
        if w.server_pid is not None and pid != w.server_pid:
            w.instances.clear()
        w.server_pid = pid

    def _log(self, level: str, message: str) -> None:
        target = self._active_log if self._active_log is not None else self.kong_log
        target.append((level, message))

    @contextlib.contextmanager
    def _logging_to(self, sink: list[tuple[str, str]]) -> Iterator[None]:
        self._active_log = sink
        try:
            yield
        finally:
            self._active_log = None

    def _socket_answers(self) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.socket_path))
        except OSError:
            return False
        finally:
            probe.close()
        return True

    def _grab_logs(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        prefix = f"[{self._info.name if self._info else 'pluginserver'}:{proc.pid}] "
        for line in proc.stdout:
            text = line.decode("utf-8", "replace").rstrip("\n")
            if text:
                self.server_output.append(prefix + text)

    def _signal_server(self, signum: signal.Signals, wait: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signum)
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._join_reader()
        self._proc = None

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=2.0)
            self._reader = None

    def _close_pools(self) -> None:
        for w in self._workers:
            w.rpc.close()


def _lua_tonumber(value: Any) -> float | None:
    """Lua's ``tonumber`` for what msgpack carries (numbers and numeric strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str | bytes):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _lua_table(fields: dict[str, Any]) -> dict[str, Any]:
    """A table constructor in Kong's Lua: a field set to nil is no key at all."""
    return {k: v for k, v in fields.items() if v is not None}


def _index(value: Any, key: str) -> Any:
    """``value.key`` in Lua: tables answer (an array has no string keys), strings index
    the string library (nil), anything else raises."""
    if isinstance(value, dict):
        return value.get(key)
    if isinstance(value, list | str | bytes):
        return None
    raise LuaError(f"attempt to index a {lua_type(value)} value")


def _decode_body(raw: bytes | None, headers: dict[str, list[str]]) -> dict[str, Any] | bytes | None:
    """JSON bodies (Kong's error template, table bodies) come back as dicts."""
    if raw is None:
        return None
    content_type = (headers.get("content-type") or [""])[0]
    if content_type.startswith("application/json"):
        try:
            decoded = json.loads(raw)
        except ValueError:
            return raw
        if isinstance(decoded, dict):
            return decoded
    return raw

"""The nginx rig: real nginx + ngx_lua playing Kong, a real upstream, the real plugin server.

Python's part: turn a Kong declarative file into the JSON the Lua side loads, write
nginx.conf, start and stop nginx and ``kong-cilium-identity serve``, send raw HTTP requests
(header lines exactly as given, from a chosen loopback source address) and read what the
upstream recorded.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kong_cilium_identity.kong.kong_schema import config_field, validate_config

REPO = Path(__file__).resolve().parents[2]
RIG_LUA = Path(__file__).resolve().parent / "lua"
PACKAGE_LUA = REPO / "kong_cilium_identity" / "lua"
SERVER_NAME = "cilium-identity"
SOCKET_NAME = "cilium-identity.socket"
CLI = Path(sys.executable).parent / "kong-cilium-identity"

# key-auth's schema defaults (Kong 3.9) for the fields the rig's stand-in reads
KEY_AUTH_DEFAULTS: dict[str, Any] = {
    "key_names": ["apikey"],
    "hide_credentials": False,
    "anonymous": None,
    "key_in_header": True,
    "key_in_query": True,
    "key_in_body": False,
    "run_on_preflight": True,
}


def nginx_binary() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def modules_path(nginx: str) -> Path | None:
    """nginx's ``--modules-path``, where Debian installs the ndk and lua modules."""
    out = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False).stderr
    found = re.search(r"--modules-path=(\S+)", out)
    return Path(found.group(1)) if found else None


def missing_reason() -> str | None:
    """Why the rig cannot run here, or None."""
    nginx = nginx_binary()
    if nginx is None:
        return "nginx is not installed (Debian: apt-get install nginx libnginx-mod-http-lua)"
    modules = modules_path(nginx)
    for module in ("ndk_http_module.so", "ngx_http_lua_module.so"):
        if modules is None or not (modules / module).exists():
            return f"nginx module {module} is missing (Debian: libnginx-mod-http-lua)"
    return None


@functools.cache
def supports_max_headers(nginx: str) -> bool:
    """Debian backported nginx's ``max_headers`` (1,000 header lines by default); Kong's
    OpenResty (nginx 1.25) has no such limit, so the rig lifts it where it exists."""
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "probe.conf"
        conf.write_text("events {}\nhttp { max_headers 10; }\n")
        args = [nginx, "-t", "-p", tmp, "-e", str(Path(tmp) / "error.log"), "-c", str(conf)]
        return subprocess.run(args, capture_output=True, check=False).returncode == 0


class PortTaken(RuntimeError):
    """nginx could not bind a port ``free_port`` had found free: another process took it."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stable_id(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "rig:" + ":".join(parts)))


def loopback_for(address: str) -> str:
    """A loopback address standing in for a pod address (172.28.0.10 -> 127.28.0.10), so
    a client on this host can open connections from it."""
    parsed = ipaddress.ip_address(address)
    if parsed.version != 4 or parsed.is_loopback:
        return address
    return "127." + ".".join(address.split(".")[1:])


def run_dump() -> dict[str, Any]:
    """Kong's query_cmd: the first entry of ``--dump`` (Kong 3.9 reads only that one)."""
    out = subprocess.run([str(CLI), "--dump"], capture_output=True, text=True, check=True)
    entries = json.loads(out.stdout)
    assert isinstance(entries, list) and entries
    entry: dict[str, Any] = entries[0]
    return entry


def _remap_static(config: dict[str, Any]) -> None:
    static = config.get("static")
    if isinstance(static, dict):
        for entry in static.get("entries") or []:
            if isinstance(entry, dict) and isinstance(entry.get("address"), str):
                entry["address"] = loopback_for(entry["address"])


@dataclass
class Declarative:
    """A Kong declarative file (kong.yaml shape) turned into the rig's JSON."""

    doc: Mapping[str, Any]
    dump: Mapping[str, Any]
    # KONG_PLUGINS: Kong loads every installed Lua plugin at start, configured or not
    installed: tuple[str, ...] = ()
    seq: int = 1

    def consumers(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        consumers, credentials = [], []
        for item in self.doc.get("consumers") or []:
            username = item.get("username")
            cid = item.get("id") or stable_id("consumer", str(username or item.get("custom_id")))
            consumers.append(
                {
                    "id": cid,
                    "username": username,
                    "custom_id": item.get("custom_id"),
                    "tags": item.get("tags") or [],
                    "created_at": 1700000000,
                    "updated_at": 1700000000,
                }
            )
            for cred in item.get("keyauth_credentials") or []:
                credentials.append(
                    {
                        "id": cred.get("id") or stable_id("keyauth", cred["key"]),
                        "key": cred["key"],
                        "consumer": {"id": cid},
                        "created_at": 1700000000,
                        "tags": cred.get("tags") or [],
                        "ttl": None,
                    }
                )
        return consumers, credentials

    def _plugin_config(self, name: str, config: Any) -> dict[str, Any]:
        if name == self.dump["Name"]:
            filled = validate_config(config_field(self.dump["Schema"]), config or {})
            _remap_static(filled)
            return filled
        if name == "key-auth":
            return {**KEY_AUTH_DEFAULTS, **(config or {})}
        return dict(config or {})  # a Lua plugin: the rig fills defaults from its schema.lua

    def routes(self) -> list[dict[str, Any]]:
        global_plugins = list(self.doc.get("plugins") or [])
        routes = []
        for service in self.doc.get("services") or []:
            service_id = service.get("id") or stable_id("service", service["name"])
            for route in service.get("routes") or []:
                route_id = route.get("id") or stable_id("route", route["name"])
                chosen: dict[str, tuple[str, Mapping[str, Any]]] = {}
                scopes = (
                    ("global", global_plugins),
                    (f"service:{service['name']}", service.get("plugins") or []),
                    (f"route:{route['name']}", route.get("plugins") or []),
                )
                for scope, plugins in scopes:  # the most specific scope wins, as in Kong
                    for plugin in plugins:
                        chosen[plugin["name"]] = (scope, plugin)
                entries = []
                for name, (scope, plugin) in chosen.items():
                    plugin_id = plugin.get("id") or stable_id("plugin", scope, name)
                    conf = self._plugin_config(name, plugin.get("config"))
                    conf.update(
                        route_id=route_id if scope.startswith("route") else None,
                        service_id=service_id if not scope.startswith("global") else None,
                        consumer_id=None,
                        plugin_instance_name=plugin.get("instance_name"),
                        __plugin_id=plugin_id,
                        __key__=f"plugins:{name}:{route_id}::::",
                        __seq__=self.seq,
                    )
                    entries.append(
                        {
                            "id": plugin_id,
                            "name": name,
                            "config": conf,
                            "config_json": json.dumps(conf),
                        }
                    )
                routes.append(
                    {
                        "id": route_id,
                        "name": route["name"],
                        "paths": route.get("paths") or ["/"],
                        "strip_path": route.get("strip_path", True),
                        "service": {"id": service_id, "name": service["name"]},
                        "plugins": entries,
                    }
                )
        return routes

    def to_rig(self, socket_path: Path) -> dict[str, Any]:
        consumers, credentials = self.consumers()
        return {
            "routes": self.routes(),
            "consumers": consumers,
            "credentials": credentials,
            "installed": list(self.installed),
            "servers": {self.dump["Name"]: {"socket": str(socket_path), "info": dict(self.dump)}},
        }


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    port: int,
    path: str,
    headers: Iterable[tuple[str, str]] = (),
    *,
    source: str = "127.0.0.1",
    timeout: float = 15.0,
) -> Reply:
    """One HTTP/1.1 request with exactly these header lines in this order (plus Host and
    Connection: close first), sent from ``source``."""
    lines = [f"GET {path} HTTP/1.1", "Host: rig.test", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return _parse_reply(b"".join(chunks))


def _parse_reply(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in header_lines:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    reply = Reply(int(status_line.split()[1]), headers, body)
    if (reply.header("Transfer-Encoding") or "").lower() == "chunked":
        reply.body = _unchunk(body)
    return reply


def _unchunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


class PluginServer:
    """``kong-cilium-identity serve`` as Kong's start_cmd would run it."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.socket = prefix / SOCKET_NAME
        self.log = prefix / "plugin-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(CLI),
                    "serve",
                    "--kong-prefix",
                    str(self.prefix),
                    "--socket-name",
                    SOCKET_NAME,
                ],
                stdin=subprocess.DEVNULL,  # not Kong's pipe: no stdin watch
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"plugin server exited: {self.log.read_text()[-2000:]}")
            if self.connectable():
                return
            time.sleep(0.05)
        raise RuntimeError("plugin server socket never became connectable")

    def connectable(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(str(self.socket))
            except OSError:
                return False
            return True

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait()

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)
        self.wait()

    def wait(self, timeout: float = 15.0) -> None:
        assert self.process is not None
        self.process.wait(timeout)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)


NGINX_CONF = """\
load_module {modules}/ndk_http_module.so;
load_module {modules}/ngx_http_lua_module.so;
{user}
worker_processes 2;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    # big enough for 5,000 header lines
    client_header_buffer_size 16k;
    large_client_header_buffers 64 32k;
    {max_headers}
    lua_package_path "{rig_lua}/?.lua;{package_lua}/?.lua;{package_lua}/?/init.lua;;";
    lua_shared_dict rig 16m;
    lua_shared_dict upstream 64m;
    # Kong sets no timeout on plugin-server sockets: these directives (60 s by default) apply
    lua_socket_read_timeout {read_timeout};
    lua_socket_send_timeout {read_timeout};
    lua_socket_connect_timeout {read_timeout};
    lua_socket_log_errors off;
    init_by_lua_block {{ require("rig.main").init("{prefix}/rig.json") }}
    init_worker_by_lua_block {{ require("rig.main").init_worker() }}

    upstream rig_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}

    server {{
        # Kong's default proxy_listen has reuseport: connections spread over the workers
        listen 127.0.0.1:{proxy_port} reuseport;
        location / {{
            set $upstream_uri '';
            access_by_lua_block {{ require("rig.main").access() }}
            header_filter_by_lua_block {{ require("rig.main").header_filter() }}
            log_by_lua_block {{ require("rig.main").log() }}
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://rig_upstream$upstream_uri$is_args$args;
        }}
    }}

    server {{
        listen 127.0.0.1:{upstream_port};
        location /__rig/ {{
            content_by_lua_block {{ require("rig.upstream").control() }}
        }}
        location / {{
            content_by_lua_block {{ require("rig.upstream").record() }}
        }}
    }}
}}
"""


@dataclass
class Nginx:
    """nginx (master + 2 workers) serving the Kong stand-in and the upstream."""

    prefix: Path
    rig_config: Mapping[str, Any]
    read_timeout: str = "60s"
    proxy_port: int = field(default_factory=free_port)
    upstream_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def write(self) -> Path:
        nginx = nginx_binary()
        assert nginx is not None
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / sub).mkdir(exist_ok=True)
        (self.prefix / "rig.json").write_text(json.dumps(self.rig_config))
        conf = NGINX_CONF.format(
            modules=modules_path(nginx),
            # Kong's start_cmd runs the server as the workers' user: keep them the same
            user="user root;" if os.geteuid() == 0 else "",
            prefix=self.prefix,
            rig_lua=RIG_LUA,
            package_lua=PACKAGE_LUA,
            read_timeout=self.read_timeout,
            max_headers="max_headers 10000;" if supports_max_headers(nginx) else "",
            proxy_port=self.proxy_port,
            upstream_port=self.upstream_port,
        )
        path = self.prefix / "nginx.conf"
        path.write_text(conf)
        return path

    def start(self, timeout: float = 15.0, attempts: int = 3) -> None:
        """Start nginx. A port that another process took between ``free_port`` and
        nginx's bind is replaced by a fresh one, and nginx started again."""
        for _ in range(attempts - 1):
            try:
                self._start_once(timeout)
                return
            except PortTaken:
                self.proxy_port, self.upstream_port = free_port(), free_port()
        self._start_once(timeout)

    def _start_once(self, timeout: float) -> None:
        nginx = nginx_binary()
        assert nginx is not None
        conf = self.write()
        logged = len(self.error_log())
        args = [nginx, "-p", str(self.prefix), "-e", str(self.prefix / "error.log")]
        self.process = subprocess.Popen([*args, "-c", str(conf)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                said = self.error_log()[logged:]
                if "Address already in use" in said:
                    raise PortTaken(said[-3000:])
                raise RuntimeError(f"nginx exited: {self.error_log()[-3000:]}")
            try:
                self.counters()
                http_request(self.proxy_port, "/__rig_probe", timeout=2)
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _control(self, what: str) -> Any:
        reply = http_request(self.upstream_port, f"/__rig/{what}", timeout=10)
        assert reply.status == 200, reply
        return reply.json()

    def counters(self) -> dict[str, int]:
        counters: dict[str, int] = self._control("counters")
        return counters

    def upstream_count(self) -> int:
        return self.counters()["upstream"]

    def upstream_requests(self, since: int = 0) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = self._control(f"requests?since={since}")["requests"]
        return records

    def serialized(self, request_id: str) -> Any:
        return self._control(f"serialize/{request_id}")

    def request(self, path: str, headers: Iterable[tuple[str, str]] = (), **kwargs: Any) -> Reply:
        return http_request(self.proxy_port, path, headers, **kwargs)

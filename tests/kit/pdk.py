"""The Kong PDK functions an external plugin can call, answered from a scripted request.

Each function mirrors the Lua function in ``kong/pdk`` (Kong 3.9) for the inputs a plugin
can send over msgpack: same argument checks (a failing check is a Lua ``error()``, raised
here as :class:`LuaError`), same first return value, same side effects on the request.
Strings are Lua strings: ``str`` or ``bytes`` (a ``bytes`` value may be invalid UTF-8).
"""

from __future__ import annotations

import inspect
import json
import re
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from tests.kit.msgpack_rpc import LuaError, lua_text, lua_type
from tests.kit.nginx_headers import (
    DEFAULT_MAX_HEADERS,
    HeaderInput,
    HeaderList,
    HeaderValue,
    LuaStr,
    header_key,
    receive,
)

# Kong's ``kong.response.error`` default messages (``HTTP_MESSAGES`` in pdk/response.lua).
HTTP_MESSAGES: dict[int, str] = {
    400: "Bad request",
    401: "Unauthorized",
    402: "Payment required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    407: "Proxy authentication required",
    408: "Request timeout",
    409: "Conflict",
    410: "Gone",
    411: "Length required",
    412: "Precondition failed",
    413: "Payload too large",
    414: "URI too long",
    415: "Unsupported media type",
    416: "Range not satisfiable",
    417: "Expectation failed",
    418: "I'm a teapot",
    421: "Misdirected request",
    422: "Unprocessable entity",
    423: "Locked",
    424: "Failed dependency",
    425: "Too early",
    426: "Upgrade required",
    428: "Precondition required",
    429: "Too many requests",
    431: "Request header fields too large",
    451: "Unavailable for legal reasons",
    494: "Request header or cookie too large",
    500: "An unexpected error occurred",
    501: "Not implemented",
    502: "An invalid response was received from the upstream server",
    503: "The upstream server is currently unavailable",
    504: "The upstream server is timing out",
    505: "HTTP version not supported",
    506: "Variant also negotiates",
    507: "Insufficient storage",
    508: "Loop detected",
    510: "Not extended",
    511: "Network authentication required",
}
CONTENT_TYPE_JSON = "application/json; charset=utf-8"
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_TIMER_ERROR = "API disabled in the context of ngx.timer"


@dataclass
class KongRequest:
    """The downstream request and the Kong state a plugin can observe through the PDK."""

    client_ip: str = "10.0.1.200"
    client_port: int = 40000
    forwarded_ip: str | None = None
    forwarded_port: int | None = None
    server_port: int = 8000
    scheme: str = "http"
    method: str = "GET"
    host: str = "kong.local"
    path: str = "/"
    # A mapping (insertion order is arrival order; a list value is consecutive lines) or
    # (name, value) lines in arrival order, to interleave names.
    headers: HeaderInput = field(default_factory=dict)
    consumer: dict[str, Any] | None = None
    credential: dict[str, Any] | None = None
    ctx_shared: dict[str, Any] = field(default_factory=dict)
    consumers: list[dict[str, Any]] = field(default_factory=list)
    raw_body: bytes = b""


class ResponseExit(Exception):
    """``kong.response.exit``/``error``: Kong records the response and yields (no reply)."""

    def __init__(self, status: int, body: bytes | None, headers: dict[str, list[str]]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers


@dataclass
class SavedForLog:
    """What Kong's log phase keeps for the ``ngx.timer`` it runs the plugin in."""

    serialize_data: dict[str, Any]
    request_headers: dict[str, HeaderValue]
    response_headers: dict[str, HeaderValue]
    response_status: int
    ngx_ctx: dict[str, Any]
    ctx_shared: dict[str, Any]
    req_start_time: float


@dataclass
class RequestState:
    """Everything one request accumulates while plugins run on it."""

    request: KongRequest
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: float = field(default_factory=time.time)
    headers: HeaderList = field(default_factory=lambda: HeaderList([]))
    refusal: str | None = None  # nginx refused the header block (400) before any plugin
    response_headers: dict[str, list[str]] = field(default_factory=dict)
    ngx_ctx: dict[str, Any] = field(default_factory=dict)
    ctx_shared: dict[str, Any] = field(default_factory=dict)
    serialize_values: dict[str, Any] = field(default_factory=dict)
    upstream_host: LuaStr | None = None
    pdk_calls: list[str] = field(default_factory=list)
    plugin_log: list[tuple[str, str]] = field(default_factory=list)
    kong_log: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def start(cls, request: KongRequest) -> RequestState:
        state = cls(request=request, ctx_shared=dict(request.ctx_shared))
        arrival = receive(
            request.headers,
            host=request.host,
            request_line=f"{request.method} {request.path} HTTP/1.1",
        )
        state.headers = HeaderList(arrival.lines)
        state.refusal = arrival.refusal
        state.kong_log.extend(("info", line) for line in arrival.dropped)
        state.ngx_ctx["authenticated_consumer"] = request.consumer
        state.ngx_ctx["authenticated_credential"] = request.credential
        return state


def lua_tostring(value: Any) -> str:
    """Lua's ``tostring`` for the values msgpack can carry."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, float):
        return f"{value:.14g}"
    if isinstance(value, list | dict):
        return f"table: 0x{id(value):012x}"
    return str(value)


def _from_wire(value: Any) -> Any:
    """A decoded msgpack value as the Lua table it becomes: decoding assigns ``t[k] = v``,
    so a nil map value is no key, and a nil array item is a hole (trailing ones vanish,
    inner ones turn the array into a table with integer keys)."""
    if isinstance(value, dict):
        return {k: _from_wire(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        items = [_from_wire(v) for v in value]
        while items and items[-1] is None:
            items.pop()
        if any(item is None for item in items):
            return {i: item for i, item in enumerate(items, start=1) if item is not None}
        return items
    return value


def _is_str(value: Any) -> bool:
    return isinstance(value, str | bytes)


def _validate_header(name: Any, value: Any) -> None:
    """``checks.validate_header``: string name; string, number or boolean value."""
    if not _is_str(name):
        raise LuaError(
            f'invalid header name "{lua_tostring(name)}": got {lua_type(name)}, expected string'
        )
    if lua_type(value) not in ("string", "number", "boolean"):
        raise LuaError(
            f'invalid header value for "{lua_tostring(name)}": got '
            f"{lua_type(value)}, expected string, number or boolean"
        )


def _validate_headers(headers: Any) -> None:
    """``checks.validate_headers``: a table of name -> string, number, boolean or strings."""
    if not isinstance(headers, dict | list):
        raise LuaError("headers must be a table")
    for name, value in _pairs(headers):
        if not _is_str(name):
            raise LuaError(
                f'invalid header name "{lua_tostring(name)}": got {lua_type(name)}, expected string'
            )
        vtype = lua_type(value)
        if vtype == "table":
            for item in _ipairs(value):
                if not _is_str(item):
                    raise LuaError(
                        f'invalid header value in array "{lua_tostring(name)}": '
                        f"got {lua_type(item)}, expected string"
                    )
        elif vtype not in ("string", "number", "boolean"):
            raise LuaError(
                f'invalid header value for "{lua_tostring(name)}": got {vtype}, '
                "expected string, number, boolean or array of strings"
            )


def _pairs(table: Any) -> list[tuple[Any, Any]]:
    if isinstance(table, list):
        return list(enumerate(table, start=1))
    return list(table.items())


def _ipairs(table: Any) -> list[Any]:
    """Lua ``ipairs``: the array part up to the first nil (a map has none)."""
    out: list[Any] = []
    if isinstance(table, list):
        for item in table:
            if item is None:
                break
            out.append(item)
    return out


def _normalize(value: Any) -> LuaStr:
    """``checks.normalize_header``: "" becomes " ", numbers and booleans become strings."""
    if _is_str(value):
        return " " if value in ("", b"") else value
    return lua_tostring(value)


def _normalize_multi(value: Any) -> list[LuaStr]:
    """``checks.normalize_multi_header`` as a list of header lines."""
    if isinstance(value, list | dict):
        return [_normalize(item) for item in _ipairs(value)]
    return [_normalize(value)]


class Pdk:
    """The PDK functions of one phase of one request (``exposed_api`` + ``kong``)."""

    def __init__(
        self,
        state: RequestState,
        *,
        plugin_id: str,
        route: dict[str, Any] | None,
        service: dict[str, Any] | None,
        node_id: str,
        saved: SavedForLog | None = None,
    ) -> None:
        self.state = state
        self.plugin_id = plugin_id
        self.route = route
        self.service = service
        self.node_id = node_id
        self.saved = saved
        self.methods: dict[str, Callable[..., Any]] = {
            "kong.client.get_ip": self.client_get_ip,
            "kong.client.get_forwarded_ip": self.client_get_forwarded_ip,
            "kong.client.get_port": self.client_get_port,
            "kong.client.get_forwarded_port": self.client_get_forwarded_port,
            "kong.client.get_consumer": self.client_get_consumer,
            "kong.client.get_credential": self.client_get_credential,
            "kong.client.load_consumer": self.client_load_consumer,
            "kong.client.authenticate": self.client_authenticate,
            "kong.client.get_protocol": self.client_get_protocol,
            "kong.request.get_headers": self.request_get_headers,
            "kong.request.get_header": self.request_get_header,
            "kong.request.get_method": self.request_get_method,
            "kong.request.get_path": self.request_get_path,
            "kong.request.get_query": self.request_get_query,
            "kong.request.get_scheme": self.request_get_scheme,
            "kong.request.get_host": self.request_get_host,
            "kong.request.get_port": self.request_get_port,
            "kong.request.get_raw_body": self.request_get_raw_body,
            "kong.service.request.set_header": self.service_set_header,
            "kong.service.request.set_headers": self.service_set_headers,
            "kong.service.request.add_header": self.service_add_header,
            "kong.service.request.clear_header": self.service_clear_header,
            "kong.response.set_header": self.response_set_header,
            "kong.response.add_header": self.response_add_header,
            "kong.response.exit": self.response_exit,
            "kong.response.error": self.response_error,
            "kong.response.get_status": self.response_get_status,
            "kong.ctx.shared.get": self.ctx_shared_get,
            "kong.ctx.shared.set": self.ctx_shared_set,
            "kong.nginx.get_ctx": self.nginx_get_ctx,
            "kong.nginx.set_ctx": self.nginx_set_ctx,
            "kong.nginx.get_var": self.nginx_get_var,
            "kong.log.serialize": self.log_serialize,
            "kong.log.set_serialize_value": self.log_set_serialize_value,
            "kong.plugin.get_id": lambda: self.plugin_id,
            "kong.router.get_route": lambda: self.route,
            "kong.router.get_service": lambda: self.service,
            "kong.node.get_id": lambda: self.node_id,
            "kong.node.get_hostname": socket.gethostname,
        }
        for level in ("alert", "crit", "err", "warn", "notice", "info", "debug"):
            self.methods[f"kong.log.{level}"] = self._logger(level)
        self.methods["kong.log"] = self._logger("notice")
        self.methods["kong.log.inspect"] = self._inspect

    def has(self, method: str) -> bool:
        return method in self.methods

    def resolve(self, method: Any) -> str:
        """The PDK name ``rpc_util.index_table`` finds for ``method``: the exact key, else
        the ``\\w+`` segments walked from ``kong``. A name that is no string is a Lua error
        (``ngx.re.gmatch``), and so is calling a namespace table such as ``kong.request``;
        an unknown name comes back as it is (Kong logs it and answers nil)."""
        if isinstance(method, bool) or not isinstance(method, str | bytes | int | float):
            raise LuaError(f"bad argument #1 to 'gmatch' (string expected, got {lua_type(method)})")
        text = lua_text(method) if isinstance(method, str | bytes) else lua_tostring(method)
        if text in self.methods:
            return text
        dotted = ".".join(re.findall(r"[A-Za-z0-9_]+", text))
        if dotted in self.methods:
            return dotted
        if dotted in self._namespaces():
            raise LuaError(f"attempt to call a table value ({text})")
        return text

    def _namespaces(self) -> set[str]:
        out: set[str] = set()
        for name in self.methods:
            parts = name.split(".")
            out.update(".".join(parts[:i]) for i in range(1, len(parts)))
        return out

    def call(self, method: str, args: Any) -> Any:
        """Apply ``args`` like ``method(unpack(args))`` and return the first result.

        ``unpack`` takes the array part: a map with keys 1..n gives those values, any other
        map gives no arguments; a value that is not a table is passed as the one argument.
        """
        func = self.methods[method]
        if isinstance(args, dict):
            count = 0
            while (count + 1) in args:
                count += 1
            args = [args[i] for i in range(1, count + 1)]
        positional = [_from_wire(a) for a in (args if isinstance(args, list | tuple) else [args])]
        while positional and positional[-1] is None:  # msgpack nils leave no Lua slot
            positional.pop()
        params = inspect.signature(func).parameters.values()
        if not any(p.kind is p.VAR_POSITIONAL for p in params):
            positional = positional[: len(params)]  # Lua ignores extra arguments
        return func(*positional)

    # ------------------------------------------------------------------ helpers

    def _live(self) -> KongRequest:
        """The request for functions that read ``ngx.var`` (unavailable in the log timer)."""
        if self.saved is not None:
            raise LuaError(_TIMER_ERROR)
        return self.state.request

    def _logger(self, level: str) -> Callable[..., None]:
        def log(*args: Any) -> None:
            self.state.plugin_log.append((level, "".join(lua_tostring(a) for a in args)))

        return log

    def _inspect(self, *args: Any) -> None:
        text = " ".join(json.dumps(a, default=lua_tostring, sort_keys=True) for a in args)
        self.state.plugin_log.append(("notice", text))

    def _ctx(self) -> dict[str, Any]:
        return self.saved.ngx_ctx if self.saved is not None else self.state.ngx_ctx

    def _shared(self) -> dict[str, Any]:
        return self.saved.ctx_shared if self.saved is not None else self.state.ctx_shared

    # ------------------------------------------------------------------ kong.client

    def client_get_ip(self) -> str:
        return self._live().client_ip

    def client_get_forwarded_ip(self) -> str:
        request = self._live()
        return request.forwarded_ip or request.client_ip

    def client_get_port(self) -> int:
        return self._live().client_port

    def client_get_forwarded_port(self) -> int:
        request = self._live()
        return request.forwarded_port or request.client_port

    def client_get_consumer(self) -> Any:
        return self._ctx().get("authenticated_consumer")

    def client_get_credential(self) -> Any:
        return self._ctx().get("authenticated_credential")

    def client_get_protocol(self, allow_terminated: Any = None) -> str:
        return self._live().scheme

    def client_load_consumer(self, consumer_id: Any = None, by_username: Any = None) -> Any:
        if not _is_str(consumer_id):
            raise LuaError("consumer_id must be a string")
        key = lua_tostring(consumer_id)
        is_uuid = bool(_UUID_RE.match(key))
        if not is_uuid and not by_username:
            raise LuaError("cannot load a consumer with an id that is not a uuid")
        rows = self.state.request.consumers
        found = next((c for c in rows if is_uuid and c.get("id") == key), None)
        if found is None and by_username:
            found = next((c for c in rows if c.get("username") == key), None)
        return found

    def client_authenticate(self, consumer: Any = None, credential: Any = None) -> None:
        if consumer is None and credential is None:
            raise LuaError("either credential or consumer must be provided")
        if consumer is not None and not isinstance(consumer, dict | list):
            raise LuaError("consumer must be a table or nil")
        if credential is not None and not isinstance(credential, dict | list):
            raise LuaError("credential must be a table or nil")
        ctx = self._ctx()
        ctx["authenticated_consumer"] = consumer
        ctx["authenticated_credential"] = credential

    # ------------------------------------------------------------------ kong.request

    def request_get_headers(self, max_headers: Any = None) -> dict[str, HeaderValue]:
        if self.saved is not None:
            return self.saved.request_headers
        limit = DEFAULT_MAX_HEADERS
        if max_headers is not None:
            if lua_type(max_headers) != "number":
                raise LuaError("max_headers must be a number")
            if max_headers < 1:
                raise LuaError("max_headers must be >= 1")
            if max_headers > 1000:
                raise LuaError("max_headers must be <= 1000")
            limit = int(max_headers)
        return self.state.headers.window(limit)

    def request_get_header(self, name: Any = None) -> LuaStr | None:
        """``ngx.var.http_<name>``; in the log timer, the saved ``get_headers()`` table."""
        if not _is_str(name):
            raise LuaError("header name must be a string")
        if self.saved is not None:
            value = self.saved.request_headers.get(header_key(name).replace("_", "-"))
            return value[0] if isinstance(value, list) else value
        return self.state.headers.variable(name)

    def request_get_method(self) -> str:
        return self._live().method

    def request_get_path(self) -> str:
        return self._live().path.split("?", 1)[0]

    def request_get_query(self, max_args: Any = None) -> dict[str, Any]:
        query = self._live().path.partition("?")[2]
        out: dict[str, Any] = {}
        for pair in filter(None, query.split("&")):
            if "=" in pair:
                name, value = parse_qsl(pair, keep_blank_values=True)[0]
                out.setdefault(name, []).append(value)
            else:  # a bare flag is `true` in Kong's query table
                out.setdefault(unquote_plus(pair), []).append(True)
        return {k: v[0] if len(v) == 1 else v for k, v in out.items()}

    def request_get_scheme(self) -> str:
        return self._live().scheme

    def request_get_host(self) -> str:
        return self._live().host

    def request_get_port(self) -> int:
        return self._live().server_port

    def request_get_raw_body(self) -> bytes:
        return self._live().raw_body

    # ------------------------------------------------------------------ kong.service.request

    def service_set_header(self, name: Any = None, value: Any = None) -> None:
        _validate_header(name, value)
        if header_key(name) == "host":
            self.state.upstream_host = value
        self.state.headers.set(name, _normalize_multi(value))

    def service_add_header(self, name: Any = None, value: Any = None) -> None:
        """Kong's ``add_header``: ``get_headers()[name]`` (the default 100-line window!),
        plus the value, written back with ``set_header``: lines of ``name`` past the window
        are lost."""
        _validate_header(name, value)
        if header_key(name) == "host":
            self.state.upstream_host = value
        current = self.state.headers.window().get(header_key(name))
        values = list(current) if isinstance(current, list) else [current] if current else []
        self.state.headers.set(name, [*values, *_normalize_multi(value)])

    def service_clear_header(self, name: Any = None) -> None:
        if not _is_str(name):
            raise LuaError("header must be a string")
        self.state.headers.clear(name)

    def service_set_headers(self, headers: Any = None) -> None:
        """Kong's ``set_headers``: ``ngx.req.set_header`` per name; an empty table as value
        clears every line of that name."""
        if not isinstance(headers, dict | list):
            raise LuaError("headers must be a table")
        _validate_headers(headers)
        for name, value in _pairs(headers):
            if header_key(name) == "host":
                self.state.upstream_host = value
            self.state.headers.set(name, _normalize_multi(value))

    # ------------------------------------------------------------------ kong.response

    def response_set_header(self, name: Any = None, value: Any = None) -> None:
        _validate_header(name, value)
        self.state.response_headers[header_key(name)] = [lua_tostring(_normalize(value))]

    def response_add_header(self, name: Any = None, value: Any = None) -> None:
        _validate_header(name, value)
        lines = self.state.response_headers.setdefault(header_key(name), [])
        lines.append(lua_tostring(_normalize(value)))

    def response_get_status(self) -> int:
        if self.saved is not None:
            return self.saved.response_status
        raise LuaError(
            "function cannot be called in access phase (only in: header_filter, "
            "response, body_filter, log, admin_api)"
        )

    def response_exit(self, status: Any = None, body: Any = None, headers: Any = None) -> None:
        _check_status(status, 100)
        if body is not None and lua_type(body) not in ("string", "table"):
            raise LuaError("body must be a nil, string or table")
        out_headers = self._exit_headers(headers)
        payload: bytes | None
        if isinstance(body, dict | list):
            payload = json.dumps(body, separators=(",", ":"), default=lua_tostring).encode()
            out_headers.setdefault("content-type", [CONTENT_TYPE_JSON])
        elif body is not None:
            payload = body.encode() if isinstance(body, str) else body
        else:
            payload = None
        raise ResponseExit(int(status), payload, out_headers)

    def response_error(self, status: Any = None, message: Any = None, headers: Any = None) -> None:
        _check_status(status, 400)
        if isinstance(message, dict | list):
            message = json.dumps(message, separators=(",", ":"), default=lua_tostring)
        if message is not None and not _is_str(message):
            raise LuaError("message must be a nil, a string or a table")
        out_headers = self._exit_headers(headers)
        out_headers.setdefault("content-type", [CONTENT_TYPE_JSON])
        text = (
            lua_tostring(message)
            if message is not None
            else HTTP_MESSAGES.get(int(status), f"The upstream server responded with {int(status)}")
        )
        body = json.dumps({"message": text, "request_id": self.state.request_id}, indent=2)
        raise ResponseExit(int(status), body.encode(), out_headers)

    def _exit_headers(self, headers: Any) -> dict[str, list[str]]:
        if headers is not None and not isinstance(headers, dict | list):
            raise LuaError("headers must be a nil or table")
        out = {k: list(v) for k, v in self.state.response_headers.items()}
        if headers is not None:
            _validate_headers(headers)
            for name, value in _pairs(headers):
                out[header_key(name)] = [lua_tostring(v) for v in _normalize_multi(value)]
        return out

    # ------------------------------------------------------------------ ctx, nginx, log

    def ctx_shared_get(self, key: Any = None) -> Any:
        return self._shared().get(key)

    def ctx_shared_set(self, key: Any = None, value: Any = None) -> None:
        if key is None:
            raise LuaError("table index is nil")
        if value is None:
            self._shared().pop(key, None)
        else:
            self._shared()[key] = value

    def nginx_get_ctx(self, key: Any = None) -> Any:
        return self._ctx().get(key)

    def nginx_set_ctx(self, key: Any = None, value: Any = None) -> None:
        if key is None:
            raise LuaError("table index is nil")
        if value is None:
            self._ctx().pop(key, None)
        else:
            self._ctx()[key] = value

    def nginx_get_var(self, name: Any = None) -> Any:
        """A few ``ngx.var`` entries (unknown variables are nil, as in nginx)."""
        request = self._live()
        variables = {
            "remote_addr": request.forwarded_ip or request.client_ip,
            "realip_remote_addr": request.client_ip,
            "remote_port": str(request.forwarded_port or request.client_port),
            "realip_remote_port": str(request.client_port),
            "server_port": str(request.server_port),
            "scheme": request.scheme,
            "host": request.host,
            "request_method": request.method,
            "request_uri": request.path,
            "uri": request.path.split("?", 1)[0],
            "kong_request_id": self.state.request_id,
        }
        return variables.get(lua_tostring(name))

    def log_serialize(self) -> str:
        """Kong's exposed ``kong.log.serialize`` returns the JSON *string* of the table."""
        data = self.saved.serialize_data if self.saved is not None else serialize(self.state)
        return json.dumps(data, default=lua_tostring)

    def log_set_serialize_value(
        self, key: Any = None, value: Any = None, options: Any = None
    ) -> None:
        if not _is_str(key):
            raise LuaError("key must be a string")
        mode = "set"
        if isinstance(options, dict):
            mode = options.get("mode", "set")
            if mode not in ("set", "add", "replace"):
                raise LuaError('mode must be "set", "add" or "replace"')
        name = lua_tostring(key)
        exists = name in self.state.serialize_values
        if mode == "set" or (mode == "add" and not exists) or (mode == "replace" and exists):
            self.state.serialize_values[name] = value


def _check_status(status: Any, low: int) -> None:
    if lua_type(status) != "number":
        raise LuaError("code must be a number")
    if not low <= status <= 599:
        raise LuaError(f"code must be a number between {low} and 599")


def serialize(state: RequestState, *, status: int = 200) -> dict[str, Any]:
    """A trimmed ``kong.log.serialize()``: the fields plugins usually read."""
    request = state.request
    data: dict[str, Any] = {
        "request": {
            "method": request.method,
            "uri": request.path,
            "url": f"{request.scheme}://{request.host}:{request.server_port}{request.path}",
            "headers": state.headers.window(),
            "size": len(request.raw_body),
        },
        "response": {"status": status, "headers": dict(state.response_headers)},
        "client_ip": request.forwarded_ip or request.client_ip,
        "started_at": int(state.started_at * 1000),
        "consumer": state.ngx_ctx.get("authenticated_consumer"),
    }
    for dotted, value in state.serialize_values.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return data

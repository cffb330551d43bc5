"""Kong's side of the MessagePack-RPC link to an external plugin server.

Mirrors ``kong/runloop/plugin_servers/rpc/mp_rpc.lua`` (Kong 3.9):

* values are encoded the way lua-MessagePack encodes the equivalent Lua value (see
  :func:`encode`), so tests can send exactly what Kong sends, invalid UTF-8 included;
* :class:`RpcClient` sends one request per call over a pooled Unix-socket connection, never
  pipelines, checks the reply id and reports failures with the error strings Kong produces;
* :data:`STEP_METHOD` and :func:`fix_result` are Kong's Step-name table and result fixers.
"""

from __future__ import annotations

import math
import os
import select
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack


class RpcError(Exception):
    """An RPC that failed the way ``Rpc:call`` reports it: ``nil, err``.

    ``value`` is the Lua value of ``err``: a string for socket failures ("no data",
    "connection refused"), or whatever the server put in the reply's error slot (a Lua
    string, or ``False``, a number, a table...); Kong treats each differently.
    """

    def __init__(self, value: Any) -> None:
        super().__init__(lua_text(value) if isinstance(value, str | bytes) else repr(value))
        self.value = value


class LuaError(Exception):
    """A Lua ``error()`` raised on Kong's side: the request coroutine dies (HTTP 500)."""


@dataclass(frozen=True, slots=True)
class Binary:
    """A Lua string Kong packs as msgpack ``bin`` (``fix_raw``: raw bodies)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MultiMap:
    """A Lua table of header/query values Kong packs through ``fix_mmap``.

    Values may be a string (sent as ``[value]``), ``True`` (sent as ``[]``) or a list of
    strings (sent as is); an empty table is sent as an empty *map*, unlike other empty tables.
    """

    items: Mapping[str, str | bytes | bool | list[str | bytes]]


# Which Step variant Kong answers a PDK method with (``get_step_method``).
STEP_METHOD: dict[str, str] = {
    "kong.client.get_credential": "plugin.StepCredential",
    "kong.client.load_consumer": "plugin.StepConsumer",
    "kong.client.get_consumer": "plugin.StepConsumer",
    "kong.client.authenticate": "plugin.StepCredential",
    "kong.node.get_memory_stats": "plugin.StepMemoryStats",
    "kong.router.get_route": "plugin.StepRoute",
    "kong.router.get_service": "plugin.StepService",
    "kong.request.get_query": "plugin.StepMultiMap",
    "kong.request.get_headers": "plugin.StepMultiMap",
    "kong.response.get_headers": "plugin.StepMultiMap",
    "kong.service.response.get_headers": "plugin.StepMultiMap",
}

_MMAP_METHODS = frozenset(
    {
        "kong.request.get_query",
        "kong.request.get_headers",
        "kong.response.get_headers",
        "kong.service.response.get_headers",
    }
)
_RAW_METHODS = frozenset(
    {
        "kong.request.get_raw_body",
        "kong.response.get_raw_body",
        "kong.service.response.get_raw_body",
    }
)


def step_method(pdk_method: Any, result: Any) -> str:
    """The Step RPC Kong uses to return ``result`` of ``pdk_method``.

    Kong's ``StepError`` branch needs a second Lua return value, which ``call_pdk_method``
    drops, so it is never taken.
    """
    if isinstance(result, dict) and isinstance(result.get("_method"), str):
        return str(result["_method"])
    named = STEP_METHOD.get(pdk_method) if isinstance(pdk_method, str) else None
    return named or "plugin.Step"


def fix_result(pdk_method: str, result: Any) -> Any:
    """Apply Kong's ``must_fix`` table (``fix_mmap`` / ``fix_raw``) to a PDK result."""
    if pdk_method in _MMAP_METHODS:
        if not isinstance(result, dict):  # pairs(nil) in Lua
            raise LuaError(f"bad argument #1 to 'pairs' (table expected, got {lua_type(result)})")
        return MultiMap(result)
    if pdk_method in _RAW_METHODS:
        if not isinstance(result, bytes | str):
            raise LuaError("attempt to get length of a nil value")
        return Binary(result.encode() if isinstance(result, str) else result)
    return result


def lua_text(value: str | bytes) -> str:
    """A Lua string as text: invalid UTF-8 bytes survive as surrogate escapes."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def lua_type(value: Any) -> str:
    """The name Lua's ``type()`` gives a value as Kong would hold it."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str | bytes):
        return "string"
    return "table"


# --------------------------------------------------------------------------- encoding


def encode(value: Any) -> bytes:
    """Pack ``value`` as lua-MessagePack does for the equivalent Lua value in Kong.

    * ``str`` and ``bytes`` are Lua strings: msgpack **str** (``string_compat``: fixstr,
      str16, str32; never str8, never bin), so ``bytes`` may carry invalid UTF-8;
    * :class:`Binary` is msgpack bin, :class:`MultiMap` follows ``fix_mmap``;
    * ``None`` is nil; inside a table it stands for ``cjson.null`` (a database null, which
      Kong's packer writes as nil in place), since a Lua table cannot hold a real nil;
    * numbers are Lua numbers (doubles): integral values strictly inside +-(2^53 - 1) are
      packed as integers, everything else as a double (the packer's ``maxinteger`` test);
    * a table is an **array** when its keys are exactly the integers 1..n
      (``set_array'without_hole'``), else a map: an empty ``dict``/``list`` is an empty
      array, ``{1: "a", 2: "b"}`` is ``["a", "b"]`` and ``{1: "a", 3: "c"}`` stays a map.
    """
    out = bytearray()
    _pack(value, out)
    return bytes(out)


_LUA_MAXINTEGER = 2**53 - 1


def _pack(value: Any, out: bytearray) -> None:
    if value is None or isinstance(value, bool):
        out += msgpack.packb(value)
    elif isinstance(value, int | float):
        _pack_number(value, out)
    elif isinstance(value, str | bytes):
        raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        _pack_str(raw, out)
    elif isinstance(value, Binary):
        out += msgpack.packb(value.data, use_bin_type=True)
    elif isinstance(value, MultiMap):
        _pack_mmap(value, out)
    elif isinstance(value, list | tuple):
        _pack_array_header(len(value), out)
        for item in value:
            _pack(item, out)
    elif isinstance(value, Mapping):
        _pack_table(value, out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as a Lua value")


def _pack_number(value: float, out: bytearray) -> None:
    if math.isfinite(value) and value == int(value) and abs(value) < _LUA_MAXINTEGER:
        out += msgpack.packb(int(value))
    else:
        out += msgpack.packb(float(value), use_single_float=False)


def _is_index(key: Any) -> bool:
    return isinstance(key, int | float) and not isinstance(key, bool) and key > 0


def _pack_table(table: Mapping[Any, Any], out: bytearray) -> None:
    """lua-MessagePack's table packer: an array when the keys are exactly 1..n."""
    entries = list(table.items())
    is_map = any(not _is_index(k) for k, _ in entries)
    if not is_map and max((k for k, _ in entries), default=0) != len(entries):
        is_map = True  # a hole (or a fractional key)
    if is_map:
        _pack_map_header(len(entries), out)
        for key, item in entries:
            _pack(key, out)
            _pack(item, out)
        return
    _pack_array_header(len(entries), out)
    for _, item in sorted(entries, key=lambda entry: float(entry[0])):
        _pack(item, out)


def _pack_str(raw: bytes, out: bytearray) -> None:
    n = len(raw)
    if n < 32:
        out.append(0xA0 | n)
    elif n < 0x10000:
        out += b"\xda" + struct.pack(">H", n)
    else:
        out += b"\xdb" + struct.pack(">I", n)
    out += raw


def _pack_array_header(n: int, out: bytearray) -> None:
    if n < 16:
        out.append(0x90 | n)
    elif n < 0x10000:
        out += b"\xdc" + struct.pack(">H", n)
    else:
        out += b"\xdd" + struct.pack(">I", n)


def _pack_map_header(n: int, out: bytearray) -> None:
    if n < 16:
        out.append(0x80 | n)
    elif n < 0x10000:
        out += b"\xde" + struct.pack(">H", n)
    else:
        out += b"\xdf" + struct.pack(">I", n)


def _pack_mmap(mmap: MultiMap, out: bytearray) -> None:
    if not mmap.items:
        _pack_map_header(0, out)
        return
    _pack_map_header(len(mmap.items), out)
    for key, item in mmap.items.items():
        _pack(key, out)
        if item is True:
            _pack_array_header(0, out)
        elif isinstance(item, str | bytes):
            _pack([item], out)
        else:
            _pack(item, out)


# --------------------------------------------------------------------------- transport


LogFn = Callable[[str, str], None]
NotifyFn = Callable[[Any, Any], None]


class RpcClient:
    """One plugin's RPC object in one nginx worker (``Rpc`` in ``mp_rpc.lua``).

    Connections come from a keep-alive pool like ``ngx.socket.connect`` +
    ``setkeepalive``; a connection goes back to the pool only after a complete reply.
    """

    def __init__(
        self,
        socket_path: str,
        *,
        read_timeout: float,
        log: LogFn,
        on_notification: NotifyFn | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.read_timeout = read_timeout
        self._log = log
        self.on_notification = on_notification
        self._pool: list[socket.socket] = []
        self.msg_id = 0

    def call(self, method: str, *params: Any) -> Any:
        """Send ``[0, id, method, params]``; return the result or raise :class:`RpcError`.

        Like ``Rpc:call``: a notification is handled and reading goes on; a reply with a
        non-nil error slot is ``nil, err`` (raised as :class:`RpcError` carrying the value);
        a nil result with no error is returned as ``None`` (Kong gets ``nil, nil``).
        """
        self.msg_id += 1
        msg_id = self.msg_id
        conn = self._connect()
        try:
            conn.sendall(encode([0, msg_id, method, list(params)]))
        except OSError as exc:
            conn.close()
            raise RpcError(_os_error_text(exc)) from exc
        reader = _Reader(conn, self.read_timeout, self._log)
        while True:
            message = reader.next_message()
            if not isinstance(message, list):
                conn.close()
                raise LuaError(f"attempt to index local 'data' (a {lua_type(message)} value)")
            if message and message[0] == 2:
                if self.on_notification is not None:
                    label = message[1] if len(message) > 1 else None
                    self.on_notification(label, message[2] if len(message) > 2 else None)
                continue
            if not message or message[0] != 1:
                conn.close()
                raise LuaError("RPC response expected from Go plugin server")
            if len(message) < 2 or message[1] != msg_id:
                conn.close()
                raise LuaError("unexpected RPC response ID from Go plugin server")
            self._pool.append(conn)
            error = message[2] if len(message) > 2 else None
            if error is not None:
                raise RpcError(error)
            return message[3] if len(message) > 3 else None

    def close(self) -> None:
        """Close every pooled connection (a worker exiting)."""
        for conn in self._pool:
            conn.close()
        self._pool.clear()

    def _connect(self) -> socket.socket:
        while self._pool:
            conn = self._pool.pop()
            if _is_idle(conn):
                return conn
            conn.close()  # OpenResty drops pooled connections the peer closed
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.socket_path)
        except OSError as exc:
            conn.close()
            err = _os_error_text(exc)
            self._log("err", f"trying to connect: {err}")
            raise RpcError(err) from exc
        return conn


class _Reader:
    """lua-MessagePack's ``unpacker`` over ``receiveany(4096)``, as ``Rpc:call`` uses it.

    At a message boundary with nothing buffered, a failed read (closed, reset, timed out)
    ends the iterator: Kong reports ``nil, "no data"``. A failed read in the middle of a
    message raises inside the unpacker ("missing bytes"): a Lua error, so HTTP 500. Bytes
    that are not MessagePack are a Lua error too.
    """

    def __init__(self, conn: socket.socket, read_timeout: float, log: LogFn) -> None:
        self._conn = conn
        self._timeout = read_timeout
        self._log = log
        self._unpacker = msgpack.Unpacker(raw=True, strict_map_key=False, ext_hook=_ext_is_nil)
        self._fed = 0
        self._boundary = 0  # bytes up to the end of the last whole message

    def next_message(self) -> Any:
        self._conn.settimeout(self._timeout)
        while True:
            try:
                message = next(self._unpacker)
                self._boundary = self._unpacker.tell()
                return from_wire(message)
            except StopIteration:
                pass
            except (ValueError, TypeError, msgpack.UnpackException) as exc:
                self._conn.close()
                raise LuaError(f"bad MessagePack from the plugin server: {exc}") from exc
            chunk = self._recv()
            if not chunk:
                self._conn.close()
                if self._fed > self._boundary:
                    raise LuaError("missing bytes")
                raise RpcError("no data")
            self._fed += len(chunk)
            self._unpacker.feed(chunk)

    def _recv(self) -> bytes:
        try:
            return self._conn.recv(4096)
        except TimeoutError:
            self._log("err", "lua tcp socket read timed out")
        except OSError:
            pass
        return b""


def _ext_is_nil(code: int, data: bytes) -> None:
    """lua-MessagePack's default ``build_ext`` returns nil for every extension type."""
    return None


def from_wire(value: Any) -> Any:
    """A decoded value as Kong holds it: str and bin are both Lua strings (no UTF-8 check).

    Valid UTF-8 becomes ``str``; anything else stays ``bytes``, as Kong passes it on.
    """
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    if isinstance(value, list):
        return [from_wire(item) for item in value]
    if isinstance(value, dict):
        return {from_wire(k): from_wire(v) for k, v in value.items()}
    return value


def _is_idle(conn: socket.socket) -> bool:
    """True when a pooled connection has nothing to read (peer still there, no junk)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _os_error_text(exc: OSError) -> str:
    if exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__

"""Raw msgpack frames for fuzzing the plugin server, and a client that reads its replies.

Kong's encodings are loose (any Lua string is msgpack ``str``, valid UTF-8 or not; maps may
carry keys of any type), so the frames here can hold what a strict packer refuses: map
keys that are arrays or maps, text that is not UTF-8.
"""

from __future__ import annotations

import math
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

TEXT_ERRORS = "surrogateescape"
_SCALARS = msgpack.Packer(use_bin_type=True, unicode_errors=TEXT_ERRORS)


@dataclass(frozen=True)
class RawMap:
    """A msgpack map given as pairs, so keys may be unhashable (arrays, maps)."""

    pairs: tuple[tuple[Any, Any], ...]


def pack(value: Any) -> bytes:
    """``str`` with lone surrogates goes out as the invalid UTF-8 bytes they escape."""
    out = bytearray()
    _pack(value, out)
    return bytes(out)


def _pack(value: Any, out: bytearray) -> None:
    if isinstance(value, RawMap):
        _header(len(value.pairs), 0x80, b"\xde", b"\xdf", out)
        for key, item in value.pairs:
            _pack(key, out)
            _pack(item, out)
    elif isinstance(value, list | tuple):
        _header(len(value), 0x90, b"\xdc", b"\xdd", out)
        for item in value:
            _pack(item, out)
    elif isinstance(value, dict):
        _pack(RawMap(tuple(value.items())), out)
    else:
        out += _SCALARS.pack(value)


def _header(n: int, fix: int, b16: bytes, b32: bytes, out: bytearray) -> None:
    if n < 16:
        out.append(fix | n)
    elif n < 0x10000:
        out += b16 + struct.pack(">H", n)
    else:
        out += b32 + struct.pack(">I", n)


def unpacker() -> msgpack.Unpacker:
    """Decodes as the server does, so a frame's value is what the server saw."""
    return msgpack.Unpacker(raw=False, strict_map_key=False, unicode_errors=TEXT_ERRORS)


def decode_all(data: bytes) -> tuple[list[Any], bool]:
    """The values in ``data`` and whether all of it decoded (False: the server must drop
    the connection at the first value it cannot decode)."""
    reader = unpacker()
    reader.feed(data)
    values: list[Any] = []
    try:
        values.extend(reader)
    except Exception:
        return values, False
    return values, True


def is_request(value: Any) -> bool:
    return type(value) is list and len(value) == 4 and type(value[0]) is int and value[0] == 0


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN (a msgid may be a NaN float)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is list and type(b) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict and type(b) is dict:
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(type(a) is type(b) and a == b)


class RawClient:
    """One connection to the server's socket, as Kong's pool would hold it."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.reader = unpacker()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def replies(self, count: int) -> tuple[list[Any], bool]:
        """Up to ``count`` replies; and whether the server closed the connection."""
        got: list[Any] = []
        while len(got) < count:
            got.extend(self.reader)
            if len(got) >= count:
                break
            chunk = self.sock.recv(65536)
            if not chunk:
                return got, True
            self.reader.feed(chunk)
        return got, False

    def closed_by_server(self) -> bool:
        """True when the server closed the connection (read until EOF or the timeout)."""
        try:
            while chunk := self.sock.recv(65536):
                self.reader.feed(chunk)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()


def call(path: Path, method: str, *params: Any) -> Any:
    """One well-formed request; the reply's [error, result]."""
    client = RawClient(path)
    try:
        client.send(pack([0, 1, method, list(params)]))
        (reply,), _ = client.replies(1)
    finally:
        client.close()
    assert reply[0] == 1 and reply[1] == 1, reply
    return reply[2], reply[3]

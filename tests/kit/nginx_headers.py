"""The request header list as nginx (OpenResty 1.25, Kong 3.9) keeps it.

nginx stores request headers as a list of lines in arrival order, and every view Kong offers
a plugin is computed from that list:

* ``ngx.req.get_headers(max)`` walks the first ``max`` *lines* (not names): a name whose
  lines lie past the window is missing, and a repeated name uses one slot per line;
* ``ngx.var.http_<name>`` (``kong.request.get_header``) looks at *every* line and, since
  nginx 1.23, joins repeated lines with ", " ("; " for Cookie);
* ``ngx.req.set_header`` overwrites the first line of the name in place, drops the others and
  appends any further values at the end; ``clear_header`` drops every line of the name.

Before any of that, nginx filters what arrives with its stock settings (Kong sets none of
them): a header name with a character other than letters, digits and "-" is dropped
(``ignore_invalid_headers on``, ``underscores_in_headers off``); a second line of a header
nginx keeps as unique is refused with 400; a header block that does not fit the header
buffers (``client_header_buffer_size 1k``, ``large_client_header_buffers 4 8k``) is refused
with 400 ("Request Header Or Cookie Too Large").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

LuaStr = str | bytes
HeaderValue = LuaStr | list[LuaStr]
HeaderInput = Mapping[str, HeaderValue] | Sequence[tuple[LuaStr, LuaStr]]

DEFAULT_MAX_HEADERS = 100  # lua-nginx-module's and Kong's default for get_headers
CLIENT_HEADER_BUFFER = 1024
LARGE_HEADER_BUFFER = 8192
LARGE_HEADER_BUFFERS = 4

_VALID_NAME = re.compile(rb"^[A-Za-z0-9-]+$")
# ngx_http_headers_in entries handled by ngx_http_process_unique_header_line (+ Host).
UNIQUE_HEADERS = frozenset(
    {
        "host",
        "if-modified-since",
        "if-unmodified-since",
        "if-match",
        "if-none-match",
        "content-length",
        "content-range",
        "if-range",
        "transfer-encoding",
        "expect",
        "authorization",
    }
)


def _raw(value: LuaStr) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def header_key(name: LuaStr) -> str:
    """The lower-case name ``get_headers`` uses as the table key."""
    text = name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name
    return text.lower()


def _lines_of(headers: HeaderInput) -> list[tuple[LuaStr, LuaStr]]:
    """Header lines in arrival order: a mapping's list value is consecutive lines."""
    if isinstance(headers, Mapping):
        lines: list[tuple[LuaStr, LuaStr]] = []
        for name, value in headers.items():
            values = value if isinstance(value, list) else [value]
            lines.extend((name, item) for item in values)
        return lines
    return [(name, value) for name, value in headers]


@dataclass
class Arrival:
    """What nginx made of the client's header block."""

    lines: list[tuple[LuaStr, LuaStr]]
    dropped: list[str] = field(default_factory=list)
    refusal: str | None = None  # why nginx answered 400 before any plugin ran


def receive(headers: HeaderInput, *, host: str, request_line: str) -> Arrival:
    """Apply nginx's header reading to ``headers`` (Host first when the client sent none)."""
    lines = _lines_of(headers)
    if not any(header_key(name) == "host" for name, _ in lines):
        lines.insert(0, ("Host", host))
    arrival = Arrival(lines=[])
    refusal = _buffer_refusal(request_line, lines)
    seen: dict[str, LuaStr] = {}
    for name, value in lines:
        raw_name = _raw(name)
        if not _VALID_NAME.match(raw_name):
            arrival.dropped.append(f'client sent invalid header line: "{header_key(name)}"')
            continue
        key = header_key(name)
        if key in UNIQUE_HEADERS and key in seen and refusal is None:
            refusal = f'client sent duplicate header line: "{key}"'
        seen.setdefault(key, value)
        arrival.lines.append((name, value))
    arrival.refusal = refusal
    return arrival


def _buffer_refusal(request_line: str, lines: Sequence[tuple[LuaStr, LuaStr]]) -> str | None:
    """nginx's header buffers: the 1k buffer, then up to four 8k buffers; a line that does
    not fit the rest of a buffer moves whole to the next one (its bytes must be contiguous)."""
    sizes = [len(request_line.encode()) + 2]
    sizes += [len(_raw(name)) + 2 + len(_raw(value)) + 2 for name, value in lines]
    sizes.append(2)  # the empty line ending the block
    room, large_used = CLIENT_HEADER_BUFFER, 0
    for size in sizes:
        if size <= room:
            room -= size
            continue
        if size > LARGE_HEADER_BUFFER:
            return "client sent too long header line"
        if large_used == LARGE_HEADER_BUFFERS:
            return "client sent too large request header"
        large_used += 1
        room = LARGE_HEADER_BUFFER - size
    return None


class HeaderList:
    """``r->headers_in.headers``: the lines the plugins and the upstream see."""

    def __init__(self, lines: Iterable[tuple[LuaStr, LuaStr]]) -> None:
        self.lines: list[tuple[LuaStr, LuaStr]] = list(lines)

    def window(self, limit: int = DEFAULT_MAX_HEADERS) -> dict[str, HeaderValue]:
        """``ngx.req.get_headers(limit)``: the first ``limit`` lines; a name seen once is a
        string, a repeated one an array in arrival order. (The second return value,
        "truncated", never reaches an external plugin: Kong keeps the first only.)"""
        grouped: dict[str, list[LuaStr]] = {}
        for name, value in self.lines[:limit]:
            grouped.setdefault(header_key(name), []).append(value)
        return {k: v[0] if len(v) == 1 else v for k, v in grouped.items()}

    def values(self, name: LuaStr) -> list[LuaStr]:
        key = header_key(name)
        return [value for line_name, value in self.lines if header_key(line_name) == key]

    def variable(self, name: LuaStr) -> LuaStr | None:
        """``ngx.var["http_" .. name]``: every line of the name, joined since nginx 1.23."""
        key = header_key(name).replace("_", "-")
        values = self.values(key)
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        separator = b"; " if key == "cookie" else b", "
        joined = separator.join(_raw(v) for v in values)
        try:
            return joined.decode("utf-8")
        except UnicodeDecodeError:
            return joined

    def set(self, name: LuaStr, values: Sequence[LuaStr]) -> None:
        """``ngx.req.set_header(name, values)``: no values clears the name; the first value
        overwrites the first line in place (its other lines go), the rest are appended."""
        key = header_key(name)
        if not values:
            self.clear(name)
            return
        first, rest = values[0], values[1:]
        out: list[tuple[LuaStr, LuaStr]] = []
        replaced = False
        for line_name, value in self.lines:
            if header_key(line_name) != key:
                out.append((line_name, value))
            elif not replaced:
                out.append((line_name, first))
                replaced = True
        if not replaced:
            out.append((name, first))
        out.extend((name, value) for value in rest)
        self.lines = out

    def clear(self, name: LuaStr) -> None:
        key = header_key(name)
        self.lines = [line for line in self.lines if header_key(line[0]) != key]

    def grouped(self) -> dict[str, list[LuaStr]]:
        """Every line, grouped by lower-case name (what the upstream receives)."""
        out: dict[str, list[LuaStr]] = {}
        for name, value in self.lines:
            out.setdefault(header_key(name), []).append(value)
        return out

"""A small reader for the Lua subset ``schema --lua`` writes, so tests can compare it with
the schema the plugin server reports. Not a Lua interpreter: it reads ``local NAME =
require "module"`` lines, one ``return`` of a table constructor, and inside it tables,
double-quoted strings (with Lua's escapes), numbers, booleans and dotted names (kept as
``Ref``). Anything else is a ``LuaSyntaxError``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}\[\]=,;.])
    """,
    re.VERBOSE,
)
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "'": "'", "\\": "\\"}


class LuaSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Ref:
    """A dotted name such as ``typedefs.protocols_http``."""

    path: str


def _unescape(body: str) -> str:
    out = bytearray()
    index = 0
    while index < len(body):
        char = body[index]
        if char != "\\":
            out += char.encode("utf-8")
            index += 1
            continue
        following = body[index + 1]
        if following in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[following].encode()
            index += 2
            continue
        digits = re.match(r"\d{1,3}", body[index + 1 :])
        if not digits:
            raise LuaSyntaxError(f"unknown escape \\{following}")
        out.append(int(digits.group()))
        index += 1 + len(digits.group())
    return out.decode("utf-8")


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match:
            raise LuaSyntaxError(f"unexpected {text[position : position + 20]!r}")
        kind = match.lastgroup or ""
        if kind not in ("space", "comment"):
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


class _Reader:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.at = 0

    def peek(self, offset: int = 0) -> tuple[str, str]:
        index = self.at + offset
        return self.tokens[index] if index < len(self.tokens) else ("end", "")

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        token_kind, token = self.peek()
        if (value is not None and token != value) or (kind is not None and token_kind != kind):
            raise LuaSyntaxError(f"expected {value or kind}, got {token!r}")
        self.at += 1
        return token

    def chunk(self) -> tuple[dict[str, str], Any]:
        requires: dict[str, str] = {}
        while self.peek() == ("name", "local"):
            self.take("local")
            name = self.take(kind="name")
            self.take("=")
            self.take("require")
            requires[name] = _unescape(self.take(kind="string")[1:-1])
        self.take("return")
        value = self.expression()
        if self.peek()[0] != "end":
            raise LuaSyntaxError(f"trailing {self.peek()[1]!r}")
        return requires, value

    def expression(self) -> Any:
        kind, token = self.peek()
        if token == "{":
            return self.table()
        self.at += 1
        if kind == "string":
            return _unescape(token[1:-1])
        if kind == "number":
            number = float(token)
            return int(token) if re.fullmatch(r"-?\d+", token) else number
        if kind == "name":
            if token in ("true", "false"):
                return token == "true"
            path = [token]
            while self.peek()[1] == ".":
                self.take(".")
                path.append(self.take(kind="name"))
            return Ref(".".join(path))
        raise LuaSyntaxError(f"unexpected {token!r}")

    def table(self) -> dict[str, Any] | list[Any]:
        self.take("{")
        named: dict[str, Any] = {}
        positional: list[Any] = []
        while self.peek()[1] != "}":
            if self.peek()[0] == "name" and self.peek(1)[1] == "=":
                key = self.take(kind="name")
                self.take("=")
                self._put(named, key, self.expression())
            elif self.peek()[1] == "[":
                self.take("[")
                key = _unescape(self.take(kind="string")[1:-1])
                self.take("]")
                self.take("=")
                self._put(named, key, self.expression())
            else:
                positional.append(self.expression())
            if self.peek()[1] in (",", ";"):
                self.at += 1
            elif self.peek()[1] != "}":
                raise LuaSyntaxError(f"expected , or }}, got {self.peek()[1]!r}")
        self.take("}")
        if named and positional:
            raise LuaSyntaxError("table mixes named and positional fields")
        return named if named else positional

    @staticmethod
    def _put(table: dict[str, Any], key: str, value: Any) -> None:
        if key in table:
            raise LuaSyntaxError(f"duplicate key {key!r}")
        table[key] = value


def read_chunk(text: str) -> tuple[dict[str, str], Any]:
    """(``{local: required module}``, the returned value) of a schema.lua-shaped chunk."""
    return _Reader(text).chunk()

"""Cilium labels in their ``source:key=value`` text form.

Parsing follows Cilium's rules: the source is the text before the first ``:`` unless an
``=`` comes first (then the colon belongs to the value); ``$host`` is short for
``reserved:host``; a label without ``=`` has the empty value (``reserved:host``).
"""

from __future__ import annotations

from dataclasses import dataclass

ANY_SOURCE = "any"
UNSPEC_SOURCE = "unspec"
RESERVED_SOURCE = "reserved"


@dataclass(frozen=True, slots=True, order=True)
class Label:
    source: str
    key: str
    value: str = ""

    def __str__(self) -> str:
        text = f"{self.source}:{self.key}"
        return f"{text}={self.value}" if self.value else text


class LabelError(ValueError):
    """A label or selector term that cannot be parsed."""


def parse_label(text: str, default_source: str = UNSPEC_SOURCE) -> Label:
    """Parse one label; labels without a source get ``default_source``."""
    text = text.strip()
    if not text:
        raise LabelError("empty label")
    if text.startswith("$"):
        source, rest = RESERVED_SOURCE, text[1:]
    else:
        colon = text.find(":")
        equals = text.find("=")
        if colon < 0 or (0 <= equals < colon):
            source, rest = default_source, text
        else:
            source, rest = text[:colon], text[colon + 1 :]
    key, _, value = rest.partition("=")
    if not source:
        raise LabelError(f"label {text!r} has an empty source")
    if not key:
        raise LabelError(f"label {text!r} has an empty key")
    return Label(source, key, value)

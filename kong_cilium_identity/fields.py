"""Settings declared once: a table of fields per settings group.

Each group (the common settings, ``cache``, ``token`` and one per identity source) is a
``Group`` of ``Field`` rows: name, Kong type, default, constraints and documentation.
From that one table come the group's Kong schema record (what ``--dump`` reports and
``schema --lua`` writes), the values the parsers fall back to when a setting is unset
(always the schema default), and the reference tables in docs/configuration.md.

Kong fills every default before the plugin server sees a config, so the fallback matters
where a config arrives without Kong (``validate``, tests, older stored entities); a
fallback that differs from the schema default makes the same config mean two things.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final


class _Unset:
    """The marker of a field without a default (Kong leaves it null)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


@dataclass(frozen=True)
class Field:
    """One setting. ``doc`` is the docs table text; ``description`` goes into the Kong
    schema (Kong Manager shows it); ``doc_default`` replaces the rendered default in the
    docs where a rule says more than the value (``— (required)``)."""

    name: str
    type: str
    default: Any = UNSET
    required: bool = False
    len_min: int | None = None
    between: tuple[int | float, int | float] | None = None
    one_of: tuple[str, ...] | None = None
    elements: Mapping[str, Any] | None = None
    record: Group | None = None
    description: str | None = None
    doc: str = ""
    doc_type: str | None = None
    doc_default: str | None = None

    def kong(self) -> dict[str, Any]:
        """The field's Kong schema entry: ``{name: {type, required, default, ...}}``."""
        attributes: dict[str, Any] = {"type": self.type}
        if self.required:
            attributes["required"] = True
        if self.default is not UNSET:
            attributes["default"] = _plain(self.default)
        if self.len_min is not None:
            attributes["len_min"] = self.len_min
        if self.between is not None:
            attributes["between"] = list(self.between)
        if self.one_of is not None:
            attributes["one_of"] = list(self.one_of)
        if self.elements is not None:
            attributes["elements"] = _plain(self.elements)
        if self.record is not None:
            attributes["fields"] = self.record.kong_fields()
        if self.description is not None:
            attributes["description"] = self.description
        return {self.name: attributes}

    def doc_row(self, prefix: str, with_type: bool) -> str:
        cells = [f"`{prefix}{self.name}`"]
        if with_type:
            cells.append(self.doc_type or self.type)
        meaning = self.doc
        if self.between is not None:
            meaning += " (range {}\u2013{})".format(*self.between)
        cells += [self.doc_default or render_default(self.default), meaning]
        return "| " + " | ".join(cells) + " |"


def render_default(value: Any) -> str:
    """A default as the docs show it: ``—`` when unset, else the JSON-ish literal."""
    if value is UNSET:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{json.dumps(_plain(value))}`"


def _plain(value: Any) -> Any:
    """Lists for tuples, dicts for mappings, recursively: what Kong's JSON carries."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


@dataclass(frozen=True)
class Group:
    """A settings group: its fields in schema order, and the name the docs use."""

    name: str
    fields: tuple[Field, ...]
    by_name: Mapping[str, Field] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [entry.name for entry in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: a field is declared twice")
        object.__setattr__(self, "by_name", {entry.name: entry for entry in self.fields})

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    def default(self, name: str) -> Any:
        """The schema default of ``name`` (None when it has none), as Kong would fill it."""
        value = self.by_name[name].default
        return None if value is UNSET else _plain(value)

    def value(self, record: Mapping[str, Any] | None, name: str) -> Any:
        """``record[name]``, or the schema default when unset (missing or null)."""
        found = None if record is None else record.get(name)
        return self.default(name) if found is None else found

    def kong_fields(self) -> list[dict[str, Any]]:
        return [entry.kong() for entry in self.fields]

    def record(self) -> dict[str, Any]:
        """The group as a Kong ``record`` field definition."""
        return {"type": "record", "fields": self.kong_fields()}


def doc_table(groups: Sequence[tuple[str, Group]], with_type: bool = False) -> str:
    """One Markdown table over several groups, each row's name under its prefix; nested
    records have their own rows (``cache.ttl``), not one of their own."""
    header = (
        ["field", "type", "default", "meaning"] if with_type else ["field", "default", "meaning"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for prefix, group in groups:
        lines += [entry.doc_row(prefix, with_type) for entry in group if entry.record is None]
    return "\n".join(lines)

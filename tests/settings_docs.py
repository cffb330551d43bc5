"""The settings reference tables of docs/configuration.md, written from the field tables.

Each table sits between ``<!-- fields:NAME -->`` and ``<!-- /fields:NAME -->``. Rewrite
them after changing a field with ``python -m tests.settings_docs``; the drift tests fail
while the doc and the tables differ.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from kong_cilium_identity.fields import Group, doc_table
from kong_cilium_identity.identity.sources import agent, hubble, kubernetes, static
from kong_cilium_identity.schema import CACHE, COMMON
from kong_cilium_identity.token.settings import FIELDS as TOKEN

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

# Every settings group, by the name its drift tests use.
GROUPS: dict[str, Group] = {
    "common": COMMON,
    "cache": CACHE,
    "token": TOKEN,
    "static": static.FIELDS,
    "agent": agent.FIELDS,
    "hubble": hubble.FIELDS,
    "kubernetes": kubernetes.FIELDS,
}

# Which groups each docs table shows, each under its prefix.
TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "common": (("", "common"), ("cache.", "cache"), ("static.", "static")),
    "token": (("", "token"),),
    "kubernetes": (("", "kubernetes"),),
    "agent": (("", "agent"),),
    "hubble": (("", "hubble"),),
}
WITH_TYPE = frozenset({"token"})


def tables(groups: dict[str, Group] | None = None) -> dict[str, str]:
    """Each docs table as written from ``groups`` (default: the package's field tables)."""
    source = GROUPS if groups is None else groups
    return {
        name: doc_table([(prefix, source[group]) for prefix, group in parts], name in WITH_TYPE)
        for name, parts in TABLES.items()
    }


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- fields:{name} -->\n)(.*?)(\n<!-- /fields:{name} -->)", re.DOTALL)


def read_tables(text: str) -> dict[str, str]:
    """The tables the doc holds now, by name (a missing block is absent)."""
    found = {}
    for name in TABLES:
        match = _block(name).search(text)
        if match:
            found[name] = match.group(2)
    return found


def render(text: str, groups: dict[str, Group] | None = None) -> str:
    """``text`` with every table block rewritten from the field tables."""
    for name, table in tables(groups).items():
        text, count = _block(name).subn(lambda m, t=table: m.group(1) + t + m.group(3), text)
        if count != 1:
            raise ValueError(f"{DOC.name}: expected one <!-- fields:{name} --> block")
    return text


def main() -> int:
    old = DOC.read_text(encoding="utf-8")
    new = render(old)
    if new != old:
        DOC.write_text(new, encoding="utf-8")
        print(f"rewrote the settings tables of {DOC.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""docs/architecture.md and the README's layout name what the package's first level holds."""

from __future__ import annotations

import re

from tests.packaging.imports import PACKAGE, ROOT

ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _first_level() -> tuple[set[str], set[str]]:
    """(folders, modules) directly under the package."""
    base = ROOT / PACKAGE
    folders = {
        path.name
        for path in base.iterdir()
        if path.is_dir() and not path.name.startswith(("_", "."))
    }
    files = {path.name for path in base.glob("*.py") if path.name != "__init__.py"}
    return folders, files


def test_the_architecture_page_names_every_room() -> None:
    folders, files = _first_level()
    named = set(re.findall(r"`([a-z_]+(?:/|\.py))`", ARCHITECTURE))
    missing = {f"{name}/" for name in folders} | files
    assert missing - named == set()


def test_the_readme_layout_names_every_folder() -> None:
    folders, _ = _first_level()
    layout = README[README.index("Layout") :]
    assert {name for name in folders if f"`{name}/`" not in layout} == set()
    assert "`tests/kit/`" in layout
    assert "testing/" not in layout


def test_the_picture_shows_the_request_path_in_order() -> None:
    picture = ARCHITECTURE[ARCHITECTURE.index("```") :]
    steps = [
        "auth plugin",
        "cilium-identity (priority 1000)",
        "HandleEvent",
        "kong.cilium_identity.facts",
        "resolver",
        "decide(",
        "kong.cilium_identity.apply",
        "cilium-identity-guard",
        "─▶ upstream",
    ]
    positions = [picture.find(step) for step in steps]
    assert -1 not in positions, dict(zip(steps, positions, strict=True))
    assert positions == sorted(positions)

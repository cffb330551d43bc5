"""Real captures from the team's ``shared`` folder beside the repository, for tests only.

Those captures are not part of this repository and are never copied into it. A test that
needs one asks for it here: when ``../shared`` (relative to the repository root) is not
there, the test is skipped with a reason naming the missing path. Every other test runs
on the project's own synthetic fixtures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
REAL = ("fixtures", "real")


def _reason(relative: str, path: Path) -> str:
    return f"needs ../shared/{relative} ({path}), which is not beside this repository"


def shared_path(*parts: str) -> Path:
    """``../shared/<parts>``; skips the calling test when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(_reason("/".join(parts), path))
    return path


def real_capture(*parts: str) -> Path:
    """``../shared/fixtures/real/<parts>``; skips the calling test when it is absent."""
    return shared_path(*REAL, *parts)


def real_captures(folder: str, pattern: str) -> list[Path]:
    """The captures matching ``pattern`` in ``../shared/fixtures/real/<folder>`` (for use at
    collection time: an empty list when the folder is absent; see :func:`params`)."""
    directory = SHARED.joinpath(*REAL, folder)
    return sorted(directory.glob(pattern)) if directory.is_dir() else []


def absent(folder: str, arity: int = 1) -> Any:
    """One parameter set that is skipped, naming the missing capture folder (for
    parametrize lists built from :func:`real_captures` that came out empty)."""
    relative = "/".join((*REAL, folder))
    reason = _reason(relative, SHARED.joinpath(*REAL, folder))
    return pytest.param(*([None] * arity), marks=pytest.mark.skip(reason=reason), id="absent")

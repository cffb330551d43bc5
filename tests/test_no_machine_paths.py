"""No tracked file names a path on one particular machine (a home, a work tree, a scratch
file): the repository must work wherever it is cloned. Deployment paths inside the Kong
image (``/usr/local/kong``, ``/opt/...``) are part of the product and are allowed."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.shared_captures import REPO_ROOT

# Built from pieces so that this file does not match itself.
_ROOTS = ["work", "root", "home", "Users", "tmp", "mnt/data"]
MACHINE_PATH = re.compile(
    r"(?<![\w.~-])/(?:" + "|".join(re.escape(r) for r in _ROOTS) + r")/[\w.-]"
)


def _tracked_files() -> list[str]:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip(f"needs a git checkout with git installed to list tracked files ({REPO_ROOT})")
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
    )
    return [name for name in listing.stdout.decode().split("\0") if name]


def test_no_tracked_file_names_a_machine_path() -> None:
    hits = []
    for name in _tracked_files():
        path = REPO_ROOT / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        for number, line in enumerate(text.splitlines(), start=1):
            if MACHINE_PATH.search(line):
                hits.append(f"{name}:{number}: {line.strip()}")
    assert not hits, "machine-specific absolute paths:\n" + "\n".join(hits)


@pytest.mark.parametrize(
    ("line", "flagged"),
    [
        ('Path("/' + 'work/shared/fixtures/real")', True),
        ("see /" + "root/.cache/x", True),
        ("socket at /" + "tmp/kh123/x.socket", True),
        ('tempfile.mkdtemp(prefix="kh", dir="/tmp")', False),
        ("--kong-prefix /usr/local/kong", False),
        ("/opt/cilium-identity/bin/kong-cilium-identity", False),
        ("../shared/fixtures/real", False),
    ],
)
def test_the_pattern_tells_machine_paths_from_product_paths(line: str, flagged: bool) -> None:
    assert bool(MACHINE_PATH.search(line)) is flagged

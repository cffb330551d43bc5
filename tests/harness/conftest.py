"""Fixtures: a KongHarness around one of the test plugins, on stock kong-pdk 0.36."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.kit.kong import KongHarness

PLUGINS = Path(__file__).parent / "plugins"
MakeHarness = Callable[..., KongHarness]


def plugin_cmds(script: str, prefix: Path, socket_name: str) -> tuple[list[str], list[str]]:
    path = str(PLUGINS / script)
    query = [sys.executable, path, "--dump"]
    start = [
        sys.executable,
        path,
        "--kong-prefix",
        str(prefix),
        "--socket-name",
        socket_name,
        "--no-lua-style",
    ]
    return query, start


@pytest.fixture
def short_prefix() -> Iterator[Path]:
    """A short directory: Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="kh", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_harness(short_prefix: Path) -> Iterator[MakeHarness]:
    made: list[KongHarness] = []

    def make(script: str, *, start: bool = True, **kwargs: object) -> KongHarness:
        socket_name = f"{Path(script).stem}.socket"
        query, start_cmd = plugin_cmds(script, short_prefix, socket_name)
        harness = KongHarness(
            query, start_cmd, prefix=short_prefix, socket_name=socket_name, **kwargs
        )  # type: ignore[arg-type]
        made.append(harness)
        harness.query()
        if start:
            harness.start()
        return harness

    yield make
    for harness in made:
        harness.close()


def script(*steps: Sequence[object]) -> dict[str, str]:
    """A probe-plugin config running ``steps``."""
    return {"script": json.dumps(list(steps))}

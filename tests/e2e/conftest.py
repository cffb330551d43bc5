"""Fixtures: the real cilium-identity plugin server behind the Kong wire harness."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.kit.kong import KongHarness

SOCKET = "cilium-identity.socket"
FAULTY_SERVER = Path(__file__).with_name("faulty_server.py")


def server_commands(
    prefix: Path, *extra: str, script: Path | None = None
) -> tuple[list[str], list[str]]:
    """Kong's query_cmd and start_cmd for our plugin server (or a test launcher of it)."""
    cli = [sys.executable, "-m", "kong_cilium_identity.cli"]
    launcher = [sys.executable, str(script)] if script else cli
    start = [*launcher, "serve", "--kong-prefix", str(prefix), "--socket-name", SOCKET, *extra]
    return [*cli, "--dump"], start


@contextmanager
def running_server(*extra: str, script: Path | None = None) -> Iterator[KongHarness]:
    """A plugin server in its own short Kong prefix (socket paths are limited to 107 bytes)."""
    prefix = Path(tempfile.mkdtemp(prefix="kci", dir="/tmp"))
    query, start = server_commands(prefix, *extra, script=script)
    harness = KongHarness(query, start, prefix=prefix, socket_name=SOCKET, read_timeout=10)
    try:
        harness.query()
        harness.start()
        yield harness
    finally:
        harness.close()
        shutil.rmtree(prefix, ignore_errors=True)


@pytest.fixture(scope="module", params=["lua-style", "no-lua-style"])
def style_flags(request: pytest.FixtureRequest) -> list[str]:
    """The plugin must be correct under both of kong-pdk's return conventions."""
    return ["--no-lua-style"] if request.param == "no-lua-style" else []


@pytest.fixture(scope="module")
def kong(style_flags: list[str]) -> Iterator[KongHarness]:
    """One plugin server per test module and return convention; each test adds its own
    plugin entity, so instances never leak between tests."""
    with running_server(*style_flags) as harness:
        yield harness


@pytest.fixture(scope="module")
def faulty_kong(style_flags: list[str]) -> Iterator[KongHarness]:
    """The plugin server with an exception injected into the request path."""
    with running_server(*style_flags, script=FAULTY_SERVER) as harness:
        yield harness

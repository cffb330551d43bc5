"""Fixtures: a test plugin under our server or stock kong-pdk 0.36, behind the Kong harness."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.kit.kong import KongHarness

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
LAUNCH = HERE / "launch.py"
PLUGINS = {
    "probe": ROOT / "tests" / "harness" / "plugins" / "probe_plugin.py",
    "gate": HERE / "plugins" / "gate_plugin.py",
    "after-exit": HERE / "plugins" / "after_exit_plugin.py",
    "noop": HERE / "plugins" / "noop_plugin.py",
    "deadline": HERE / "plugins" / "deadline_plugin.py",
    "log-raise": HERE / "plugins" / "log_raise_plugin.py",
    "bad-args": HERE / "plugins" / "bad_args_plugin.py",
    "cilium-identity": ROOT / "kong_cilium_identity" / "plugin.py",
}
SOCKET = "plugin.socket"
# The stock server is run to show each defect it has; ours must not have it.
SERVERS = ["ours", "stock"]

MakeKong = Callable[..., KongHarness]


def commands(server: str, plugin: str, prefix: Path, *extra: str) -> tuple[list[str], list[str]]:
    base = [sys.executable, str(LAUNCH), server, str(PLUGINS[plugin]), plugin]
    start = [*base, "--kong-prefix", str(prefix), "--socket-name", SOCKET, *extra]
    return [*base, "--dump"], start


@pytest.fixture
def prefix() -> Iterator[Path]:
    """A short Kong prefix: Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ks", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_kong(prefix: Path) -> Iterator[MakeKong]:
    made: list[KongHarness] = []

    def make(
        server: str,
        plugin: str = "probe",
        *,
        deadline: float = 10.0,
        idle_event_limit: float = 300.0,
        lua_style: bool = False,
        read_timeout: float = 10.0,
        workers: int = 1,
        start: bool = True,
        server_args: Sequence[str] = (),
    ) -> KongHarness:
        extra = [] if lua_style else ["--no-lua-style"]
        if server == "ours":
            extra += ["--event-deadline", str(deadline)]
            extra += ["--idle-event-limit", str(idle_event_limit)]
            extra += server_args
        query, start_cmd = commands(server, plugin, prefix, *extra)
        kong = KongHarness(
            query,
            start_cmd if start else None,
            prefix=prefix,
            socket_name=SOCKET,
            read_timeout=read_timeout,
            workers=workers,
        )
        made.append(kong)
        kong.query()
        kong.start()
        return kong

    yield make
    for kong in reversed(made):
        kong.close()


def wait_for_output(kong: KongHarness, text: str) -> str:
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        for line in kong.server_output:
            if text in line:
                return line
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not in the server output")

"""Fixtures of the nginx rig: a temp prefix, nginx with the Kong stand-in, the plugin server."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.nginx.rig import Declarative, Nginx, PluginServer, missing_reason, run_dump
from tests.nginx.shipped import CHECKOUT_KEY, INSTALLED, REPORTS_POD

_MISSING = missing_reason()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.nginx)
            if _MISSING is not None:
                item.add_marker(pytest.mark.skip(reason=_MISSING))


@dataclass
class Rig:
    nginx: Nginx
    server: PluginServer

    def stolen_key_requests(self, n: int) -> list[int]:
        """n requests with checkout's key from the reports pod: none may ever pass."""
        return [
            self.nginx.request("/orders/1", [CHECKOUT_KEY], source=REPORTS_POD).status
            for _ in range(n)
        ]

    def warm(self) -> None:
        """Start the plugin instance in both workers (each has its own instance cache)."""
        for _ in range(200):
            status = self.nginx.request("/orders/1", [CHECKOUT_KEY], source=REPORTS_POD).status
            assert status == 403
            if self.nginx.counters()["start_instance"] >= 2:
                return
        raise AssertionError("one nginx worker never took a request")


RigFactory = Callable[..., Rig]


@pytest.fixture(scope="session")
def dump() -> dict[str, Any]:
    return run_dump()


@pytest.fixture
def make_rig(dump: dict[str, Any]) -> Iterator[RigFactory]:
    """make_rig(doc, read_timeout="60s", start_server=True, installed=INSTALLED) -> Rig
    (nginx running; ``installed`` is KONG_PLUGINS)."""
    made: list[Rig] = []
    # a short prefix: Unix socket paths are limited to 107 bytes
    prefixes: list[Path] = []

    def factory(
        doc: Mapping[str, Any],
        *,
        read_timeout: str = "60s",
        start_server: bool = True,
        installed: tuple[str, ...] = INSTALLED,
    ) -> Rig:
        prefix = Path(tempfile.mkdtemp(prefix="rig-"))
        prefixes.append(prefix)
        server = PluginServer(prefix)
        nginx = Nginx(
            prefix,
            Declarative(doc, dump, installed).to_rig(server.socket),
            read_timeout=read_timeout,
        )
        rig = Rig(nginx, server)
        made.append(rig)
        if start_server:
            server.start()
        nginx.start()
        return rig

    yield factory
    for rig in made:
        rig.nginx.stop()
        rig.server.close()
    for prefix in prefixes:
        shutil.rmtree(prefix, ignore_errors=True)

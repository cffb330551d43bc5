"""Markers for the whole suite, applied in one place (see ``[tool.pytest.ini_options]``).

- ``process``: the test starts a process (the plugin server, nginx, our CLI) or a fake server
  (Kubernetes API, Hubble Relay, agent, token issuer) -- through a fixture that does, or in
  its own body.
- ``property``: a hypothesis test.
- ``slow``: a test that takes over about a second here, or a heavy fuzz, soak or ip-reuse run.
- ``nginx`` and ``docker`` are set by ``tests/nginx/conftest.py`` and the docker modules;
  their tests are ``process`` and ``slow`` too.

``pytest -m "not slow"`` is the quick run; CI runs everything.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

PROCESS_FIXTURES = frozenset(
    {
        # a plugin server behind the Kong harness (tests/e2e, harness, server, deploy, ...)
        "kong",
        "faulty_kong",
        "make_harness",
        "make_kong",
        "kong_url",
        "demo",
        "run",
        "hung_source",
        # nginx and the plugin server of the nginx rig; ``dump`` runs the CLI
        "make_rig",
        "dump",
        # fake servers
        "fake",
        "cluster",
        "slices_cluster",
        "relay",
        "agent",
        "issuer",
        "shared_issuer",
    }
)

STARTS_A_PROCESS = re.compile(
    r"Fake(?:KubeApi|Relay|Agent|Issuer)\(|KongHarness\(|running_server\(|PluginServer\("
    r"|Nginx\(|subprocess\.|Popen\(|sys\.executable"
)
"""What a test body (or a module helper it names) writes when it starts a process itself."""

SLOW_MODULES = frozenset(
    {
        "e2e/test_plugin_fuzz.py",
        "e2e/test_server_fuzz.py",
        "e2e/test_token_fuzz.py",
        "kubernetes/test_ip_reuse.py",
    }
)
"""Fuzz and soak modules: every test in them is slow by design."""

SLOW_TESTS = frozenset[str]()
"""Other tests measured over about a second here (``path::name`` without parameters)."""


@functools.cache
def _source(function: Callable[..., object]) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


def _starts_a_process(item: pytest.Function) -> bool:
    if PROCESS_FIXTURES.intersection(item.fixturenames):
        return True
    body = _source(item.function)
    if STARTS_A_PROCESS.search(body):
        return True
    # helpers of the same module the test calls (``call(kong, ...)``, ``serve(...)``)
    module = item.module
    for name in set(re.findall(r"\b([a-z_][a-z0-9_]*)\(", body)):
        helper = getattr(module, name, None)
        local = inspect.isfunction(helper) and helper.__module__ == module.__name__
        if local and STARTS_A_PROCESS.search(_source(helper)):
            return True
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        where = item.path.relative_to(TESTS).as_posix()
        if getattr(item.function, "is_hypothesis_test", False):
            item.add_marker(pytest.mark.property)
        if _starts_a_process(item):
            item.add_marker(pytest.mark.process)
        if where in SLOW_MODULES or f"{where}::{item.originalname}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if where.startswith(("nginx/", "docker/")):
            item.add_marker(pytest.mark.process)
            item.add_marker(pytest.mark.slow)  # a real nginx or a container per module

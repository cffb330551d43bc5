"""Markers for the whole suite, applied in one place (see ``[tool.pytest.ini_options]``).

- ``process``: the test starts a process (the plugin server, nginx, our CLI) or a fake server
  (Kubernetes API, Hubble Relay, agent, token issuer) -- through a fixture that does, or in
  its own body.
- ``property``: a hypothesis test.
- ``slow``: every test that starts an operating-system process (an interpreter start and
  imports cost about a second each), a heavy fuzz, soak or ip-reuse run, and the tests
  listed below that were measured over about a second here.
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

SPAWNING_FIXTURES = frozenset(
    {
        # a plugin server process behind the Kong harness
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
    }
)
"""Fixtures that start an operating-system process (each costs an interpreter start)."""

FAKE_SERVER_FIXTURES = frozenset(
    {"fake", "cluster", "slices_cluster", "relay", "agent", "issuer", "shared_issuer"}
)
"""Fixtures that start a fake server on a thread of the test process."""

SPAWNS = re.compile(
    r"KongHarness\(|running_server\(|PluginServer\(|Nginx\(|subprocess\.|Popen\(|sys\.executable"
)
FAKE_SERVER = re.compile(r"Fake(?:KubeApi|Relay|Agent|Issuer)\(")
"""What a test body (or a module helper it calls) writes when it starts one itself."""

SLOW_MODULES = frozenset(
    {
        "e2e/test_plugin_fuzz.py",
        "e2e/test_server_fuzz.py",
        "e2e/test_token_fuzz.py",
        "kubernetes/test_ip_reuse.py",
    }
)
"""Fuzz and soak modules: every test in them is slow by design."""

SLOW_TESTS = frozenset(
    {
        "kubernetes/test_ces.py::test_neither_resource_served_is_unavailable_with_a_clear_log",
        "kubernetes/test_crd_shapes.py::test_a_mangled_update_never_answers_with_anything_but_the_old_identity",
        "kubernetes/test_crd_shapes.py::test_ciliumendpoint_with_a_wrong_typed_field_is_rejected",
        "kubernetes/test_crd_shapes.py::test_ciliumendpointslice_with_a_wrong_typed_field_loses_what_it_touched",
        "kubernetes/test_crd_shapes.py::test_ciliumidentity_with_a_wrong_typed_field_is_rejected",
        "kubernetes/test_watch.py::test_api_server_down_goes_stale_then_converges_when_back",
        "kubernetes/test_watch.py::test_server_side_timeout_ends_streams_and_the_watch_goes_on",
        "sources/test_resolver_sources.py::test_thousand_concurrent_misses_make_one_upstream_call",
        "sources/test_shapes_property.py::test_flow_with_a_wrongly_typed_field_is_refused",
        "sources/test_shapes_property.py::test_identity_with_a_wrongly_typed_field_is_refused",
        "sources/test_shapes_property.py::test_ip_answer_with_a_wrongly_typed_field_is_refused",
        "unit/test_decision_properties.py::test_claim_rules_allow_only_a_string_equal_to_the_one_target_value",
        "unit/test_decision_properties.py::test_decide_allows_exactly_when_the_oracle_does",
    }
)
"""Tests that start no process but were measured over about a second here
(``path::name``, parameters left out: every parametrisation of a name is slow)."""


@functools.cache
def _source(function: Callable[..., object]) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


def _code(item: pytest.Function) -> str:
    """The test's source and that of the module's own helpers it calls."""
    body = _source(item.function)
    module = item.module
    parts = [body]
    for name in sorted(set(re.findall(r"\b([a-z_][a-z0-9_]*)\(", body))):
        helper = getattr(module, name, None)
        if inspect.isfunction(helper) and helper.__module__ == module.__name__:
            parts.append(_source(helper))
    return "\n".join(parts)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        where = item.path.relative_to(TESTS).as_posix()
        code = _code(item)
        spawns = bool(SPAWNING_FIXTURES.intersection(item.fixturenames) or SPAWNS.search(code))
        spawns = spawns or where.startswith(("nginx/", "docker/"))
        fakes = bool(FAKE_SERVER_FIXTURES.intersection(item.fixturenames))
        if spawns or fakes or FAKE_SERVER.search(code):
            item.add_marker(pytest.mark.process)
        if getattr(item.function, "is_hypothesis_test", False):
            item.add_marker(pytest.mark.property)
        listed = where in SLOW_MODULES or f"{where}::{item.originalname}" in SLOW_TESTS
        if spawns or listed:
            item.add_marker(pytest.mark.slow)

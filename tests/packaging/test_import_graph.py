"""The package's import graph has no circle, and the shared contracts live in neutral rooms."""

from __future__ import annotations

from tests.packaging.imports import PACKAGE, cycles, every_import, import_graph, modules

NEUTRAL = {
    f"{PACKAGE}.errors": "ConfigError",
    f"{PACKAGE}.pools": "SharedPool",
    f"{PACKAGE}.kong_contract": "the Kong-side contract keys",
}


def test_the_import_graph_has_no_circle() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    assert cycles(graph) == []


def test_not_even_lazy_or_type_only_imports_close_a_circle() -> None:
    """No module needs a function-level import to dodge a circle (metrics and readiness
    used to: the HTTP endpoint that serves both now lives in ops/endpoint.py)."""
    graph = import_graph(lazy=True)
    assert f"{PACKAGE}.ops.readiness" in graph[f"{PACKAGE}.ops.endpoint"]
    assert cycles(graph) == []


def test_the_cycle_finder_sees_a_circle_through_several_modules() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_follows_relative_and_submodule_imports() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.server.protocol" in graph[f"{PACKAGE}.server.events"]
    assert f"{PACKAGE}.kong_contract" in graph[f"{PACKAGE}.server.protocol"]
    # a type-only import is not an edge: mypy sees it, the interpreter never runs it
    assert f"{PACKAGE}.schema" not in graph[f"{PACKAGE}.budget"]
    assert f"{PACKAGE}.schema" in import_graph(lazy=True)[f"{PACKAGE}.budget"]


def test_neutral_modules_import_no_subsystem() -> None:
    graph = import_graph()
    assert set(NEUTRAL) <= set(modules())
    for name in NEUTRAL:
        assert graph[name] == set(), f"{name} must import nothing from the package"


POLICY_MAY_NOT_IMPORT = (
    "kong_pdk",
    "grpc",
    "kubernetes",
    "socket",
    "urllib",
    "http",
    f"{PACKAGE}.kong",
    f"{PACKAGE}.server",
    f"{PACKAGE}.ops",
    f"{PACKAGE}.token",
    f"{PACKAGE}.identity.sources",
    f"{PACKAGE}.identity.resolver",
)


def test_policy_is_pure() -> None:
    """policy/ decides from values: no Kong, no gRPC, no Kubernetes, no sockets."""
    policy = {name: module for name, module in modules().items() if ".policy" in name}
    assert f"{PACKAGE}.policy.decision" in policy
    found = {
        name: sorted(
            imported
            for imported in every_import(module)
            if any(
                imported == banned or imported.startswith(banned + ".")
                for banned in POLICY_MAY_NOT_IMPORT
            )
        )
        for name, module in policy.items()
    }
    assert {name: names for name, names in found.items() if names} == {}

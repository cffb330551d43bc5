"""The package's import graph has no circle, and the shared contracts live in neutral rooms."""

from __future__ import annotations

from tests.packaging.imports import PACKAGE, cycles, import_graph, modules

NEUTRAL = {
    f"{PACKAGE}.errors": "ConfigError",
    f"{PACKAGE}.pools": "SharedPool",
    f"{PACKAGE}.kong_contract": "the Kong-side contract keys",
}


def test_the_import_graph_has_no_circle() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
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
    assert f"{PACKAGE}.readiness" not in graph[f"{PACKAGE}.metrics"]


def test_neutral_modules_import_no_subsystem() -> None:
    graph = import_graph()
    assert set(NEUTRAL) <= set(modules())
    for name in NEUTRAL:
        assert graph[name] == set(), f"{name} must import nothing from the package"

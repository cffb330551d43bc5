"""The package's import statements, read with ast (nothing is imported or executed)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "kong_cilium_identity"


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool


def modules() -> dict[str, Module]:
    """Every module of the package, by dotted name."""
    found: dict[str, Module] = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = Module(".".join(parts), path, is_package)
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported: module level and inside
    module-level if/try blocks, never under ``if TYPE_CHECKING`` or in a function body."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _type_checking(node.test):
                yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _top_level(block)
            for handler in node.handlers:
                yield from _top_level(handler.body)


def _source(module: Module, node: ast.ImportFrom) -> str:
    """The absolute name of the module a ``from ... import`` reads from."""
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    if not module.is_package:
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _tree(module: Module) -> ast.Module:
    return ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))


def every_import(module: Module) -> set[str]:
    """Every dotted name ``module`` imports anywhere (functions and type-only blocks too);
    ``from p import n`` gives both ``p`` and ``p.n``."""
    names: set[str] = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _source(module, node)
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def import_graph(*, lazy: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules it imports when it is imported (with ``lazy``: also
    inside functions and under ``if TYPE_CHECKING``).

    ``from p import n`` is an edge to ``p.n`` when that is a module, and to ``p`` otherwise;
    importing a submodule also runs its parent packages, which is no edge of the importer's
    (a package's ``__init__`` is always under way when its children load).
    """
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, module in known.items():
        edges: set[str] = set()
        tree = _tree(module)
        statements = (
            [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
            if lazy
            else _top_level(tree.body)
        )
        for node in statements:
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
                continue
            source = _source(module, node)
            for alias in node.names:
                child = f"{source}.{alias.name}"
                edges.add(child if child in known else source)
        graph[name] = {edge for edge in edges if edge in known and edge != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (each holds a circle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found

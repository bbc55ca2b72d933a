"""The package layout stays as ARCHITECTURE.md draws it: no import cycles, no module over 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

STUDIO = Path(__file__).resolve().parents[1] / "studio"
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(STUDIO.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in STUDIO.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every studio module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name in modules:
                found.add(name)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles_inside_studio():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        # a package's own __init__ is imported by its submodules implicitly: not an arrow of ours
        graph[name] = {m for m in _imports(path, modules) if m != name and not name.startswith(m + ".")}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_packages_depend_one_way():
    """Between the packages of studio/ (engine, loras, hub, ...) the imports form no circle either."""
    modules = _modules()

    def package(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2])

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        own = package(name)
        graph.setdefault(own, set())
        graph[own] |= {package(m) for m in _imports(path, modules)} - {own, "studio"}
    cycle = _cycle(graph)
    assert cycle is None, "packages import each other in a circle: " + " -> ".join(cycle)


def test_no_module_over_600_lines():
    long = {
        str(p.relative_to(STUDIO.parent)): n
        for p in STUDIO.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these modules by responsibility (limit {MAX_LINES} lines): {long}"


def test_the_root_holds_only_the_entry_points():
    allowed = {"__init__.py", "__main__.py", "errors.py", "generator.py", "service.py", "settings.py"}
    root = {p.name for p in STUDIO.glob("*.py")}
    assert root <= allowed, f"give these modules a package: {sorted(root - allowed)}"

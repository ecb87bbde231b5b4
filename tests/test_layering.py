"""Layering rules, checked on the source text with `ast` (nothing is imported, so the test is fast).

1. `guidance/` is the pure PyTorch + pydantic core: no module under it imports MLflow or Ray, not even
   inside a function (MLflow tracking and the registry live in `mlops/`).
2. Models never import guides (`guidance.models` sits below `guidance.guides`); `mlops/` never imports Ray.
3. The project's own modules form no import circle. Every import statement counts, at module level or
   inside a function: a lazy import hides a circle from Python's import machinery, not from the design.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("guidance", "serve", "tune", "speechguide", "mlops", "cluster", "outside_judges")
FORBIDDEN_IN_GUIDANCE = ("mlflow", "ray")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Every module of the project packages, by dotted name (a package is its `__init__`)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imported_names(path: Path, name: str) -> Iterator[tuple[str, int, Optional[str]]]:
    """(module, line, imported attribute or None) for every import statement in the file, at any depth.

    Relative imports are resolved against `name` (the module the file defines)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield base, node.lineno, alias.name


def import_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    """Edges between project modules: `import a.b` and `from a import b` (b a module) point at a.b,
    `from a.b import f` (f not a module) points at a.b. Parent packages that Python imports on the way
    are not edges: a package's `__init__` re-exporting its submodules is not a circle."""
    modules = project_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    lines: dict[tuple[str, str], int] = {}
    for name, path in modules.items():
        for target, line, attr in imported_names(path, name):
            if attr is not None and f"{target}.{attr}" in modules:
                target = f"{target}.{attr}"
            if target in modules and target != name:
                graph[name].add(target)
                lines.setdefault((name, target), line)
    return graph, lines


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm): each is a
    set of modules that all reach each other through imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete circle per component, e.g. [a, b, a]."""
    return [_cycle_in(graph, set(c)) for c in components(graph)]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A concrete circle through the component's first module (breadth-first, so a shortest one)."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(component)  # unreachable for a strongly connected component


def test_the_graph_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    source = "import os\n\ndef f():\n    from .sibling import thing\n    import guidance.models\n"
    path = tmp_path / "mod.py"
    path.write_text(source)
    found = sorted((m, a) for m, _, a in imported_names(path, "guidance.guides.mod"))
    assert found == [("guidance.guides.sibling", "thing"), ("guidance.models", None), ("os", None)]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_guidance_never_imports_mlflow_or_ray() -> None:
    offenders = []
    for name, path in project_modules().items():
        if name.split(".")[0] != "guidance":
            continue
        for target, line, _ in imported_names(path, name):
            if target.split(".")[0] in FORBIDDEN_IN_GUIDANCE:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    offenders = sorted(set(offenders), key=lambda o: (o.split(":")[0], int(o.split(":")[1].split()[0])))
    assert not offenders, "guidance/ must not import MLflow or Ray (use mlops/, serve/, tune/):\n" + "\n".join(offenders)


def test_mlops_never_imports_ray() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for name, path in project_modules().items() if name.split(".")[0] == "mlops"
        for target, line, _ in imported_names(path, name) if target.split(".")[0] == "ray"
    ]
    assert not offenders, "mlops/ must not import Ray:\n" + "\n".join(offenders)


def test_models_never_import_guides() -> None:
    graph, lines = import_graph()
    offenders = [
        f"{a} line {lines[(a, b)]} imports {b}"
        for a in sorted(graph) if a.startswith("guidance.models")
        for b in sorted(graph[a]) if b == "guidance.guides" or b.startswith("guidance.guides.")
    ]
    assert not offenders, "guidance.models must not import guidance.guides:\n" + "\n".join(offenders)


def test_no_import_cycles_among_project_modules() -> None:
    graph, lines = import_graph()
    described = []
    for component in components(graph):
        cycle = _cycle_in(graph, set(component))
        described.append(
            f"{', '.join(component)}\n  e.g. " + " -> ".join(cycle)
            + " (" + ", ".join(f"{a} line {lines[(a, b)]}" for a, b in zip(cycle, cycle[1:])) + ")"
        )
    assert not described, "import circles among the project's modules:\n" + "\n".join(described)

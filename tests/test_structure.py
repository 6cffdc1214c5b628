"""The project's layering rules, checked on the source: no import circles, the library free of the
orchestration stack, the sweeps free of the CLI, no swallowed import errors, small sweep files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tinymem", "sweeps")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imported(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that `name` imports anywhere in its file (module level or inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod when it exists
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            # the longest project module that the dotted name lies in
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {n: _imported(n, p, known) for n, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_in_the_project():
    graph = _graph()
    assert len(graph) > 40  # the walk really found the modules
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_library_never_imports_the_orchestration_stack():
    bad = []
    for name, path in _modules().items():
        if not name.startswith("tinymem"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{name}: {n}" for n in names if n.split(".")[0] in ("ray", "optuna", "mlflow")]
    assert bad == []


def test_sweeps_never_import_the_cli():
    graph = _graph()
    bad = {n: sorted(d for d in deps if d.startswith("tinymem.cli")) for n, deps in graph.items()
           if n.startswith("sweeps")}
    assert {n: d for n, d in bad.items() if d} == {}


def test_no_import_error_swallowed_around_project_modules():
    bad = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Try):
                continue
            catches = [h for h in node.handlers if h.type is not None and "ImportError" in ast.unparse(h.type)]
            if not catches:
                continue
            for sub in ast.walk(ast.Module(body=node.body, type_ignores=[])):
                mod = sub.module if isinstance(sub, ast.ImportFrom) else \
                    sub.names[0].name if isinstance(sub, ast.Import) else None
                if mod and mod.split(".")[0] in PACKAGES:
                    bad.append(f"{name}: {mod}")
    assert bad == []


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").rglob("*.py")), ids=lambda p: p.name)
def test_sweep_files_hold_one_idea(path: Path):
    lines = path.read_text().splitlines()
    assert len(lines) <= 300, f"{path.name}: {len(lines)} lines"
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and doc.splitlines()[0].strip(), f"{path.name} has no first docstring line"

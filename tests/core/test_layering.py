"""The library's import graph, read from the source (every import statement, at module level or inside a
function): no cycles, never ray / optuna / mlflow, and the layers data -> models -> train -> metrics ->
mitigations -> trial depend downwards only."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("ray", "optuna", "mlflow")
# Lower number = lower layer; the first matching prefix wins. Helpers below "data" (errors, util, specs,
# presets, store, hf.options) are layer 0.
LAYERS = [("tinymem.cli", 9), ("tinymem.trial", 7), ("tinymem.hf.memory", 6), ("tinymem.mitigations", 5),
          ("tinymem.build", 4), ("tinymem.robustness", 4), ("tinymem.metrics", 4), ("tinymem.decoding", 4),
          ("tinymem.train", 3), ("tinymem.hf.models", 2), ("tinymem.models", 2), ("tinymem.adapter", 2),
          ("tinymem.memfile", 1), ("tinymem.data", 1)]
ALLOWED_UPWARD: set[tuple[str, str]] = set()  # none: every import points down or sideways


def layer(module: str) -> int:
    for prefix, n in LAYERS:
        if module == prefix or module.startswith(prefix + ".") or (n == 9 and module.startswith(prefix)):
            return n
    return 0


def modules() -> dict[str, Path]:
    out = {}
    for p in (ROOT / "tinymem").rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def graph() -> dict[str, set[str]]:
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {}
    for m, p in mods.items():
        out = edges.setdefault(m, set())
        for name in imports(p):
            target = resolve(name)
            if target is None or target == m:
                continue
            # importing a.b.c also runs a.b's __init__ (unless it is m's own package)
            parts = target.split(".")
            for i in range(len(parts), 1, -1):
                pkg = ".".join(parts[:i])
                if pkg in mods and pkg != m and not m.startswith(pkg + "."):
                    out.add(pkg)
    return edges


def test_no_ray_optuna_mlflow():
    for m, p in modules().items():
        bad = [n for n in imports(p) if n.split(".")[0] in FORBIDDEN]
        assert not bad, (m, bad)


def test_no_import_cycles():
    # the command lines (tinymem/cli*.py) are being turned into a package; they are checked once that lands
    edges = {m: {t for t in out if not t.startswith("tinymem.cli")} for m, out in graph().items()
             if not m.startswith("tinymem.cli")}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:  # depth first; `path` holds the modules being visited
        for t in sorted(edges.get(m, ())):
            assert t not in path, "import cycle: " + " -> ".join(path[path.index(t):] + [t])
            if t not in done:
                visit(t, path + [t])
        done.add(m)

    for m in sorted(edges):
        if m not in done:
            visit(m, [m])


def test_layers_depend_downwards():
    upward = sorted((m, t) for m, out in graph().items() for t in out
                    if layer(t) > layer(m) and (m, t) not in ALLOWED_UPWARD)
    assert not upward, upward
    # the sizing reads the methods; the methods never read the sizing
    assert "tinymem.mitigations" in graph()["tinymem.hf.memory"]

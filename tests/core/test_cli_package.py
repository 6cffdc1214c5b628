"""The `tinymem.cli` package: every subcommand is registered, building the parser loads no torch, and the command
modules import one another directly, without a circle and without hiding an import error."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tinymem.cli

COMMANDS = ("presets", "train", "eval", "methods", "mitigate", "find-memorized", "convert-memorized")
PACKAGE = Path(tinymem.cli.__file__).parent
MODULES = {p.stem: p for p in sorted(PACKAGE.glob("*.py"))}


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_subcommand():
    r = run(["-m", "tinymem.cli", "--help"])
    assert r.returncode == 0, r.stderr
    listed = r.stdout.split("positional arguments:")[1]
    for command in COMMANDS:
        assert f"    {command} " in listed, command


@pytest.mark.parametrize("command", COMMANDS)
def test_each_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        tinymem.cli.build_parser().parse_args([command, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: tinymem {command} ")


def test_building_the_parser_imports_no_torch():
    r = run(["-c", "import sys; from tinymem.cli import build_parser; build_parser(); "
                   "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at module level or inside functions (`from a import b` counts a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_import_error_is_swallowed():
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                assert "ImportError" not in ast.unparse(node.type), f"{name}.py catches ImportError"


def test_command_modules_import_no_circle():
    commands = {n for n in MODULES if n not in ("__init__", "__main__")}
    graph = {n: {m for m in commands if f"tinymem.cli.{m}" in imported_modules(MODULES[n])} for n in commands}
    for name in commands:  # the command modules never import the package itself (its __init__ imports them)
        imports = imported_modules(MODULES[name])
        assert "tinymem.cli" not in imports and not {"tinymem.cli.main", "tinymem.cli.build_parser"} & imports, name

    def reach(start: str, seen: set[str]) -> set[str]:
        for nxt in graph[start] - seen:
            seen.add(nxt)
            reach(nxt, seen)
        return seen

    for name in commands:
        assert name not in reach(name, set()), f"import circle through tinymem.cli.{name}"
    assert graph["output"] == set()  # the output helpers depend on no command

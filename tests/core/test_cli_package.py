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


def test_mitigate_repeats_over_base_seeds_and_reports_intervals(tiny_store, capsys):
    """`--repeats 2`: one trial per base-model seed, each on its own base model, and the mean with its interval.
    The session's store holds seed 0; seed 1 is trained into it here (a sweep's --repeats test then finds it)."""
    import json

    from tinymem.cli import main

    root, _ = tiny_store
    assert main(["mitigate", "--preset", "math-tiny", "--method", "random_neurons", "--root", str(root),
                 "--repeats", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seeds"] == [0, 1] and [r["seed"] for r in out["repeats"]] == [0, 1]
    per_seed = [r["after"]["mem_pct"] for r in out["repeats"]]
    assert out["after"]["mem_pct"] == sum(per_seed) / 2
    assert out["after"]["mem_pct_seed1"] == per_seed[1]
    assert out["after"]["mem_pct_seeds_ci_low"] <= out["after"]["mem_pct"] <= out["after"]["mem_pct_seeds_ci_high"]
    keys = {r["info"]["unlearn_rows"] for r in out["repeats"]}
    assert all(k > 0 for k in keys)
    # two base models, not one evaluated twice
    assert out["repeats"][0]["before"]["mem_counted"] != out["repeats"][1]["before"]["mem_counted"] or \
        out["repeats"][0]["before"]["test_acc"] != out["repeats"][1]["before"]["test_acc"]


def test_mitigate_repeats_needs_a_preset(tmp_path, capsys):
    from tinymem.cli import main

    assert main(["mitigate", "--model", str(tmp_path), "--method", "random_neurons", "--repeats", "2"]) == 2
    assert "repeats" in capsys.readouterr().err

"""The project as an installed package: every third-party import declared, and a wheel that holds every module,
the search spaces and the console scripts, and that finds its search spaces from any directory."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = ("tinymem", "sweeps")
TEST_ONLY_EXTRA = "dev"


def _dist_name(requirement: str) -> str:
    """`ray[tune]>=2.50,<3` -> `ray`, normalised as PEP 503 does."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_third_party_import_is_a_declared_dependency():
    """Each top-level module that tinymem/ or sweeps/ imports (anywhere in a file) maps, through the installed
    distributions, to `dependencies` or a non-test extra; test-only packages are never needed to run."""
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    declared = {_dist_name(r) for r in project["dependencies"]}
    declared |= {_dist_name(r) for name, reqs in extras.items() if name != TEST_ONLY_EXTRA for r in reqs}
    owners = importlib.metadata.packages_distributions()
    missing: dict[str, list[str]] = {}
    seen = set()
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for mod in _imported_top_level(path) - set(sys.stdlib_module_names) - set(PACKAGES):
                seen.add(mod)
                # a module of an extra that is not installed here (datasets) is known by its own name
                dists = {_dist_name(d) for d in owners.get(mod, [mod])}
                if not dists & declared:
                    missing.setdefault(mod, []).append(str(path.relative_to(ROOT)))
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"
    assert {"torch", "ray", "mlflow", "yaml", "tqdm"} <= seen  # the walk really read the imports
    test_only = {_dist_name(r) for r in extras[TEST_ONLY_EXTRA]} - {_dist_name(r) for n, reqs in extras.items()
                                                                    if n != TEST_ONLY_EXTRA for r in reqs}
    assert not test_only & {_dist_name(r) for r in project["dependencies"]}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built offline from a copy of the checkout (the build leaves no files in it)."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in (*PACKAGES, "search_spaces"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (path,) = out.glob("tinymem_sweeps-*.whl")
    return path


def test_the_wheel_holds_every_module_the_search_spaces_and_the_console_scripts(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    assert modules - names == set(), "pyproject.toml [tool.setuptools] packages misses a package"
    spaces = {f"sweeps/search_spaces/{p.name}" for p in (ROOT / "search_spaces").glob("*.yaml")}
    assert len(spaces) >= 17 and spaces <= names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for line in ("tinymem = tinymem.cli:main", "tinymem-sweep = sweeps.run:main",
                 "tinymem-report = sweeps.report:main"):
        assert line in text, text
    assert not any(n.startswith(("tests/", "bench/", "cluster/")) for n in names)


def test_an_installed_wheel_finds_its_search_spaces_from_any_directory(wheel, tmp_path):
    """Unpacked (what pip does with a pure-Python wheel) and run from an empty directory: the search spaces
    come from the package data, and the console script names itself in --help."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    code = ("import sys; from sweeps.space_file import default_space_path, load_search_space; "
            "p = default_space_path('balanced_subnet'); print(p); "
            "print(sorted(load_search_space(p, 'balanced_subnet').params)); "
            "sys.argv[0] = 'tinymem-sweep'; from sweeps.run import build_parser; print(build_parser().prog)")
    r = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    path, params, prog = r.stdout.strip().splitlines()[-3:]
    assert Path(path) == site / "sweeps" / "search_spaces" / "balanced_subnet.yaml"
    assert "ratio" in params and prog == "tinymem-sweep"

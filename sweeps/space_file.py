"""Search-space files: `search_spaces/<method>.yaml` read and checked against the method's typed `Params`.

The file format (one file per method, written next to the method)::

    method: balanced_subnet
    description: one line
    params:            # Optuna distributions
      ratio: {type: float, low: 1.0e-5, high: 0.8, log: true}
      epochs: {type: int, low: 1, high: 20}       # int: optional log, step
      lr: {type: categorical, choices: [0.01, 0.1]}
    fixed: {}          # held at a value
    paper_grid:        # lists per hyperparameter; cross product
      ratio: [1.0e-5, 1.0e-4]
      epochs: [1, 10, 20]
    paper_fixed:       # what the paper held fixed; applied with --grid paper only (the sampler keeps ours)
      stratified: false

Everything is checked before any trial starts: every key must be a hyperparameter of the method, every
bound, choice, fixed and grid value must pass the method's own range checks, bounds are finite numbers, and
the paper's grid has at most `MAX_GRID_POINTS` points. The file itself is read by `sweeps.yaml_file` (no
anchors, aliases, tags or duplicate keys). Errors name the file, the key and what is allowed, on one line.

The files ship with the project as the package data `sweeps.search_spaces` (pyproject.toml maps it onto the
repository's top-level `search_spaces/`), so an installed project finds them from any directory.
"""

from __future__ import annotations

import importlib.resources
import math
from pathlib import Path
from typing import Any

from sweeps.errors import SweepError
from sweeps.space import Distribution, SearchSpace
from sweeps.yaml_file import one_line, read_yaml
from tinymem.errors import ConfigError
from tinymem.mitigations import get_method

SPACES_PACKAGE = "sweeps.search_spaces"
_CHECKOUT_SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


def search_space_dir() -> Path:
    """The directory of the shipped search spaces.

    In a checkout (run as `python sweeps/run.py`, or installed editable, whose package data maps onto the
    same directory) it is the checkout's own `search_spaces/`, beside this package: a worktree never reads
    another checkout's files. In an installed wheel it is the package data `sweeps.search_spaces`.
    """
    if (_CHECKOUT_SPACES / "__init__.py").is_file():
        return _CHECKOUT_SPACES
    return Path(str(importlib.resources.files(SPACES_PACKAGE)))


SEARCH_SPACE_DIR = search_space_dir()

PARAM_TYPES = ("float", "int", "categorical")
TOP_LEVEL_KEYS = ("method", "description", "params", "fixed", "paper_grid", "paper_fixed")
# The paper's largest grid has 90 points; a grid is enumerated point by point, so its size is checked first.
MAX_GRID_POINTS = 10_000
_DIST_KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
              "categorical": {"type", "choices"}}


def default_space_path(method: str) -> Path:
    """`<method>.yaml` among the shipped search spaces (independent of the working directory)."""
    return SEARCH_SPACE_DIR / f"{method}.yaml"


def _show(value: Any, limit: int = 80) -> str:
    """A user's value in a message: its repr, cut short (a value can be a long list)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _sorted(keys: Any) -> list[Any]:
    """Keys in a stable order for messages; YAML keys may mix types (`1: a`, `x: b`)."""
    return sorted(keys, key=lambda k: (type(k).__name__, str(k)))


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _number(value: Any, where: str) -> float:
    """A finite number. YAML 1.1 reads `1e-5` (no dot) as a string; accept it as the number it obviously is."""
    number: Any = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        try:
            f = float(value)
        except ValueError:
            pass
        else:
            number = int(f) if f.is_integer() and "." not in value and "e" not in value.lower() else f
    if number is None:
        raise SweepError(f"{where}: expected a number, got {_show(value)}")
    if not _finite(number):
        raise SweepError(f"{where}: expected a finite number, got {_show(value)}")
    return number


def _check_value(cls: Any, method: str, name: str, value: Any, where: str) -> Any:
    """Validate one value through the method's own Params (type coercion + range); return it typed."""
    try:
        return cls.Params.from_dict({name: value}, method).to_dict()[name]
    except ConfigError as e:
        raise SweepError(f"{where}: {e}") from None


def _parse_distribution(cls: Any, method: str, name: str, raw: Any, where: str, hp_types: dict[str, str]
                        ) -> Distribution:
    if not isinstance(raw, dict):
        raise SweepError(f"{where}: expected a mapping like {{type: float, low: 0.1, high: 1.0}}, "
                         f"got {_show(raw)}")
    kind = raw.get("type")
    if kind not in PARAM_TYPES:
        raise SweepError(f"{where}: unknown type {_show(kind)}; allowed: {list(PARAM_TYPES)}")
    extra = _sorted(set(raw) - _DIST_KEYS[kind])
    if extra:
        raise SweepError(f"{where}: unknown key(s) {extra} for type {kind}; allowed: {sorted(_DIST_KEYS[kind])}")
    hp_type = hp_types[name]
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SweepError(f"{where}: categorical needs a non-empty list 'choices'")
        typed = tuple(_check_value(cls, method, name, c, f"{where} choice {c!r}") for c in choices)
        if len(set(map(repr, typed))) != len(typed):
            raise SweepError(f"{where}: choices {_show(choices)} repeat a value")
        return Distribution(type="categorical", choices=typed)
    if hp_type not in ("int", "float"):
        raise SweepError(f"{where}: {name} is a {hp_type} hyperparameter of {method}; "
                         f"use type: categorical with choices")
    if kind == "float" and hp_type == "int":
        raise SweepError(f"{where}: {name} is an int hyperparameter of {method}; use type: int")
    for key in ("low", "high"):
        if key not in raw:
            raise SweepError(f"{where}: type {kind} needs '{key}'")
    low = _number(raw["low"], f"{where} low")
    high = _number(raw["high"], f"{where} high")
    if kind == "int":
        if float(low) != int(low) or float(high) != int(high):
            raise SweepError(f"{where}: type int needs integer bounds, got low={low}, high={high}")
        low, high = int(low), int(high)
    else:
        low, high = float(low), float(high)
    if not low <= high:
        raise SweepError(f"{where}: low={low} must be <= high={high}")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise SweepError(f"{where}: log must be true or false, got {_show(log)}")
    if log and low <= 0:
        raise SweepError(f"{where}: log: true needs low > 0, got low={low}")
    step = raw.get("step")
    if step is not None:
        step = _number(step, f"{where} step")
        if step <= 0:
            raise SweepError(f"{where}: step must be > 0, got {step}")
        if log:
            raise SweepError(f"{where}: step and log: true cannot be combined (Optuna forbids it)")
        if kind == "int":
            if float(step) != int(step):
                raise SweepError(f"{where}: type int needs an integer step, got {step}")
            step = int(step)
        else:
            step = float(step)
    # Both bounds must be values the method itself accepts.
    _check_value(cls, method, name, low, f"{where} low")
    _check_value(cls, method, name, high, f"{where} high")
    return Distribution(type=kind, low=low, high=high, log=log, step=step)


def load_search_space(path: str | Path, method: str | None = None) -> SearchSpace:
    """Read and validate a search-space file; `method` (if given) must match the file's `method`.

    Raises SweepError (one line, naming the file and the problem) for a missing or malformed file, an
    unknown top-level key, a key that is not a hyperparameter of the method, or a value out of range.
    """
    path = Path(path)
    if not path.exists():
        hint = f" (expected {default_space_path(method)} or pass --search-space FILE)" if method else ""
        raise SweepError(f"search space file {path} does not exist{hint}")
    raw = read_yaml(path, "search space file")
    if raw is None:
        raise SweepError(f"search space file {path} is empty; expected a mapping with keys {list(TOP_LEVEL_KEYS)}")
    return parse_search_space(raw, str(path), method)


def parse_search_space(raw: Any, path: str, method: str | None = None) -> SearchSpace:
    """Validate an already-parsed search space (a YAML document, or a saved `SearchSpace.to_dict()`);
    `path` names it in error messages."""
    if not isinstance(raw, dict):
        raise SweepError(f"malformed search space {path}: expected a mapping with keys {list(TOP_LEVEL_KEYS)}, "
                         f"got {type(raw).__name__}")
    unknown = _sorted(set(raw) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise SweepError(f"search space {path}: unknown top-level key(s) {unknown}; allowed: {list(TOP_LEVEL_KEYS)}")
    file_method = raw.get("method")
    if file_method is not None and not isinstance(file_method, str):
        raise SweepError(f"search space {path}: 'method' must be a method name, got {_show(file_method)}")
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise SweepError(f"search space {path}: 'description' must be one line of text, got {_show(description)}")
    if method is None:
        if not file_method:
            raise SweepError(f"search space {path}: 'method' is missing")
        method = str(file_method)
    elif file_method is not None and str(file_method) != method:
        raise SweepError(f"search space {path} is for method {file_method!r}, not {method!r}")
    try:
        cls = get_method(method)
    except ConfigError as e:
        raise SweepError(str(e)) from None
    names = cls.Params.names()
    hp_types = {s["name"]: s["type"] for s in cls.Params.spec()}

    def section(key: str) -> dict[str, Any]:
        value = raw.get(key)
        if value is None:  # `fixed:` with nothing after it
            return {}
        if not isinstance(value, dict):
            raise SweepError(f"search space {path}: '{key}' must be a mapping, got {type(value).__name__}")
        bad = [k for k in value if k not in names]
        if bad:
            raise SweepError(f"search space {path}: {key}.{bad[0]} is not a hyperparameter of {method}; "
                             f"allowed: {names}")
        return value

    params_raw, fixed_raw, grid_raw = section("params"), section("fixed"), section("paper_grid")
    params = {name: _parse_distribution(cls, method, name, d, f"search space {path}: params.{name}", hp_types)
              for name, d in params_raw.items()}
    both = sorted(set(params) & set(fixed_raw))
    if both:
        raise SweepError(f"search space {path}: {both} are both searched (params) and fixed; pick one")
    fixed = {name: _check_value(cls, method, name, v, f"search space {path}: fixed.{name}")
             for name, v in fixed_raw.items()}
    clash = sorted(set(grid_raw) & set(fixed))
    if clash:
        raise SweepError(f"search space {path}: {clash} are both fixed and in paper_grid; pick one")
    grid: dict[str, tuple[Any, ...]] = {}
    for name, values in grid_raw.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"search space {path}: paper_grid.{name} must be a non-empty list")
    points = math.prod(len(v) for v in grid_raw.values())
    if points > MAX_GRID_POINTS:
        sizes = " x ".join(str(len(v)) for v in grid_raw.values())
        raise SweepError(f"search space {path}: paper_grid has {points:.3g} points ({sizes}); at most "
                         f"{MAX_GRID_POINTS} allowed (sample a range under params instead)")
    for name, values in grid_raw.items():
        where = f"search space {path}: paper_grid.{name} value"
        grid[name] = tuple(_check_value(cls, method, name, v, f"{where} {_show(v)}") for v in values)
    paper_fixed = {name: _check_value(cls, method, name, v, f"search space {path}: paper_fixed.{name}")
                   for name, v in section("paper_fixed").items()}
    clash = sorted(set(grid) & set(paper_fixed))
    if clash:
        raise SweepError(f"search space {path}: {clash} are both in paper_grid and paper_fixed; pick one")
    for name, values in (("fixed", fixed), ("paper_fixed", {**fixed, **paper_fixed})):
        try:  # the values must also be valid together (cross-field checks live in Params.validate)
            cls.Params.from_dict(values, method)
        except ConfigError as e:
            raise SweepError(f"search space {path}: {name}: {e}") from None
    return SearchSpace(method=method, description=one_line(description or ""), params=params,
                       fixed=fixed, paper_grid=grid, paper_fixed=paper_fixed, source=str(path))

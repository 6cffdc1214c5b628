"""Search spaces as values: one method's distributions, fixed values and grid, and a sweep's joint space over them.

`SearchSpace` is one method's validated space (`sweeps.space_file` reads it from YAML); `SweepSpace` joins
one or more methods and base-model presets into what the engine needs: a define-by-run function for Optuna
(conditional on the method in a cross-method sweep), the paper's grid as explicit points, the method
defaults as warm-start points, and `decode` from a trial config back to (method, preset, params).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sweeps.errors import SweepError
from tinymem.mitigations import get_method


@dataclass(frozen=True)
class Distribution:
    """One hyperparameter's Optuna distribution."""

    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any, name: str) -> Any:
        """Ask an Optuna trial (or Ray's captor of one) for a value under `name`."""
        if self.type == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(name, list(self.choices))

    def to_optuna(self) -> Any:
        import optuna.distributions as od

        if self.type == "float":
            return od.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return od.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return od.CategoricalDistribution(list(self.choices))

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and float(value) != int(value):
            return False
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        d: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            d["log"] = True
        if self.step is not None:
            d["step"] = self.step
        return d


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space for one method."""

    method: str
    description: str
    params: dict[str, Distribution]
    fixed: dict[str, Any] = field(default_factory=dict)
    paper_grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    paper_fixed: dict[str, Any] = field(default_factory=dict)  # what the paper held fixed, with the grid only
    source: str = ""

    def grid(self) -> list[dict[str, Any]]:
        """The paper's grid: the cross product of `paper_grid`, in file order (the paper's loop order), each
        point with the values the paper held fixed (`paper_fixed`), so a grid sweep is the paper's procedure."""
        if not self.paper_grid:
            return []
        keys = list(self.paper_grid)
        return [{**self.paper_fixed, **dict(zip(keys, values))}
                for values in itertools.product(*(self.paper_grid[k] for k in keys))]

    def default_point(self) -> dict[str, Any] | None:
        """The method's default hyperparameters restricted to the searched ones, if the space contains them
        (a warm start: the method engineer's defaults are usually a good first trial)."""
        cls = get_method(self.method)
        defaults = cls.Params().to_dict()
        point = {k: defaults[k] for k in self.params}
        if all(self.params[k].contains(v) for k, v in point.items()):
            return point
        return None

    def resolve(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """All hyperparameters of one trial (fixed values, then the sampled ones), validated and typed."""
        cls = get_method(self.method)
        return cls.Params.from_dict({**self.fixed, **sampled}, self.method).to_dict()

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "description": self.description,
                "params": {k: d.to_dict() for k, d in self.params.items()}, "fixed": dict(self.fixed),
                "paper_grid": {k: list(v) for k, v in self.paper_grid.items()},
                "paper_fixed": dict(self.paper_fixed)}


class SweepSpace:
    """The joint space of a sweep: one or more methods (a `method` dimension when several) and one or more
    base-model presets (a `preset` dimension when several).

    Trial configs are flat: a single-method sweep uses the hyperparameter names as they are; a cross-method
    sweep names them `<method>.<name>` (two methods may both have `ratio` with different ranges).
    Picklable, because Ray pickles the searcher (which holds this as its define-by-run space) on every
    experiment checkpoint, and `--resume` unpickles it.
    """

    def __init__(self, spaces: list[SearchSpace], presets: list[str]):
        if not spaces:
            raise SweepError("a sweep needs at least one method")
        if not presets:
            raise SweepError("a sweep needs at least one preset")
        self.spaces = {s.method: s for s in spaces}
        self.presets = list(presets)

    @property
    def methods(self) -> list[str]:
        return list(self.spaces)

    @property
    def multi_method(self) -> bool:
        return len(self.spaces) > 1

    @property
    def multi_preset(self) -> bool:
        return len(self.presets) > 1

    def key(self, method: str, name: str) -> str:
        return f"{method}.{name}" if self.multi_method else name

    # Optuna define-by-run: called once per trial with Ray's captor of an optuna.Trial.
    def __call__(self, trial: Any) -> None:
        if self.multi_preset:
            trial.suggest_categorical("preset", self.presets)
        method = trial.suggest_categorical("method", self.methods) if self.multi_method else self.methods[0]
        for name, dist in self.spaces[method].params.items():
            dist.suggest(trial, self.key(method, name))
        return None

    def warm_start_points(self) -> list[dict[str, Any]]:
        """One point per method: its default hyperparameters (when the space contains them)."""
        points = []
        for method, space in self.spaces.items():
            point = space.default_point()
            if point is None or not point:
                continue
            cfg = {self.key(method, k): v for k, v in point.items()}
            if self.multi_method:
                cfg["method"] = method
            points.append(cfg)
        return points

    def grid_points(self, limit: int | None = None, seed: int = 0, anytime: bool = False) -> list[dict[str, Any]]:
        """The paper's grid as trial configs: presets x methods x each method's grid, in loop order.

        With `anytime` (`--grid paper-anytime`), an anytime method whose grid lists several epoch counts runs
        only the points at the largest count: its smaller counts are checkpoints of those runs
        (`sweeps.candidates.anytime_config`), with exactly the numbers of separate runs.
        With `limit` below the grid size, a seeded random subset of `limit` points (kept in loop order), so an
        equal-budget comparison with a sampler is possible.
        """
        points: list[dict[str, Any]] = []
        for preset in self.presets:
            for method, space in self.spaces.items():
                grid = space.grid()
                if not grid:
                    raise SweepError(f"search space {space.source} has no paper_grid for {method}; "
                                     f"--grid paper needs one")
                top = grid_epochs(space)[-1] if anytime and len(grid_epochs(space)) > 1 else None
                for point in grid:
                    if top is not None and point.get("epochs") != top:
                        continue  # a checkpoint of the point at `top` epochs
                    cfg = {self.key(method, k): v for k, v in point.items()}
                    if self.multi_method:
                        cfg["method"] = method
                    if self.multi_preset:
                        cfg["preset"] = preset
                    points.append(cfg)
        if limit is not None and 0 < limit < len(points):
            keep = sorted(random.Random(seed).sample(range(len(points)), limit))
            points = [points[i] for i in keep]
        return points

    def decode(self, config: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        """(method, preset, all hyperparameters) of a trial config."""
        method = str(config["method"]) if self.multi_method else self.methods[0]
        preset = str(config["preset"]) if self.multi_preset else self.presets[0]
        prefix = f"{method}." if self.multi_method else ""
        sampled = {k[len(prefix):]: v for k, v in config.items()
                   if k not in ("method", "preset") and k.startswith(prefix)}
        return method, preset, self.spaces[method].resolve(sampled)

    def any_iterative(self) -> bool:
        return any(get_method(m).iterative for m in self.spaces)

    def max_epochs(self) -> int | None:
        """Largest `epochs` any trial can run (ASHA's max_t), from distributions, grids, fixed and defaults."""
        best: int | None = None
        for method, space in self.spaces.items():
            cls = get_method(method)
            if "epochs" not in cls.Params.names():
                continue
            candidates: Iterable[Any] = [cls.Params().to_dict()["epochs"]]
            if "epochs" in space.params:
                d = space.params["epochs"]
                candidates = [d.high] if d.type != "categorical" else list(d.choices)
            elif "epochs" in space.fixed:
                candidates = [space.fixed["epochs"]]
            candidates = list(candidates) + list(space.paper_grid.get("epochs", ()))
            for c in candidates:
                if isinstance(c, (int, float)) and not math.isnan(c):
                    best = max(best or 0, int(c))
        return best

    def to_dict(self) -> dict[str, Any]:
        return {"methods": {m: s.to_dict() for m, s in self.spaces.items()}, "presets": list(self.presets)}


def grid_epochs(space: SearchSpace) -> list[int]:
    """The distinct epoch counts of an anytime method's paper grid, ascending ([] otherwise)."""
    if not get_method(space.method).anytime:
        return []
    return sorted({int(v) for v in space.paper_grid.get("epochs", ()) if isinstance(v, (int, float))})

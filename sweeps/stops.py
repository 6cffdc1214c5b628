"""Early stops of anytime trials, judged on their checkpoints as they arrive (Tune stoppers: a callable of
trial id and result that says whether to stop): `--scheduler dominated` (`DominatedStop`) and `--scheduler
no-effect` (`NoEffectStop`). Both need candidates (`sweeps.candidates`) and compare with the base model's own
point (`base_point`) where the sweep has one base model. The sweep's time budget is `sweeps.budget`.
"""

from __future__ import annotations

import math
from typing import Any

from sweeps.candidates import anytime_config, anytime_methods, is_candidate
from sweeps.errors import SweepError


def check_checkpoint_stop(name: str, space: Any, repeats: int, grid: bool,
                          objectives: tuple[str, ...] | list[str] = (), anytime: bool = True) -> None:
    """`--scheduler dominated` or `no-effect` needs a method that makes candidates (and `no-effect` one base
    model to compare with); a SweepError naming what is wrong."""
    if grid:
        raise SweepError(f"--scheduler {name} cannot be combined with --grid paper (a grid is run in full)")
    if not anytime:
        raise SweepError(f"--scheduler {name} stops trials on their anytime checkpoints, which --no-anytime "
                         "turns off; give one of them")
    if not any(anytime_config(space, m, repeats, objectives) for m in space.methods):
        raise SweepError(f"--scheduler {name} stops trials on their anytime checkpoints, but {space.methods} make "
                         f"none (anytime methods: {anytime_methods()}, with "
                         f"`epochs` searched over a range, --repeats 1 and no robustness objective)")
    if name == "no-effect" and len(space.presets) != 1:
        raise SweepError(f"--scheduler no-effect compares each trial with its base model, but the sweep has "
                         f"{len(space.presets)} presets {space.presets}; give one --preset")


class DominatedStop:
    """Early stop of anytime trials (`--scheduler dominated`): a Tune stopper (a callable of trial id and result).

    The rule: at a checkpoint e >= `min_epochs`, stop the trial when each of its last `k` checkpoints is covered
    both by an earlier checkpoint of the same trial (it stopped improving) and by a point the sweep already holds:
    one some other trial reached (a checkpoint or a final result), or `base`, the unmitigated model's own point
    (its memorization at no utility loss), which every sweep has for free. A point b is covered by a when
    a_i <= b_i + margin_i in every objective, margin_i = `margin` times the spread of that objective over every
    point seen so far. A trial that still improves on its own earlier checkpoints by more than the margin is
    never stopped, nor one whose points beat everything else. The stopped trial is early-stopped (Optuna:
    PRUNED); its checkpoints stay candidates.
    """

    def __init__(self, objectives: list[str], min_epochs: int = 3, k: int = 2, margin: float = 0.02,
                 base: tuple[float, ...] | None = None):
        self.objectives, self.min_epochs, self.k, self.margin = list(objectives), min_epochs, k, margin
        if base is not None and len(base) != len(self.objectives):
            raise ValueError(f"base point {base} has {len(base)} values for objectives {self.objectives}")
        self.base = [tuple(map(float, base))] if base is not None else []
        self.points: dict[str, list[tuple[float, ...]]] = {}  # trial id -> its points (checkpoints, then final)

    def _vector(self, result: dict[str, Any]) -> tuple[float, ...] | None:
        try:
            v = tuple(float(result[m]) for m in self.objectives)
        except (KeyError, TypeError, ValueError):
            return None
        return v if all(map(math.isfinite, v)) else None

    def _covered(self, b: tuple[float, ...], others: list[tuple[float, ...]], margins: list[float]) -> bool:
        return any(all(a_i <= b_i + m for a_i, b_i, m in zip(a, b, margins)) for a in others)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        final = bool(result.get("final")) and not result.get("failed")
        if not (final or is_candidate(result)):
            return False
        v = self._vector(result)
        if v is None:
            return False
        mine = self.points.setdefault(trial_id, [])
        mine.append(v)
        if final or int(result.get("epoch") or 0) < self.min_epochs or len(mine) <= self.k:
            return False
        everything = [p for pts in self.points.values() for p in pts] + self.base
        margins = [self.margin * (max(col) - min(col)) for col in zip(*everything)]
        others = [p for t, pts in self.points.items() if t != trial_id for p in pts] + self.base
        return all(self._covered(mine[i], mine[:i], margins) and self._covered(mine[i], others, margins)
                   for i in range(len(mine) - self.k, len(mine)))


class NoEffectStop:
    """Early stop of anytime trials that do nothing (`--scheduler no-effect`): a Tune stopper.

    The rule: at its first checkpoint from epoch `epochs` (3) on, a trial stops when none of its checkpoints so far has
    brought any memorization objective below the base model's own value. Utility is not looked at: on a small
    `val` split a no-op's accuracy drop moves by tenths of a point either way, while the point of the trial is
    memorization. A trial that moved memorization at any checkpoint is never stopped, whatever happens after.
    The stopped trial is early-stopped (Optuna: PRUNED); its checkpoints stay candidates.
    """

    def __init__(self, objectives: list[str], loss_name: str, base: tuple[float, ...] | None, epochs: int = 3):
        if base is None or len(base) != len(objectives):
            raise ValueError(f"no-effect stop: base point {base} does not give the objectives {objectives}")
        # The memorization objectives: every one but the utility loss.
        self.base = {m: float(v) for m, v in zip(objectives, base) if m != loss_name}
        self.epochs = int(epochs)
        self.moved: dict[str, bool] = {}  # trial id -> has a checkpoint moved memorization below the base's

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if not is_candidate(result):
            return False
        try:
            below = any(float(result[m]) < b for m, b in self.base.items())
        except (KeyError, TypeError, ValueError):
            below = True  # a checkpoint without the number: nothing to judge the trial by, so it runs on
        moved = self.moved[trial_id] = self.moved.get(trial_id, False) or below
        return not moved and int(result.get("epoch") or 0) >= self.epochs


def base_point(objectives: list[str] | tuple[str, ...], loss_name: str, metrics: dict[str, Any]
               ) -> tuple[float, ...] | None:
    """The unmitigated model's point on the sweep's objectives: its own metrics, a utility loss of 0 against
    itself. None when an objective is not among its metrics (a robustness metric, not computed on the base)."""
    point = []
    for name in objectives:
        value = 0.0 if name == loss_name else metrics.get(name)
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(value):
            return None
        point.append(value)
    return tuple(point)

"""The Optuna sampler of a sweep by name, and its space-filling start-up points (a scrambled Sobol sequence).

`tpe` (MO-TPE) and `gp` (Optuna's GPSampler: Gaussian-process logEHVI, multi-objective and constrained) are
model-based: their first trials only place points for the model to learn from. Drawn i.i.d., a handful of
start-up points clumps (with seed 0 the default sweep's three drew ratio 0.07-0.11 and w 0.74-0.89, one
corner of the space). Here they are the first points of a scrambled Sobol sequence over the sweep's space
(seeded with `--seed`), enqueued in the study after the warm-start points, so every model-based sampler
starts from the same spread, and a persisted study keeps the points still to come across a resume.

The points are computed over the joint space of `sweeps.space.SweepSpace`: one coordinate for the method
(and one for the preset) when there are several, then every method's own hyperparameters, of which a point
uses its method's. (Optuna's QMCSampler cannot do this: it takes its space from the first trial and draws
anything outside it, a conditional method's hyperparameters included, with its independent random sampler.)
A categorical takes one coordinate, split into equal shares per choice, as QMCSampler does it.

`random` stays i.i.d. (it is the baseline that a model-based search is measured against), and `nsga2` keeps its
own random first generation (its population is its start-up).
"""

from __future__ import annotations

import math
from typing import Any

from sweeps.options import SEED_MAX
from sweeps.space import Distribution, SweepSpace

# `auto` (the default): the sampler that measured best for the budget (bench/search_efficiency.py, docs/study.md):
# the GP while the study is expected to hold at most AUTO_GP_MAX_POINTS points (trials and anytime candidates);
# beyond, MO-TPE, because a GP fit is cubic in the points it has been told: at ~460 points the GP arms of the
# bench spent ~2.3 s per suggestion on average, and the cost would come to rival the trials'.
AUTO = "auto"
AUTO_GP_MAX_POINTS = 500

# Completed trials a model-based sampler needs before it models (until then it draws at random); the start-up
# points fill the space before that anyway, so this only matters when trials finish late (concurrency).
MODEL_STARTUP = 2
SPACE_FILLING = ("tpe", "gp")


def startup_size(num_samples: int) -> int:
    """How many trials a sweep of `num_samples` spends before the model (warm-start points included): a tenth
    of the budget, 3 to 10. Few, because in bench/search_efficiency.py the start-up was where the cost went:
    with 7 of 30 (a quarter, the earlier rule), the first trial the model proposed hit the target in every GP
    arm at seed 0, after about 30 CPU-seconds of space-filling points (docs/study.md)."""
    return max(3, min(10, num_samples // 10))


def resolve_sampler(name: str, num_samples: int, points_per_trial: float = 1.0) -> str:
    """The concrete sampler of `--sampler name` for `num_samples` trials telling the study about
    `points_per_trial` points each (`sweeps.candidates.points_per_trial`); `auto` is chosen here."""
    if name != AUTO:
        return name
    return "gp" if num_samples * points_per_trial <= AUTO_GP_MAX_POINTS else "tpe"


def make_sampler(name: str, seed: int, num_samples: int, reloaded_trials: int = 0) -> Any:
    """The Optuna sampler `name` (`sweeps.options.SAMPLERS`).

    `reloaded_trials`: the trials a reloaded study already holds. A sampler's random stream restarts with its
    seed, so a resumed `random` sampler would draw again what it drew before the interruption; the seed moves
    on by that count instead (the same resume gives the same draws).
    """
    import optuna

    seed = (seed + reloaded_trials) % (SEED_MAX + 1)
    if name == "nsga2":
        # Generational: a population of ~1/4 of the budget gives it a few generations to improve.
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, num_samples // 4)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        # Conditional hyperparameters (a cross-method sweep) fall to its independent sampler: said once, here.
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=MODEL_STARTUP, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=MODEL_STARTUP)


def startup_points(space: SweepSpace, count: int, seed: int) -> list[dict[str, Any]]:
    """The first `count` points of a scrambled Sobol sequence (seeded) over the sweep's joint space, as trial
    configs (the keys of `SweepSpace.__call__`)."""
    if count <= 0:
        return []
    from scipy.stats import qmc

    dims: list[tuple[str, Any]] = []  # (config key, Distribution | list of choices for method / preset)
    if space.multi_preset:
        dims.append(("preset", list(space.presets)))
    if space.multi_method:
        dims.append(("method", list(space.methods)))
    for method, sp in space.spaces.items():
        dims.extend((space.key(method, name), dist) for name, dist in sp.params.items())
    if not dims:
        return []
    # The balance of a Sobol sequence holds for powers of two: draw the next one up, keep the first `count`.
    units = qmc.Sobol(len(dims), scramble=True, rng=seed).random_base2(max(0, math.ceil(math.log2(count))))
    points = []
    for row in units[:count]:
        values = {key: _share(dim, u) if isinstance(dim, list) else from_unit(dim, float(u))
                  for (key, dim), u in zip(dims, row)}
        method = values["method"] if space.multi_method else space.methods[0]
        keep = {space.key(method, name) for name in space.spaces[method].params} | {"method", "preset"}
        points.append({k: v for k, v in values.items() if k in keep})
    return points


def from_unit(dist: Distribution, u: float) -> Any:
    """The value of `dist` at `u` in [0, 1): uniform in the value (or its log), each integer and each choice an
    equal share."""
    if dist.type == "categorical":
        return _share(list(dist.choices), u)
    low, high = float(dist.low), float(dist.high)
    if dist.type == "int":
        step = int(dist.step or 1)
        if dist.log:  # Optuna allows log only with step 1; each integer its share of the log range
            lo, hi = math.log(low - 0.5), math.log(high + 0.5)
            return int(min(high, max(low, round(math.exp(lo + u * (hi - lo))))))
        return int(low) + step * min(int(u * ((int(high) - int(low)) // step + 1)), (int(high) - int(low)) // step)
    value = math.exp(math.log(low) + u * (math.log(high) - math.log(low))) if dist.log else low + u * (high - low)
    if dist.step:
        value = low + dist.step * round((value - low) / dist.step)
    return min(high, max(low, value))


def _share(choices: list[Any], u: float) -> Any:
    return choices[min(int(u * len(choices)), len(choices) - 1)]

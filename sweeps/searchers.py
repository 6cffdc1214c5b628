"""The searchers of a sweep: Optuna on the sweep's objectives (told the truth about partial trials), or the paper's grid.

No metric/mode goes into Tune's TuneConfig: the searcher holds all objectives, and a metric there would make
the study single-objective.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from sweeps.plan import SweepPlan

log = logging.getLogger("sweeps")


def make_searcher(plan: SweepPlan, num_samples: int) -> "ParetoOptunaSearch":
    """OptunaSearch over the sweep space on its objectives, warm-started with the methods' defaults."""
    import optuna

    seed = plan.options.seed
    if plan.options.sampler == "nsga2":
        # Generational: a population of ~1/4 of the budget gives it a few generations to improve.
        sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, num_samples // 4)))
    elif plan.options.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        # MO-TPE; its default 10 random start-up trials would be most of a small budget.
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, min(10, num_samples // 4)))
    return ParetoOptunaSearch(space=plan.space, metric=plan.objectives, mode=["min"] * len(plan.objectives),
                              sampler=sampler,
                              points_to_evaluate=(plan.space.warm_start_points() if plan.options.warm_start
                                                  else None) or None,
                              study_name=f"{plan.experiment}-{plan.sweep_id}")


class ParetoOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about trials without final metrics.

    Ray passes an early-stopped trial's last (intermediate) result to Optuna as COMPLETE, so truncated edits
    would steer the sampler. Here a trial whose last result is not final is PRUNED, and one that reported
    `failed` is FAIL; completed trials go through unchanged.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        ot_trial = self._ot_trials.get(trial_id)
        partial = result is None or not result.get("final") or bool(result.get("failed"))
        if ot_trial is None or trial_id in self._completed_trials or not partial:
            return super().on_trial_complete(trial_id, result=result, error=error)
        state = TrialState.FAIL if (error or (result or {}).get("failed")) else TrialState.PRUNED
        try:
            self._ot_study.tell(ot_trial, None, state=state)
        except Exception as exc:  # e.g. already told; the sweep must not die over bookkeeping
            log.warning("optuna tell failed for %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)


class GridSearcher(Searcher):
    """The paper's grid as a Tune searcher: hands out the given points in order, then FINISHED.

    (Ray's BasicVariantGenerator wants every pre-set key declared in `param_space`, which a cross-method grid
    cannot do without filling other methods' keys with junk.) Its state is the index of the next point,
    saved (as JSON) with the experiment, so `--resume` continues the grid where it stopped.
    """

    def __init__(self, points: list[dict[str, Any]]):
        super().__init__(metric=None, mode=None)
        self.points = [dict(p) for p in points]
        self.next_index = 0

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.next_index >= len(self.points):
            return Searcher.FINISHED
        point = self.points[self.next_index]
        self.next_index += 1
        return dict(point)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        # JSON, not pickle: the state is plain parameter values, and a restore then never unpickles.
        with open(checkpoint_path, "w") as f:
            json.dump({"points": self.points, "next_index": self.next_index}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            state = json.load(f)
        self.points, self.next_index = state["points"], state["next_index"]

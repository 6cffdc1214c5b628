"""The searchers of a sweep: Optuna on the sweep's objectives (told the truth about partial trials), or the paper's grid.

No metric/mode goes into Tune's TuneConfig: the searcher holds all objectives, and a metric there would make
the study single-objective.

After a crash, Tune restores a searcher as it was at Tune's last save, which may be older than the trials that
really finished. At its first suggestion each searcher therefore reads the sweep's trial ledger
(`sweeps.ledger`): finished trials it never handed out (created after that save) count toward the budget
(`--num-samples`), Optuna is told their results, and the grid does not hand their points out again.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from sweeps.ledger import TrialLedger, is_finished
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
                              study_name=f"{plan.experiment}-{plan.sweep_id}", ledger_dir=plan.sweep_dir,
                              num_samples=num_samples)


def ledger_trials_unknown(ledger_dir: str | None, handed_out: set[str]) -> dict[str, dict[str, Any]]:
    """The ledger's trials (in the order they were created) that a searcher did not hand out: created after
    Tune's last save, so unknown to its restored state. Entries of a sweep started before the ledger hold no
    config and are left out."""
    if not ledger_dir:
        return {}
    return {t: e for t, e in TrialLedger(ledger_dir).trials.items() if "config" in e and t not in handed_out}


class ParetoOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about trials without final metrics.

    Ray passes an early-stopped trial's last (intermediate) result to Optuna as COMPLETE, so truncated edits
    would steer the sampler. Here a trial whose last result is not final is PRUNED, and one that reported
    `failed` is FAIL; completed trials go through unchanged. Trials the ledger has and this (restored) study
    does not are replayed into it (`_catch_up`), and a budget stops suggestions at `num_samples`.
    """

    def __init__(self, *args: Any, ledger_dir: str | None = None, num_samples: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ledger_dir, self.num_samples = ledger_dir, num_samples
        self._told: set[str] = set()  # ledger trials replayed into the study (saved with it)
        self._left: int | None = None  # suggestions left; None: not caught up with the ledger in this process

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._left = None  # the ledger may know more than this saved state

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.__dict__.get("_left") is None and self.__dict__.get("num_samples"):
            self._catch_up()
        left = self.__dict__.get("_left")
        if left is not None and left <= 0:
            return Searcher.FINISHED
        config = super().suggest(trial_id)
        if config is not None and left is not None:
            self._left = left - 1
        return config

    def _catch_up(self) -> None:
        """Replay into the study, in the order they were created, the ledger's trials that it never asked for.

        A restored study holds the sampler's random state of Tune's last save: asked now, it would propose
        again what it proposed for those trials. Each is asked for once more, which makes the same draw (the
        trial's config, unless trials interleaved differently) and consumes it, and told the trial's result;
        the finished ones count toward `num_samples`.
        """
        told = self.__dict__.setdefault("_told", set())
        unknown = ledger_trials_unknown(self.ledger_dir, set(self._ot_trials))
        for trial_id, entry in unknown.items():
            if trial_id not in told:
                self._replay(entry)
                told.add(trial_id)
        self._left = self.num_samples - len(self._ot_trials) - sum(is_finished(e) for e in unknown.values())

    def _replay(self, entry: dict[str, Any]) -> None:
        import optuna
        from optuna.trial import TrialState

        result = entry.get("result") or {}
        done = entry.get("state") == "completed" and result.get("final") and not result.get("failed")
        state = TrialState.COMPLETE if done else \
            TrialState.PRUNED if entry.get("state") == "early_stopped" else TrialState.FAIL  # failed, or lost
        try:
            values = [float(result[m]) for m in self._metric] if done else None
            ot_trial = self._ot_study.ask()
            self._space(ot_trial)  # define-by-run: the draw
            if ot_trial.params == entry["config"]:
                self._ot_study.tell(ot_trial, values, state=state)
                return
            # The draws went another way: this one never ran; the trial goes in as what it was.
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            if is_finished(entry):
                fixed = optuna.trial.FixedTrial(entry["config"])
                self._space(fixed)  # records the distributions of the config's values
                self._ot_study.add_trial(optuna.trial.create_trial(
                    params=fixed.params, distributions=fixed.distributions, values=values, state=state))
        except Exception as exc:  # e.g. a NaN objective; the sweep must not die over bookkeeping
            log.warning("optuna replay of %s failed: %s", entry.get("config"), exc)


class GridSearcher(Searcher):
    """The paper's grid as a Tune searcher: hands out the given points in order, then FINISHED.

    (Ray's BasicVariantGenerator wants every pre-set key declared in `param_space`, which a cross-method grid
    cannot do without filling other methods' keys with junk.) Its state is the index of the next point and
    the trial ids handed out, saved (as JSON) with the experiment, so `--resume` continues the grid where it
    stopped; points of finished trials that the ledger has and that state lacks are not handed out again.
    """

    def __init__(self, points: list[dict[str, Any]], ledger_dir: str | None = None):
        super().__init__(metric=None, mode=None)
        self.points = [dict(p) for p in points]
        self.next_index = 0
        self.ledger_dir = ledger_dir
        self.handed: list[str] = []  # trial ids, in the order their points were handed out
        self._caught_up = False

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not self.__dict__.get("_caught_up"):
            self._catch_up()
        if self.next_index >= len(self.points):
            return Searcher.FINISHED
        point = self.points[self.next_index]
        self.next_index += 1
        self.handed.append(trial_id)
        return dict(point)

    def _catch_up(self) -> None:
        """Drop from the points still to come one per finished trial the ledger has and this state never handed out."""
        self._caught_up = True
        handed = self.__dict__.setdefault("handed", [])
        if not handed and self.next_index:  # saved before trial ids were kept: nothing to match them against
            return
        rest = self.points[self.next_index:]
        keys = [json.dumps(p, sort_keys=True) for p in rest]
        for entry in ledger_trials_unknown(self.__dict__.get("ledger_dir"), set(handed)).values():
            key = json.dumps(entry["config"], sort_keys=True)
            if is_finished(entry) and key in keys:
                i = keys.index(key)
                del keys[i], rest[i]
        self.points = self.points[:self.next_index] + rest

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        # JSON, not pickle: the state is plain parameter values, and a restore then never unpickles.
        with open(checkpoint_path, "w") as f:
            json.dump({"points": self.points, "next_index": self.next_index, "handed": self.handed}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            state = json.load(f)
        self.points, self.next_index, self.handed = state["points"], state["next_index"], state.get("handed", [])
        self._caught_up = False

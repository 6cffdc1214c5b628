"""The searchers of a sweep: Optuna on the sweep's objectives (a persisted study, told the truth about partial
trials), or the paper's grid.

No metric/mode goes into Tune's TuneConfig: the searcher holds all objectives, and a metric there would make
the study single-objective.

The Optuna searcher keeps its study in an RDB storage (`sweeps.study`), opened when first needed: Ray pickles
the searcher into its experiment and saves its state with every experiment checkpoint, and both hold plain
values only (the study's URL and name, the Ray trial ids handed out), never the study or its sampler. A
resumed sweep thus reloads the study from storage.

After a crash, Tune restores a searcher as it was at Tune's last save, which may be older than the trials that
really finished. At its first use each searcher therefore reads the sweep's trial ledger (`sweeps.ledger`):
finished trials it never handed out (created after that save) count toward the budget (`--num-samples`), the
study is told every finished trial it lacks, and the grid does not hand their points out again.
"""

from __future__ import annotations

import json
import logging
import warnings
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from sweeps import study as S
from sweeps.candidates import catch_up_candidates, is_candidate, tell_candidate
from sweeps.ledger import SYNC_LEDGER, TrialLedger, is_finished
from sweeps.plan import SweepPlan
from sweeps.samplers import SPACE_FILLING, make_sampler, startup_points, startup_size

log = logging.getLogger("sweeps")
STATE_FORMAT = "tinymem-optuna-search/1"  # the JSON a searcher saves (older experiments saved a pickle)


def make_searcher(plan: SweepPlan, num_samples: int) -> "ParetoOptunaSearch":
    """OptunaSearch over the sweep space on its objectives, its study in the plan's storage: the methods'
    defaults first (warm start), then, for `tpe` and `gp`, space-filling start-up points (`sweeps.samplers`)."""
    o = plan.options
    points = [(p, "warm start") for p in (plan.space.warm_start_points() if o.warm_start else [])]
    if o.sampler in SPACE_FILLING:
        count = min(startup_size(num_samples), num_samples) - len(points)
        points += [(p, "sobol") for p in startup_points(plan.space, count, o.seed)]
    spec = S.StudySpec(url=plan.study_storage, name=plan.study_name, objectives=tuple(plan.objectives),
                       sweep_id=plan.sweep_id, loss_name=plan.loss_name, max_loss=plan.max_loss)
    return ParetoOptunaSearch(plan.space, spec, sampler=o.sampler, seed=o.seed, num_samples=num_samples,
                              points=points, ledger_dir=plan.sweep_dir)


def ledger_trials_unknown(ledger_dir: str | None, handed_out: set[str]) -> dict[str, dict[str, Any]]:
    """The ledger's trials (in the order they were created) that a searcher did not hand out: created after
    Tune's last save, so unknown to its restored state. Entries of a sweep started before the ledger hold no
    config and are left out."""
    if not ledger_dir:
        return {}
    return {t: e for t, e in TrialLedger(ledger_dir).trials.items() if "config" in e and t not in handed_out}


class ParetoOptunaSearch(OptunaSearch):
    """OptunaSearch on a persisted study that tells Optuna the truth about trials without final metrics.

    Ray passes an early-stopped trial's last (intermediate) result to Optuna as COMPLETE, so truncated edits
    would steer the sampler. Here a trial whose last result is not final is PRUNED, and one that reported
    `failed` is FAIL; a completed one is COMPLETE with its constraint. A budget stops suggestions at
    `num_samples`.
    """

    def __init__(self, space: Any, spec: S.StudySpec, *, sampler: str, seed: int, num_samples: int,
                 points: list[tuple[dict[str, Any], str]], ledger_dir: str | None = None):
        super().__init__(space=space, metric=list(spec.objectives), mode=["min"] * len(spec.objectives))
        self.spec, self.sampler_name, self.seed, self.num_samples = spec, sampler, seed, num_samples
        self.points, self.ledger_dir = points, ledger_dir
        self.handed: dict[str, int] = {}  # Ray trial id -> Optuna trial number, in the order handed out
        self._left: int | None = None  # suggestions left; None: the study is not open in this process

    def _setup_study(self, mode: Any) -> None:
        """Nothing at construction (Ray's would create an in-memory study): `_open` does it when first needed."""

    # -- what Ray pickles and saves: plain values only

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for live in ("_ot_study", "_ot_trials", "_sampler", "_storage", "_left", "_views", "_candidates"):
            state.pop(live, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "spec" not in state:
            state = _from_unpersisted(state)
        self.__dict__.update(state)
        self._ot_study, self._ot_trials, self._sampler, self._storage, self._left = None, {}, None, None, None

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump({"format": STATE_FORMAT, "study": self.spec.name, "storage": self.spec.url,
                       "handed": self.handed}, f)

    def restore(self, checkpoint_path: str) -> None:
        try:
            with open(checkpoint_path) as f:
                state = json.load(f)
        except (UnicodeDecodeError, ValueError):  # an experiment saved before the study was persisted: a pickle
            log.warning("searcher state %s is not JSON (an older sweep); it is not unpickled: the study is "
                        "rebuilt from its storage and the trial ledger", checkpoint_path)
            state = {}
        self.handed = {str(k): int(v) for k, v in state.get("handed", {}).items()}
        self._ot_study, self._ot_trials, self._left = None, {}, None

    # -- the study

    @property
    def study(self) -> Any:
        """The sweep's Optuna study, opened (created or reloaded from storage) on first use."""
        return self._open()

    def _open(self) -> Any:
        """Open (create or reload) the study once per process; after a reload, settle it with the ledger."""
        if self._ot_study is None:
            self._ot_study = S.open_study(
                self.spec, lambda held: make_sampler(self.sampler_name, self.seed, self.num_samples, held),
                [(dict(p), label) for p, label in self.points])
            unknown = ledger_trials_unknown(self.ledger_dir, set(self.handed))
            self._candidates = {k for k in S.told_ray_ids(self._ot_study) if "@" in k}  # keys told (`candidates`)
            ledger = TrialLedger(self.ledger_dir) if self.ledger_dir else None
            told = S.catch_up(self._ot_study, self.spec, self._space, ledger.trials) if ledger else 0
            if ledger is not None:
                told += catch_up_candidates(self._ot_study, self.spec, self._space, ledger, self._candidates)
            if told:
                log.info("optuna study %s: told %d finished trial(s) from the ledger", self.spec.name, told)
            self._left = self.num_samples - len(self.handed) - sum(is_finished(e) for e in unknown.values())
        return self._ot_study

    def suggest(self, trial_id: str) -> dict | str | None:
        self._open()
        if self._left is not None and self._left <= 0:
            return Searcher.FINISHED
        with warnings.catch_warnings():  # Ray times the define-by-run call, which includes the sampler's (GP) work
            warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space` argument took")
            config = super().suggest(trial_id)
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr(S.RAY_TRIAL, trial_id)
        self.handed[trial_id] = ot_trial.number
        self._left -= 1
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Multi-objective: Optuna takes no intermediate values. An anytime candidate is a trial of its own.
        if is_candidate(result):
            self._tell_candidate(trial_id, result)

    def _tell_candidate(self, trial_id: str, result: dict) -> None:
        study = self._open()
        live = self._ot_trials.get(trial_id)
        entry = self._ledger_entry(trial_id) or {}
        config = entry.get("config") or (dict(live.params) if live is not None else None)
        if config is None:
            return
        try:
            tell_candidate(study, self.spec, self._space, trial_id, config, result, entry.get("run_id"),
                           self.__dict__.setdefault("_candidates", set()))
        except Exception as exc:  # bookkeeping must not stop the sweep; a resume catches it up from the ledger
            log.warning("optuna tell of candidate %s@e%s failed: %s", trial_id, result.get("epoch"), exc)

    def _ledger_entry(self, trial_id: str) -> dict[str, Any] | None:
        """The trial's ledger entry with its MLflow run id, both ledgers kept open and read on incrementally:
        one read of the whole files per completed trial would cost the driver O(trials) each time."""
        if not self.ledger_dir:
            return None
        views = self.__dict__.get("_views")
        if views is None:
            views = self._views = (TrialLedger(self.ledger_dir), TrialLedger(self.ledger_dir, SYNC_LEDGER))
        trials, runs = (v.refresh() for v in views)
        entry = trials.get(trial_id)
        return {**entry, **runs.get(trial_id, {})} if entry is not None else None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        study = self._open()
        if is_candidate(result):  # stopped at a checkpoint: Tune passes that result here, not to on_trial_result
            self._tell_candidate(trial_id, result)
        state, values = S.outcome(result, self.spec.objectives, error=error)
        entry = self._ledger_entry(trial_id)
        run_id = (entry or {}).get("run_id")  # None while the MLflow writer has not made the run
        try:
            live = self._ot_trials.pop(trial_id, None)
            if live is not None:
                S.tell(study, self.spec, live, state, values, result or {}, run_id)
            elif trial_id not in S.told_ray_ids(study) and (entry or {}).get("config") is not None:
                # Resumed by Tune after a crash: its Optuna trial was closed on reload, this is its outcome.
                S.add_finished(study, self.spec, self._space, trial_id, entry["config"], state, values,
                               result or {}, run_id)
        except Exception as exc:  # e.g. a storage hiccup; the sweep must not die over bookkeeping
            log.warning("optuna tell of %s failed: %s", trial_id, exc)


def _from_unpersisted(state: dict[str, Any]) -> dict[str, Any]:
    """The state of a searcher pickled by a sweep started before its study was persisted (its study lived in the
    pickle, which is dropped): its study goes to the default storage under the root, built from the ledger."""
    ledger_dir = state.get("ledger_dir") or ""
    root = ledger_dir.rsplit("/sweeps/", 1)[0] if "/sweeps/" in ledger_dir else "."  # <root>/sweeps/<exp>/<id>
    objectives = tuple(state.get("_metric") or ())
    names = {"TPESampler": "tpe", "GPSampler": "gp", "NSGAIISampler": "nsga2", "RandomSampler": "random"}
    spec = S.StudySpec(url=S.default_storage(root), name=state.get("_study_name") or "optuna", objectives=objectives,
                       loss_name=next((o for o in objectives if o.endswith(("_acc_drop", "_ppl_increase_pct"))), ""))
    return {**{k: v for k, v in state.items() if k not in ("_told", "_ot_study", "_ot_trials", "_sampler")},
            "spec": spec, "sampler_name": names.get(type(state.get("_sampler")).__name__, "tpe"), "seed": 0,
            "points": [], "handed": {}, "ledger_dir": ledger_dir or None}


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

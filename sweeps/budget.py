"""The sweep's time budget (`--time-budget`) and the Tune `stop` of a sweep, which holds it and the early stop
of `--scheduler` (`sweeps.stops`). Imports Ray: used by the engine, not by the plan.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ray.tune.stopper import Stopper

from sweeps.options import resolve_time_budget
from sweeps.stops import DominatedStop, NoEffectStop, base_point
from sweeps.study import close_running


class Deadline(Stopper):
    """The sweep's time budget (`--time-budget`) as a Tune stopper: once `seconds` have passed since `start` (the
    driver's start, so base training counts), Tune stops every running trial after its last result and starts no
    more. A stopped anytime trial keeps the checkpoints it reported, as any early-stopped trial does. `inner`: the
    per-trial stop it wraps (`DominatedStop`, `NoEffectStop`), if any.

    Tune saves the stopper with its experiment; unpickled (`--resume`), the budget counts again from then."""

    def __init__(self, seconds: float, start: float, inner: Callable[[str, dict], bool] | None = None):
        self.seconds, self.at, self.inner = float(seconds), float(start) + float(seconds), inner

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return bool(self.inner(trial_id, result)) if self.inner is not None else False

    def stop_all(self) -> bool:
        return time.time() >= self.at

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.at = time.time() + self.seconds


def sweep_stop(plan: Any, base_metrics: dict[str, Any] | None, start: float) -> Any:
    """The Tune `stop` of a sweep (`sweeps.plan.SweepPlan`): its `--scheduler` stop of anytime trials, within its
    time budget when it has one; None for neither. `base_metrics`: the one base model's, None with several."""
    o, stop = plan.options, None
    # With one preset every trial shares the base model, whose own point then covers a no-op trial.
    base = base_point(plan.objectives, plan.loss_name, base_metrics) if base_metrics is not None else None
    if o.scheduler == "dominated":
        stop = DominatedStop(list(plan.objectives), base=base)
    elif o.scheduler == "no-effect":
        stop = NoEffectStop(list(plan.objectives), plan.loss_name, base)
    budget = resolve_time_budget(o)
    return Deadline(budget, start, stop) if budget is not None else stop


def budget_spent(budget: float | None, start: float, logger: Any, searcher: Any) -> float | None:
    """After `tuner.fit()`: the budget if it ran out (else None). Tune stops the trials running then without its
    per-trial callbacks, so they are closed here: early-stopped in the ledger (and so in MLflow) with their last
    result, and told to `searcher` (Optuna: PRUNED) when there is one; a trial it suggested that never started is
    failed and marked `closed`. (`searcher` is None after a restore: the next resume closes those study trials.)"""
    if budget is None or time.time() < start + budget:
        return None
    for trial_id, last in logger.close_cut():
        if searcher is not None:
            searcher.on_trial_complete(trial_id, result=last or None)
    if searcher is not None and hasattr(searcher, "study"):  # the Optuna searcher: suggested, never started
        close_running(searcher.study, "the time budget ended the sweep before the trial started")
    return budget

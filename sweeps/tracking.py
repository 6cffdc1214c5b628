"""MLflow layout of a sweep: one parent run per sweep, one child run per trial; the driver's side of the child runs.

Why the driver logs, and not the trials: the default backend is a SQLite file, which wants a single writer, and
a Ray worker on another node may not even see that file. Ray's own `MLflowLoggerCallback` makes flat runs,
logs every numeric field, and keeps run ids only in memory, so a restored experiment starts new runs.

`TrialLogger` (a Tune callback) never calls MLflow: it appends each trial event to the sweep's trial ledger
(`sweeps.ledger`, durable before it returns) and hands it to the sweep's MLflow writer process
(`sweeps.sync_process`, applying `sweeps.mlflow_sync`), which makes the child run of each trial:

- a run (tag `mlflow.parentRunId`, MLflow's system tags, the base model's data as run inputs) per trial,
  params = the trial's method, preset and every hyperparameter;
- per-epoch metrics (step = epoch) and the final metrics under the names of `tinymem.metrics`;
- tags (names in `sweeps.tags`) `tinymem.state` (running | completed | failed | early_stopped),
  `tinymem.pareto` (set at the end), `tinymem.error`, and where the trial runs: `tinymem.ray_node_id`,
  `tinymem.hostname`, `tinymem.node_ip` (updated if a retry moves it to another node).

So the driver schedules trials at its own pace, also while MLflow is down. After `--resume`, also after a
SIGKILL, a trial continues its own run, a finished trial is never rerun or logged twice, and runs of trials the
dead driver left are closed (`on_step_begin`: the trials Tune will not run again are marked lost).
It holds no state that matters beyond the ledger: Ray pickles callbacks into the experiment and unpickles
them on restore.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from sweeps.ledger import LOST, TrialLedger, is_finished

# What Ray adds to a trainable's result; the rest is what the trainable reported (the ledger keeps that).
_RAY_FIELDS = set(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint", "__duplicate__"}


class TrialLogger(Callback):
    """Tune callback that records every trial event in the sweep's trial ledger and hands it to the sweep's
    MLflow writer, which mirrors it into a child run of the sweep's parent run (`sweeps.mlflow_sync`)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, sweep_dir: str,
                 space: Any, loss_name: str, system_tags: dict[str, str] | None = None,
                 data_inputs: dict[str, list[dict[str, Any]]] | None = None):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.sweep_dir = sweep_dir
        self.space = space
        self.loss_name = loss_name
        self.system_tags = dict(system_tags or {})  # resolved once on the driver (`sweeps.tags.system_tags`)
        self.data_inputs = dict(data_inputs or {})  # preset -> its base model's datasets (`sweeps.inputs`)
        self._ledger: TrialLedger | None = None

    # Ray pickles callbacks with the experiment; keep only configuration in the pickle.
    def __getstate__(self) -> dict[str, Any]:
        keep = ("tracking_uri", "experiment_id", "parent_run_id", "sweep_dir", "space", "loss_name", "system_tags",
                "data_inputs")
        return {**{k: v for k, v in self.__dict__.items() if k in keep}, "_ledger": None}

    @property
    def ledger(self) -> TrialLedger:
        if self.__dict__.get("_ledger") is None:
            self._ledger = TrialLedger(self.sweep_dir)
        return self._ledger

    def sync_context(self) -> Any:
        from sweeps.mlflow_sync import SyncContext

        return SyncContext(self.tracking_uri, self.experiment_id, self.parent_run_id, self.sweep_dir,
                           self.__dict__.get("system_tags", {}), self.__dict__.get("data_inputs", {}))

    def open(self) -> None:
        """Start the sweep's MLflow writer (before the first trial: it first writes what a dead driver or an
        outage left)."""
        from sweeps.sync_process import writer_for

        writer_for(self.sync_context())

    def close(self, wait_s: float) -> dict[str, Any]:
        """Let the writer finish, waiting up to `wait_s` for an unreachable MLflow; its summary
        (`sweeps.sync_process.SyncWriter.close`: `complete` False leaves events for `report.py --sync`)."""
        from sweeps.sync_process import close_writer

        return close_writer(self.sweep_dir, wait_s)

    def _event(self, trial_id: str, event: str, **fields: Any) -> None:
        """Append to the ledger (durable), then hand on to the MLflow writer (asynchronous)."""
        from sweeps.sync_process import writer_for

        self.ledger.append(trial_id, event, **fields)
        writer_for(self.sync_context()).send(self.ledger.history(trial_id)[-1])

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self.__dict__.get("_recovered"):  # once per driver process, before any trial event
            self._recovered = True
            self._mark_lost(trials)

    def _mark_lost(self, trials: list) -> None:
        """Trials that were running when a driver died and that the restored experiment will not run again
        (created after Tune's last save): recorded as lost, and their runs closed as failed with the reason."""
        from ray.tune.experiment import Trial

        known = {t.trial_id for t in trials if t.status not in (Trial.TERMINATED, Trial.ERROR)}
        error = "the sweep's driver died while this trial ran; the resumed sweep replaced it with a new trial"
        for trial_id, entry in list(self.ledger.trials.items()):
            if trial_id not in known and not is_finished(entry) and entry.get("state") != LOST:
                self._event(trial_id, LOST, state=LOST, error=error)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        entry = self.ledger.get(trial.trial_id)
        if is_finished(entry):  # finished before a crash: it re-reports its result, its run is complete
            return
        seen = self.__dict__.setdefault("_seen", set())  # trials this process started (not pickled)
        if entry is None or "config" not in entry:
            method, preset, params = self.space.decode(trial.config)
            self._event(trial.trial_id, "created", config=dict(trial.config), state="running",
                        run_name=f"{method}-{trial.trial_id}", start_ms=int(time.time() * 1000), method=method,
                        preset=preset, params=params)
        else:  # a retried or resumed trial continues its run
            resumed = "" if trial.trial_id in seen else str(int(time.time()))  # resumed by this process
            self._event(trial.trial_id, "state", state="running", resumed=resumed)
        seen.add(trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if is_finished(self.ledger.get(trial.trial_id)):
            return
        at_ms = int(time.time() * 1000)
        # Where it ran: Ray's own fields, which the trial's runs are tagged with (`sweeps.tags.WHERE`).
        where = {k: result[k] for k in ("node_ip", "hostname") if result.get(k)}
        if result.get("final"):  # the trial's last word
            self._event(trial.trial_id, "finished", state="failed" if result.get("failed") else "completed",
                        result=final_result(result), result_ms=at_ms, where=where)
        else:
            self._event(trial.trial_id, "result", epoch_result=final_result(result), at_ms=at_ms,
                        step=int(result.get("epoch") or 0), where=where)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not is_finished(self.ledger.get(trial.trial_id)):  # a scheduler stopped it between epochs
            self._event(trial.trial_id, "finished", state="early_stopped", result=final_result(trial.last_result or {}))

    def close_cut(self) -> list[tuple[str, dict[str, Any]]]:
        """Trials left running when the time budget stopped the sweep (`sweeps.budget`; Tune calls no per-trial
        callback then): recorded as early-stopped with their last per-epoch result; (trial id, that result)."""
        cut = []
        for trial_id, entry in list(self.ledger.trials.items()):
            if is_finished(entry) or entry.get("state") == LOST or "config" not in entry:
                continue
            last = entry.get("epoch_result") or {}  # the entry folds in its latest per-epoch result
            self._event(trial_id, "finished", state="early_stopped", result=last)
            cut.append((trial_id, last))
        return cut

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not is_finished(self.ledger.get(trial.trial_id)):
            self._event(trial.trial_id, "retry", retries=trial.num_failures, last_error=_error_line(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not is_finished(self.ledger.get(trial.trial_id)):
            self._event(trial.trial_id, "finished", state="failed", error=_error_line(trial))


def final_result(result: dict[str, Any]) -> dict[str, Any]:
    """A trial's result as its trainable reported it (Ray's own fields dropped): what the ledger stores and a
    resumed trial re-reports."""
    return {k: v for k, v in result.items() if k not in _RAY_FIELDS}


def _error_line(trial: Any) -> str:
    """The last line of the trial's traceback (the exception and its message)."""
    text = ""
    try:
        # Tune writes the traceback locally first (`error_file`) and syncs it to storage later.
        local = trial.error_file
        if local and os.path.exists(local):
            text = Path(local).read_text()
        else:
            text = trial.get_error() or ""
    except Exception:  # unreadable (e.g. remote storage not synced yet): the failed state is what matters
        text = text or ""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "trial errored")[:8000]

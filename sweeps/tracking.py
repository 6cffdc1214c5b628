"""MLflow layout of a sweep: one parent run per sweep, one child run per trial, all logged from the driver.

Why the driver: the default backend is a SQLite file, which wants a single writer, and a Ray worker on
another node may not even see that file. Ray's own `MLflowLoggerCallback` makes flat runs, logs every
numeric field, and keeps run ids only in memory, so a restored experiment starts new runs. `TrialLogger`
instead:

- creates a child run (tag `mlflow.parentRunId`, MLflow's system tags, the base model's data as run
  inputs) when a trial starts, params = the trial's method, preset and every hyperparameter;
- logs per-epoch metrics (step = epoch) and the final metrics under the names of `tinymem.metrics`;
- tags (names in `sweeps.tags`) `tinymem.state` (running | completed | failed | early_stopped),
  `tinymem.pareto` (set at the end), `tinymem.error`, and where the trial runs: `tinymem.ray_node_id`,
  `tinymem.hostname`, `tinymem.node_ip` (updated if a retry moves it to another node);
- writes every trial event to the sweep's trial ledger (`sweeps.ledger`) before MLflow: its run id, its
  config, its final result. After `--resume`, also after a SIGKILL, a trial continues its own run, a finished
  trial is never rerun or logged twice, and runs the dead driver left RUNNING are closed (`_recover`).

It holds no state that matters beyond the ledger: Ray pickles callbacks into the experiment and unpickles
them on restore, so the MLflow client is rebuilt lazily and the ledger is re-read.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from sweeps import tags as T
from sweeps.inputs import log_data_inputs
from sweeps.ledger import LOST, TrialLedger, is_finished

STATES = ("running", "completed", "failed", "early_stopped")
RUN_STATUS = {"completed": "FINISHED", "failed": "FAILED", "early_stopped": "KILLED"}  # tinymem.state -> MLflow
# What Ray adds to a trainable's result; the rest is what the trainable reported (the ledger keeps that).
_RAY_FIELDS = set(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint", "__duplicate__"}
# Result fields that are bookkeeping, not metrics worth a chart.
_NOT_METRICS = _RAY_FIELDS | {"final", "failed", "epoch"}


def mlflow_client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    """The id of MLflow experiment `name`, created (with `artifact_location`) if missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # a concurrent creator won the race
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _finite_metrics(values: dict[str, Any], step: int, now_ms: int) -> list:
    from mlflow.entities import Metric

    out = []
    for k, v in values.items():
        if k in _NOT_METRICS or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if not math.isfinite(float(v)):
            continue  # MLflow stores NaN awkwardly; a missing metric says the same more clearly
        out.append(Metric(key=k, value=float(v), timestamp=now_ms, step=step))
    return out


def log_metrics(client: Any, run_id: str, values: dict[str, Any], step: int = 0, at_ms: int | None = None) -> None:
    """Log the numeric fields of `values` at `step`, stamped `at_ms` (default now): the same metric logged
    twice with the same stamp is stored once, which makes a replay from the trial ledger harmless."""
    metrics = _finite_metrics(values, step, int(time.time() * 1000) if at_ms is None else at_ms)
    for i in range(0, len(metrics), 900):  # MLflow caps a batch at 1000 metrics
        client.log_batch(run_id, metrics=metrics[i:i + 900])


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, _param_str(v)) for k, v in params.items()]
    for i in range(0, len(items), 90):
        client.log_batch(run_id, params=items[i:i + 90])


def set_tags(client: Any, run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, _tag_str(v)) for k, v in tags.items()])


def _param_str(v: Any, limit: int = 6000) -> str:
    return (v if isinstance(v, str) else json.dumps(v, default=str))[:limit]


def _tag_str(v: Any) -> str:
    return _param_str(v, 8000)


class TrialLogger(Callback):
    """Tune callback that mirrors every trial into a child MLflow run of the sweep's parent run, with the
    sweep's trial ledger (`sweeps.ledger`) as the record it writes first and resumes from."""

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
        self._client = None
        self._ledger: TrialLedger | None = None

    # Ray pickles callbacks with the experiment; keep only configuration in the pickle.
    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_where", "_recovered", "_seen", "_map")}
        return {**state, "_client": None, "_ledger": None}

    @property
    def client(self):
        if self._client is None:
            self._client = mlflow_client(self.tracking_uri)
        return self._client

    @property
    def ledger(self) -> TrialLedger:
        if self.__dict__.get("_ledger") is None:
            # A logger pickled before the ledger names the run map, which lies in the sweep directory.
            where = self.__dict__.get("sweep_dir") or self.__dict__["run_map_path"].rstrip("/").rsplit("/", 1)[0]
            self._ledger = TrialLedger(where)
        return self._ledger

    def _run_for(self, trial: Any) -> str:
        """The trial's child run: the one recorded for it (resume, retry), else a new one."""
        entry = self.ledger.get(trial.trial_id)
        if entry is not None and entry.get("run_id"):
            return entry["run_id"]
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        method, preset, params = self.space.decode(trial.config)
        # A logger unpickled from an experiment started before these fields existed has neither.
        system, inputs = self.__dict__.get("system_tags", {}), self.__dict__.get("data_inputs", {})
        run = self.client.create_run(
            self.experiment_id, run_name=f"{method}-{trial.trial_id}",
            tags={**system, MLFLOW_PARENT_RUN_ID: self.parent_run_id, T.TRIAL_ID: trial.trial_id,
                  T.METHOD: method, T.PRESET: preset, T.STATE: "running", T.PARETO: "false"})
        run_id = run.info.run_id
        log_params(self.client, run_id, {"method": method, "preset": preset, **params})
        log_data_inputs(self.client, run_id, inputs.get(preset, []))
        self.ledger.append(trial.trial_id, "created", run_id=run_id, config=dict(trial.config), state="running")
        return run_id

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self.__dict__.get("_recovered"):  # once per driver process, before any trial event
            self._recovered = True
            self._recover(trials)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        entry = self.ledger.get(trial.trial_id)
        if is_finished(entry):  # finished before a crash: it re-reports its result, its run is complete
            return
        run_id = self._run_for(trial)
        seen = self.__dict__.setdefault("_seen", set())  # trials this process started (not pickled)
        if entry is not None:  # a retried or resumed trial continues its run
            self.client.update_run(run_id, status="RUNNING")
            resumed = {} if trial.trial_id in seen else {T.RESUMED: str(int(time.time()))}  # by this process
            set_tags(self.client, run_id, {T.STATE: "running", **resumed})
            self.ledger.append(trial.trial_id, "state", state="running")
        seen.add(trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if is_finished(self.ledger.get(trial.trial_id)):
            return
        run_id = self._run_for(trial)
        at_ms = int(time.time() * 1000)
        if result.get("final"):  # the trial's last word: in the ledger before MLflow sees any of it
            self.ledger.append(trial.trial_id, "finished", state="failed" if result.get("failed") else "completed",
                               result=final_result(result), result_ms=at_ms)
        self._log_result(trial.trial_id, run_id, result, at_ms)

    def _log_result(self, trial_id: str, run_id: str, result: dict, at_ms: int) -> None:
        log_metrics(self.client, run_id, result, step=int(result.get("epoch") or 0), at_ms=at_ms)
        # Where it runs (a retried trial may move to another node): tagged when it changes.
        where = {tag: str(result[k]) for k, tag in T.WHERE.items() if result.get(k)}
        seen = self.__dict__.setdefault("_where", {})  # not pickled; an unpickled logger re-tags once
        if where and seen.get(trial_id) != where:
            set_tags(self.client, run_id, where)
            seen[trial_id] = where
        if result.get("trial_config"):  # the final report's rebuild config: `tinymem mitigate --from-run` reads it
            set_tags(self.client, run_id, {T.TRIAL_CONFIG: result["trial_config"]})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        entry = self.ledger.get(trial.trial_id) or {}
        if entry.get("logged"):
            return
        run_id = self._run_for(trial)
        if not is_finished(entry):  # no final result: a scheduler stopped it between epochs (a partial edit)
            self.ledger.append(trial.trial_id, "finished", state="early_stopped",
                               result=final_result(trial.last_result or {}))
        self._close(trial.trial_id, run_id)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if is_finished(self.ledger.get(trial.trial_id)):
            return
        run_id = self._run_for(trial)
        set_tags(self.client, run_id, {T.RETRIES: str(trial.num_failures), T.LAST_ERROR: _error_line(trial)})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        entry = self.ledger.get(trial.trial_id) or {}
        if entry.get("logged"):
            return
        run_id = self._run_for(trial)
        if not is_finished(entry):
            self.ledger.append(trial.trial_id, "finished", state="failed", error=_error_line(trial))
        self._close(trial.trial_id, run_id)

    def _close(self, trial_id: str, run_id: str) -> None:
        """Tag and terminate a finished trial's run as its ledger entry says, then note that MLflow has it."""
        entry = self.ledger.get(trial_id) or {}
        state, result = entry["state"], entry.get("result") or {}
        tags = {T.STATE: state}
        if state == "failed":
            tags[T.ERROR] = str(entry.get("error") or result.get("error") or "unknown error")[:8000]
        elif state == "early_stopped":
            tags[T.EARLY_STOPPED_AT_EPOCH] = str(result.get("epoch", ""))
        set_tags(self.client, run_id, tags)
        self.client.set_terminated(run_id, status=RUN_STATUS[state])
        self.ledger.append(trial_id, "logged", logged=True)

    def _recover(self, trials: list) -> None:
        """Settle what a dead driver left, before this process's first trial event: a finished trial whose MLflow
        calls did not all happen is replayed from the ledger (same metric timestamps: nothing doubles); a RUNNING
        run of a trial the restored experiment will not run (created after Ray's last save) is closed as failed;
        a RUNNING run that the ledger does not name, of a trial Ray will run, is deleted (the driver died before
        its ledger line; the trial gets a complete run when it starts)."""
        for trial_id, entry in list(self.ledger.trials.items()):
            if is_finished(entry) and not entry.get("logged") and entry.get("run_id") and "result" in entry:
                if entry.get("result_ms") is not None:
                    self._log_result(trial_id, entry["run_id"], entry["result"], int(entry["result_ms"]))
                self._close(trial_id, entry["run_id"])
        from ray.tune.experiment import Trial

        resumed = {t.trial_id for t in trials if t.status not in (Trial.TERMINATED, Trial.ERROR)}
        running = self.client.search_runs(
            [self.experiment_id], max_results=10000,
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}' and attributes.status = 'RUNNING'")
        for run in running:
            trial_id = T.read(run.data.tags, T.TRIAL_ID, "")  # bare `trial_id` on runs logged before `tinymem.`
            entry = self.ledger.get(trial_id) or {}
            if trial_id in resumed:
                if entry.get("run_id") != run.info.run_id:
                    self.client.delete_run(run.info.run_id)
                continue
            error = "the sweep's driver died while this trial ran; the resumed sweep replaced it with a new trial"
            set_tags(self.client, run.info.run_id, {T.STATE: "failed", T.ERROR: error})
            self.client.set_terminated(run.info.run_id, status="FAILED")
            if entry.get("run_id") == run.info.run_id and not is_finished(entry):
                self.ledger.append(trial_id, LOST, state=LOST, error=error, logged=True)


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

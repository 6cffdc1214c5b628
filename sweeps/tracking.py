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
- keeps trial id -> run id in `mlflow_runs.json` in the sweep directory (atomic writes), so after
  `--resume` a trial continues its own run and a finished trial is never logged twice.

It holds no state that matters beyond that file: Ray pickles callbacks into the experiment and unpickles
them on restore, so the MLflow client is rebuilt lazily and the map is re-read from the file.
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

from sweeps import storage
from sweeps import tags as T
from sweeps.inputs import log_data_inputs

RUN_MAP = "mlflow_runs.json"
STATES = ("running", "completed", "failed", "early_stopped")
# Result fields that are bookkeeping, not metrics worth a chart.
_NOT_METRICS = set(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint", "final",
                                        "failed", "epoch", "timestamp", "time_total_s", "time_this_iter_s"}


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


def log_metrics(client: Any, run_id: str, values: dict[str, Any], step: int = 0) -> None:
    metrics = _finite_metrics(values, step, int(time.time() * 1000))
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


def _param_str(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s[:6000]


def _tag_str(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s[:8000]


class RunIdMap:
    """trial id -> {run_id, state}, persisted as JSON in the sweep directory after every change."""

    def __init__(self, path: str):
        self.path = path
        data = storage.read_json(path) or {}
        self.trials: dict[str, dict[str, Any]] = data.get("trials", {})

    def get(self, trial_id: str) -> dict[str, Any] | None:
        return self.trials.get(trial_id)

    def put(self, trial_id: str, **fields: Any) -> None:
        self.trials.setdefault(trial_id, {}).update(fields)
        storage.write_json(self.path, {"trials": self.trials})


class TrialLogger(Callback):
    """Tune callback that mirrors every trial into a child MLflow run of the sweep's parent run."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, run_map_path: str,
                 space: Any, loss_name: str, system_tags: dict[str, str] | None = None,
                 data_inputs: dict[str, list[dict[str, Any]]] | None = None):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.run_map_path = run_map_path
        self.space = space
        self.loss_name = loss_name
        self.system_tags = dict(system_tags or {})  # resolved once on the driver (`sweeps.tags.system_tags`)
        self.data_inputs = dict(data_inputs or {})  # preset -> its base model's datasets (`sweeps.inputs`)
        self._client = None
        self._map: RunIdMap | None = None

    # Ray pickles callbacks with the experiment; keep only configuration in the pickle.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        state["_map"] = None
        state.pop("_where", None)
        return state

    @property
    def client(self):
        if self._client is None:
            self._client = mlflow_client(self.tracking_uri)
        return self._client

    @property
    def runs(self) -> RunIdMap:
        if self._map is None:
            self._map = RunIdMap(self.run_map_path)
        return self._map

    def _run_for(self, trial: Any) -> str:
        """The trial's child run: the one recorded for it (resume, retry), else a new one."""
        entry = self.runs.get(trial.trial_id)
        if entry is not None:
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
        self.runs.put(trial.trial_id, run_id=run_id, state="running")
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        entry = self.runs.get(trial.trial_id)
        run_id = self._run_for(trial)
        if entry is not None:  # a retried or resumed trial continues its run
            self.client.update_run(run_id, status="RUNNING")
            set_tags(self.client, run_id, {T.STATE: "running"})
            self.runs.put(trial.trial_id, state="running")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run_id = self._run_for(trial)
        step = int(result.get("epoch") or 0)
        log_metrics(self.client, run_id, result, step=step)
        # Where it runs (a retried trial may move to another node): tagged when it changes.
        where = {tag: str(result[k]) for k, tag in T.WHERE.items() if result.get(k)}
        seen = self.__dict__.setdefault("_where", {})  # not pickled; an unpickled logger re-tags once
        if where and seen.get(trial.trial_id) != where:
            set_tags(self.client, run_id, where)
            seen[trial.trial_id] = where
        if result.get("trial_config"):  # the final report's rebuild config: `tinymem mitigate --from-run` reads it
            set_tags(self.client, run_id, {T.TRIAL_CONFIG: result["trial_config"]})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_for(trial)
        last = trial.last_result or {}
        if last.get("failed"):
            state, status = "failed", "FAILED"
            tags = {T.STATE: state, T.ERROR: str(last.get("error", "unknown error"))[:8000]}
        elif not last.get("final"):
            # A scheduler stopped it between epochs: its metrics are those of a partial edit.
            state, status = "early_stopped", "KILLED"
            tags = {T.STATE: state, T.EARLY_STOPPED_AT_EPOCH: str(last.get("epoch", ""))}
        else:
            state, status = "completed", "FINISHED"
            tags = {T.STATE: state}
        set_tags(self.client, run_id, tags)
        self.client.set_terminated(run_id, status=status)
        self.runs.put(trial.trial_id, state=state)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_for(trial)
        set_tags(self.client, run_id, {T.RETRIES: str(trial.num_failures), T.LAST_ERROR: _error_line(trial)})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_for(trial)
        set_tags(self.client, run_id, {T.STATE: "failed", T.ERROR: _error_line(trial)})
        self.client.set_terminated(run_id, status="FAILED")
        self.runs.put(trial.trial_id, state="failed")


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

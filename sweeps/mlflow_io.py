"""The MLflow calls a sweep makes, in one place: client, experiment, and batched params, metrics and tags of a run.

No Ray here: the driver (`sweeps.engine`, the parent run) and the MLflow writer process (`sweeps.mlflow_sync`,
the child runs) both use these.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

STATES = ("running", "completed", "failed", "early_stopped")
RUN_STATUS = {"completed": "FINISHED", "failed": "FAILED", "early_stopped": "KILLED"}  # tinymem.state -> MLflow
# Result fields that are bookkeeping, not metrics worth a chart (Ray's own fields never reach here: the ledger
# keeps what the trainable reported, `sweeps.tracking.final_result`).
_NOT_METRICS = {"final", "failed", "epoch"}


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


def metric_entities(values: dict[str, Any], step: int, now_ms: int) -> list:
    """MLflow metrics of the numeric, finite fields of `values` (bookkeeping fields left out)."""
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
    batch_log(client, run_id, metrics=metric_entities(values, step, int(time.time() * 1000) if at_ms is None else at_ms))


def batch_log(client: Any, run_id: str, metrics: list | None = None, tags: dict[str, Any] | None = None,
              params: dict[str, Any] | None = None) -> None:
    """Metrics, tags and params of one run in as few calls as MLflow's batch limits allow (one, for a trial)."""
    from mlflow.entities import Param, RunTag

    metrics = list(metrics or [])
    tag_list = [RunTag(k, _tag_str(v)) for k, v in (tags or {}).items()]
    param_list = [Param(k, _param_str(v)) for k, v in (params or {}).items()]
    first = True
    # MLflow caps a batch at 1000 metrics, 100 params, 100 tags and 1000 entities in all.
    while first or metrics or tag_list or param_list:
        client.log_batch(run_id, metrics=metrics[:800], tags=tag_list[:90], params=param_list[:90])
        metrics, tag_list, param_list, first = metrics[800:], tag_list[90:], param_list[90:], False


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    batch_log(client, run_id, params=params)


def set_tags(client: Any, run_id: str, tags: dict[str, Any]) -> None:
    batch_log(client, run_id, tags=tags)


def _param_str(v: Any, limit: int = 6000) -> str:
    return (v if isinstance(v, str) else json.dumps(v, default=str))[:limit]


def _tag_str(v: Any) -> str:
    return _param_str(v, 8000)

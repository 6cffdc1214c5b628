"""A sweep read back from MLflow alone: its child runs as a table, annotated with the front, as a `Report`.

Everything needed is in MLflow: the child runs' params, metrics (an anytime candidate: its run's metrics at the
step of its epoch, `sweeps.candidates`) and `tinymem.state` tags, and the parent run's
tags `tinymem.sweep` (task kind, objectives, the bound on the utility loss) and `tinymem.base` (base metrics per preset). Tags are read with
`sweeps.tags.read`, so a sweep logged before the `tinymem.` namespace (bare `state`, ...) reads back too.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from sweeps import tags as T
from sweeps.candidates import SOURCE, TRIAL, candidate_rows
from sweeps.errors import SweepError
from sweeps.pareto import MEM, select, utility_loss_name
from sweeps.results import Report


def _parse_param(value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, TypeError):
        return value


def runs_dataframe(client: Any, experiment_id: str, parent_run_id: str) -> tuple[pd.DataFrame, list[str]]:
    """All child runs of a sweep: one row each, params and metrics as columns; and the hyperparameter names."""
    rows, param_names, token = [], [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                  max_results=1000, page_token=token)
        for run in page:
            tags, params = run.data.tags, run.data.params
            row: dict[str, Any] = {"trial_id": tags.get(T.TRIAL_ID, ""), "run_id": run.info.run_id,
                                   "started_ms": run.info.start_time,
                                   "state": T.read(tags, T.STATE, "running"), "method": params.get("method", ""),
                                   "preset": params.get("preset", ""), "error": T.read(tags, T.ERROR, "")}
            for k, v in params.items():
                if k not in ("method", "preset"):
                    row[k] = _parse_param(v)
                    if k not in param_names:
                        param_names.append(k)
            row.update(run.data.metrics)
            rows.append(row)
        token = page.token
        if not token:
            break
    df = pd.DataFrame(rows)
    if not df.empty:
        # Trial order = the order they started in (Tune's trial ids are random, not sequential).
        df = df.sort_values(["started_ms", "trial_id"], kind="stable").reset_index(drop=True)
    return df, param_names


def build_from_mlflow(client: Any, parent_run_id: str, out_dir: str | None, tracking_uri: str = "",
                      experiment_id: str | None = None) -> Report:
    """Read a sweep back from MLflow, select its front, and (if `out_dir`) write CSVs and the PNG."""
    parent = client.get_run(parent_run_id)
    experiment_id = experiment_id or parent.info.experiment_id
    tags = parent.data.tags
    try:
        sweep = json.loads(tags[T.SWEEP])
        bases = json.loads(tags[T.BASE])
    except (KeyError, ValueError):
        raise SweepError(f"run {parent_run_id} is not a TinyMem sweep parent run (no tinymem.sweep/base tags)"
                         ) from None
    df, param_names = runs_dataframe(client, experiment_id, parent_run_id)
    searched = sweep.get("searched")
    if searched:  # the table shows what was searched; the CSV of all trials keeps every hyperparameter
        param_names = [p for p in param_names if p in searched] + [p for p in param_names if p not in searched]
    kind = sweep["kind"]
    objectives = list(sweep.get("objectives") or [MEM, utility_loss_name(kind)])
    if not df.empty:  # every trial a row of source `trial`, then the anytime candidates of their runs
        df = pd.concat([df.assign(**{SOURCE: TRIAL}), candidate_rows(client, df, param_names, objectives)],
                       ignore_index=True)
    for col in dict.fromkeys([MEM, utility_loss_name(kind), *objectives]):
        if not df.empty and col not in df.columns:
            df[col] = math.nan
    max_loss = sweep.get("max_utility_loss")  # absent before constraints: none
    annotated, best = select(df, bases, kind, objectives, max_loss) if not df.empty else (
        df.assign(pareto=[], paper_score=[]), None)
    rep = Report(trials=annotated, param_names=param_names, kind=kind, searched=searched, bases=bases, best_index=best,
                 experiment_id=experiment_id, parent_run_id=parent_run_id, tracking_uri=tracking_uri,
                 objective_names=objectives, max_loss=max_loss)
    if out_dir:
        rep.write(out_dir)
    return rep


def latest_parent_run(client: Any, experiment: str) -> tuple[str, str]:
    """(experiment id, run id) of the most recent sweep parent run of an MLflow experiment."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise SweepError(f"no MLflow experiment {experiment!r}; allowed: {names}")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.\"{T.ROLE}\" = 'sweep'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise SweepError(f"MLflow experiment {experiment!r} has no sweep parent run")
    return exp.experiment_id, runs[0].info.run_id

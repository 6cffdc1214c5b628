"""Sweeps: Ray Tune + Optuna + MLflow + pandas around `tinymem.trial.run_trial`.

`python sweeps/run.py --method NAME` is the entry point. The modules, in the order data flows through them:

- `space`: search-space YAML files (`search_spaces/<method>.yaml`) -> validated distributions and grids.
- `engine`: the Ray Tune experiment (base models made once as Ray tasks, the trainable, OptunaSearch with
  several objectives or the paper's grid, ASHA, retries, resume).
- `tracking`: MLflow parent run per sweep, child run per trial, run ids kept on disk for resume.
- `pareto`: the non-dominated set and the paper's scalar selection rule (pandas).
- `report`: table, CSV and PNG, from a finished sweep or from MLflow alone.

This package may import tinymem; tinymem never imports it.
"""

from sweeps.errors import SweepError

__all__ = ["SweepError"]

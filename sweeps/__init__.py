"""Sweeps: Ray Tune + Optuna + MLflow + pandas around `tinymem.trial.run_trial`.

`python sweeps/run.py --method NAME` is the entry point. One idea per module, in the order data flows:

- `options`: `SweepOptions`, the flags and their allowed values (no Ray, Optuna, MLflow or torch: `--help` and a
  bad flag are answered fast).
- `yaml_file`, `space_file`, `space`: a strict YAML reader (no aliases, tags or duplicate keys); search-space
  files -> validated distributions and grids; a sweep's joint space.
- `plan`: every input check, before Ray starts; `--resume` rebuilds the plan from the sweep record.
- `ray_runtime`, `bases`: the Ray runtime (and `--gpus-per-trial auto`); base models made once as Ray tasks.
- `objectives`: what the front and the sampler minimise (`--objectives`), and the robustness metrics they need.
- `trainable`, `searchers`, `progress`: one trial; Optuna on the objectives or the paper's grid; bar or lines.
- `study`, `samplers`: the Optuna study in a journal file or an RDB storage (reloaded on resume, the utility
  constraint told) and the samplers by name with their space-filling (Sobol) start-up points.
- `engine`, `finish`: `run_sweep`, the Ray Tune experiment and the MLflow parent run; the end of a sweep.
- `tracking`, `tracking_uri`, `tags`, `inputs`: the Tune callback that records every trial event; the tracking
  URI's default and checks (planning imports no Ray or MLflow); the tag names (`tinymem.*`, MLflow's system
  tags); the base models' data as run inputs.
- `ledger`: every trial event appended to a journal, what MLflow is written from and `--resume` settles from.
- `mlflow_io`, `mlflow_sync`, `sync_process`: MLflow's calls; the ledger applied to MLflow (child run per
  trial, idempotent replay, recovery); the writer process that does it apart from the driver, through outages.
- `pareto`, `results`, `plots`, `readback`, `report`: the front and the paper's rule; table, CSV and PNG from MLflow
  (`report --sync`: what waited for an unreachable MLflow).
- `storage`, `checkpoints`: files under the storage root (a path or an object store); resume files of trials.

This package may import tinymem; tinymem never imports it.
"""

from sweeps.errors import SweepError

__all__ = ["SweepError"]

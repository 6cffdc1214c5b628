"""The end of a sweep, once MLflow holds all its trials: the report, the front's tags, the kept models, the parent
run closed. One place, because two commands end a sweep: the driver after its last trial, and
`sweeps/report.py --sync` for a sweep whose trials were still waiting for an unreachable MLflow when it ended.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sweeps import storage
from sweeps import tags as T
from sweeps.candidates import grid_points
from sweeps.models import keep_models
from sweeps.options import DEFAULT_NUM_SAMPLES, SWEEP_RECORD
from sweeps.plan import SweepPlan
from sweeps.mlflow_io import log_metrics, set_tags

@dataclass
class Finished:
    report: Any  # sweeps.results.Report
    kept: dict[str, dict]
    interrupted: bool
    budget_ended: bool = False  # its time budget ended it before its last trial: finished, not interrupted


def sweep_total(plan: SweepPlan) -> int:
    """How many trials the sweep asks for: the grid's points, or the sample budget."""
    o = plan.options
    if o.grid:
        return len(grid_points(plan))
    return o.num_samples or DEFAULT_NUM_SAMPLES


def pending_message(plan: SweepPlan, summary: dict[str, Any]) -> str:
    n = summary.get("unsynced")
    return (f"MLflow at {plan.tracking_uri} was unreachable until the end: {'' if n is None else n} trial event(s) "
            f"wait in {plan.sweep_dir}/trials.jsonl (nothing is lost); write them once it is back with  "
            f"python sweeps/report.py --sync --experiment {plan.experiment} --sweep-id {plan.sweep_id} "
            f"--storage {plan.storage}  (or resume the sweep with --resume)")


def finish_sweep(plan: SweepPlan, client: Any, experiment_id: str, parent: str, total: int,
                 wall_seconds: float | None, say: Callable[[str], None], budget: float | None = None) -> Finished:
    """Read the sweep back from MLflow, tag its front, keep its models, close its parent run (`wall_seconds`:
    the driver's, logged on the parent; None when another command ends the sweep). `budget`: the time budget
    (seconds) that ran out; a sweep it ended with trials still to run is finished, said in the report."""
    from sweeps.readback import build_from_mlflow

    rep = build_from_mlflow(client, parent, out_dir=plan.sweep_dir, tracking_uri=plan.tracking_uri,
                            experiment_id=experiment_id)
    rep.publish(client, parent)
    kept = keep_models(plan.sweep_dir, plan.options.keep_models, rep, client, say)
    c = rep.counts
    interrupted = c["completed"] + c["failed"] + c["early_stopped"] < total
    budget_ended = interrupted and budget is not None
    if budget_ended:
        interrupted = False
        rep.notes.insert(0, f"time budget {budget:.0f} s (--time-budget) reached: {c['trials']} of {total} trial(s) "
                            f"ran; the ones running then stopped at their last result and count as early-stopped, "
                            f"their checkpoints stay candidates")
        set_tags(client, parent, {T.TIME_BUDGET: f"{budget:g}"})
        # Tune has ended its search (a restore would start nothing): `--resume` refuses it, naming why.
        path = storage.join(plan.sweep_dir, SWEEP_RECORD)
        storage.write_json(path, {**(storage.read_json(path) or {}), "ended_by_budget": budget})
    if interrupted:
        set_tags(client, parent, {T.STATE: "interrupted"})
        client.set_terminated(parent, status="KILLED")
    else:
        set_tags(client, parent, {T.STATE: "finished"})
        wall = {} if wall_seconds is None else {"wall_seconds": wall_seconds}
        log_metrics(client, parent, {"trials": c["trials"], "completed": c["completed"], "failed": c["failed"],
                                     "early_stopped": c["early_stopped"], **wall})
        client.set_terminated(parent, status="FINISHED")
    return Finished(rep, kept, interrupted, budget_ended)

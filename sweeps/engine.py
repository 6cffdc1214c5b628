"""The sweep engine: `run_sweep` runs a planned sweep as a Ray Tune experiment and logs it to one MLflow parent run.

Order of work (every check that can fail on bad input has run in `sweeps.plan` before any Ray or MLflow
side effect that costs time, and before any trial):

1. `sweeps.ray_runtime`: join `--address` or start a local runtime bound to 127.0.0.1 (or reuse one already
   up); `--gpus-per-trial auto` is sized from the model and a GPU of the cluster; a trial must fit a node.
2. `sweeps.bases`: each base model is made (or found) once, as a Ray task, and evaluated once.
3. MLflow: the experiment and the sweep's parent run (here; child runs: `sweeps.tracking`).
4. Ray Tune: the trainable of `sweeps.trainable`, a searcher of `sweeps.searchers`, per-trial resources,
   `reuse_actors`, `FailureConfig` retries, storage under the root so `--resume` restores with `Tuner.restore`.
5. `sweeps.sync_process`: MLflow is written by a process of its own from the trial ledger; after the last trial
   the driver waits for it (`--sync-wait`); if MLflow is still unreachable then, `TrackingPending` says how to
   finish later.
6. `sweeps.finish`: trials read back from MLflow, Pareto front, CSV, PNG, tags, kept models, parent closed.
7. `sweeps.models`: the kept models registered on request.

A trial that fails deterministically is recorded as failed and not retried; any other exception is retried
`max_failures` times (a lost node, an OOM under GPU packing) and then recorded as failed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sweeps import storage
from sweeps import tags as T
from sweeps.bases import prepare_bases
from sweeps.candidates import anytime_mode, grid_points
from sweeps.inputs import dataset_specs, log_data_inputs
from sweeps.ledger import TrialLedger
from sweeps.errors import TrackingPending
from sweeps.finish import finish_sweep, pending_message, sweep_total
from sweeps.models import detail_lines, model_details, register_model, with_details
from sweeps.options import ASHA_GUARD, AUTO, SWEEP_RECORD, resolve_time_budget
from sweeps.plan import SweepPlan
from sweeps.progress import ProgressLines
from sweeps.ray_runtime import check_trial_fits, connect_ray, resolve_auto_gpus
# ParetoOptunaSearch is named here because experiments that Tune pickled before sweeps/searchers.py existed
# refer to it as sweeps.engine.ParetoOptunaSearch (as to GridSearcher, ProgressLines): --resume unpickles them.
from sweeps.budget import budget_spent, sweep_stop
from sweeps.searchers import GridSearcher, ParetoOptunaSearch, make_searcher  # noqa: F401
from sweeps.mlflow_io import ensure_experiment, log_metrics, log_params, mlflow_client, set_tags
from sweeps.tracking import TrialLogger
from sweeps.trainable import TrialStatic, extra_method_modules, sweep_trainable


@dataclass
class SweepOutcome:
    """What `run_sweep` returns; `to_json()` is the `--json` object."""

    plan: SweepPlan
    experiment_id: str
    parent_run_id: str
    bases: dict[str, dict[str, Any]]
    report: Any  # sweeps.results.Report
    interrupted: bool
    wall_seconds: float
    ray_start_seconds: float
    budget_ended: bool = False  # its --time-budget ended it with trials still to run
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # front + pick: model_dir, model_id, command
    registered: dict[str, Any] | None = None  # the Model Registry version that --register-model made

    def to_json(self) -> dict[str, Any]:
        rep = self.report
        bases = {p: b["metrics"] for p, b in self.bases.items()}
        return {
            "experiment": self.plan.experiment,
            "sweep_id": self.plan.sweep_id,
            "mlflow_experiment_id": self.experiment_id,
            "mlflow_parent_run_id": self.parent_run_id,
            "tracking_uri": self.plan.tracking_uri,
            "trials": rep.counts["trials"],
            "completed": rep.counts["completed"],
            "failed": rep.counts["failed"],
            "early_stopped": rep.counts["early_stopped"],
            "interrupted": self.interrupted,
            "time_budget_ended": self.budget_ended,
            "objectives": self.plan.objectives,
            "base": bases[self.plan.space.presets[0]] if len(bases) == 1 else bases,
            "pareto": [with_details(r, self.models) for r in rep.pareto_records()],
            "best_paper_rule": with_details(rep.best_record(), self.models),
            "registered_model": self.registered,
            "pareto_csv": rep.csv_path,
            "pareto_png": rep.png_path,
            "trials_csv": rep.trials_csv_path,
            "wall_seconds": self.wall_seconds,
            "ray_start_seconds": self.ray_start_seconds,
            "mlflow_ui": rep.ui_hint,
            "optuna_storage": None if self.plan.options.grid else self.plan.study_storage,
            "optuna_study": None if self.plan.options.grid else self.plan.study_name,
        }


def sweep_record(plan: SweepPlan, experiment_id: str | None, parent_run_id: str | None,
                 bases: dict[str, Any]) -> dict[str, Any]:
    """The sweep record (`sweep.json` in the sweep directory): what `--resume` rebuilds the plan from. Written
    before the base models are made (no MLflow ids, no bases yet: a resume then starts the sweep over under its
    id), and again once the parent run exists."""
    opts = asdict(plan.options)
    opts.pop("resume", None)
    return {"experiment": plan.experiment, "sweep_id": plan.sweep_id, "created_unix": time.time(),
            "command": plan.options.command, "options": opts, "space": plan.space.to_dict(), "kinds": plan.kinds,
            "objectives": plan.objectives, "tracking_uri": plan.tracking_uri, "mlflow_experiment_id": experiment_id,
            "mlflow_parent_run_id": parent_run_id, "ray_experiment_path": plan.ray_path,
            "bases": {p: {k: v for k, v in b.items() if k != "model_dir"} for p, b in bases.items()}}


def _start_parent(plan: SweepPlan, client: Any, experiment_id: str, bases: dict[str, Any],
                  system_tags: dict[str, str], inputs: dict[str, list[dict[str, Any]]]) -> str:
    """Create the sweep's parent run and log what defines the sweep (its base models' data as inputs)."""
    import yaml

    o = plan.options
    run = client.create_run(experiment_id, run_name=f"sweep-{plan.sweep_id}",
                            tags={**system_tags, T.ROLE: "sweep", T.SWEEP_ID: plan.sweep_id, T.STATE: "running"})
    rid = run.info.run_id
    log_data_inputs(client, rid, [spec for specs in inputs.values() for spec in specs])
    log_params(client, rid, {
        "method": ",".join(plan.space.methods), "preset": ",".join(plan.space.presets),
        "sampler": f"grid:{o.grid}" if o.grid else o.sampler, "scheduler": o.scheduler,
        "num_samples": o.num_samples, "max_concurrent": o.max_concurrent, "cpus_per_trial": o.cpus_per_trial,
        "gpus_per_trial": o.gpus_per_trial, "seed": o.seed, "storage": plan.storage,
        "objectives": ",".join(plan.objectives), "task": plan.kind, "ray_address": o.address or "local",
        "command": o.command})
    set_tags(client, rid, {
        "mlflow.note.content": f"TinyMem sweep `{plan.experiment}` / `{plan.sweep_id}`\n\n    {o.command}\n",
        T.SWEEP: {"kind": plan.kind, "objectives": plan.objectives, "methods": plan.space.methods,
                          "presets": plan.space.presets, "max_utility_loss": plan.max_loss,
                          "searched": sorted({n for sp in plan.space.spaces.values()
                                              for n in (list(sp.params) + list(sp.paper_grid))})},
        T.BASE: {p: b["metrics"] for p, b in bases.items()},
        T.BASE_KEYS: {p: b["key"] for p, b in bases.items()},
    })
    for preset, b in bases.items():
        prefix = "base_" if len(bases) == 1 else f"base_{preset}_"
        log_metrics(client, rid, {f"{prefix}{k}": v for k, v in b["metrics"].items()})
    local = storage.local_dir(plan.sweep_dir)
    (local / "search_space.yaml").write_text(yaml.safe_dump(plan.space.to_dict(), sort_keys=False))
    client.log_artifact(rid, str(local / "search_space.yaml"))
    return rid


def _artifact_location(plan: SweepPlan) -> str | None:
    """Artifacts beside the SQLite file under the storage root (MLflow's default would be ./mlruns in
    whatever directory the sweep was started from). A tracking server chooses its own."""
    if plan.tracking_uri.startswith("sqlite:"):
        return storage.join(plan.storage, "mlartifacts", plan.experiment) if storage.is_remote(plan.storage) \
            else "file://" + storage.join(plan.storage, "mlartifacts", plan.experiment)
    return None


def run_sweep(plan: SweepPlan, say: Callable[[str], None] = print, stream: str = "stdout",
              trainable_fn: Callable[[dict[str, Any], TrialStatic], None] | None = None,
              began: float | None = None) -> SweepOutcome:
    """Run (or resume) a planned sweep to the end and build its report.

    `say` prints the sweep's own lines; `stream` (stdout | stderr | none) is where per-trial lines go.
    `trainable_fn` replaces `sweep_trainable` (same signature and reports), e.g. the synthetic trial of
    `bench/scale_sim.py`, which measures the engine's own overhead; everything else runs unchanged.
    `began`: when the command started (unix time), which the time budget counts from; None: now.
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from sweeps import checkpoints
    from sweeps.sync_process import close_writer

    t_start = time.time()
    o = plan.options
    _quiet_libraries()
    # Per-epoch results lack the objectives (the final report has them): Tune's strict check would fail them.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    t0 = time.time()
    started = connect_ray(o.address)
    ray_start = time.time() - t0
    if started:
        say(f"Ray: {'joined ' + o.address if o.address else 'local runtime on 127.0.0.1'} ({ray_start:.1f} s)")
    try:
        if o.gpus_per_trial == AUTO:
            resolve_auto_gpus(o, say)
        check_trial_fits(o, say)
        client = mlflow_client(plan.tracking_uri)
        system = T.system_tags()  # once, on the driver: who ran it, from which script and commit
        record_path = storage.join(plan.sweep_dir, SWEEP_RECORD)
        if plan.resumed and plan.record.get("mlflow_parent_run_id"):
            bases = plan.record["bases"]
            experiment_id = plan.record["mlflow_experiment_id"]
            parent_run_id = plan.record["mlflow_parent_run_id"]
            inputs = dataset_specs(bases, plan.storage, o.source)  # none if the record predates run inputs
            client.update_run(parent_run_id, status="RUNNING")
            set_tags(client, parent_run_id, {T.STATE: "running", T.RESUMED: str(int(time.time()))})
            # The base models may be gone from a fresh cluster's local disks; make sure (cheap if present).
            prepare_bases(plan, say, stream)
            say(f"resuming sweep {plan.sweep_id} of {plan.experiment} (MLflow parent run {parent_run_id})")
        else:
            if not plan.resumed:  # recorded first: a sweep whose driver dies while making base models resumes too
                storage.write_json(record_path, sweep_record(plan, None, None, {}))
            bases = prepare_bases(plan, say, stream)
            inputs = dataset_specs(bases, plan.storage, o.source)
            experiment_id = ensure_experiment(client, plan.experiment, _artifact_location(plan))
            if plan.resumed:  # a parent run that a dead driver made but never recorded: replaced
                for run in client.search_runs([experiment_id], f"tags.\"{T.SWEEP_ID}\" = '{plan.sweep_id}'"):
                    client.delete_run(run.info.run_id)
            parent_run_id = _start_parent(plan, client, experiment_id, bases, system, inputs)
            storage.write_json(record_path, sweep_record(plan, experiment_id, parent_run_id, bases))

        static = TrialStatic(space=plan.space, storage=plan.storage, device=o.device, seed=o.seed,
                             cpus=o.cpus_per_trial, kinds=plan.kinds,
                             method_modules=extra_method_modules(plan.space.methods), source=o.source,
                             repeats=o.repeats, heldout_frac=o.heldout_frac,
                             checkpoint_work_dir=checkpoints.work_dir_is_node_local(plan.storage),
                             models_dir=storage.join(plan.sweep_dir, "models") if o.keep_models != "none" else None,
                             objectives=tuple(plan.objectives), robustness=plan.goals.robustness,
                             anytime=anytime_mode(o),
                             finished=TrialLedger(plan.sweep_dir).finished_results() if plan.resumed else {})
        resources = {"cpu": o.cpus_per_trial, "gpu": o.gpus_per_trial}
        trainable = tune.with_resources(tune.with_parameters(trainable_fn or sweep_trainable, static=static), resources)

        total = sweep_total(plan)
        logger = TrialLogger(plan.tracking_uri, experiment_id, parent_run_id, plan.sweep_dir, plan.space,
                             plan.loss_name, system_tags=system, data_inputs=inputs)
        budget, t_budget = resolve_time_budget(o), began or t_start  # `sweeps.budget.Deadline` counts from it
        callbacks = [logger, ProgressLines(plan.space, plan.objectives, total, stream, ledger_dir=plan.sweep_dir,
                                           deadline=None if budget is None else t_budget + budget)]
        if plan.resumed and tune.Tuner.can_restore(plan.ray_path):
            t_budget, search_alg = time.time(), None  # the restored Deadline counts again from its unpickling
            # Our callbacks come back unpickled from the experiment: they keep no state beyond files.
            tuner = tune.Tuner.restore(plan.ray_path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
        else:
            search_alg = GridSearcher(grid_points(plan), ledger_dir=plan.sweep_dir) if o.grid else \
                make_searcher(plan, total)
            scheduler = None
            if o.scheduler == "asha":
                scheduler = ASHAScheduler(time_attr="epoch", metric=ASHA_GUARD, mode="min",
                                          max_t=plan.space.max_epochs() or 100, grace_period=1,
                                          reduction_factor=3, stop_last_trials=False)
            stop = sweep_stop(plan, bases[plan.space.presets[0]]["metrics"] if len(plan.space.presets) == 1
                              else None, t_budget)
            tune_config = tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=total,
                                          max_concurrent_trials=o.max_concurrent,
                                          reuse_actors=True)
            # A metric/mode here would silently make the multi-objective study single-objective.
            assert tune_config.metric is None and tune_config.mode is None, "TuneConfig must not set metric/mode"
            run_config = tune.RunConfig(
                name=plan.sweep_id, storage_path=plan.ray_parent, callbacks=callbacks, verbose=0, stop=stop,
                failure_config=tune.FailureConfig(max_failures=o.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
            tuner = tune.Tuner(trainable, param_space={}, tune_config=tune_config, run_config=run_config)
        say(f"sweep {plan.experiment}/{plan.sweep_id}: {total} trial(s) of {plan.space.methods} on "
            f"{plan.space.presets}, {'paper grid' if o.grid else o.sampler}, objectives {plan.objectives}")
        for note in plan.goals.notes:
            say(note)
        if not o.grid:
            say(f"Optuna study {plan.study_name} in {plan.study_storage}")
        logger.open()  # the MLflow writer: first what a dead driver or an outage left
        tuner.fit()  # on Ctrl-C, Tune saves its state and returns: the report below covers what finished
        # A resume of a sweep its budget ended (only to --register-model) ends as that sweep did.
        spent = budget_spent(budget, t_budget, logger, search_alg) or plan.record.get("ended_by_budget")
        summary = logger.close(o.sync_wait)
        if not summary.get("complete"):
            raise TrackingPending(pending_message(plan, summary))

        done = finish_sweep(plan, client, experiment_id, parent_run_id, total, time.time() - t_start, say, spent)
        rep, kept, interrupted = done.report, done.kept, done.interrupted
        registered = register_model(o.register_model, rep, kept, client, plan.tracking_uri) \
            if o.register_model else None
        models = model_details(client, rep, plan.storage)
        rep.notes.extend(detail_lines(models, registered))
        if not o.grid:
            rep.notes.append(f"Optuna: optuna-dashboard {plan.study_storage}   (study {plan.study_name})")
        return SweepOutcome(plan=plan, experiment_id=experiment_id, parent_run_id=parent_run_id, bases=bases,
                            report=rep, interrupted=interrupted, budget_ended=done.budget_ended,
                            wall_seconds=time.time() - t_start,
                            ray_start_seconds=ray_start, models=models, registered=registered)
    finally:
        close_writer(plan.sweep_dir, 10.0)  # after an error: what the writer has not written waits on disk
        if started:
            ray.shutdown()


def _quiet_libraries() -> None:
    """Keep the terminal for our own lines: MLflow's table-migration notes, Optuna's 'new study' and Tune's
    configuration box say nothing a user needs here (MLflow and the report keep everything)."""
    import optuna

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)

"""Kept models of a sweep: which trials' model directories stay, their MLflow logged models and registry versions,
and the `tinymem mitigate` command that rebuilds each member of the front.

Each trial saves its mitigated model to `<sweep dir>/models/<trial id>/` (`sweeps.trainable.ModelSaver`) and
reports the config that rebuilds it; `TrialLogger` stores that config in the trial's child run (tag
`tinymem.trial_config`), so `tinymem mitigate --from-run RUN_ID` can rebuild any trial, kept or not. After the
sweep, `keep_models` deletes the directories not asked for (`--keep-models pareto`: the front and the paper
rule's pick; `all`: every completed trial), logs each kept one to its run as an MLflow logged model (tags
`tinymem.model_dir`, `tinymem.model_id` on the run), and `register_model` makes a Model Registry version of one.
Everything is read back from MLflow (`model_details`), so `sweeps/report.py` shows the same as the sweep.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from typing import Any

from sweeps import storage
from sweeps import tags as T
from sweeps.errors import SweepError
from sweeps.options import parse_register
from sweeps.mlflow_io import set_tags
from tinymem.card import mitigate_command

MODELS = "models"  # under the sweep directory: one model directory per kept trial
MODEL_TYPE = "tinymem-mitigated"
COMPLETE = "tinymem.json"  # written last into a model directory: marks it complete


def kept_trials(rep: Any, keep: str, candidates: bool = False) -> list[str]:
    """Trial ids whose models stay: the front and the paper rule's pick (pareto), every completed trial (all).
    An anytime candidate of the front has no model directory (its run went on); `candidates` includes them."""
    if keep == "none" or rep.trials.empty:
        return []
    trials = rep.trials if candidates else rep.trial_rows
    if keep == "all":
        ids = list(trials.loc[trials["state"] == "completed", "trial_id"])
    else:
        ids = [t for t in rep.front["trial_id"] if t in set(trials["trial_id"])]
        if rep.best_index is not None and rep.best_index in trials.index:
            ids.append(rep.trials.loc[rep.best_index, "trial_id"])
    return list(dict.fromkeys(ids))


def keep_models(sweep_dir: str, keep: str, rep: Any, client: Any, say: Callable[[str], None]) -> dict[str, dict]:
    """Delete the model directories of trials not kept, log each kept one as a logged model of its run (once: a
    resumed sweep reuses the model of a run that has one); trial id -> {model_dir, model_id, run_id}."""
    t0 = time.perf_counter()
    root = storage.join(sweep_dir, MODELS)
    present = storage.list_dirs(root)
    wanted = kept_trials(rep, keep)
    run_ids = dict(zip(rep.trials["trial_id"], rep.trials["run_id"])) if not rep.trials.empty else {}
    for trial_id in [t for t in present if t not in wanted]:
        storage.remove_dir(storage.join(root, trial_id))
        if trial_id in run_ids and T.MODEL_DIR in client.get_run(run_ids[trial_id]).data.tags:
            client.delete_tag(run_ids[trial_id], T.MODEL_DIR)  # its logged model stays in MLflow
    kept, missing = {}, []
    for trial_id in wanted:
        target = storage.join(root, trial_id)
        if trial_id not in present or not storage.is_file(storage.join(target, COMPLETE)):
            missing.append(trial_id)
            continue
        run = client.get_run(run_ids[trial_id])
        model_id = run.data.tags.get(T.MODEL_ID) or log_model(client, run, trial_id, target)
        set_tags(client, run.info.run_id, {T.MODEL_DIR: target, T.MODEL_ID: model_id})
        kept[trial_id] = {"model_dir": target, "model_id": model_id, "run_id": run.info.run_id}
    if kept:
        say(f"kept {len(kept)} model(s) (--keep-models {keep}) under {root}, logged to their MLflow runs "
            f"({time.perf_counter() - t0:.1f} s)")
    if missing:
        say(f"no model directory for trial(s) {missing} (the sweep ran them without keeping models); "
            f"`tinymem mitigate --from-run RUN_ID` rebuilds one")
    return kept


def log_model(client: Any, run: Any, trial_id: str, target: str) -> str:
    """Log model directory `target` as an MLflow logged model whose source is `run`; returns its model id."""
    from mlflow.entities import LoggedModelOutput

    params = {k: v for k, v in run.data.params.items() if k not in ("method", "preset")}
    method = run.data.params.get("method", "model")
    model = client.create_logged_model(run.info.experiment_id, name=f"{method}-{trial_id}",
                                       source_run_id=run.info.run_id, params=params, model_type=MODEL_TYPE,
                                       tags={T.TRIAL_ID: trial_id, T.METHOD: method})
    with tempfile.TemporaryDirectory(prefix="tinymem-log-model-") as tmp:
        local = storage.download_dir(target, tmp) if storage.is_remote(target) else target
        try:
            client.log_model_artifacts(model.model_id, str(local))
        except Exception:
            client.finalize_logged_model(model.model_id, "FAILED")
            raise
    client.finalize_logged_model(model.model_id, "READY")
    client.log_outputs(run.info.run_id, [LoggedModelOutput(model.model_id, 0)])
    return model.model_id


def register_model(spec: str, rep: Any, kept: dict[str, dict], client: Any, tracking_uri: str) -> dict[str, Any]:
    """Make a new version of registered model NAME from the paper rule's pick, or from trial TRIAL_ID
    (`NAME:TRIAL_ID`); the trial needs a kept model. Returns {name, version, trial_id, model_id, run_id}."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    name, trial_id = parse_register(spec)
    if trial_id is None:
        if rep.best_index is None:
            raise SweepError(f"--register-model {spec}: the sweep has no completed trial to register")
        trial_id = str(rep.trials.loc[rep.best_index, "trial_id"])
    if trial_id not in kept:
        raise SweepError(f"--register-model {spec}: trial {trial_id!r} has no kept model; allowed: {sorted(kept)} "
                         f"(--keep-models all keeps every completed trial)")
    info = kept[trial_id]
    try:
        client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name)
    # MLflow 3.17's SQL registry resolves a `models:/` source with a default client, i.e. the process-wide
    # tracking URI, not this client's: point it at ours for the call (a tracking server resolves it itself).
    with _use_tracking_uri(tracking_uri):
        version = client.create_model_version(name, source=f"models:/{info['model_id']}", run_id=info["run_id"],
                                              model_id=info["model_id"], tags={T.TRIAL_ID: trial_id})
    return {"name": name, "version": str(version.version), "trial_id": trial_id, "model_id": info["model_id"],
            "run_id": info["run_id"]}


def rebuild_dir(storage_root: str, trial_id: str) -> str:
    """Where a printed rebuild command saves its model: beside the sweeps on a local root (never over the kept
    directory), in the working directory when the root is an object store (models are written locally)."""
    if storage.is_remote(storage_root):
        return f"tinymem-rebuilt/{trial_id}"
    return storage.join(storage_root, "rebuilt", trial_id)


def model_details(client: Any, rep: Any, storage_root: str) -> dict[str, dict[str, Any]]:
    """For the front and the paper rule's pick, from their runs' tags: trial id -> {model_dir, model_id,
    mitigate_command} (None where the sweep kept no model, or ran before configs were stored)."""
    out = {}
    for trial_id in kept_trials(rep, "pareto", candidates=True):
        row = rep.trials.loc[rep.trials["trial_id"] == trial_id].iloc[0]
        tags = client.get_run(row["run_id"]).data.tags
        config = json.loads(tags[T.TRIAL_CONFIG]) if tags.get(T.TRIAL_CONFIG) else None
        if config is not None and row.get("source") == "checkpoint":  # the run with as many epochs as the candidate
            config = {**config, "params": {**config.get("params", {}), "epochs": int(row["epochs"])}}
        command = mitigate_command(config, rebuild_dir(storage_root, trial_id)) if config else None
        own = row.get("source") != "checkpoint"  # a candidate's run holds its trial's model, not the candidate's
        out[trial_id] = {"model_dir": tags.get(T.MODEL_DIR) if own else None,
                         "model_id": tags.get(T.MODEL_ID) if own else None, "mitigate_command": command}
    return out


def with_details(record: dict[str, Any] | None, details: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """A report record (`Report.pareto_records`, `best_record`) with its model directory, id and command."""
    if record is None:
        return None
    return {**record, **details.get(record["trial_id"], {"model_dir": None, "model_id": None,
                                                         "mitigate_command": None})}


def detail_lines(details: dict[str, dict[str, Any]], registered: dict[str, Any] | None = None) -> list[str]:
    """The lines the sweep's summary prints under the front: each member's model and its rebuild command."""
    if not details:
        return []
    lines = ["models of the front (and the paper rule's pick), and the commands that rebuild them:"]
    for trial_id, d in details.items():
        lines.append(f"  {trial_id}: {d['model_dir'] or 'not kept'}")
        if d["mitigate_command"]:
            lines.append(f"    {d['mitigate_command']}")
    if registered:
        lines.append(f"registered: {registered['name']} version {registered['version']} "
                     f"(trial {registered['trial_id']}, model {registered['model_id']})")
    return lines


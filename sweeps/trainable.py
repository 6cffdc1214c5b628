"""The trainable of a sweep: one `run_trial` per trial, with per-epoch reports for ASHA and one final report.

A trial that raises a `TinyMemError` or produces NaN objectives reports itself as failed with its reason and
is not retried (it would fail the same way); any other exception reaches Tune, which retries it.

With `models_dir` set, the trial saves its mitigated model (of the first base-model seed, with `--repeats`) as a
model directory `<models_dir>/<trial id>/` before its final report; after the sweep the driver keeps the ones
asked for (`sweeps.models`). Saving at trial end costs a write of the weights and the data bundle, far less than
rebuilding a model after the sweep, which would rerun the whole trial. The final report also carries
`trial_config`: the config that rebuilds that model (JSON), which the driver stores in the trial's MLflow run.

An anytime trial (`sweeps.candidates.anytime_config`) also evaluates its checkpoints: those per-epoch reports
carry `checkpoint = 1`, the evaluation's metrics and the utility losses against the base model.
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from sweeps import storage
from sweeps.bases import base_config, limit_threads
from sweeps.candidates import anytime_config, is_candidate
from sweeps.pareto import MEM, utility_loss_name, with_losses
from sweeps.space import SweepSpace
from tinymem.errors import TinyMemError
from tinymem.hf.options import HFSourceOptions
from tinymem.mitigations import get_method
from tinymem.repeats import base_seeds, pooled_rates, seed_config, summarize_seeds


@dataclass(frozen=True)
class TrialStatic:
    """What every trial needs besides its sampled config (passed once through Ray's object store)."""

    space: SweepSpace
    storage: str
    device: str
    seed: int
    cpus: float
    kinds: dict[str, str]
    method_modules: tuple[str, ...] = ()
    source: HFSourceOptions = field(default_factory=HFSourceOptions)  # an hf: base model's options
    repeats: int = 1  # base-model seeds each configuration is evaluated on (the mean is the objective)
    heldout_frac: float = 0.0  # share of the unlearning set withheld from the method (heldout_mem_pct)
    # True when the work directory is node-local (object-store --storage): resume files travel in checkpoints.
    checkpoint_work_dir: bool = False
    models_dir: str | None = None  # where each trial saves its model (`<sweep dir>/models`); None: not saved
    objectives: tuple[str, ...] = ()  # () : mem_pct and the utility loss (a TrialStatic pickled before the field)
    robustness: tuple[str, ...] = ()  # robustness metrics each trial computes (`sweeps.objectives`)
    anytime: str = "on"  # candidates: on | grid (--grid paper-anytime) | off (--no-anytime); sweeps.candidates
    # trial id -> final result of the trials the ledger has as finished (a resume): re-reported, never rerun.
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)


def extra_method_modules(methods: list[str]) -> tuple[str, ...]:
    """Modules of swept methods that live outside `tinymem.mitigations` (a notebook's or a test's own method):
    workers import them before the trial so the registry knows the method. They must be importable there
    (installed, or under the driver's working directory, which Ray puts on the workers' path)."""
    mods = {get_method(m).__module__ for m in methods}
    return tuple(sorted(m for m in mods if not m.startswith("tinymem.mitigations")))


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def sweep_trainable(config: dict[str, Any], static: TrialStatic) -> None:
    """One trial: `run_trial` with the sampled hyperparameters; per-epoch reports, then one final report.

    Final report keys: every metric of `tinymem.metrics` (after the edit), the utility loss on `val` (the
    objective: `val_acc_drop` or `val_ppl_increase_pct`) and on `test`, `seconds_<phase>`, `info_<key>`,
    `final=1`, `failed`. With `repeats` > 1 each is the mean over base-model seeds (`summarize_repeats`).
    """
    import ray
    from ray import tune

    from sweeps.checkpoints import ResumeFiles
    from tinymem.trial import run_trial

    done = static.finished.get(tune.get_context().get_trial_id())
    if done is not None:  # it finished before the driver died, after Tune's last save: its result, at once
        tune.report(dict(done))
        return
    limit_threads(static.cpus)
    for module in static.method_modules:  # methods registered outside tinymem.mitigations
        importlib.import_module(module)
    method, preset, params = static.space.decode(config)
    kind = static.kinds[preset]
    loss_name = utility_loss_name(kind)
    objectives = list(static.objectives) or [MEM, loss_name]
    last_epoch = 0
    cpu0 = time.process_time()
    base_metrics: dict[str, float] = {}  # the base model's, for the utility losses of anytime candidates
    # Where the trial runs, in every result (Ray adds `hostname` and `node_ip`); the MLflow run is tagged with it.
    node_id = ray.get_runtime_context().get_node_id()

    # A retry on another node finds nothing in a node-local work dir: carry the resume files in checkpoints.
    resume = ResumeFiles() if static.checkpoint_work_dir else None

    def report(row: dict[str, Any]) -> None:
        if resume is None:
            tune.report(row)
            return
        # Holds the epoch just written; the final report's (empty) one replaces it, so nothing stays in the bucket.
        with resume.checkpoint() as checkpoint:
            tune.report(row, checkpoint=checkpoint)

    def on_epoch(metrics: dict[str, float]) -> None:
        nonlocal last_epoch
        last_epoch = int(metrics.get("epoch", last_epoch + 1))
        row = _numeric(metrics)
        if is_candidate(row):  # a configuration of its own (`sweeps.candidates`): scored like a final result
            row = with_losses(row, base_metrics, kind)
        # The CPU spent so far: what an early-stopped trial cost, since it never sends a final result.
        report({**row, "epoch": last_epoch, "final": 0, "seconds_cpu": time.process_time() - cpu0,
                "ray_node_id": node_id})

    trial_config = {"method": method, "params": params, **base_config(preset, static.source),
                    "storage": static.storage, "device": static.device, "seed": static.seed}
    if static.heldout_frac:
        trial_config["heldout_frac"] = static.heldout_frac
    if static.robustness:
        trial_config["robustness"] = list(static.robustness)
    seeds = base_seeds(trial_config, static.repeats) if static.repeats > 1 else []
    configs = [seed_config(trial_config, s) for s in seeds] or [trial_config]
    # Resume files are this trial's: its retry resumes, another trial of the same configuration (a rerun sweep
    # at the same seed) starts at epoch 0 and evaluates every checkpoint. Not in `trial_config`, which
    # rebuilds the kept model.
    scope = {"resume_scope": tune.get_context().get_trial_id()}
    # Not in `trial_config`: that one rebuilds the trial's model, which needs no candidates.
    anytime = anytime_config(static.space, method, static.repeats, objectives, static.anytime)
    results = []
    saving = ModelSaver(static.models_dir, tune.get_context().get_trial_id())
    try:
        for i, config in enumerate(configs):
            # Per-epoch reports (and resume files) from the first base model only: one epoch axis per trial;
            # the first base model's mitigated model is the one kept.
            first = i == 0
            extra = {**saving.out_config(), **anytime} if first else {}
            results.append(run_trial({**config, **scope, **extra},
                                     callback=on_epoch if first else None,
                                     on_work_dir=resume.restore if resume and first else None,
                                     on_base=base_metrics.update if first else None))
        upload_seconds = saving.publish()
    except (TinyMemError, FloatingPointError) as e:
        saving.discard()
        # Deterministic failures (bad value, NaN): record and move on; a retry would fail the same way.
        tune.report({"final": 1, "failed": 1, "error": f"{type(e).__name__}: {e}", "epoch": last_epoch,
                     **{k: math.nan for k in objectives}, "seconds_cpu": time.process_time() - cpu0,
                     "ray_node_id": node_id})
        return
    per_seed = [trial_metrics(r, kind) for r in results]
    final: dict[str, Any] = per_seed[0] if not seeds else summarize_repeats(per_seed, seeds)
    # CPU time of the trial's process (all its threads): on a shared machine wall time says little about cost.
    final["seconds_cpu"] = time.process_time() - cpu0
    if upload_seconds is not None:
        final["seconds_upload"] = upload_seconds
    # What rebuilds the kept model (`tinymem mitigate --from-run`): its config with every hyperparameter.
    final["trial_config"] = json.dumps({**configs[0], "params": results[0].params})
    final.update({"epoch": last_epoch, "final": 1, "failed": 0, "ray_node_id": node_id})
    # NaN/inf in an objective or a core utility metric means a broken model: a failed trial, not a front point.
    bad = [k for k in dict.fromkeys([*objectives, "test_acc", "test_ppl"])
           if k in final or k in objectives
           if not math.isfinite(final.get(k, math.nan))]
    if bad:
        final.update({"failed": 1, "error": f"FloatingPointError: metrics {bad} are not finite (NaN/inf) "
                                             f"after {method}: the mitigated model is broken"})
    report(final)


class ModelSaver:
    """Where a trial saves its model: `<models_dir>/<trial id>/` directly on a local root; on an object store, a
    local temporary directory first, uploaded by `publish` (`run_trial` writes local files)."""

    def __init__(self, models_dir: str | None, trial_id: str):
        self.target = storage.join(models_dir, trial_id) if models_dir else None
        self.local: str | None = None
        if self.target is not None:
            self.local = tempfile.mkdtemp(prefix=f"tinymem-model-{trial_id}-") \
                if storage.is_remote(self.target) else self.target

    def out_config(self) -> dict[str, Any]:
        """The trial-config part that makes `run_trial` save the model (empty when models are not kept)."""
        return {"out_dir": self.local} if self.local else {}

    def discard(self) -> None:
        """Drop a local temporary directory of a failed trial (a local root's directory is pruned by the driver)."""
        if self.local and self.local != self.target:
            shutil.rmtree(self.local, ignore_errors=True)

    def publish(self) -> float | None:
        """Upload the saved directory to an object-store target (seconds it took), else nothing (None)."""
        if self.target is None or self.local == self.target:
            return None
        t0 = time.perf_counter()
        try:
            storage.remove_dir(self.target)  # a retried trial replaces what an earlier attempt left
            storage.upload_dir(self.local, self.target)
        finally:
            shutil.rmtree(self.local, ignore_errors=True)
        return time.perf_counter() - t0


def trial_metrics(result: Any, kind: str) -> dict[str, float]:
    """What one `run_trial` result reports: the metrics after the edit, the utility loss on the selection split
    (an objective) and on the reported split, `seconds_<phase>` and `info_<key>`."""
    out: dict[str, float] = with_losses(_numeric(result.after), result.before, kind)
    out.update({f"seconds_{k}": float(v) for k, v in result.seconds.items()})
    out.update({f"info_{k}": v for k, v in _numeric(result.info).items()})
    return out


def summarize_repeats(per_seed: list[dict[str, float]], seeds: list[int]) -> dict[str, float]:
    """One configuration over several base models: every metric as the mean over seeds (what the front and the
    sampler see) with its t-interval and per-seed values; seconds as sums (the configuration's cost);
    memorization intervals over the pooled rows of all seeds."""
    pooled = pooled_rates(per_seed)  # intervals and counts of the rates, over all seeds' rows
    out = summarize_seeds([{k: v for k, v in d.items() if k not in pooled} for d in per_seed], seeds)
    for k in [k for k in per_seed[0] if k.startswith("seconds_")]:
        out[k] = sum(d.get(k, 0.0) for d in per_seed)  # seconds_save: only the kept (first) seed saves
        out.pop(f"{k}_seeds_ci_low", None), out.pop(f"{k}_seeds_ci_high", None)
    out.update(pooled)
    return out

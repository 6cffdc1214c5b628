"""Anytime candidates on the sweep's side: each checkpoint of an anytime trial is a configuration of its own
(`epochs = e`), scored like a trial, told to the Optuna study, and read back from MLflow as a report row.

Which trials make them (`anytime_config`): a method that is `anytime` (`tinymem.mitigations._anytime`) in a
sweep whose space varies `epochs` (a distribution with a range, or a paper grid listing several counts), with
one base-model seed (`--repeats` > 1 reports per-epoch results of the first seed only, which a mean over seeds
would not match) and no robustness objective (a checkpoint is evaluated without robustness metrics).
Checkpoints start at the range's low end, so every candidate is a point of the space; with `epochs` fixed, not
searched or categorical the sweep asks for none (such a space holds no other epoch count).

A candidate's per-epoch result carries `checkpoint = 1`, every metric of the evaluation and the utility losses
against the base model (`pareto.with_losses`, as the final result). It reaches MLflow through the ledger like
any per-epoch result, as metrics at step e of the trial's run (so MLflow's latest value stays the trial's own),
and Optuna as a finished trial keyed `<ray trial id>@e<epoch>` (`candidate_key`): told once, also across a
resume that reruns the epoch.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from sweeps import study as S
from sweeps.errors import SweepError
from sweeps.space import grid_epochs
from tinymem.errors import ConfigError
from tinymem.mitigations import get_method, method_names
from tinymem.robustness import NAMES as ROBUSTNESS

CANDIDATE = "checkpoint"  # the flag of a candidate's per-epoch result, and its MLflow metric
SOURCE = "source"  # report column: "trial" or "checkpoint"
TRIAL, CHECKPOINT = "trial", "checkpoint"


def anytime_config(space: Any, method: str, repeats: int = 1, objectives: tuple[str, ...] | list[str] = (),
                   mode: str = "on") -> dict[str, Any]:
    """The trial-config keys that make a trial of `method` evaluate candidates ({} when it makes none).

    `mode`: "on" (from the low end of the searched `epochs` range, or from a paper grid's smallest count, every
    epoch), "grid" (`--grid paper-anytime`: exactly the grid's other epoch counts) or "off" (`--no-anytime`)."""
    if mode == "off" or repeats > 1 or not get_method(method).anytime or method not in space.spaces:
        return {}
    if any(o in ROBUSTNESS for o in objectives):  # a checkpoint is evaluated without robustness metrics
        return {}
    sp = space.spaces[method]
    dist = sp.params.get("epochs")
    if mode == "grid":  # the grid's own epoch counts, whatever the sampled range would be
        counts = grid_epochs(sp)
        return {"anytime": True, "anytime_at": counts[:-1]} if len(counts) > 1 else {}
    if dist is not None:
        ok = dist.type == "int" and dist.high > dist.low
        return {"anytime": True, "anytime_from": int(dist.low)} if ok else {}
    counts = grid_epochs(sp)
    return {"anytime": True, "anytime_from": counts[0]} if len(counts) > 1 else {}


def points_per_trial(space: Any, repeats: int, objectives: tuple[str, ...] | list[str], mode: str) -> float:
    """About how many points (the trial and its candidates) a trial tells the study: with candidates, 1 plus
    half the epoch range of its method (a trial of e epochs makes e - low of them), else 1; the mean over
    the sweep's methods."""
    counts = []
    for method, sp in space.spaces.items():
        extra = anytime_config(space, method, repeats, objectives, mode)
        dist = sp.params.get("epochs")
        if extra and dist is not None:
            counts.append(1 + (float(dist.high) - float(dist.low)) / 2)
        else:
            counts.append(1 + len(extra.get("anytime_at", ())))
    return sum(counts) / len(counts)


def anytime_mode(opts: Any) -> str:
    """The `mode` of `anytime_config` for a sweep's options (`sweeps.options.SweepOptions`)."""
    if not opts.anytime:
        return "off"
    return "grid" if opts.grid == "paper-anytime" else "on"


def grid_points(plan: Any) -> list[dict[str, Any]]:
    """The grid points a grid sweep (`plan.options.grid`) runs: the paper's, or with `paper-anytime` those at each
    anytime method's largest epoch count; a seeded subset with --num-samples."""
    o = plan.options
    return plan.space.grid_points(limit=o.num_samples, seed=o.seed, anytime=anytime_mode(o) == "grid")


def check_anytime_grid(space: Any, anytime: bool) -> None:
    """`--grid paper-anytime` needs an anytime method whose paper grid lists several epoch counts."""
    if not anytime:
        raise SweepError("--grid paper-anytime takes the grid's epoch counts from anytime checkpoints, which "
                         "--no-anytime turns off; use --grid paper")
    if not any(len(grid_epochs(sp)) > 1 for sp in space.spaces.values()):
        raise SweepError(f"--grid paper-anytime: no method of {space.methods} is anytime with several epoch counts "
                         f"in its paper_grid (anytime methods: {anytime_methods()}); use --grid paper")


def anytime_methods() -> list[str]:
    return [m for m in method_names() if get_method(m).anytime]


def candidate_key(ray_id: str, epoch: int) -> str:
    """The candidate's id: the Optuna user attr `ray_trial_id` of its study trial and its report `trial_id`."""
    return f"{ray_id}@e{int(epoch)}"


def candidate_config(space: Any, config: dict[str, Any], epoch: int) -> dict[str, Any]:
    """The trial's (Ray) config with `epochs = epoch`: the configuration the candidate is."""
    method, _, _ = space.decode(config)
    return {**config, space.key(method, "epochs"): int(epoch)}


def is_candidate(result: dict[str, Any] | None) -> bool:
    return bool(result) and not result.get("final") and result.get(CANDIDATE) == 1


def tell_candidate(study: Any, spec: S.StudySpec, space: Any, ray_id: str, config: dict[str, Any],
                   result: dict[str, Any], run_id: str | None, told: set[str]) -> bool:
    """Add one candidate to the study as a finished trial unless `told` has its key (then updated); whether it
    was added."""
    key = candidate_key(ray_id, int(result["epoch"]))
    if key in told:
        return False
    state, values = S.outcome({**result, "final": 1}, spec.objectives)
    S.add_finished(study, spec, space, key, candidate_config(space, config, int(result["epoch"])), state, values,
                   result, run_id)
    told.add(key)
    return True


def catch_up_candidates(study: Any, spec: S.StudySpec, space: Any, ledger: Any, told: set[str]) -> int:
    """Tell the study every candidate the trial ledger (a `TrialLedger`) holds and it lacks; the count told."""
    n = 0
    for ray_id, entry in ledger.trials.items():
        if "config" not in entry:
            continue
        for event in ledger.history(ray_id):
            result = event.get("epoch_result") if event.get("event") == "result" else None
            if is_candidate(result):
                n += tell_candidate(study, spec, space, ray_id, entry["config"], result, entry.get("run_id"), told)
    return n


def _report_metric(name: str, objectives: list[str]) -> bool:
    """A metric a candidate row needs: an objective or an evaluation metric (memorization, val / test utility)."""
    return name in objectives or name.startswith(("mem_pct", "val_", "test_", "paper_", "heldout_mem_pct"))


def candidate_rows(client: Any, trials: pd.DataFrame, param_names: list[str], objectives: list[str]
                   ) -> pd.DataFrame:
    """The anytime candidates of a sweep's trial rows (`readback.runs_dataframe`), rebuilt from MLflow alone: the
    steps at which a run logged `checkpoint`, each a row with the trial's hyperparameters but `epochs = step` and
    the metrics of that step (the last value logged there: a rerun epoch is one candidate), `source` checkpoint,
    state `completed` (eligible for the front whatever became of the trial after it)."""
    rows = []
    for _, trial in trials.iterrows():
        if not _anytime(str(trial.get("method", ""))):
            continue
        epochs = sorted({int(m.step) for m in client.get_metric_history(trial["run_id"], CANDIDATE)})
        if not epochs:
            continue
        keys = [k for k in trials.columns if _report_metric(str(k), objectives) and pd.notna(trial.get(k))]
        values: dict[int, dict[str, float]] = {e: {} for e in epochs}
        for key in keys:
            for m in sorted(client.get_metric_history(trial["run_id"], key), key=lambda m: m.timestamp):
                if int(m.step) in values:
                    values[int(m.step)][key] = m.value
        for e in epochs:  # the trial's own columns, costs and probes included, do not describe the candidate
            row = {k: trial[k] for k in ("run_id", "started_ms", "method", "preset", *param_names) if k in trial.index}
            row.update({**values[e], "trial_id": candidate_key(trial["trial_id"], e), "epochs": e,
                        "state": "completed", "error": "", SOURCE: CHECKPOINT})
            rows.append(row)
    return pd.DataFrame(rows)


def _anytime(method: str) -> bool:
    try:
        return get_method(method).anytime
    except ConfigError:  # a method registered in a module this process did not import: no candidates to read
        return False

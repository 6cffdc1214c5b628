"""The sweep's time budget (`--time-budget`, `sweeps.budget`): the flag's values and its default, the Tune
stopper, and a real sweep that the budget ends with trials still running: they stop at their last result as
early-stopped trials whose checkpoints stay candidates, the study keeps no trial RUNNING, the sweep is finished."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from sweeps import tags as T
from sweeps.budget import Deadline
from sweeps.candidates import CHECKPOINT
from sweeps.errors import SweepError
from sweeps.ledger import TrialLedger
from sweeps.options import DEFAULT_TIME_BUDGET, SweepOptions, check_flags, parse_time_budget, resolve_time_budget
from sweeps.study import make_storage
from tinymem.mitigations import get_method
from tinymem.mitigations._anytime import checkpoint_epochs
from tinymem.mitigations.base import resume_key
from tinymem.presets import get_preset
from tests.sweeps.conftest import run_cli


@pytest.mark.parametrize("text,seconds", [("540", 540.0), ("540s", 540.0), ("9m", 540.0), ("1.5h", 5400.0),
                                          (" 2M ", 120.0), ("none", "none"), ("OFF", "none"), (None, None)])
def test_time_budget_values(text, seconds):
    assert parse_time_budget(text) == seconds


@pytest.mark.parametrize("text", ["0", "-5", "nan", "inf", "9x", "m", "", "ten minutes"])
def test_a_bad_time_budget_names_the_value_and_what_is_allowed(text):
    with pytest.raises(SweepError) as e:
        check_flags(SweepOptions(method="balanced_subnet", time_budget=text))
    assert repr(text) in str(e.value) and "9m" in str(e.value) and "'none'" in str(e.value)


def test_the_default_budget_is_the_default_sweeps_only():
    """The laptop default (a sampled sweep of the default trial count) gets DEFAULT_TIME_BUDGET; a sweep sized with
    --num-samples, a grid, or `none` runs to its end; a given budget is taken as given."""
    assert resolve_time_budget(SweepOptions(method="m")) == DEFAULT_TIME_BUDGET
    assert resolve_time_budget(SweepOptions(method="m", num_samples=6)) is None
    assert resolve_time_budget(SweepOptions(method="m", grid="paper")) is None
    assert resolve_time_budget(SweepOptions(method="m", time_budget="none")) is None
    assert resolve_time_budget(SweepOptions(method="m", grid="paper", time_budget="2m")) == 120.0


def test_deadline_stops_all_only_after_its_time_and_passes_per_trial_stops_on():
    calls = []
    inner = (lambda trial_id, result: calls.append(trial_id) or result.get("stop", False))
    now = time.time()
    running = Deadline(60.0, now, inner)
    assert not running.stop_all()
    assert running("a", {"stop": True}) and not running("b", {}) and calls == ["a", "b"]
    assert Deadline(60.0, now - 61.0).stop_all() and not Deadline(60.0, now - 61.0)("a", {"stop": True})
    # Tune saves the stopper with its experiment: a resumed sweep gets the budget again, from then.
    restored = pickle.loads(pickle.dumps(Deadline(60.0, now - 61.0)))
    assert not restored.stop_all() and restored.at >= now + 59.0


def test_a_sweep_that_its_budget_ends_keeps_the_cut_trials_checkpoints(ray_runtime, sweep_args, sweep_root, spaces_dir,
                                                                      tracking_uri, tmp_path, capsys):
    """Trials far longer than the budget: the budget stops the running ones at their last checkpoint. The sweep is
    finished (exit 0, not interrupted) with fewer trials than asked; each cut trial is early-stopped in the ledger,
    PRUNED in the study and its checkpoints are report rows; no study trial is left RUNNING; a resume is refused."""
    space = tmp_path / "bs.yaml"  # batch 8 and up to 60 epochs: most trials take far longer than the budget
    space.write_text((spaces_dir / "balanced_subnet.yaml").read_text()
                     .replace("fixed: {}", "fixed: {batch_size: 8}")
                     .replace("epochs: {type: int, low: 1, high: 3}", "epochs: {type: int, low: 1, high: 60}"))
    budget, asked = 40, 8  # the budget counts from the command: planning and the cold start of the actors too
    # The default --keep-models pareto, so that a resume to --register-model is allowed (below).
    args = sweep_args("balanced_subnet", "t-budget", "--num-samples", str(asked), "--time-budget", str(budget))
    args[args.index("--search-space") + 1] = str(space)
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert out["time_budget_ended"] and not out["interrupted"]
    (sweep_dir,) = (Path(sweep_root) / "sweeps" / "t-budget").glob("*/")
    ledger = TrialLedger(str(sweep_dir))
    assert 0 < len(ledger.trials) < asked
    states = {t: e["state"] for t, e in ledger.trials.items()}
    assert set(states.values()) <= {"completed", "early_stopped"}, states
    cut = [t for t, s in states.items() if s == "early_stopped"]
    assert cut and out["early_stopped"] == len(cut)
    rows = pd.read_csv(out["trials_csv"])
    # A trial started just before the budget ran out may have reported nothing: early-stopped without a result.
    reported = [t for t in cut if "epoch_result" in ledger.trials[t]]
    assert reported
    scores = {p.name for p in Path(sweep_root, "cache").glob("*/balanced_subnet/scores-*.pt")}
    base_key = get_preset("math-tiny").key()
    kept = set()
    for trial_id in reported:
        entry = ledger.trials[trial_id]
        epochs = entry["params"]["epochs"]
        last = entry["epoch_result"]["epoch"]
        assert 1 <= last <= epochs  # stopped at its last result (a final one may be in flight)
        # Each epoch it reported that is on its schedule (every epoch of a short run, a geometric set of a long
        # one, never its last: a 1-epoch trial has none) was a checkpoint, and each checkpoint is a report row.
        results = [e["epoch_result"] for e in ledger.history(trial_id) if e.get("event") == "result"]
        scheduled = {int(r["epoch"]) for r in results} & set(checkpoint_epochs(epochs))
        checkpoints = {int(r["epoch"]) for r in results if r.get(CHECKPOINT) == 1}
        assert checkpoints == scheduled, (trial_id, epochs, checkpoints, scheduled)
        kept |= {f"{trial_id}@e{e}" for e in checkpoints}
        # Its resume file is its own (scoped by its trial id): a rerun of this sweep at the same seed, whose
        # first points are these, starts them at epoch 0 instead of resuming them and losing their checkpoints.
        parts = {"method": "balanced_subnet", "params": get_method("balanced_subnet")(entry["params"]).params.to_dict()}
        assert f"scores-{resume_key(parts, base_key, 0, trial_id)}.pt" in scores, (trial_id, scores)
        assert f"scores-{resume_key(parts, base_key, 0)}.pt" not in scores
    assert kept and kept <= set(rows["trial_id"])

    import optuna

    study = optuna.load_study(study_name=out["optuna_study"], storage=make_storage(out["optuna_storage"]))
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    by_ray = {t.user_attrs.get("ray_trial_id"): t for t in study.trials}
    assert all(by_ray[t].state == optuna.trial.TrialState.PRUNED for t in cut)
    parent = MlflowClient(tracking_uri).get_run(out["mlflow_parent_run_id"])
    assert parent.data.tags[T.TIME_BUDGET] == str(budget) and parent.data.tags[T.STATE] == "finished"
    # Tune has ended that search: a resume would start nothing, so it is refused, naming why and what to do.
    code, _, err = run_cli(["--experiment", "t-budget", "--resume", "--storage", sweep_root,
                            "--tracking-uri", tracking_uri], capsys)
    assert code == 2 and f"time budget of {budget} s ran out" in err and "start a new sweep" in err
    # Registering a kept model is still an action of `--resume` on a finished sweep (`--register-model`).
    from sweeps.plan import plan_sweep

    plan = plan_sweep(SweepOptions(experiment="t-budget", resume="latest", storage=sweep_root, register_model="m"))
    assert plan.resumed and plan.record["ended_by_budget"] == budget

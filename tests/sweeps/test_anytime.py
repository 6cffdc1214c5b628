"""Anytime candidates in a sweep (real Ray, MLflow and Optuna storage, math-tiny): each checkpoint of a
balanced_subnet trial is a report row marked `checkpoint` (table, CSV, rebuilt from MLflow alone), a finished
trial of the Optuna study with `epochs = e`, and eligible for the front; a resume after Ctrl-C keeps every finished
trial's run and adds no candidate twice.
The early-stop rule (`DominatedStop`) stops a trial whose checkpoints are dominated, never one that improves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME

from sweeps import tags as T
from sweeps.candidates import CHECKPOINT, SOURCE, anytime_config, candidate_key
from sweeps.stops import DominatedStop, NoEffectStop, base_point
from sweeps.errors import SweepError
from sweeps.ledger import TrialLedger, trials_with_runs
from sweeps.readback import latest_parent_run
from sweeps.study import make_storage
from sweeps.options import SweepOptions
from sweeps.plan import plan_sweep
from tests.sweeps.conftest import REPO, run_cli
from tests.sweeps.drivers import children


def _study(out: dict):
    import optuna

    return optuna.load_study(study_name=out["optuna_study"], storage=make_storage(out["optuna_storage"]))


def _check_candidates(out: dict, rebuilt: dict | None = None) -> pd.DataFrame:
    """What every anytime sweep must hold: candidate rows in the CSV marked `checkpoint`, each an earlier epoch
    of a trial of the sweep, and the study with one finished trial per trial and per candidate, none twice."""
    rows = pd.read_csv(out["trials_csv"])
    trials, cands = rows[rows[SOURCE] == "trial"], rows[rows[SOURCE] == CHECKPOINT]
    assert len(trials) == out["trials"] and len(cands) > 0
    assert rows["trial_id"].is_unique  # a rerun epoch is one candidate
    epochs_of = dict(zip(trials["trial_id"], trials["epochs"]))
    for _, c in cands.iterrows():
        ray_id, e = c["trial_id"].rsplit("@e", 1)
        assert candidate_key(ray_id, int(e)) == c["trial_id"]
        assert int(e) == c["epochs"] and 1 <= c["epochs"] < epochs_of[ray_id]
        assert c["run_id"] == trials.loc[trials["trial_id"] == ray_id, "run_id"].iloc[0]
        assert pd.notna(c["mem_pct"]) and pd.notna(c["val_acc_drop"]) and pd.notna(c["test_acc"])
    study = _study(out)
    told = [t for t in study.get_trials(deepcopy=False) if t.state.name != "FAIL" or "closed" not in t.user_attrs]
    keys = [t.user_attrs["ray_trial_id"] for t in told]
    assert sorted(keys) == sorted(rows["trial_id"]), "one study trial per trial and per candidate"
    for t in told:
        if "@e" in t.user_attrs["ray_trial_id"]:
            c = cands[cands["trial_id"] == t.user_attrs["ray_trial_id"]].iloc[0]
            assert t.state.name == "COMPLETE" and t.params["epochs"] == c["epochs"]
            assert t.values == pytest.approx([c["mem_pct"], c["val_acc_drop"]])
    if rebuilt is not None:  # report.py from MLflow alone: the same rows, the same front
        assert sorted(r["trial_id"] for r in rebuilt["pareto"]) == sorted(r["trial_id"] for r in out["pareto"])
    return cands


def test_a_balanced_subnet_sweep_makes_candidates(ray_runtime, sweep_args, tracking_uri, capsys, tmp_path):
    code, out, err = run_cli(sweep_args("balanced_subnet", "t-anytime", "--num-samples", "3", "--keep-models",
                                        "none"), capsys)
    assert code == 0, err
    from sweeps.report import main as report_main

    capsys.readouterr()
    assert report_main(["--experiment", "t-anytime", "--tracking-uri", tracking_uri, "--out", str(tmp_path / "r"),
                        "--json"]) == 0
    rebuilt = json.loads(capsys.readouterr().out)
    cands = _check_candidates(out, rebuilt)
    assert out["trials"] == 3  # candidates are not trials
    assert all(r[SOURCE] in ("trial", CHECKPOINT) for r in out["pareto"])
    for r in out["pareto"]:  # a candidate has no model of its own; its command rebuilds it with its epochs
        if r[SOURCE] == CHECKPOINT:
            assert r["model_dir"] is None and f"--set epochs={r['params']['epochs']} " in r["mitigate_command"]
    pareto = pd.read_csv(out["pareto_csv"])
    assert SOURCE in pareto.columns and len(pareto) == len(out["pareto"])
    # the per-epoch MLflow metrics hold each candidate's objectives at its epoch's step
    from mlflow import MlflowClient

    c = cands.iloc[0]
    history = MlflowClient(tracking_uri).get_metric_history(c["run_id"], "mem_pct")
    assert [m.value for m in history if m.step == c["epochs"]] == [pytest.approx(c["mem_pct"])]


def test_which_sweeps_make_candidates(tmp_path, spaces_dir):
    plan = plan_sweep(SweepOptions(method="balanced_subnet", preset="math-tiny", storage=str(tmp_path / "root"),
                                   search_space=str(spaces_dir / "balanced_subnet.yaml"),
                                   tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    assert anytime_config(plan.space, "balanced_subnet") == {"anytime": True, "anytime_from": 1}
    assert anytime_config(plan.space, "balanced_subnet", mode="off") == {}  # --no-anytime
    assert anytime_config(plan.space, "balanced_subnet", repeats=3) == {}  # per-epoch results of one seed only
    assert anytime_config(plan.space, "balanced_subnet", objectives=["mem_pct", "relearn_mem_pct"]) == {}
    durable = plan_sweep(SweepOptions(method="durable", preset="math-tiny", storage=str(tmp_path / "root"),
                                      search_space=str(spaces_dir / "durable.yaml"),
                                      tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    assert anytime_config(durable.space, "durable") == {}  # not anytime
    probe = plan_sweep(SweepOptions(method="sweep_probe", preset="math-tiny", storage=str(tmp_path / "root"),
                                    search_space=str(spaces_dir / "sweep_probe.yaml"),
                                    tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    assert anytime_config(probe.space, "sweep_probe") == {}
    with pytest.raises(SweepError, match=r"--scheduler dominated stops trials on their anytime checkpoints, but "
                                         r"\['durable'\] make none"):
        plan_sweep(SweepOptions(method="durable", preset="math-tiny", storage=str(tmp_path / "root"),
                                search_space=str(spaces_dir / "durable.yaml"), scheduler="dominated",
                                tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    with pytest.raises(SweepError, match=r"--scheduler no-effect compares each trial with its base model, but the "
                                         r"sweep has 2 presets"):
        plan_sweep(SweepOptions(method="balanced_subnet", preset="math-tiny,math-demo", storage=str(tmp_path / "r"),
                                search_space=str(spaces_dir / "balanced_subnet.yaml"), scheduler="no-effect",
                                tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))


def _checkpoint(epoch: int, mem: float, loss: float) -> dict:
    return {"epoch": epoch, "final": 0, "checkpoint": 1, "mem_pct": mem, "val_acc_drop": loss}


def test_early_stop_stops_a_dominated_trial_and_not_one_that_improves():
    stop = DominatedStop(["mem_pct", "val_acc_drop"], min_epochs=3, k=2, margin=0.02)
    assert not stop("a", {"final": 1, "failed": 0, "epoch": 8, "mem_pct": 0.0, "val_acc_drop": 0.2})
    # b stalls at points a already beats: stopped at the first epoch the rule allows with k stalled checkpoints
    b = [_checkpoint(1, 40.0, 1.0), _checkpoint(2, 30.0, 1.2), _checkpoint(3, 30.0, 1.3), _checkpoint(4, 30.0, 1.4)]
    assert [stop("b", r) for r in b] == [False, False, False, True]
    # c improves every epoch (memorization falls), though a still dominates it: never stopped
    c = [_checkpoint(e, 50.0 - 10 * e, 1.0) for e in range(1, 5)]
    assert not any(stop("c", r) for r in c)
    # d stalls but at a point nobody beats: never stopped
    d = [_checkpoint(e, 0.0, 0.0) for e in range(1, 6)]
    assert not any(stop("d", r) for r in d)
    # a stalled trial before min_epochs is not stopped; nor on results that are not checkpoints
    e = DominatedStop(["mem_pct", "val_acc_drop"], min_epochs=5, k=1)
    e("x", {"final": 1, "failed": 0, "epoch": 8, "mem_pct": 0.0, "val_acc_drop": 0.0})
    assert [e("y", _checkpoint(i, 10.0, 1.0)) for i in range(1, 6)] == [False] * 4 + [True]
    assert not e("y", {"epoch": 6, "final": 0, "retain_loss": 1.0})


def test_early_stop_counts_the_base_model_as_a_point_the_sweep_holds():
    # A no-op trial (memorization stuck at the base model's 53.3, no utility loss) alone in a sweep: no other
    # trial covers it, but the unmitigated model does, so it stops at the first epoch the rule allows.
    noop = [_checkpoint(e, 53.3, 0.0) for e in range(1, 5)]
    alone = DominatedStop(["mem_pct", "val_acc_drop"], min_epochs=3, k=2)
    assert not any(alone("t", r) for r in noop)
    with_base = DominatedStop(["mem_pct", "val_acc_drop"], min_epochs=3, k=2, base=(53.3, 0.0))
    assert [with_base("t", r) for r in noop] == [False, False, True, True]
    # A trial that moves memorization below the base is not covered by it, stalled or not.
    moving = DominatedStop(["mem_pct", "val_acc_drop"], min_epochs=3, k=2, base=(53.3, 0.0))
    assert not any(moving("m", _checkpoint(e, 20.0, 0.5)) for e in range(1, 6))
    assert base_point(("mem_pct", "val_acc_drop"), "val_acc_drop", {"mem_pct": 53.3, "val_acc": 87.8}) == (53.3, 0.0)
    # A robustness objective the base model was not evaluated on: no base point rather than a made-up one.
    assert base_point(("mem_pct", "relearn_mem_pct", "val_acc_drop"), "val_acc_drop", {"mem_pct": 53.3}) is None
    with pytest.raises(ValueError, match="base point"):
        DominatedStop(["mem_pct", "val_acc_drop"], base=(53.3,))


def test_no_effect_stop_stops_only_a_trial_that_never_moved_memorization():
    stop = NoEffectStop(["mem_pct", "val_acc_drop"], "val_acc_drop", (53.3, 0.0), epochs=3)
    # a no-op: memorization at the base's value (its accuracy drop wanders either way): stopped at epoch 3
    noop = [_checkpoint(1, 53.3, -0.4), _checkpoint(2, 60.0, 0.3), _checkpoint(3, 53.3, -0.2)]
    assert [stop("noop", r) for r in noop] == [False, False, True]
    # one row fewer at epoch 2 is enough to run on, also when memorization goes back up after
    slow = [_checkpoint(1, 53.3, 0.0), _checkpoint(2, 46.7, 0.0), *[_checkpoint(e, 53.3, 0.0) for e in range(3, 9)]]
    assert not any(stop("slow", r) for r in slow)
    # a utility loss is not memorization: a trial that only breaks the model is not stopped for doing nothing
    assert [stop("broken", _checkpoint(e, 53.3, 30.0)) for e in (1, 2, 3)] == [False, False, True]
    # final results, per-epoch probes and a checkpoint without the objective are not judged as no effect
    assert not stop("f", {"final": 1, "failed": 0, "epoch": 3, "mem_pct": 53.3, "val_acc_drop": 0.0})
    assert not stop("p", {"epoch": 3, "final": 0, "retain_loss": 1.0})
    gap = NoEffectStop(["mem_pct", "val_acc_drop"], "val_acc_drop", (53.3, 0.0), epochs=2)
    assert [gap("g", r) for r in ({"epoch": 1, "final": 0, "checkpoint": 1}, _checkpoint(2, 53.3, 0.0))] == [False] * 2
    with pytest.raises(ValueError, match="base point"):
        NoEffectStop(["mem_pct", "val_acc_drop"], "val_acc_drop", None)


def test_no_effect_stop_in_a_sweep_stops_the_no_op_trials_at_epoch_3(ray_runtime, sweep_args, sweep_root, spaces_dir,
                                                                    tmp_path, capsys):
    """A real sweep with `--scheduler no-effect` whose trials prune nothing (ratio 0): each stops at its third
    checkpoint, early-stopped, with its CPU so far and its three candidates (that trials which move memorization
    run on is the unit test's part above)."""
    space = tmp_path / "bs.yaml"
    space.write_text((spaces_dir / "balanced_subnet.yaml").read_text()
                     .replace("  ratio: {type: float, low: 0.01, high: 0.5, log: true}\n", "")
                     .replace("fixed: {}", "fixed: {ratio: 0.0, batch_size: 8}")  # epochs long enough to stop in
                     .replace("epochs: {type: int, low: 1, high: 3}", "epochs: {type: int, low: 1, high: 8}")
                     .replace("  ratio: [0.01, 0.3]\n", ""))
    args = sweep_args("balanced_subnet", "t-no-effect", "--num-samples", "2", "--scheduler", "no-effect",
                      "--keep-models", "none")
    args[args.index("--search-space") + 1] = str(space)
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    (sweep_dir,) = (Path(sweep_root) / "sweeps" / "t-no-effect").glob("*/")
    ledger = TrialLedger(str(sweep_dir))
    long = {t: e for t, e in ledger.trials.items() if e["params"]["epochs"] > 3}  # the warm start has 8
    assert long and out["early_stopped"] == len(long) and out["completed"] == 2 - len(long)
    for trial_id, entry in long.items():
        assert entry["state"] == "early_stopped" and entry["epoch_result"]["epoch"] == 3
        assert entry["epoch_result"]["seconds_cpu"] > 0  # a stopped trial's cost is what it spent so far
        epochs = [e["epoch_result"]["epoch"] for e in ledger.history(trial_id)
                  if e.get("event") == "result" and (e.get("epoch_result") or {}).get(CHECKPOINT) == 1]
        assert epochs == [1, 2, 3]


@pytest.mark.slow
def test_sigint_then_resume_keeps_every_finished_trial_and_candidate_once(ray_runtime, sweep_root, spaces_dir,
                                                                          tmp_path, capsys):
    """Ctrl-C in a real driver process (`python sweeps/run.py`), then `--resume`: the finished trials keep their
    runs (logged once, also when they carry only the bare tags of before the `tinymem.` namespace), the started
    ones continue theirs, and no candidate is told or logged twice."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment, samples = "t-anytime-resume", 4
    space = tmp_path / "bs.yaml"  # longer trials, so the interruption lands inside one
    space.write_text((spaces_dir / "balanced_subnet.yaml").read_text().replace("low: 1, high: 3", "low: 4, high: 8")
                     .replace("fixed: {}", "fixed: {batch_size: 8}"))
    cmd = [sys.executable, str(REPO / "sweeps" / "run.py"), "--method", "balanced_subnet", "--preset", "math-tiny",
           "--storage", sweep_root, "--tracking-uri", uri, "--experiment", experiment, "--search-space", str(space),
           "--num-samples", str(samples), "--max-concurrent", "1", "--keep-models", "none"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    sweeps_dir = Path(sweep_root) / "sweeps" / experiment
    ledger: dict = {}
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            ledger = next((trials_with_runs(str(d)) for d in sweeps_dir.glob("*/")), {})
            done = [t for t, e in ledger.items() if e.get("state") == "completed"]
            running = [t for t, e in ledger.items()
                       if e.get("state") == "running" and (e.get("epoch_result") or {}).get("checkpoint") == 1]
            if len(done) >= 1 and running:  # a trial has told candidates and is still running
                break
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            time.sleep(0.3)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does: Tune saves its state and stops
        assert proc.wait(timeout=180) == 130, (tmp_path / "first.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    first = next(trials_with_runs(str(d)) for d in sweeps_dir.glob("*/"))
    finished = {t: e["run_id"] for t, e in first.items() if e["state"] == "completed"}
    assert 1 <= len(finished) < samples
    client = MlflowClient(uri)
    _, parent_id = latest_parent_run(client, experiment)
    parent = client.get_run(parent_id)
    # The driver (a `python sweeps/run.py` process) put MLflow's system tags on its runs.
    assert parent.data.tags[MLFLOW_SOURCE_NAME].endswith("sweeps/run.py")
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if commit.returncode == 0:
        assert parent.data.tags[MLFLOW_GIT_COMMIT] == commit.stdout.strip()
    # As if the first part had been logged before the `tinymem.` namespace: its finished runs and the parent
    # carry bare tags only. The resumed sweep must still count each of them as completed, once.
    for run_id in [*finished.values(), parent_id]:
        tags = client.get_run(run_id).data.tags
        for name in (T.STATE, T.PARETO, T.METHOD, T.PRESET):
            if name in tags:
                client.set_tag(run_id, name.removeprefix(T.PREFIX), tags[name])
                client.delete_tag(run_id, name)
    before = {run_id: [m.step for m in client.get_metric_history(run_id, "mem_pct")] for run_id in finished.values()}

    code, out, err = run_cli(["--experiment", experiment, "--resume", "--storage", sweep_root, "--json"], capsys)
    assert code == 0, err
    assert (out["trials"], out["completed"]) == (samples, samples)
    # the progress callback, unpickled from the experiment, counted the trials finished before the interruption
    assert f"sweep: {samples}/{samples} trials done, running 0, failed 0" in err, err[-2000:]
    runs = children(client, experiment)  # the experiment's one sweep: its trials' runs
    by_trial: dict = {}
    for r in runs:
        tid = r.data.tags[T.TRIAL_ID]
        assert tid not in by_trial, f"trial {tid} has two MLflow runs"
        by_trial[tid] = r
    assert len(by_trial) == samples
    for tid, run_id in finished.items():  # the same run, not a new one, and nothing logged to it again
        assert by_trial[tid].info.run_id == run_id
        steps = [m.step for m in client.get_metric_history(run_id, "mem_pct")]
        assert steps == before[run_id] and len(steps) == len(set(steps)), (tid, steps)
    for tid, entry in first.items():  # trials started before the interruption continue their own runs
        assert by_trial[tid].info.run_id == entry["run_id"]
    assert client.get_run(out["mlflow_parent_run_id"]).info.status == "FINISHED"
    # The base model's data are the inputs of every trial's run, also of those started after the resume.
    contexts = {r.info.run_id: sorted(t.value for i in client.get_run(r.info.run_id).inputs.dataset_inputs
                                      for t in i.tags if t.key == MLFLOW_DATASET_CONTEXT) for r in runs}
    assert all(c == ["forget", "retain", "test", "val"] for c in contexts.values()), contexts
    _check_candidates(out)


def test_paper_anytime_grid_answers_the_epoch_axis_from_checkpoints(ray_runtime, sweep_args, sweep_root, capsys):
    """`--grid paper-anytime`: the grid's 4 points (ratio x epochs {1, 3}) are 2 runs at 3 epochs, whose epoch-1
    checkpoints have exactly the numbers of separate 1-epoch runs (what `--grid paper` would run)."""
    from tinymem.trial import run_trial

    code, out, err = run_cli(sweep_args("balanced_subnet", "t-grid-anytime", "--grid", "paper-anytime",
                                        "--keep-models", "none"), capsys)
    assert code == 0, err
    rows = pd.read_csv(out["trials_csv"])
    assert out["trials"] == 2 and sorted(rows[SOURCE]) == [CHECKPOINT, CHECKPOINT, "trial", "trial"]
    assert sorted(zip(rows["ratio"], rows["epochs"])) == [(0.01, 1), (0.01, 3), (0.3, 1), (0.3, 3)]
    assert (rows["loss_weighting"] == 0.7).all()
    for _, c in rows[rows[SOURCE] == CHECKPOINT].iterrows():
        alone = run_trial({"method": "balanced_subnet", "preset": "math-tiny", "storage": sweep_root, "seed": 0,
                           "params": {"ratio": c["ratio"], "epochs": 1, "loss_weighting": 0.7}})
        for metric in ("mem_pct", "val_acc", "test_acc"):
            assert c[metric] == alone.after[metric], (metric, c[metric], alone.after[metric])


def test_anytime_flags_that_conflict_are_refused(tmp_path, spaces_dir):
    common = dict(preset="math-tiny", storage=str(tmp_path / "root"), tracking_uri=f"sqlite:///{tmp_path}/m.db")
    bs = str(spaces_dir / "balanced_subnet.yaml")
    with pytest.raises(SweepError, match="--grid paper-anytime takes the grid's epoch counts from anytime "
                                         "checkpoints, which --no-anytime turns off"):
        plan_sweep(SweepOptions(method="balanced_subnet", search_space=bs, grid="paper-anytime", anytime=False,
                                **common))
    with pytest.raises(SweepError, match=r"--grid paper-anytime: no method of \['durable'\] is anytime"):
        plan_sweep(SweepOptions(method="durable", search_space=str(spaces_dir / "durable.yaml"),
                                grid="paper-anytime", **common))
    with pytest.raises(SweepError, match="which --no-anytime turns off; give one of them"):
        plan_sweep(SweepOptions(method="balanced_subnet", search_space=bs, scheduler="dominated", anytime=False,
                                **common))

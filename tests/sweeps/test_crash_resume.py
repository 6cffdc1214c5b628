"""A sweep driver killed with SIGKILL resumes with `--resume` without rerunning, re-logging or leaving RUNNING runs.

Each test starts a real driver (`python sweeps/run.py ... --json`) in its own process group, kills the group
with SIGKILL at a chosen moment (found by polling MLflow, never by sleeping), stops what is left of that
driver's local Ray runtime (found by a marker in the processes' environment, never by name), resumes in a new
process (the first test kills that one too, at another moment, and resumes again) and checks what MLflow holds: as many finished child runs as samples, each parameter set once,
no RUNNING run, the parent FINISHED; and what the Optuna study holds (`optuna.load_study`): exactly one
COMPLETE trial per completed ledger trial, nothing RUNNING.

The killed drivers run with `TUNE_GLOBAL_CHECKPOINT_S=600`: Ray Tune saves its experiment state at the first
step and then not again before the kill, the far end of the lag a crash leaves (normally up to ~10 s, more on
big experiments). Its restored state then knows the first trial as unfinished and nothing of the later ones,
which only the sweep's trial ledger knows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweeps import storage
from sweeps import tags as T
from sweeps.ledger import TrialLedger
from sweeps.study import make_storage
from tests.sweeps.drivers import PROBE_SPACE, Driver, children, wait_for

SAMPLES = 4


def _statuses(client: MlflowClient, experiment: str) -> list[str]:
    return [r.info.status for r in children(client, experiment)]


def _assert_resumed_once(client: MlflowClient, experiment: str, out: dict) -> dict[str, int]:
    """The numbers the crash tests are about; asserted, and returned for the failure message."""
    runs = children(client, experiment)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    sets = {json.dumps(r.data.params, sort_keys=True) for r in finished}
    numbers = {"completed": out["completed"], "trials": out["trials"], "finished_children": len(finished),
               "duplicates": len(finished) - len(sets),
               "running_children": sum(r.info.status == "RUNNING" for r in runs)}
    assert numbers["completed"] == SAMPLES, numbers
    assert numbers["finished_children"] == SAMPLES, numbers
    assert numbers["duplicates"] == 0, numbers
    assert numbers["running_children"] == 0, numbers
    assert client.get_run(out["mlflow_parent_run_id"]).info.status == "FINISHED"
    for r in finished:  # a finished trial's final metrics were logged once, not again by a rerun
        assert len(client.get_metric_history(r.info.run_id, "mem_pct")) == 1, r.data.tags[T.TRIAL_ID]
    # Runs that died with the driver (Ray never knew them) are closed as failed, saying so.
    for r in runs:
        if r.info.status == "FAILED":
            assert r.data.tags[T.STATE] == "failed" and "driver" in r.data.tags[T.ERROR], r.data.tags
    return numbers


def _assert_study_told_once(root: str, experiment: str, out: dict) -> None:
    """The resumed study continued the same study: one COMPLETE trial per completed ledger trial (keyed by Ray
    trial id, so none twice), none left RUNNING or WAITING by the dead driver."""
    import optuna

    study = optuna.load_study(study_name=out["optuna_study"], storage=make_storage(out["optuna_storage"]))
    trials = study.get_trials(deepcopy=False)
    complete = sorted(t.user_attrs["ray_trial_id"] for t in trials if t.state.name == "COMPLETE")
    ledger = TrialLedger(storage.join(root, "sweeps", experiment, out["sweep_id"])).trials
    completed = sorted(t for t, e in ledger.items() if e.get("state") == "completed")
    assert complete == completed and len(completed) == SAMPLES, (complete, completed)
    assert not [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]


def _args(root: str, uri: str, experiment: str, space: Path) -> list[str]:
    return ["--method", "sweep_probe", "--preset", "math-tiny", "--storage", root, "--tracking-uri", uri,
            "--experiment", experiment, "--search-space", str(space), "--num-samples", str(SAMPLES),
            "--max-concurrent", "1", "--keep-models", "none"]


def _resume(root: str, experiment: str, log: Path, timeout: float = 300) -> dict:
    return Driver(["--experiment", experiment, "--resume", "--storage", root], log).finish(timeout=timeout)


@pytest.mark.slow
def test_sigkilled_driver_resumes_each_trial_once(sweep_root, tmp_path):
    """Killed twice: the first driver while a trial runs, the resumed one the moment a trial's run is closed (before
    Ray's next save); a third driver finishes the sweep."""
    space = tmp_path / "probe.yaml"
    space.write_text(PROBE_SPACE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = "t-crash"
    client = MlflowClient(uri)
    lag = {"TUNE_GLOBAL_CHECKPOINT_S": "600"}
    driver = Driver(_args(sweep_root, uri, experiment, space), tmp_path / "first.log", lag)
    try:  # two trials done, the third one running (it sleeps >= 1.2 s)
        wait_for("a third trial running", lambda: sorted(_statuses(client, experiment))
                  == ["FINISHED", "FINISHED", "RUNNING"], driver)
    finally:
        driver.kill()  # also when waiting failed: nothing of it may outlive the test
    driver = Driver(["--experiment", experiment, "--resume", "--storage", sweep_root], tmp_path / "second.log", lag)
    try:  # the resumed driver closes the dead one's running trial as failed and starts new ones
        wait_for("a third finished trial", lambda: _statuses(client, experiment).count("FINISHED") >= 3, driver)
    finally:
        driver.kill()
    out = _resume(sweep_root, experiment, tmp_path / "third.log")
    _assert_resumed_once(client, experiment, out)
    _assert_study_told_once(sweep_root, experiment, out)


@pytest.mark.slow
def test_driver_killed_while_training_its_base_model_resumes(tmp_path):
    root = str(tmp_path / "fresh-store")  # no base model: the first driver must train math-tiny
    space = tmp_path / "probe.yaml"
    space.write_text(PROBE_SPACE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = "t-crash-base"
    driver = Driver(_args(root, uri, experiment, space), tmp_path / "first.log")
    try:
        # The training checkpoint directory of the base model appears once training has started.
        wait_for("base-model training", lambda: any((Path(root) / "checkpoints").glob("*")), driver)
    finally:
        driver.kill()
    # It trains math-tiny (about 15 s on 2 idle cores; minutes on loaded ones), then runs every trial.
    out = _resume(root, experiment, tmp_path / "resume.log", timeout=900)
    _assert_resumed_once(MlflowClient(uri), experiment, out)
    _assert_study_told_once(root, experiment, out)

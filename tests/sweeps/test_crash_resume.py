"""A sweep driver killed with SIGKILL resumes with `--resume` without rerunning, re-logging or leaving RUNNING runs.

Each test starts a real driver (`python sweeps/run.py ... --json`) in its own process group, kills the group
with SIGKILL at a chosen moment (found by polling MLflow, never by sleeping), stops what is left of that
driver's local Ray runtime (found by a marker in the processes' environment, never by name), resumes once in a
new process and checks what MLflow holds: as many finished child runs as samples, each parameter set once,
no RUNNING run, the parent FINISHED; and what the Optuna study holds (`optuna.load_study`): exactly one
COMPLETE trial per completed ledger trial, nothing RUNNING.

The first driver runs with `TUNE_GLOBAL_CHECKPOINT_S=600`: Ray Tune saves its experiment state at the first
step and then not again before the kill, the far end of the lag a crash leaves (normally up to ~10 s, more on
big experiments). Its restored state then knows the first trial as unfinished and nothing of the later ones,
which only the sweep's trial ledger knows.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweeps import storage
from sweeps import tags as T
from sweeps.ledger import TrialLedger
from tests.sweeps.conftest import REPO

# `python sweeps/run.py ARGS`, with the test-only `sweep_probe` method registered first (its trials import it too).
LAUNCH = ("import runpy, sys; import tests.sweeps.probe_method; sys.argv = ['sweeps/run.py', *sys.argv[1:]]; "
          "runpy.run_path('sweeps/run.py', run_name='__main__')")
MARK = "TINYMEM_CRASH_TEST_ID"  # in the environment of every process a test's driver starts (Ray's included)
SAMPLES = 4
PROBE_SPACE = """
method: sweep_probe
description: crash test space (each trial takes at least 2 x 0.6 s)
params:
  ratio: {type: float, low: 0.0, high: 0.5}
fixed: {epochs: 2, sleep: 0.6}
"""


class Driver:
    """A `sweeps/run.py` process in its own process group, with a private Ray temp dir and a marker."""

    def __init__(self, args: list[str], log: Path, extra_env: dict[str, str] | None = None):
        self.mark = uuid.uuid4().hex
        # Short: Ray's socket paths under it must stay below the 107-character limit of Unix sockets.
        self.ray_tmp = tempfile.mkdtemp(prefix="tmc-", dir="/tmp")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update({MARK: self.mark, "RAY_TMPDIR": self.ray_tmp, **(extra_env or {})})
        self.log_path = log
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCH, *args, "--json"], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=self.log, start_new_session=True, text=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self) -> str:
        return self.log_path.read_text()[-3000:]

    def kill(self) -> None:
        """SIGKILL the group, then whatever the driver's Ray runtime left outside it (raylet, GCS, workers)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)
        self.cleanup()

    def finish(self, timeout: float) -> dict:
        """Wait for a clean exit; the JSON object it printed."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"driver did not finish in {timeout} s:\n{self.tail()}")
        self.cleanup()
        assert self.proc.returncode == 0, self.tail()
        return json.loads(out)

    def cleanup(self) -> None:
        for pid in _marked_pids(self.mark):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.time() + 30
        while _marked_pids(self.mark) and time.time() < deadline:
            time.sleep(0.2)
        self.log.close()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def _marked_pids(mark: str) -> list[int]:
    """Live processes whose environment holds this driver's marker (only ours: other users' are unreadable)."""
    needle = f"{MARK}={mark}".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0"):
                stat = (d / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":  # a zombie waits for its parent, not for us
                    pids.append(int(d.name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return pids


def _children(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get(T.ROLE) != "sweep"]


def _wait_for(what: str, check: Callable[[], bool], driver: Driver, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        assert driver.alive(), f"driver exited before {what}:\n{driver.tail()}"
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}:\n{driver.tail()}")


def _statuses(client: MlflowClient, experiment: str) -> list[str]:
    return [r.info.status for r in _children(client, experiment)]


def _assert_resumed_once(client: MlflowClient, experiment: str, out: dict) -> dict[str, int]:
    """The numbers the crash tests are about; asserted, and returned for the failure message."""
    runs = _children(client, experiment)
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

    study = optuna.load_study(study_name=out["optuna_study"], storage=out["optuna_storage"])
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
@pytest.mark.parametrize("moment", ["during_trial", "after_trial"])
def test_sigkilled_driver_resumes_each_trial_once(sweep_root, tmp_path, moment):
    space = tmp_path / "probe.yaml"
    space.write_text(PROBE_SPACE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = f"t-crash-{moment}"
    client = MlflowClient(uri)
    driver = Driver(_args(sweep_root, uri, experiment, space), tmp_path / "first.log",
                    {"TUNE_GLOBAL_CHECKPOINT_S": "600"})
    try:
        if moment == "during_trial":  # two trials done, the third one running (it sleeps >= 1.2 s)
            _wait_for("a third trial running", lambda: sorted(_statuses(client, experiment))
                      == ["FINISHED", "FINISHED", "RUNNING"], driver)
        else:  # the moment the second trial's run is closed, before Ray's next save
            _wait_for("two finished trials", lambda: _statuses(client, experiment).count("FINISHED") >= 2, driver)
    finally:
        driver.kill()  # also when waiting failed: nothing of it may outlive the test
    out = _resume(sweep_root, experiment, tmp_path / "resume.log")
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
        _wait_for("base-model training", lambda: any((Path(root) / "checkpoints").glob("*")), driver)
    finally:
        driver.kill()
    # It trains math-tiny (about 15 s on 2 idle cores; minutes on loaded ones), then runs every trial.
    out = _resume(root, experiment, tmp_path / "resume.log", timeout=900)
    _assert_resumed_once(MlflowClient(uri), experiment, out)
    _assert_study_told_once(root, experiment, out)

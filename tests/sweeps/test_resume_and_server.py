"""The two end-to-end tests that start processes of their own: an interrupted-and-resumed sweep, and a sweep
logging to a real `mlflow server` over HTTP on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME

from sweeps import tags as T
from sweeps.ledger import trials_with_runs
from sweeps.readback import latest_parent_run
from tests.sweeps.conftest import REPO, run_cli
from tests.sweeps.drivers import LAUNCH, PROBE_SPACE
from tests.sweeps.mlflow_server import MlflowServer


def _children(uri: str, parent_run_id: str):
    client = MlflowClient(uri)
    exp_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


def _run_map(root: str, experiment: str) -> dict:
    """trial id -> its entry in the trial ledger of the experiment's (one) sweep, with its MLflow run id."""
    for d in sorted((Path(root) / "sweeps" / experiment).glob("*/")):
        return trials_with_runs(str(d))
    return {}


@pytest.mark.slow
def test_interrupted_sweep_resumes_keeping_every_finished_trial_once(ray_runtime, sweep_root,
                                                                     tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = "t-resume"
    # sweep_probe trials last >= 1.2 s each, so the interruption lands with some but not all of them finished
    # (durable's last well under a second: all six could finish between two looks at the ledger).
    space = tmp_path / "probe.yaml"
    space.write_text(PROBE_SPACE)
    cmd = [sys.executable, "-c", LAUNCH, "--method", "sweep_probe", "--preset", "math-tiny",
           "--storage", sweep_root, "--tracking-uri", uri, "--experiment", experiment,
           "--search-space", str(space), "--num-samples", "6", "--max-concurrent", "1"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            done = [t for t, e in _run_map(sweep_root, experiment).items() if e.get("state") == "completed"]
            if len(done) >= 2:
                break
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does: Tune saves its state and stops
        assert proc.wait(timeout=180) == 130, (tmp_path / "first.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    first = _run_map(sweep_root, experiment)
    finished = {t: e["run_id"] for t, e in first.items() if e["state"] == "completed"}
    assert 2 <= len(finished) < 6
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

    code, out, err = run_cli(["--experiment", experiment, "--resume", "--storage", sweep_root, "--json"], capsys)
    assert code == 0, err
    assert (out["trials"], out["completed"]) == (6, 6)
    # the progress callback, unpickled from the experiment, counted the trials finished before the interruption
    assert "sweep: 6/6 trials done, running 0, failed 0" in err, err[-2000:]
    runs = _children(uri, out["mlflow_parent_run_id"])
    by_trial = {}
    for r in runs:
        tid = r.data.tags[T.TRIAL_ID]
        assert tid not in by_trial, f"trial {tid} has two MLflow runs"
        by_trial[tid] = r
    assert len(by_trial) == 6
    for tid, run_id in finished.items():
        assert by_trial[tid].info.run_id == run_id  # the same run, not a new one
        assert len(client.get_metric_history(run_id, "mem_pct")) == 1  # logged once, not re-run
    # Trials started before the interruption continue their own runs.
    for tid, entry in first.items():
        assert by_trial[tid].info.run_id == entry["run_id"]
    assert client.get_run(out["mlflow_parent_run_id"]).info.status == "FINISHED"
    # The base model's data are the inputs of every trial's run, also of those started after the resume.
    contexts = {r.info.run_id: sorted(t.value for i in client.get_run(r.info.run_id).inputs.dataset_inputs
                                      for t in i.tags if t.key == MLFLOW_DATASET_CONTEXT) for r in runs}
    assert all(c == ["forget", "retain", "test", "val"] for c in contexts.values()), contexts


@pytest.mark.slow
def test_sweep_against_a_real_mlflow_server(ray_runtime, sweep_args, tmp_path, capsys):
    with MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path) as server:
        uri = server.wait_ready()
        args = sweep_args("durable", "t-server", "--num-samples", "2")
        args[args.index("--tracking-uri") + 1] = uri
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
        assert out["tracking_uri"] == uri and out["completed"] == 2
        assert out["mlflow_ui"].startswith(f"open {uri}/#/experiments/")
        runs = _children(uri, out["mlflow_parent_run_id"])
        assert len(runs) == 2 and all(r.data.tags[T.STATE] == "completed" for r in runs)
        arts = {a.path for a in MlflowClient(uri).list_artifacts(out["mlflow_parent_run_id"])}
        assert {"pareto.csv", "pareto.png"} <= arts
        # The runs went over HTTP into the server's own store, and its artifacts under its destination.
        assert (tmp_path / "server.db").stat().st_size > 0
        assert list((tmp_path / "server-artifacts").rglob("pareto.png"))
        # The pick's kept model is a logged model on the server, and --from-run reads its config over REST.
        from tinymem.cli.from_run import trial_config_from_run

        best = out["best_paper_rule"]
        assert MlflowClient(uri).get_logged_model(best["model_id"]).source_run_id == best["run_id"]
        assert list((tmp_path / "server-artifacts").rglob("model.safetensors"))
        config = trial_config_from_run(best["run_id"], uri)
        assert config["method"] == "durable" and config["params"]["ratio"] == best["params"]["ratio"]

"""The two end-to-end tests that start processes of their own: an interrupted-and-resumed sweep, and a sweep
logging to a real `mlflow server` over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.sweeps.conftest import REPO, run_cli


def _children(uri: str, parent_run_id: str):
    client = MlflowClient(uri)
    exp_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_map(root: str, experiment: str) -> dict:
    for f in sorted((Path(root) / "sweeps" / experiment).glob("*/mlflow_runs.json")):
        return json.loads(f.read_text())["trials"]
    return {}


@pytest.mark.slow
def test_interrupted_sweep_resumes_keeping_every_finished_trial_once(ray_runtime, sweep_root, spaces_dir,
                                                                     tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = "t-resume"
    cmd = [sys.executable, str(REPO / "sweeps" / "run.py"), "--method", "durable", "--preset", "math-tiny",
           "--storage", sweep_root, "--tracking-uri", uri, "--experiment", experiment,
           "--search-space", str(spaces_dir / "durable.yaml"), "--num-samples", "6", "--max-concurrent", "1"]
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

    code, out, err = run_cli(["--experiment", experiment, "--resume", "--storage", sweep_root, "--json"], capsys)
    assert code == 0, err
    assert (out["trials"], out["completed"]) == (6, 6)
    # the progress callback, unpickled from the experiment, counted the trials finished before the interruption
    assert "sweep: 6/6 trials done, running 0, failed 0" in err, err[-2000:]
    runs = _children(uri, out["mlflow_parent_run_id"])
    by_trial = {}
    for r in runs:
        tid = r.data.tags["tinymem.trial_id"]
        assert tid not in by_trial, f"trial {tid} has two MLflow runs"
        by_trial[tid] = r
    assert len(by_trial) == 6
    client = MlflowClient(uri)
    for tid, run_id in finished.items():
        assert by_trial[tid].info.run_id == run_id  # the same run, not a new one
        assert len(client.get_metric_history(run_id, "mem_pct")) == 1  # logged once, not re-run
    # Trials started before the interruption continue their own runs.
    for tid, entry in first.items():
        assert by_trial[tid].info.run_id == entry["run_id"]
    assert client.get_run(out["mlflow_parent_run_id"]).info.status == "FINISHED"


@pytest.mark.slow
def test_sweep_against_a_real_mlflow_server(ray_runtime, sweep_args, tmp_path, capsys):
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.5)
        args = sweep_args("durable", "t-server", "--num-samples", "2")
        args[args.index("--tracking-uri") + 1] = uri
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
        assert out["tracking_uri"] == uri and out["completed"] == 2
        assert out["mlflow_ui"].startswith(f"open {uri}/#/experiments/")
        runs = _children(uri, out["mlflow_parent_run_id"])
        assert len(runs) == 2 and all(r.data.tags["state"] == "completed" for r in runs)
        arts = {a.path for a in MlflowClient(uri).list_artifacts(out["mlflow_parent_run_id"])}
        assert {"pareto.csv", "pareto.png"} <= arts
        # The runs went over HTTP into the server's own store, and its artifacts under its destination.
        assert (tmp_path / "server.db").stat().st_size > 0
        assert list((tmp_path / "server-artifacts").rglob("pareto.png"))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()

"""A real `mlflow server` stopped in the middle of a sweep, for longer than the MLflow client retries: trials go on
finishing during the outage, and once the server is back every trial is in MLflow exactly once.

The client's own retries are lowered through MLflow's environment variables (no retry, 5 s timeout: a call
fails within seconds), so the outage is far longer than they last. Two endings: the server comes back while
the sweep still runs (the driver's MLflow writer catches up by itself), and it is still down when the sweep
ends (exit status 3; `sweeps/report.py --sync` writes what waited once it is back).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweeps import tags as T
from sweeps.ledger import FINISHED, TrialLedger, trials_with_runs
from tests.sweeps.conftest import REPO
from tests.sweeps.drivers import PROBE_SPACE, Driver, children, launcher, wait_for
from tests.sweeps.mlflow_server import MlflowServer

SAMPLES = 6
REPORT = launcher("sweeps/report.py")
CLIENT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def _sweep_dir(root: str, experiment: str) -> str:
    return str(next((Path(root) / "sweeps" / experiment).glob("*/")))


def _finished(root: str, experiment: str) -> dict[str, float]:
    """trial id -> when the ledger recorded it finished (unix seconds)."""
    base = Path(root) / "sweeps" / experiment
    if not base.exists() or not any(base.glob("*/")):
        return {}
    ledger = TrialLedger(_sweep_dir(root, experiment))
    return {t: ev["at"] for t in ledger.trials for ev in ledger.history(t)
            if ev["event"] == "finished" and ev.get("state") in FINISHED}


def _logged(root: str, experiment: str) -> int:
    base = Path(root) / "sweeps" / experiment
    if not base.exists() or not any(base.glob("*/")):
        return 0
    return sum(bool(e.get("logged")) for e in trials_with_runs(_sweep_dir(root, experiment)).values())


def _check_mlflow(client: MlflowClient, experiment: str) -> dict[str, int]:
    """The numbers the test is about, asserted: every trial once, all finished, nothing left RUNNING."""
    runs = children(client, experiment)
    ids = [r.data.tags[T.TRIAL_ID] for r in runs]
    numbers = {"children": len(runs), "finished": sum(r.info.status == "FINISHED" for r in runs),
               "duplicates": len(ids) - len(set(ids)), "running": sum(r.info.status == "RUNNING" for r in runs)}
    assert numbers == {"children": SAMPLES, "finished": SAMPLES, "duplicates": 0, "running": 0}, numbers
    for r in runs:  # each trial's final metrics once
        assert len(client.get_metric_history(r.info.run_id, "mem_pct")) == 1, r.data.tags[T.TRIAL_ID]
    return numbers


@pytest.mark.slow
def test_sweep_survives_an_mlflow_server_outage(sweep_root, tmp_path):
    space = tmp_path / "probe.yaml"
    space.write_text(PROBE_SPACE)
    server = MlflowServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server")

    def args(experiment: str, *extra: str) -> list[str]:
        return ["--method", "sweep_probe", "--preset", "math-tiny", "--storage", sweep_root, "--tracking-uri",
                server.url, "--experiment", experiment, "--search-space", str(space), "--num-samples",
                str(SAMPLES), "--max-concurrent", "1", "--keep-models", "none", *extra]

    with server:
        server.wait_ready()
        client = MlflowClient(server.url)

        # 1. The server goes down after the first trial is in MLflow and comes back while the sweep runs.
        t0 = time.time()
        driver = Driver(args("t-outage"), tmp_path / "outage.log", CLIENT_RETRIES)
        try:
            wait_for("a trial in MLflow", lambda: _logged(sweep_root, "t-outage") >= 1, driver)
            down_at = time.time()
            server.stop(crash=True)
            wait_for("two more trials finished while MLflow is down",
                     lambda: len(_finished(sweep_root, "t-outage")) >= 3, driver)
            server.start()  # ~20-30 s before it answers again: longer than the client's retries by far
            server.wait_ready()
            up_at = time.time()
            out = driver.finish(timeout=400)
        finally:
            if driver.alive():
                driver.kill()
        during = sum(down_at < at < up_at for at in _finished(sweep_root, "t-outage").values())
        numbers = _check_mlflow(client, "t-outage")
        assert during >= 2 and out["completed"] == SAMPLES, (during, out)
        assert "unreachable" in driver.tail() and "is back" in driver.tail(), driver.tail()
        assert client.get_run(out["mlflow_parent_run_id"]).info.status == "FINISHED"
        print(f"\noutage mid-sweep: {during} trial(s) finished during a {up_at - down_at:.0f} s outage; "
              f"MLflow after the restart: {numbers}; lost 0; sweep {time.time() - t0:.0f} s")

        # 2. Still down when the sweep ends: exit status 3, nothing lost; `report.py --sync` writes it later.
        driver = Driver(args("t-outage-end", "--sync-wait", "2"), tmp_path / "end.log", CLIENT_RETRIES)
        try:
            wait_for("a trial in MLflow", lambda: _logged(sweep_root, "t-outage-end") >= 1, driver)
            server.stop(crash=True)
            driver.finish(timeout=400, status=3)
        finally:
            if driver.alive():
                driver.kill()
        assert "report.py --sync" in driver.tail(), driver.tail()
        assert len(_finished(sweep_root, "t-outage-end")) == SAMPLES
        server.start()
        server.wait_ready()
        sync = subprocess.run([sys.executable, "-c", REPORT, "--sync", "--experiment", "t-outage-end", "--storage",
                               sweep_root], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert sync.returncode == 0, sync.stderr[-3000:]
        numbers = _check_mlflow(client, "t-outage-end")
        parent = [r for r in client.search_runs([client.get_experiment_by_name("t-outage-end").experiment_id])
                  if r.data.tags.get(T.ROLE) == "sweep"]
        assert [p.info.status for p in parent] == ["FINISHED"] and "Pareto front" in sync.stdout, sync.stdout
        print(f"down at the end: exit 3, then report.py --sync: MLflow {numbers}")

"""A real two-node Ray cluster on this machine: sweeps spread over both nodes, and survive losing one.

The cluster (`tests/cluster/ray_nodes.py`): a head on 127.0.0.2 and a second node on 127.0.0.3, each a
separate `ray start` process group with 1 CPU, its own temp dir and a random auth token; everything stays on
loopback and is stopped by process group / temp dir, never with `ray stop`. The sweeps run the real CLI,
`python sweeps/run.py --address 127.0.0.2:PORT --storage <shared dir>`, as a separate driver process whose
working directory is an empty folder, so anything it wrote outside `--storage` would show.

1. `durable` trials on `math-tiny`, two at a time on two 1-CPU nodes: the MLflow child runs carry both
   nodes' `tinymem.ray_node_id` / `tinymem.node_ip`; the base model, the Ray experiment and the reports are
   under `--storage`.
2. `balanced_subnet` (20 epochs, checkpointed every epoch under the storage root): the second node is
   SIGKILLed while a trial runs on it; every trial still finishes, the lost one retried on the head from its
   checkpoint, with exactly `num_samples` finished child runs in MLflow (none lost, none duplicated).

If `ray start` cannot bring a node up in this sandbox, the module is skipped with Ray's output as the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeps import tags as T
from sweeps.ledger import TrialLedger, trials_with_runs
from tests.cluster.ray_nodes import HEAD_IP, WORKER_IP, LocalCluster, NodeStartError

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RUN = str(REPO / "sweeps" / "run.py")

DURABLE = """
method: durable
description: multi-node test (one-shot, under a second per trial on math-tiny)
params:
  ratio: {type: float, low: 1.0e-3, high: 0.1, log: true}
fixed: {}
"""
# 20 epochs of ~0.4-1 s each on math-tiny: long enough to lose a node in the middle of a trial.
BALANCED = """
method: balanced_subnet
description: multi-node test (checkpointed every epoch)
params:
  ratio: {type: float, low: 0.05, high: 0.5, log: true}
  loss_weighting: {type: float, low: 0.5, high: 0.9}
fixed:
  epochs: 20
"""
EPOCHS = 20


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(head_cpus=1, worker_cpus=1)
    try:
        c.start(cwd=str(REPO))
    except NodeStartError as e:
        pytest.skip(f"cannot start a Ray node with the `ray` CLI in this sandbox: {e}")
    try:
        yield c
    finally:
        survivors = c.stop()
    assert not survivors, f"Ray processes of the test cluster survived its teardown: {survivors}"


@pytest.fixture(scope="module")
def storage(tmp_path_factory, tiny_store) -> Path:
    """Shared storage whose model store holds math-tiny (copied from the session store: the sweep loads it,
    on whichever node, and trains nothing)."""
    root = tmp_path_factory.mktemp("shared")
    src, _stored = tiny_store
    shutil.copytree(Path(src) / "models", root / "models", ignore=shutil.ignore_patterns("*.lock", ".*"))
    return root


def sweep_cmd(cluster: LocalCluster, storage: Path, space: Path, method: str, experiment: str,
              *extra: str) -> list[str]:
    return [sys.executable, RUN, "--method", method, "--preset", "math-tiny", "--search-space", str(space),
            "--address", cluster.address, "--storage", str(storage), "--experiment", experiment,
            "--tracking-uri", f"sqlite:///{storage / 'mlflow.db'}", "--cpus-per-trial", "1", "--json", *extra]


def start_driver(cmd: list[str], cluster: LocalCluster, tmp: Path) -> tuple[subprocess.Popen, Path, Path]:
    cwd = tmp / "driver-cwd"
    cwd.mkdir()
    out, err = tmp / "driver.out", tmp / "driver.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                                env=cluster.env(PYTHONPATH=str(REPO)))
    return proc, out, err


def finish_driver(proc: subprocess.Popen, out: Path, err: Path, cluster: LocalCluster,
                  timeout: float) -> dict:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"sweep did not finish in {timeout:.0f} s; driver stderr:\n{err.read_text()[-4000:]}")
    assert proc.returncode == 0, (f"sweep exited {proc.returncode}; driver stderr:\n{err.read_text()[-4000:]}\n"
                                  f"head log:\n{cluster.head.log_tail()}")
    try:
        return json.loads(out.read_text())
    except ValueError:
        pytest.fail(f"--json stdout is not one JSON object:\n{out.read_text()[:2000]}")


def child_runs(outcome: dict) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(outcome["tracking_uri"])
    return client.search_runs([outcome["mlflow_experiment_id"]],
                              filter_string=f"tags.mlflow.parentRunId = '{outcome['mlflow_parent_run_id']}'",
                              max_results=1000)


def check_storage_layout(storage: Path, outcome: dict, experiment: str, driver_cwd: Path) -> None:
    """Model store, Ray experiment and reports under --storage; nothing in the driver's own directory."""
    assert (storage / "models").is_dir()
    ray_dir = storage / "ray" / experiment / outcome["sweep_id"]
    assert ray_dir.is_dir() and list(ray_dir.glob("sweep_trainable_*")), "no Ray trial dirs under --storage"
    for key in ("pareto_csv", "trials_csv"):
        assert outcome[key] and Path(outcome[key]).resolve().is_relative_to(storage.resolve()), outcome[key]
    assert (storage / "sweeps" / experiment / outcome["sweep_id"] / "trials.jsonl").is_file()
    assert list(driver_cwd.iterdir()) == [], f"the driver wrote to its local directory: {list(driver_cwd.iterdir())}"


def test_trials_run_on_both_nodes(cluster, storage, tmp_path):
    space = tmp_path / "durable.yaml"
    space.write_text(DURABLE)
    n = 4
    cmd = sweep_cmd(cluster, storage, space, "durable", "spread", "--num-samples", str(n), "--max-concurrent", "2")
    proc, out, err = start_driver(cmd, cluster, tmp_path)
    outcome = finish_driver(proc, out, err, cluster, timeout=300)

    assert (outcome["trials"], outcome["completed"], outcome["failed"]) == (n, n, 0), outcome
    runs = child_runs(outcome)
    assert len(runs) == n
    assert all(r.info.status == "FINISHED" and r.data.tags[T.STATE] == "completed" for r in runs)
    # where each trial ran, by result field (node_ip, ray_node_id, hostname)
    where = [{field: r.data.tags.get(tag) for field, tag in T.WHERE.items()} for r in runs]
    ips = {t["node_ip"] for t in where}
    assert ips == {HEAD_IP, WORKER_IP}, f"trials ran on {ips}, expected both nodes"
    node_of_ip = {}
    for t in where:
        assert len(t["ray_node_id"]) == 56 and t["hostname"], t
        assert node_of_ip.setdefault(t["node_ip"], t["ray_node_id"]) == t["ray_node_id"], "one node id per node"
    assert len(set(node_of_ip.values())) == 2
    check_storage_layout(storage, outcome, "spread", tmp_path / "driver-cwd")
    print(f"\nspread: {n} trials, per node: "
          f"{ {ip: sum(t['node_ip'] == ip for t in where) for ip in sorted(ips)} }")


def _live_trials(storage: Path, experiment: str) -> dict[str, dict]:
    """trial id -> {epoch, node_ip} of each running trial's latest per-epoch result, from the sweep's trial
    ledger, which the driver appends to as each result arrives (MLflow is written after it by a separate,
    low-priority writer process, so on a busy machine it lags by seconds; Ray's result.json under --storage
    is synced only every ~10 s)."""
    out = {}
    for sweep_dir in sorted((storage / "sweeps" / experiment).glob("*/")):
        for tid, entry in TrialLedger(str(sweep_dir)).trials.items():
            if entry.get("state") == "running" and entry.get("step"):
                out[tid] = {"epoch": int(entry["step"]), "node_ip": (entry.get("where") or {}).get("node_ip")}
    return out


def test_sweep_survives_losing_a_node(cluster, storage, tmp_path):
    assert cluster.worker.alive(), "the second node is already gone"
    space = tmp_path / "balanced.yaml"
    space.write_text(BALANCED)
    n, exp = 4, "nodeloss"
    cmd = sweep_cmd(cluster, storage, space, "balanced_subnet", exp, "--num-samples", str(n),
                    "--max-concurrent", "2", "--max-failures", "3")
    proc, out, err = start_driver(cmd, cluster, tmp_path)
    victims: dict[str, int] = {}
    try:
        # Wait until a trial on the second node is past its second epoch (so its checkpoint of epoch >= 1 is
        # on the shared storage) and not finished, then lose the node.
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            for tid, last in _live_trials(storage, exp).items():
                if last["node_ip"] == WORKER_IP and 2 <= last["epoch"] <= EPOCHS - 4:
                    victims[tid] = int(last["epoch"])
            if victims:
                break
            time.sleep(0.2)
        assert victims, (f"no trial was seen mid-run on {WORKER_IP}; driver stderr:\n"
                         f"{err.read_text()[-3000:]}")
        t_kill = time.time()
        cluster.kill_worker()
    finally:
        if proc.poll() is None and not victims:
            proc.kill()
    outcome = finish_driver(proc, out, err, cluster, timeout=400)
    recovery = time.time() - t_kill

    # Every trial finished once: none lost, none duplicated, none failed.
    assert (outcome["trials"], outcome["completed"], outcome["failed"]) == (n, n, 0), outcome
    runs = child_runs(outcome)
    trial_ids = [r.data.tags[T.TRIAL_ID] for r in runs]
    assert len(runs) == n and len(set(trial_ids)) == n, f"{len(runs)} child runs for {n} trials: {trial_ids}"
    assert all(r.info.status == "FINISHED" and r.data.tags[T.STATE] == "completed" for r in runs), \
        [(r.info.status, r.data.tags.get(T.STATE)) for r in runs]
    ledger = trials_with_runs(str(storage / "sweeps" / exp / outcome["sweep_id"]))
    assert sorted(ledger) == sorted(trial_ids)
    assert all(e["state"] == "completed" and e["logged"] for e in ledger.values()), ledger

    # The lost trial(s) were retried on the surviving node, resuming from the checkpoint on shared storage.
    by_trial = {r.data.tags[T.TRIAL_ID]: r for r in runs}
    retried = []
    for tid, epoch in victims.items():
        r = by_trial[tid]
        assert int(r.data.tags.get(T.RETRIES, 0)) >= 1, f"trial {tid} was on the lost node but not retried"
        assert r.data.tags[T.WHERE["node_ip"]] == HEAD_IP, f"trial {tid} finished on {r.data.tags[T.WHERE['node_ip']]}"
        resumed = r.data.metrics.get("info_resumed_from_epoch", 0)
        assert resumed >= 1, f"trial {tid} restarted from scratch (it had reached epoch {epoch})"
        retried.append((tid, epoch, int(resumed)))
    other_retries = [t for t, r in by_trial.items() if t not in victims and int(r.data.tags.get(T.RETRIES, 0))]
    check_storage_layout(storage, outcome, exp, tmp_path / "driver-cwd")
    print(f"\nnode loss: {n} trials, completed {outcome['completed']}, retried {len(retried)} "
          f"(trial, epoch at kill, resumed from epoch: {retried}), also retried: {other_retries}, "
          f"lost 0, duplicated 0; {recovery:.0f} s from the kill to the end of the sweep")

"""cluster/local-autoscaling.yaml, started the documented way: the autoscaler adds "GPU" workers for a sweep whose
trials ask for fractional GPUs, the trials run on them, and the idle workers go away after the sweep.

The head (`tests/cluster/local_autoscaler.py`) is cluster/README.md's `ray start --head --autoscaling-config`
line on 127.0.0.1, with no CPUs or GPUs of its own. The sweep is the real CLI, `python sweeps/run.py --address
127.0.0.1:PORT --gpus-per-trial 0.5`, as a separate driver: only a worker node of the config's GPU type can
hold its base-model task (one GPU) and its trials, so every one of them needs a node the autoscaler adds.
A watcher process follows Ray's node table the whole time. The test runs on a copy of the config with the
head's free port and an idle timeout of IDLE_TIMEOUT_MINUTES instead of the config's 1 minute.

Checked: worker nodes join with the resources the config declares and never more than its max_workers;
every node in Ray's node table has a 127.0.0.x address and every TCP socket the cluster's processes listen
on is bound to loopback (the `ss -ltnp` view); every trial ran on an added worker (MLflow's
`tinymem.ray_node_id` tags); after the sweep each added worker leaves Ray's node table and its processes end;
nothing the test started survives it.
"""

from __future__ import annotations

import ipaddress
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from sweeps import tags as T
from tests.cluster.local_autoscaler import AutoscalingCluster, NodeWatcher, listening_sockets
from tests.cluster.ray_nodes import NodeStartError
from tests.cluster.test_multinode import child_runs, finish_driver, start_driver, storage, sweep_cmd  # noqa: F401

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform != "linux", reason="Ray's multi-node runtime and /proc are Linux-only")]

REPO = Path(__file__).resolve().parents[2]
SPACE = REPO / "search_spaces" / "durable.yaml"  # one-shot trials: seconds each on math-tiny
IDLE_TIMEOUT_MINUTES = 0.2
TRIALS = 4
GPUS_PER_TRIAL = 0.5


def _is_loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_loopback


class NodeLog:
    """What the watcher saw: each worker node's first and last sighting alive, its IP and resources."""

    def __init__(self, t0: float):
        self.t0 = t0
        self.head: str | None = None
        self.workers: dict[str, dict] = {}
        self.most_alive = 0
        self.ips: set[str] = set()

    def add(self, snapshot: dict) -> None:
        alive = 0
        for n in snapshot["nodes"]:
            self.ips.add(n["ip"])
            if "node:__internal_head__" in n["resources"]:
                self.head = n["id"]
                continue
            if not n["alive"]:
                continue
            alive += 1
            seen = self.workers.setdefault(n["id"], {"ip": n["ip"], "resources": n["resources"],
                                                     "added": snapshot["t"] - self.t0})
            seen["last_alive"] = snapshot["t"] - self.t0
        self.most_alive = max(self.most_alive, alive)

    def alive_workers(self, snapshot: dict) -> set[str]:
        return {n["id"] for n in snapshot["nodes"] if n["alive"] and n["id"] != self.head}


def test_autoscaler_adds_gpu_workers_for_fractional_gpu_trials_then_removes_them(storage, tmp_path):
    t0 = time.time()
    cluster = AutoscalingCluster(idle_timeout_minutes=IDLE_TIMEOUT_MINUTES)
    try:
        cluster.start(cwd=str(REPO))
    except NodeStartError as e:
        pytest.fail(f"the head of cluster/local-autoscaling.yaml did not start: {e}")
    watcher = NodeWatcher(cluster, tmp_path / "nodes.jsonl")
    log = NodeLog(t0)
    proc = None
    try:
        t_head = time.time() - t0
        watcher.start()
        cmd = sweep_cmd(cluster, storage, SPACE, "durable", "autoscale", "--num-samples", str(TRIALS),
                        "--max-concurrent", str(TRIALS), "--gpus-per-trial", str(GPUS_PER_TRIAL))
        proc, out, err = start_driver(cmd, cluster, tmp_path)
        listeners: dict[tuple, dict] = {}
        while proc.poll() is None and time.time() - t0 < 300:
            for snap in watcher.snapshots():
                log.add(snap)
            if log.workers:  # while worker nodes run: every socket the cluster listens on
                for s in listening_sockets(cluster.pids()):
                    listeners[(s["pid"], s["ip"], s["port"])] = s
            time.sleep(0.5)
        outcome = finish_driver(proc, out, err, cluster, timeout=10)
        t_sweep = time.time() - t0

        # Scale-down: wait until no worker node is alive in Ray's node table, then until their processes end.
        deadline = time.time() + IDLE_TIMEOUT_MINUTES * 60 + 90
        last = None
        while time.time() < deadline:
            snaps = watcher.snapshots()
            for snap in snaps:
                log.add(snap)
            last = snaps[-1] if snaps else last
            if last is not None and last["t"] > t0 + t_sweep and not log.alive_workers(last):
                break
            time.sleep(1.0)
        t_down = time.time() - t0
        still = log.alive_workers(last) if last is not None else {"(no node table read)"}
        assert not still, f"worker nodes still alive {t_down - t_sweep:.0f} s after the sweep: {still}"
        # Dead in the node table, the removed nodes' raylets also end (the head's raylet stays).
        deadline = time.time() + 30
        raylets = [p for p in cluster.pids() if _comm(p) == "raylet"]
        while len(raylets) > 1 and time.time() < deadline:
            time.sleep(0.5)
            raylets = [p for p in cluster.pids() if _comm(p) == "raylet"]
        assert len(raylets) == 1, f"raylets still running after scale-down: {raylets}"
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        watcher.stop()
        survivors = cluster.stop()
    assert not survivors, f"processes of the test cluster survived its teardown: {survivors}"

    # Nodes added: the config's GPU worker type, no more than its max_workers.
    worker_type = cluster.config["available_node_types"]["ray.worker.gpu"]
    declared = {k: float(v) for k, v in worker_type["resources"].items()}
    assert log.workers, "the autoscaler added no worker node"
    assert log.most_alive <= min(cluster.config["max_workers"], worker_type["max_workers"]), log.most_alive
    for node_id, w in log.workers.items():
        have = {k: w["resources"].get(k) for k in declared}
        assert have == declared, f"worker {node_id} has {have}, the config declares {declared}"

    # Loopback: every node's address, every listening socket of the cluster's processes.
    assert log.ips and all(_is_loopback(ip) for ip in log.ips), f"node IPs in Ray's node table: {log.ips}"
    assert listeners, "no listening socket of the cluster was seen while its workers ran"
    off_loopback = [s for s in listeners.values() if not _is_loopback(s["ip"])]
    assert not off_loopback, f"sockets listening beyond loopback: {off_loopback}"

    # Trials: all finished, each on a worker the autoscaler added (the head has no CPU or GPU to hold one).
    assert (outcome["trials"], outcome["completed"], outcome["failed"]) == (TRIALS, TRIALS, 0), outcome
    runs = child_runs(outcome)
    per_node = Counter(r.data.tags[T.WHERE["ray_node_id"]] for r in runs)
    assert sum(per_node.values()) == TRIALS
    assert set(per_node) <= set(log.workers), f"trials ran on {set(per_node)}, workers were {set(log.workers)}"
    assert all(_is_loopback(r.data.tags[T.WHERE["node_ip"]]) for r in runs)

    removed = ", ".join(f"+{w['last_alive']:.0f} s" for w in log.workers.values())
    added = ", ".join(f"{i[-5:]} at +{w['added']:.0f} s" for i, w in log.workers.items())
    print(f"\nautoscaling: nodes added {len(log.workers)} ({added}), "
          f"resources each {declared}, node IPs {sorted(log.ips)}; at most {log.most_alive} alive")
    print(f"autoscaling: trials per node { {i[-5:]: n for i, n in sorted(per_node.items())} } "
          f"({TRIALS} trials at --gpus-per-trial {GPUS_PER_TRIAL}); head {log.head and log.head[-5:]}: 0")
    print(f"autoscaling: nodes removed {len(log.workers)} (last seen alive at "
          f"{removed}; sweep ended +{t_sweep:.0f} s, idle timeout "
          f"{IDLE_TIMEOUT_MINUTES * 60:.0f} s); listening sockets while workers ran, all on loopback: "
          f"{dict(Counter(s['name'] for s in listeners.values()))}")
    print(f"autoscaling: time {time.time() - t0:.0f} s (head up +{t_head:.0f} s, sweep done +{t_sweep:.0f} s, "
          f"workers gone +{t_down:.0f} s)")


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""

"""Scale simulation: 1000 synthetic trials through the real sweep engine on a local two-node Ray cluster.

What it measures is the engine's own cost per trial: Ray Tune's scheduling and result handling with actor
reuse, the multi-objective OptunaSearch (MO-TPE by default), the MLflow child runs the driver logs (SQLite
under the storage root) and the trial ledger, i.e. everything `sweeps/run.py` does except the trial's
training. The trial itself is synthetic: it sleeps `--work-ms` and reports made-up objectives of its sampled
`ratio` (the `durable` search space on `math-tiny`), through `run_sweep(..., trainable_fn=...)`.

The cluster is the one `tests/cluster/test_multinode.py` uses (`tests/cluster/ray_nodes.py`): a head on
127.0.0.2 and a second node on 127.0.0.3, separate `ray start` processes with `--nodes-cpus` logical CPUs
each, token auth with a random token, all on loopback, stopped by process group at the end. This process
is the driver.

    python bench/scale_sim.py                          # 1000 trials, with and without MLflow (~10 min, 2 cores)
    python bench/scale_sim.py --trials 200 --variants mlflow

Printed per variant: trials/s over the trial phase (first trial start to last trial end) and the driver
overhead per trial, (wall - synthetic work) / trials, where the synthetic work is trials x work / slots
(what perfectly packed slots would need); once for the trial phase and once end to end (Ray connect, base
model load, MLflow parent run, report). "without MLflow" swaps the engine's `TrialLogger` for a callback that
does nothing (a benchmark-only substitution), so the difference is what tracking costs.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SPACE = """
method: durable
description: scale_sim synthetic space (the trial never runs durable)
params:
  ratio: {type: float, low: 1.0e-3, high: 0.1, log: true}
fixed: {}
"""

WORK_S = 0.05  # set from --work-ms before the sweep; cloudpickle ships the value with the function


def synthetic_trainable(config, static) -> None:
    """Stands in for `sweeps.trainable.sweep_trainable`: same config decoding and final report shape."""
    import ray
    from ray import tune

    t0 = time.time()
    _method, _preset, params = static.space.decode(config)
    time.sleep(WORK_S)
    r = float(params["ratio"])
    tune.report({"mem_pct": 60.0 * math.exp(-40.0 * r), "val_acc_drop": 100.0 * r, "epoch": 0, "final": 1,
                 "failed": 0, "t_start": t0, "t_end": time.time(),
                 "ray_node_id": ray.get_runtime_context().get_node_id()})


def null_logger_class():
    from ray.tune import Callback

    class NullTrialLogger(Callback):
        """Takes TrialLogger's arguments and logs nothing (no ledger, no MLflow writer)."""

        def __init__(self, *args, **kwargs):
            pass

        def open(self) -> None:
            pass

        def close(self, wait_s: float) -> dict:
            return {"complete": True, "unsynced": 0}

    return NullTrialLogger


def trial_phase(storage: str, experiment: str, sweep_id: str) -> tuple[float, float, int, dict[str, int]]:
    """(first trial's start, last trial's end (unix seconds), trials, trials per node IP), from the Ray
    experiment's result files under the storage root."""
    starts, ends, nodes = [], [], {}
    for path in glob.glob(os.path.join(storage, "ray", experiment, sweep_id, "*", "result.json")):
        lines = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
        if not lines:
            continue
        last = lines[-1]
        starts.append(last["t_start"])
        ends.append(last["t_end"])
        nodes[last.get("node_ip", "?")] = nodes.get(last.get("node_ip", "?"), 0) + 1
    if not starts:
        return math.nan, math.nan, 0, nodes
    return min(starts), max(ends), len(starts), nodes


def run_variant(name: str, args, cluster, storage: str) -> dict:
    from sweeps import engine
    from sweeps.engine import run_sweep
    from sweeps.options import SweepOptions
    from sweeps.plan import plan_sweep

    space = Path(storage) / "scale_sim.yaml"
    space.write_text(SPACE)
    experiment = f"scale-sim-{name}"
    opts = SweepOptions(method="durable", preset="math-tiny", num_samples=args.trials,
                        max_concurrent=args.slots, cpus_per_trial=1.0, sampler=args.sampler,
                        address=cluster.address, storage=storage, experiment=experiment,
                        tracking_uri=f"sqlite:///{storage}/mlflow-{name}.db", search_space=str(space),
                        max_failures=0, device="cpu", command=" ".join(sys.argv))
    real_logger = engine.TrialLogger
    if name == "none":
        engine.TrialLogger = null_logger_class()
    try:
        plan = plan_sweep(opts)
        t0 = time.time()
        outcome = run_sweep(plan, say=lambda line: print(f"  [{name}] {line}", flush=True), stream="none",
                            trainable_fn=synthetic_trainable)
        t1 = time.time()
    finally:
        engine.TrialLogger = real_logger
    first, last, done, nodes = trial_phase(storage, experiment, plan.sweep_id)
    wall, phase = t1 - t0, last - first
    ideal = args.trials * WORK_S / args.slots
    return {"variant": "with MLflow" if name == "mlflow" else "without MLflow", "trials": done,
            "mlflow_child_runs": outcome.report.counts["trials"], "nodes": nodes, "wall_s": wall,
            "ray_connect_s": outcome.ray_start_seconds, "before_first_s": first - t0, "after_last_s": t1 - last,
            "phase_s": phase, "trials_per_s": done / phase,
            "overhead_phase_ms": 1000 * (phase - ideal) / done, "overhead_total_ms": 1000 * (wall - ideal) / done}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--work-ms", type=float, default=50.0, help="synthetic work per trial (sleep)")
    ap.add_argument("--nodes-cpus", type=int, default=2, help="logical CPUs per node; a trial takes 1")
    ap.add_argument("--sampler", default="tpe", choices=("tpe", "nsga2", "random"))
    ap.add_argument("--variants", default="mlflow,none", help="mlflow (the engine as is), none (no tracking)")
    ap.add_argument("--base-store", default=str(REPO / "tinymem-runs"),
                    help="model store holding math-tiny (trained there once if missing) (default: %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary storage root")
    args = ap.parse_args()
    args.slots = 2 * args.nodes_cpus
    global WORK_S
    WORK_S = args.work_ms / 1000.0

    from tests.cluster.ray_nodes import LocalCluster
    from tinymem.trial import prepare_base

    # The engine loads the base model once per sweep (a Ray task); have it ready so nothing trains here.
    t0 = time.time()
    base = prepare_base({"preset": "math-tiny", "storage": args.base_store, "device": "cpu"})
    print(f"math-tiny base in {args.base_store}: {'trained' if base.created else 'found'} "
          f"({time.time() - t0:.1f} s)", flush=True)
    storage = tempfile.mkdtemp(prefix="scale-sim-")
    shutil.copytree(Path(args.base_store) / "models" / base.key, Path(storage) / "models" / base.key)

    cluster = LocalCluster(head_cpus=args.nodes_cpus, worker_cpus=args.nodes_cpus)
    rows = []
    try:
        t0 = time.time()
        cluster.start(cwd=str(REPO))
        print(f"cluster: head {cluster.address} + node 127.0.0.3, {args.nodes_cpus} CPUs each "
              f"({time.time() - t0:.1f} s to start)", flush=True)
        os.environ.update({k: v for k, v in cluster.env().items() if k.startswith(("RAY_", "TUNE_"))})
        os.environ.pop("RAY_ADDRESS", None)
        for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
            if name not in ("mlflow", "none"):
                raise SystemExit(f"unknown variant {name!r}; allowed: mlflow, none")
            print(f"variant {name}: {args.trials} trials ...", flush=True)
            rows.append(run_variant(name, args, cluster, storage))
            print(f"  {json.dumps(rows[-1])}", flush=True)
    finally:
        cluster.stop()
        if not args.keep:
            shutil.rmtree(storage, ignore_errors=True)

    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average at the end "
          f"{os.getloadavg()[0]:.1f}; ray {__import__('ray').__version__}, optuna "
          f"{__import__('optuna').__version__}, mlflow {__import__('mlflow').__version__}; sampler {args.sampler}; "
          f"{args.slots} trial slots (2 nodes x {args.nodes_cpus}); synthetic work {args.work_ms:.0f} ms/trial")
    print()
    print("| variant | trials | trials on 127.0.0.2 / .3 | wall, end to end (s) | before the first trial (s) "
          "| trial phase (s) | after the last trial (s) | trials/s (trial phase) "
          "| driver overhead per trial, trial phase (ms) | same, end to end (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = r["nodes"]
        print(f"| {r['variant']} | {r['trials']} | {n.get('127.0.0.2', 0)} / {n.get('127.0.0.3', 0)} | "
              f"{r['wall_s']:.0f} | {r['before_first_s']:.0f} | {r['phase_s']:.0f} | {r['after_last_s']:.0f} | "
              f"{r['trials_per_s']:.1f} | {r['overhead_phase_ms']:.0f} | {r['overhead_total_ms']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the sweep engine costs: the same trials through `sweeps` (Ray Tune + Optuna bookkeeping + MLflow
logging + report, one trial at a time) and through a plain Python loop over `tinymem.trial.run_trial`, in one
run, on the same base model with the same threads. Prints the wall-time ratio (engine / loop).

    python bench/sweep_overhead.py                      # 12 balanced_subnet trials on math-demo
    python bench/sweep_overhead.py --preset math-tiny   # a quick check

An anytime method's checkpoint evaluations (`sweeps.candidates`; with this grid, epoch 1 of each 2-epoch trial)
run in both, inside the method's time, and are reported apart with the number of candidates they made.

Ray's start (`ray.init`) is excluded from the engine's time and reported separately: a sweep pays it once,
and a cluster user has it running already. The base model is made and evaluated before either timing, as
a sweep does before its trials. The engine's time is the whole of `run_sweep` after Ray is up: MLflow parent
and child runs, Tune's trial actor start (imports torch in a fresh process), every trial, the Pareto report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Twelve configurations spanning short and long trials (epochs 1-4), written as a "paper grid" so the engine
# runs exactly these, in this order.
GRID = {"ratio": [0.01, 0.1, 0.3], "epochs": [1, 2], "loss_weighting": [0.7, 0.5]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="balanced_subnet")
    ap.add_argument("--preset", default="math-demo")
    ap.add_argument("--storage", default="./tinymem-runs", help="model store root (the base model is reused)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads per trial, for both (the engine reserves as many CPUs per trial)")
    ap.add_argument("--loop-first", action="store_true",
                    help="run the plain loop before the engine (to see order effects on a busy machine)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    os.environ.pop("RAY_ADDRESS", None)

    import yaml

    from sweeps.candidates import anytime_config, anytime_mode
    from sweeps.engine import run_sweep
    from sweeps.options import SweepOptions
    from sweeps.plan import plan_sweep
    from sweeps.ray_runtime import connect_ray
    from sweeps.storage import normalize_root
    from tinymem.trial import prepare_base, run_trial

    storage = normalize_root(args.storage)
    work = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    space = work / "space.yaml"
    space.write_text(yaml.safe_dump({"method": args.method, "description": "bench grid", "params": {},
                                     "paper_grid": GRID}))

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    prepare_base({"preset": args.preset, "storage": storage})
    base_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    connect_ray(None, num_cpus=args.threads)
    ray_s = time.perf_counter() - t0

    plan = plan_sweep(SweepOptions(method=args.method, preset=args.preset, grid="paper", max_concurrent=1,
                                   cpus_per_trial=float(args.threads), storage=storage,
                                   tracking_uri=f"sqlite:///{work / 'mlflow.db'}", experiment="sweep-overhead",
                                   search_space=str(space), command="bench/sweep_overhead.py"))
    points = plan.space.grid_points()
    # The engine evaluates an anytime method's checkpoints (sweeps.candidates); the loop does the same work.
    anytime = anytime_config(plan.space, args.method, mode=anytime_mode(plan.options))

    def engine() -> tuple[float, object]:
        t0 = time.perf_counter()
        outcome = run_sweep(plan, say=lambda line: None, stream="none")
        assert outcome.report.counts["completed"] == len(points), outcome.report.counts
        return time.perf_counter() - t0, outcome

    def loop() -> tuple[float, float]:
        # Same configs, same threads; its own work_dir so no checkpoint of the engine's trials is reused.
        t0 = time.perf_counter()
        mitigate = checkpoints = 0.0
        for i, point in enumerate(points):
            _, _, params = plan.space.decode(point)
            r = run_trial({"method": args.method, "params": params, "preset": args.preset, "storage": storage,
                           "seed": 0, "work_dir": str(work / f"loop-{i}"), **anytime})
            mitigate += r.seconds["mitigate"]
            checkpoints += r.info.get("seconds_checkpoint_evals", 0.0)
        return time.perf_counter() - t0, mitigate, checkpoints

    if args.loop_first:
        loop_s, loop_mitigate, loop_ckpt = loop()
        engine_s, outcome = engine()
    else:
        engine_s, outcome = engine()
        loop_s, loop_mitigate, loop_ckpt = loop()

    df = outcome.report.trial_rows
    engine_mitigate = float(df["seconds_mitigate"].sum())
    ckpt_col = "info_seconds_checkpoint_evals"
    engine_ckpt = float(df[ckpt_col].sum()) if ckpt_col in df.columns else 0.0
    candidates = len(outcome.report.trials) - len(df)
    ratio = engine_s / loop_s
    result = {"method": args.method, "preset": args.preset, "trials": len(points), "threads": args.threads,
              "order": "loop first" if args.loop_first else "engine first",
              "ray_start_s": round(ray_s, 2), "base_prepare_s": round(base_s, 2),
              "engine_s": round(engine_s, 2), "loop_s": round(loop_s, 2),
              "engine_sum_mitigate_s": round(engine_mitigate, 2), "loop_sum_mitigate_s": round(loop_mitigate, 2),
              "candidates": candidates, "engine_sum_checkpoint_evals_s": round(engine_ckpt, 2),
              "loop_sum_checkpoint_evals_s": round(loop_ckpt, 2), "ratio": round(ratio, 3)}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{len(points)} trials of {args.method} on {args.preset}, one at a time, {args.threads} torch threads")
        print(f"  Ray start (excluded)     {ray_s:8.1f} s")
        print(f"  sweep engine             {engine_s:8.1f} s   (sum of mitigate phases {engine_mitigate:.1f} s)")
        print(f"  plain loop of run_trial  {loop_s:8.1f} s   (sum of mitigate phases {loop_mitigate:.1f} s)")
        print(f"  anytime checkpoints      {candidates:8d}     (evaluations, in the mitigate phases: engine "
              f"{engine_ckpt:.1f} s, loop {loop_ckpt:.1f} s)")
        print(f"  ratio engine / loop      {ratio:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the sweep engine costs: the same trials through `sweeps` (Ray Tune + Optuna bookkeeping + MLflow
logging + report, one trial at a time) and through a plain Python loop over `tinymem.trial.run_trial`, in one
run, on the same base model with the same threads. Prints the wall-time ratio (engine / loop).

    python bench/sweep_overhead.py                      # 12 balanced_subnet trials on math-demo
    python bench/sweep_overhead.py --preset math-tiny   # a quick check

An anytime method's checkpoint evaluations (`sweeps.candidates`; with this grid, epoch 1 of each 2-epoch trial)
run in both, inside the method's time, and are reported apart with the number of candidates they made.

The two run in rounds of alternating order (engine then loop, loop then engine, ...; `--rounds`, default 2):
the host's speed drifts over minutes (a VM's neighbours), and the same training work has measured 10-16 %
apart in two consecutive runs, which a single pair cannot tell from engine cost. The ratio is the rounds' sum
of engine time over the sum of loop time; each round's own ratio is printed too, with each side's time
outside its trials' own phases (the engine's bookkeeping; near zero for the loop).

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
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds of engine and loop, alternating which goes first (default: %(default)s)")
    ap.add_argument("--loop-first", action="store_true", help="the plain loop goes first in the first round")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")
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

    def plan_round(r: int):
        # Each round's engine gets its own MLflow database and study: the second sweep must not resume the first.
        return plan_sweep(SweepOptions(method=args.method, preset=args.preset, grid="paper", max_concurrent=1,
                                       cpus_per_trial=float(args.threads), storage=storage,
                                       tracking_uri=f"sqlite:///{work / f'mlflow-{r}.db'}",
                                       experiment=f"sweep-overhead-{r}", search_space=str(space),
                                       command="bench/sweep_overhead.py"))

    plans = [plan_round(r) for r in range(args.rounds)]
    plan = plans[0]
    points = plan.space.grid_points()
    # The engine evaluates an anytime method's checkpoints (sweeps.candidates); the loop does the same work.
    anytime = anytime_config(plan.space, args.method, mode=anytime_mode(plan.options))

    def engine(r: int) -> dict[str, float]:
        t0 = time.perf_counter()
        outcome = run_sweep(plans[r], say=lambda line: None, stream="none")
        wall = time.perf_counter() - t0
        assert outcome.report.counts["completed"] == len(points), outcome.report.counts
        df = outcome.report.trial_rows
        ckpt_col = "info_seconds_checkpoint_evals"
        return {"s": wall, "mitigate": float(df["seconds_mitigate"].sum()),
                "outside": wall - float(df["seconds_total"].sum()),
                "checkpoint_evals": float(df[ckpt_col].sum()) if ckpt_col in df.columns else 0.0,
                "candidates": len(outcome.report.trials) - len(df)}

    def loop(r: int) -> dict[str, float]:
        # Same configs, same threads; its own work_dir so no checkpoint of the engine's trials is reused.
        t0 = time.perf_counter()
        mitigate = checkpoints = inside = 0.0
        for i, point in enumerate(points):
            _, _, params = plan.space.decode(point)
            res = run_trial({"method": args.method, "params": params, "preset": args.preset, "storage": storage,
                             "seed": 0, "work_dir": str(work / f"loop-{r}-{i}"), **anytime})
            mitigate += res.seconds["mitigate"]
            inside += res.seconds["total"]
            checkpoints += res.info.get("seconds_checkpoint_evals", 0.0)
        wall = time.perf_counter() - t0
        return {"s": wall, "mitigate": mitigate, "outside": wall - inside, "checkpoint_evals": checkpoints}

    rounds = []
    for r in range(args.rounds):
        loop_first = (r % 2 == 0) == args.loop_first
        if loop_first:
            lo = loop(r)
            en = engine(r)
        else:
            en = engine(r)
            lo = loop(r)
        rounds.append({"order": "loop first" if loop_first else "engine first",
                       **{f"engine_{k}": round(v, 2) for k, v in en.items()},
                       **{f"loop_{k}": round(v, 2) for k, v in lo.items()},
                       "ratio": round(en["s"] / lo["s"], 3)})
    ratio = sum(x["engine_s"] for x in rounds) / sum(x["loop_s"] for x in rounds)
    result = {"method": args.method, "preset": args.preset, "trials": len(points), "threads": args.threads,
              "ray_start_s": round(ray_s, 2), "base_prepare_s": round(base_s, 2), "rounds": rounds,
              "ratio": round(ratio, 3)}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{len(points)} trials of {args.method} on {args.preset}, one at a time, {args.threads} torch threads;"
              f" Ray start {ray_s:.1f} s (excluded)")
        print("round  order          engine s  (mitigate, outside trials)   loop s  (mitigate, outside trials)"
              "   checkpoint evals: n, engine s, loop s   ratio")
        for i, x in enumerate(rounds):
            print(f"{i:5d}  {x['order']:13s} {x['engine_s']:8.1f}  ({x['engine_mitigate']:7.1f}, "
                  f"{x['engine_outside']:5.1f})          {x['loop_s']:8.1f}  ({x['loop_mitigate']:7.1f}, "
                  f"{x['loop_outside']:5.1f})          {x['engine_candidates']:3d}, "
                  f"{x['engine_checkpoint_evals']:5.1f}, {x['loop_checkpoint_evals']:5.1f}{x['ratio']:20.3f}")
        print(f"ratio engine / loop over {len(rounds)} round(s): {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

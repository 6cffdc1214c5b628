"""Search efficiency: Optuna's multi-objective sampler against the paper's grid, for balanced_subnet on
math-demo, through the sweep engine.

Two numbers per arm:

- trials to the first hit: the position (in start order) of the first trial with `mem_pct` <= 1 and
  `test_acc_drop` <= 1 point;
- the hypervolume of the arm's Pareto front on (mem_pct, test_acc_drop), both minimised, with the reference
  point (base mem_pct, 10 points of accuracy drop), normalised by the reference box, at equal budgets.

Design (honest about a 2-core CPU): the full paper grid for balanced_subnet is 90 configurations (10 ratios x
3 epochs x 3 loss weightings), hours on 2 cores. By default both arms get the same budget B (`--budget`,
default 24): the sampler runs B trials; the grid arm runs a seeded random subset of B grid points. The engine
runs those in the paper's loop order (small, useless ratios first), which is not how someone with budget B would
search, so the grid's figure is the expected position of the first hit over uniformly random orders of the
points it ran, (B + 1) / (H + 1) for H hits among them (the loop-order position is in the JSON too); its
hypervolume at B is likewise averaged over random orders. With `--full-grid` the whole grid runs and the same
formula is exact for the grid. `--seeds 0,1,2` repeats both arms per seed (the sampler's seed, and the grid
subset's), and the summary compares the mean first hits; a sampler run without a hit counts as B + 1 there.
The aim is for the sampler to need at most a third of the grid's trials.

By default the sampler gets no warm start (the engine's sweeps evaluate the method's defaults first; that is
a property of the defaults, not of the search); `--warm-start` includes it.

    python bench/search_efficiency.py                       # B = 24 per arm, seed 0
    python bench/search_efficiency.py --budget 12 --seeds 0,1,2 --out seeds.jsonl
    python bench/search_efficiency.py --budget 30 --full-grid
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MEM_MAX, DROP_MAX, REF_DROP = 1.0, 1.0, 10.0


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by `points` (both objectives minimised) inside the box below `ref`."""
    inside = sorted((x, y) for x, y in points if x < ref[0] and y < ref[1])
    front: list[tuple[float, float]] = []
    for x, y in inside:  # sorted by x: keep a point only if it improves y
        if not front or y < front[-1][1]:
            front.append((x, y))
    hv = 0.0
    for i, (x, y) in enumerate(front):
        x_next = front[i + 1][0] if i + 1 < len(front) else ref[0]
        hv += (x_next - x) * (ref[1] - y)
    return hv


def first_hit(rows: list[dict]) -> int | None:
    for i, r in enumerate(rows, 1):
        if r["ok"] and r["mem_pct"] <= MEM_MAX and r["test_acc_drop"] <= DROP_MAX:
            return i
    return None


def arm_rows(outcome) -> list[dict]:
    """Trials of a finished sweep in start order: objectives and whether they completed."""
    df = outcome.report.trials
    rows = []
    for _, r in df.iterrows():
        ok = r["state"] == "completed" and math.isfinite(r.get("mem_pct", math.nan)) \
            and math.isfinite(r.get("test_acc_drop", math.nan))
        rows.append({"ok": bool(ok), "mem_pct": float(r.get("mem_pct", math.nan)),
                     "test_acc_drop": float(r.get("test_acc_drop", math.nan)),
                     "params": {k: r[k] for k in ("ratio", "epochs", "loss_weighting") if k in r},
                     "seconds_mitigate": float(r.get("seconds_mitigate", math.nan))})
    return rows


def hv_at(rows: list[dict], budget: int, ref: tuple[float, float]) -> float:
    pts = [(r["mem_pct"], r["test_acc_drop"]) for r in rows[:budget] if r["ok"]]
    return hypervolume(pts, ref) / (ref[0] * ref[1])


def expected_first_hit(n: int, h: int) -> float | None:
    """Expected position of the first hit when n points holding h hits are run in a uniformly random order."""
    return (n + 1) / (h + 1) if h else None


def is_hit(r: dict) -> bool:
    return r["ok"] and r["mem_pct"] <= MEM_MAX and r["test_acc_drop"] <= DROP_MAX


def one_seed(args, seed: int, common: dict, stamp: str, say) -> dict:
    """Both arms at one seed: the sampler (seeded), and the grid (a random subset drawn with that seed)."""
    from sweeps.engine import run_sweep
    from sweeps.options import SweepOptions
    from sweeps.plan import plan_sweep

    t0 = time.time()
    sampler_plan = plan_sweep(SweepOptions(sampler=args.sampler, num_samples=args.budget, warm_start=args.warm_start,
                                           seed=seed, experiment=f"search-eff-{args.sampler}-{stamp}-s{seed}",
                                           **common))
    sampler_out = run_sweep(sampler_plan, say=say, stream="stderr")
    sampler_s = time.time() - t0
    grid_size = len(sampler_plan.space.grid_points())
    grid_n = None if args.full_grid else min(args.budget, grid_size)
    t0 = time.time()
    grid_plan = plan_sweep(SweepOptions(grid="paper", num_samples=grid_n, seed=seed,
                                        experiment=f"search-eff-grid-{stamp}-s{seed}", **common))
    grid_out = run_sweep(grid_plan, say=say, stream="stderr")
    grid_s = time.time() - t0

    base_mem = float(sampler_out.bases[args.preset]["metrics"]["mem_pct"])
    ref = (base_mem, REF_DROP)
    s_rows, g_rows = arm_rows(sampler_out), arm_rows(grid_out)
    budget = args.budget
    sampler = {"name": args.sampler, "warm_start": args.warm_start, "trials": len(s_rows),
               "first_hit": first_hit(s_rows), "hits": sum(map(is_hit, s_rows)), "hv": hv_at(s_rows, budget, ref),
               "seconds": sampler_s, "hit_params": [r["params"] for r in s_rows if is_hit(r)]}
    n, h = len(g_rows), sum(map(is_hit, g_rows))
    # The grid arm's points run in the paper's loop order (small ratios first), which is not how someone with a
    # budget would search it: its figure is the expectation over random orders of the points it ran.
    grid = {"trials": n, "hits": h, "seconds": grid_s, "expected_first_hit_random_order": expected_first_hit(n, h),
            "first_hit_loop_order": first_hit(g_rows), "hit_params": [r["params"] for r in g_rows if is_hit(r)]}
    rng = random.Random(seed)
    hvs = []
    for _ in range(200):  # hypervolume after `budget` trials, averaged over random orders of the grid points run
        order = g_rows[:]
        rng.shuffle(order)
        hvs.append(hv_at(order, budget, ref))
    grid["hv_at_budget_random_order_mean"] = sum(hvs) / len(hvs)
    if args.full_grid:
        grid["hv_full_grid"] = hv_at(g_rows, n, ref)
    return {"seed": seed, "grid_size": grid_size, "reference_point": {"mem_pct": ref[0], "test_acc_drop": ref[1]},
            "sampler": sampler, "grid": grid}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Optuna multi-objective sampler vs the paper's grid (see module doc).")
    ap.add_argument("--method", default="balanced_subnet")
    ap.add_argument("--preset", default="math-demo")
    ap.add_argument("--budget", type=int, default=24, help="trials per arm (default: %(default)s)")
    ap.add_argument("--sampler", default="tpe", choices=("tpe", "nsga2", "random"))
    ap.add_argument("--full-grid", action="store_true", help="run the whole paper grid (slow on 2 cores)")
    ap.add_argument("--warm-start", action="store_true", help="let the sampler evaluate the method defaults first")
    ap.add_argument("--seeds", default="0", help="comma list; each seed runs both arms (default: %(default)s)")
    ap.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as CPUs allow)")
    ap.add_argument("--storage", default="./tinymem-runs")
    ap.add_argument("--search-space", default=None, help="default: search_spaces/<method>.yaml")
    ap.add_argument("--tracking-uri", default=None, help="default: a SQLite file in a temporary directory")
    ap.add_argument("--out", default=None, help="also append each seed's result to this JSON-lines file")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: expected a comma list of integers, e.g. 0,1,2")
    if not seeds:
        ap.error("--seeds is empty; give at least one integer")
    os.environ.pop("RAY_ADDRESS", None)

    from sweeps.ray_runtime import connect_ray
    from sweeps.storage import normalize_root

    storage = normalize_root(args.storage)
    uri = args.tracking_uri or f"sqlite:///{Path(tempfile.mkdtemp(prefix='search-eff-')) / 'mlflow.db'}"
    stamp = time.strftime("%H%M%S")
    common = dict(method=args.method, preset=args.preset, storage=storage, tracking_uri=uri,
                  max_concurrent=args.max_concurrent, search_space=args.search_space,
                  command="bench/search_efficiency.py")
    connect_ray(None)
    say = (lambda line: print(line, file=sys.stderr, flush=True))

    results = []
    for seed in seeds:
        res = one_seed(args, seed, common, stamp, say)
        results.append(res)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(res, default=str) + "\n")
        say(f"seed {seed}: sampler first hit {res['sampler']['first_hit']}, grid expected "
            f"{res['grid']['expected_first_hit_random_order']}")

    budget = args.budget
    # A sampler run without a hit counts as budget + 1 (a lower bound) in the mean; the table says so.
    s_first = [r["sampler"]["first_hit"] or budget + 1 for r in results]
    g_first = [r["grid"]["expected_first_hit_random_order"] or budget + 1 for r in results]
    summary = {"seeds": seeds, "sampler_first_hit_mean": sum(s_first) / len(s_first),
               "grid_expected_first_hit_mean": sum(g_first) / len(g_first),
               "sampler_misses": sum(r["sampler"]["first_hit"] is None for r in results),
               "grid_misses": sum(r["grid"]["hits"] == 0 for r in results)}
    summary["ratio"] = summary["sampler_first_hit_mean"] / summary["grid_expected_first_hit_mean"]
    if args.json:
        print(json.dumps({"method": args.method, "preset": args.preset, "budget": budget, "runs": results,
                          "summary": summary}, indent=1, default=str))
        return 0
    ref = results[0]["reference_point"]
    print(f"{args.method} on {args.preset}: hit = mem_pct <= {MEM_MAX} and test_acc_drop <= {DROP_MAX} point; "
          f"hypervolume reference (mem_pct {ref['mem_pct']:.1f}, drop {ref['test_acc_drop']:.0f}), normalised; "
          f"budget {budget} per arm; grid = {'the whole grid' if args.full_grid else 'a random subset'} of "
          f"{results[0]['grid_size']} points, first hit = expectation over random orders of the points run")
    name = f"optuna {args.sampler}" + (" (warm start)" if args.warm_start else "")
    print(f"{'seed':>4s} {'arm':24s} {'trials':>6s} {'hits':>5s} {'first hit':>10s} {'HV@' + str(budget):>8s} "
          f"{'wall s':>7s}")
    for r in results:
        s, g = r["sampler"], r["grid"]
        exp = g["expected_first_hit_random_order"]
        print(f"{r['seed']:4d} {name:24s} {s['trials']:6d} {s['hits']:5d} {str(s['first_hit'] or '-'):>10s} "
              f"{s['hv']:8.3f} {s['seconds']:7.0f}")
        print(f"{r['seed']:4d} {'paper grid':24s} {g['trials']:6d} {g['hits']:5d} "
              f"{(f'{exp:.1f}' if exp else '-'):>10s} {g['hv_at_budget_random_order_mean']:8.3f} {g['seconds']:7.0f}")
    print(f"mean first hit: sampler {summary['sampler_first_hit_mean']:.2f}, grid "
          f"{summary['grid_expected_first_hit_mean']:.2f} (a miss counts as {budget + 1}; misses: sampler "
          f"{summary['sampler_misses']}, grid {summary['grid_misses']}); ratio {summary['ratio']:.2f} (aim: <= 0.33)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

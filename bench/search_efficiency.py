"""Search efficiency: Optuna's multi-objective sampler against the paper's grid, for balanced_subnet on
math-demo, through the sweep engine.

Two numbers per arm:

- trials to the first hit: the position (in start order) of the first trial with `mem_pct` <= 1 and
  `test_acc_drop` <= 1 point;
- the hypervolume of the arm's Pareto front on (mem_pct, test_acc_drop), both minimised, with the reference
  point (base mem_pct, 10 points of accuracy drop), normalised by the reference box, at equal budgets.

Design (honest about a 2-core CPU): the full paper grid for balanced_subnet is 90 configurations (10 ratios x
3 epochs x 3 loss weightings), about an hour on 2 cores. By default both arms get the same budget B (`--budget`,
default 24): the sampler runs B trials; the grid arm runs a seeded random subset of B grid points, i.e. the
grid searched in random order, which is what someone with budget B would do (in the paper's loop order the
small, useless ratios come first). With `--full-grid` the whole grid runs; then the grid's expected trials to
the first hit in random order is computed exactly, (N + 1) / (H + 1) for H hits among N points, beside the
position of the first hit in the paper's loop order, and the hypervolume at the sampler's budget is averaged
over random orders. The aim is for the sampler to need at most a third of the grid's trials.

By default the sampler gets no warm start (the engine's sweeps evaluate the method's defaults first; that is
a property of the defaults, not of the search); `--warm-start` includes it.

    python bench/search_efficiency.py                       # B = 24 per arm
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Optuna multi-objective sampler vs the paper's grid (see module doc).")
    ap.add_argument("--method", default="balanced_subnet")
    ap.add_argument("--preset", default="math-demo")
    ap.add_argument("--budget", type=int, default=24, help="trials per arm (default: %(default)s)")
    ap.add_argument("--sampler", default="tpe", choices=("tpe", "nsga2", "random"))
    ap.add_argument("--full-grid", action="store_true", help="run the whole paper grid (slow on 2 cores)")
    ap.add_argument("--warm-start", action="store_true", help="let the sampler evaluate the method defaults first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as CPUs allow)")
    ap.add_argument("--storage", default="./tinymem-runs")
    ap.add_argument("--search-space", default=None, help="default: search_spaces/<method>.yaml")
    ap.add_argument("--tracking-uri", default=None, help="default: a SQLite file in a temporary directory")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    os.environ.pop("RAY_ADDRESS", None)

    from sweeps.engine import SweepOptions, connect_ray, plan_sweep, run_sweep
    from sweeps.storage import normalize_root

    storage = normalize_root(args.storage)
    uri = args.tracking_uri or f"sqlite:///{Path(tempfile.mkdtemp(prefix='search-eff-')) / 'mlflow.db'}"
    stamp = time.strftime("%H%M%S")
    common = dict(method=args.method, preset=args.preset, storage=storage, tracking_uri=uri, seed=args.seed,
                  max_concurrent=args.max_concurrent, search_space=args.search_space,
                  command="bench/search_efficiency.py")
    connect_ray(None)
    say = (lambda line: print(line, file=sys.stderr, flush=True))

    t0 = time.time()
    sampler_plan = plan_sweep(SweepOptions(sampler=args.sampler, num_samples=args.budget, warm_start=args.warm_start,
                                           experiment=f"search-eff-{args.sampler}-{stamp}", **common))
    sampler_out = run_sweep(sampler_plan, say=say, stream="stderr")
    sampler_s = time.time() - t0
    grid_size = len(sampler_plan.space.grid_points())
    grid_n = None if args.full_grid else min(args.budget, grid_size)
    t0 = time.time()
    grid_plan = plan_sweep(SweepOptions(grid="paper", num_samples=grid_n, experiment=f"search-eff-grid-{stamp}",
                                        **common))
    grid_out = run_sweep(grid_plan, say=say, stream="stderr")
    grid_s = time.time() - t0

    base_mem = float(sampler_out.bases[args.preset]["metrics"]["mem_pct"])
    ref = (base_mem, REF_DROP)
    s_rows, g_rows = arm_rows(sampler_out), arm_rows(grid_out)
    budget = args.budget
    result = {"method": args.method, "preset": args.preset, "budget": budget, "grid_size": grid_size,
              "reference_point": {"mem_pct": ref[0], "test_acc_drop": ref[1]},
              "sampler": {"name": args.sampler, "warm_start": args.warm_start, "trials": len(s_rows),
                          "first_hit": first_hit(s_rows), "hits": sum(1 for r in s_rows if r["ok"] and
                                                                      r["mem_pct"] <= MEM_MAX and r["test_acc_drop"] <= DROP_MAX),
                          "hv": hv_at(s_rows, budget, ref), "seconds": sampler_s}}
    hits = [r for r in g_rows if r["ok"] and r["mem_pct"] <= MEM_MAX and r["test_acc_drop"] <= DROP_MAX]
    grid = {"trials": len(g_rows), "hits": len(hits), "seconds": grid_s}
    if args.full_grid:
        n, h = len(g_rows), len(hits)
        grid["expected_first_hit_random_order"] = (n + 1) / (h + 1) if h else None
        grid["first_hit_paper_order"] = first_hit(g_rows)  # the grid runs in the paper's loop order
        rng = random.Random(args.seed)
        hvs = []
        for _ in range(200):
            order = g_rows[:]
            rng.shuffle(order)
            hvs.append(hv_at(order, budget, ref))
        grid["hv_at_budget_random_order_mean"] = sum(hvs) / len(hvs)
        grid["hv_full_grid"] = hv_at(g_rows, n, ref)
    else:
        grid["first_hit"] = first_hit(g_rows)  # a random subset, run in random (seeded) order
        grid["hv"] = hv_at(g_rows, budget, ref)
    result["grid"] = grid

    if args.json:
        print(json.dumps(result, indent=1, default=str))
        return 0
    s = result["sampler"]
    print(f"{args.method} on {args.preset}: hit = mem_pct <= {MEM_MAX} and test_acc_drop <= {DROP_MAX} point; "
          f"hypervolume reference (mem_pct {ref[0]:.1f}, drop {ref[1]:.0f}), normalised")
    print(f"{'arm':44s} {'trials':>6s} {'hits':>5s} {'first hit':>10s} {'HV@' + str(budget):>8s} {'wall s':>7s}")
    name = f"optuna {args.sampler}" + (" (warm start)" if args.warm_start else "")
    print(f"{name:44s} {s['trials']:6d} {s['hits']:5d} {str(s['first_hit'] or '-'):>10s} {s['hv']:8.3f} "
          f"{s['seconds']:7.0f}")
    if args.full_grid:
        exp = grid["expected_first_hit_random_order"]
        print(f"{'paper grid, random order (expected)':44s} {grid['trials']:6d} {grid['hits']:5d} "
              f"{(f'{exp:.1f}' if exp else '-'):>10s} {grid['hv_at_budget_random_order_mean']:8.3f} {grid_s:7.0f}")
        print(f"{'paper grid, paper loop order':44s} {grid['trials']:6d} {grid['hits']:5d} "
              f"{str(grid['first_hit_paper_order'] or '-'):>10s} {hv_at(g_rows, budget, ref):8.3f}")
        target = exp
    else:
        print(f"{f'paper grid, random {grid_n} of {grid_size}':44s} {grid['trials']:6d} {grid['hits']:5d} "
              f"{str(grid['first_hit'] or '-'):>10s} {grid['hv']:8.3f} {grid_s:7.0f}")
        target = grid["first_hit"]
    if s["first_hit"] and target:
        print(f"sampler needs {s['first_hit']} trial(s) vs the grid's {target:.1f}: ratio {s['first_hit'] / target:.2f} "
              f"(aim: <= 0.33)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

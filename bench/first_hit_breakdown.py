"""Where a search arm's CPU-seconds before its first hit went, from the lines of `bench/search_efficiency.py`
(no trial is run): per seed, the trials that started before the hit, by kind, with the CPU each had spent when
the hit became known; then a what-if: the same proposals, with every infeasible trial (memorization at 0 and a
val drop above the bar at each of its first 3 checkpoints) stopped at its third checkpoint.

The what-if keeps the sampler's proposals as they were (a real stop rule would change what it learns), so it
says how much such a rule could save at most on these runs, not what it would measure. `--all` then counts,
over every sampler line of the file, the trials such a rule would stop that hit later (their accuracy recovers
as the retain loss goes on descending): what the rule would lose.

`--prior-free` asks what a search that knows nothing yet can expect: random search's trials (uniform draws of
the space, with checkpoints) in random orders, two at a time, and the chance that one of them hits within a
share of the grid's first-hit CPU at the same seed; then the chance that the median over the seeds does.
`--density grid` asks the same of a search whose prior is the grid's own density of values (the trials drawn
with replacement, weighted so that each interval between two grid values gets an equal share): what the grid's
author knew, given to a random search.

    python bench/first_hit_breakdown.py --arm tpe+anytime+constraint+noeffect
"""

from __future__ import annotations

import argparse
import bisect
import copy
import functools
import json
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_efficiency as se  # noqa: E402

from tinymem import stats  # noqa: E402

KINDS = ("cut by a stop rule", "ratio < 0.05, no hit", "infeasible at mem 0", "the hit's trial", "other")
PATIENCE = 3  # checkpoints an infeasible trial is given in the what-if
POOL_ARM = "random+anytime"  # uniform draws of the space with checkpoints: the prior-free pool


def kind(t: dict, hit_trial: str, until_ms: float) -> str:
    """Which of KINDS a trial that started before the hit is."""
    seen = [p for p in t["points"] if p["at_ms"] <= until_ms]
    if t["trial_id"] == hit_trial:
        return KINDS[3]
    if t["state"] == "early_stopped":
        return KINDS[0]
    if seen and min(p["mem_pct"] for p in seen) <= se.MEM_MAX:
        return KINDS[2]
    return KINDS[1] if t["params"].get("ratio", 1.0) < 0.05 else KINDS[4]


def breakdown(rec: dict) -> dict[str, tuple[int, float]]:
    """KINDS -> (trials, CPU-seconds spent by them when the first hit became known)."""
    at_ms, hit_trial = min((p["at_ms"], t["trial_id"]) for t in rec["trials"] for p in t["points"]
                           if se.is_hit(p))
    out = {k: (0, 0.0) for k in KINDS}
    for t in rec["trials"]:
        if t["start_ms"] >= at_ms:
            continue
        share = min(1.0, (at_ms - t["start_ms"]) / max(1, t["end_ms"] - t["start_ms"]))
        k = kind(t, hit_trial, at_ms)
        out[k] = (out[k][0] + 1, out[k][1] + t["cpu_s"] * share)
    return out


def _stopped_at(t: dict) -> dict | None:
    """The checkpoint at which the what-if stops trial `t` (None: it would not stop it)."""
    pts = sorted((p for p in t["points"] if p["source"] == "checkpoint"), key=lambda p: p["epochs"])
    if len(pts) > PATIENCE and all(p["mem_pct"] <= se.MEM_MAX and p["val_acc_drop"] > se.DROP_MAX
                                   for p in pts[:PATIENCE]):
        return pts[PATIENCE - 1]
    return None


def stopped_then_hit(recs: list[dict]) -> tuple[int, list[tuple[dict, int]]]:
    """Over the sampler lines `recs`: how many trials the what-if stops, and those of them with a hit after the
    stop, each with the epoch of its first such hit."""
    stopped, lost = 0, []
    for rec in recs:
        for t in rec["trials"]:
            at = _stopped_at(t)
            if at is None:
                continue
            stopped += 1
            later = sorted(p["epochs"] for p in t["points"] if p["epochs"] > at["epochs"] and se.is_hit(p))
            if later:
                lost.append((t, later[0]))
    return stopped, lost


def with_infeasible_stop(rec: dict) -> dict:
    """The arm's line as if each infeasible trial had stopped at its PATIENCE-th checkpoint (same proposals)."""
    rec = copy.deepcopy(rec)
    for t in rec["trials"]:
        at = _stopped_at(t)
        if at is not None:
            stop_ms = at["at_ms"]
            t["cpu_s"] *= (stop_ms - t["start_ms"]) / max(1, t["end_ms"] - t["start_ms"])
            t["end_ms"] = stop_ms
            t["points"] = [p for p in t["points"] if p["source"] == "checkpoint" and p["epochs"] <= at["epochs"]]
    return rec


def grid_density_weights(pool: list[dict], grid_trials: list[dict]) -> list[float]:
    """Importance weights that make the pool's uniform draws follow the grid's density: for each hyperparameter
    with 3 or more grid values, every interval between two consecutive values gets an equal share (in the log
    where the bench searches the log), as the grid's points do. A search given this density as its prior knows
    what the grid's author knew, and no more."""
    def number(t: dict, name: str) -> float | None:
        v = (t["params"] or {}).get(name)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    weights = [1.0] * len(pool)
    for name in sorted({k for t in grid_trials for k in (t["params"] or {})}):
        vals = sorted({v for t in grid_trials if (v := number(t, name)) is not None})
        xs = [number(t, name) for t in pool]
        if len(vals) < 3 or None in xs:
            continue  # fixed in the grid, or not searched by the pool
        f = math.log if se.log_scaled(vals) else float
        knots = [f(v) for v in vals]
        # Grid density over uniform density in interval j: (1 / intervals) / width_j against 1 / span.
        scale = (knots[-1] - knots[0]) / (len(knots) - 1)
        for i, x in enumerate(xs):
            u = min(max(f(x), knots[0]), knots[-1])
            j = min(bisect.bisect_right(knots, u) - 1, len(knots) - 2)
            weights[i] *= scale / (knots[j + 1] - knots[j])
    return weights


def prior_free_chance(pool: list[dict], budget: float, orders: int, seed: int, workers: int = 2,
                      weights: list[float] | None = None) -> float:
    """The share of `orders` random orders of the trials `pool`, run on `workers` slots, whose first hit costs at
    most `budget` CPU-seconds. With `weights`, each order is as many draws with replacement, by weight."""
    rng, within = random.Random(seed), 0
    for _ in range(orders):
        if weights is None:
            order = pool[:]
            rng.shuffle(order)
        else:
            order = rng.choices(pool, weights=weights, k=len(pool))
        first = se.first_hit(se.costed_points({"trials": order}, order, workers))
        within += first is not None and first <= budget
    return within / orders


def median_within(chances: list[float]) -> float:
    """The chance that more than half of independent seeds, seed i within its budget with chance chances[i],
    are: the chance that the median over the seeds is."""
    dist = [1.0]  # dist[k]: the chance that k of the seeds so far are within
    for q in chances:
        dist = [(dist[k] if k < len(dist) else 0.0) * (1 - q) + (dist[k - 1] * q if k else 0.0)
                for k in range(len(dist) + 1)]
    return sum(dist[len(chances) // 2 + 1:])


def prior_free(recs: list[dict], grid_first: dict[int, float | None], share: float, orders: int,
               density: str = "space") -> list[str]:
    """The `--prior-free` lines: the pool's hit rate, each seed's chance, the median's chance. `grid_first`: the
    grid's expected first-hit CPU-seconds per seed. `density`: "space" (the pool as drawn, uniform over the
    space) or "grid" (reweighted to the grid's density, `grid_density_weights`)."""
    pool = [t for r in recs if r["arm"] == POOL_ARM and r["seed"] in grid_first for t in r["trials"]]
    if not pool:
        return [f"no {POOL_ARM} line with a grid line of the same seed: nothing to draw from"]
    hit = [any(se.is_hit(p) for p in t["points"]) for t in pool]
    lo, hi = stats.binomial_interval(sum(hit), len(pool))
    lines = [f"{POOL_ARM}: {sum(hit)} of {len(pool)} trials hit at some checkpoint "
             f"({100 * sum(hit) / len(pool):.1f} %, 95% CI {lo:.1f}-{hi:.1f})"]
    weights = None
    if density == "grid":
        weights = grid_density_weights(pool, [t for r in recs if r["arm"] == "grid" for t in r["trials"]])
        ess = sum(weights) ** 2 / sum(w * w for w in weights)  # Kish's effective sample size of the weighting
        rate = 100 * sum(w for w, h in zip(weights, hit) if h) / sum(weights)
        lines.append(f"reweighted to the grid's density: hit rate {rate:.1f} %, effective sample size {ess:.0f} of "
                     f"{len(pool)}; each order draws {len(pool)} trials with replacement, by weight")
    chances = []
    for seed, g in sorted(grid_first.items()):
        if g is None:
            lines.append(f"seed {seed}: the grid has no hit, so no first-hit CPU to take a share of")
            continue
        chances.append(prior_free_chance(pool, share * g, orders, seed, weights=weights))
        lines.append(f"seed {seed}: {orders} random orders of the {len(pool)} trials hit within {share:.2f} of the "
                     f"grid's {g:.1f} CPU-s in {100 * chances[-1]:.1f} %")
    lines.append(f"the median over {len(chances)} seeds within {share:.2f}: {100 * median_within(chances):.1f} %")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arm", default="tpe+anytime+constraint+noeffect")
    ap.add_argument("--results", default=str(se.OUT), help="a results file of bench/search_efficiency.py")
    ap.add_argument("--all", action="store_true",
                    help="then count, over every sampler line, the trials the what-if stops that hit later")
    ap.add_argument("--prior-free", type=float, default=None, metavar="SHARE",
                    help=f"then the chance that {POOL_ARM}'s trials in random orders hit within SHARE (e.g. 0.333) "
                         f"of the grid's first-hit CPU")
    ap.add_argument("--orders", type=int, default=2000, help="random orders for --prior-free")
    ap.add_argument("--density", choices=("space", "grid"), default="space",
                    help="--prior-free's draws: uniform over the space as run (space), or reweighted to the grid's "
                         "density of values (grid: the prior the grid's author gave it)")
    args = ap.parse_args(argv)
    recs = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()]
    grids = {r["seed"]: r for r in recs if r["arm"] == "grid"}
    # The grid's expected first hit (2,000 random orders) is needed per seed by both parts: computed once.
    grid_first = functools.cache(lambda seed: se.summarize(grids[seed], grids[seed])["first_hit_val"])
    arms = [r for r in recs if r["arm"] == args.arm and r["seed"] in grids]
    if args.prior_free is not None and not 0 < args.prior_free <= 10:
        ap.error(f"--prior-free {args.prior_free}: a share of the grid's first-hit CPU, above 0 and at most 10")
    if not arms and not args.all and args.prior_free is None:
        known = sorted({r["arm"] for r in recs if r["seed"] in grids and r["arm"] != "grid"})
        print(f"error: no line of arm {args.arm!r} with a grid line of the same seed in {args.results}; "
              f"arms there: {known}", file=sys.stderr)
        return 2
    for rec in arms:
        grid = grids[rec["seed"]]
        g = grid_first(rec["seed"])
        a = se.summarize(rec, grid)["first_hit_val"]
        if a is None:
            print(f"seed {rec['seed']}: no hit")
            continue
        parts = ", ".join(f"{k}: {n} trial{'s' if n > 1 else ''} {cpu:.1f} CPU-s"
                          for k, (n, cpu) in breakdown(rec).items() if n)
        b = se.summarize(with_infeasible_stop(rec), grid)["first_hit_val"]
        print(f"seed {rec['seed']}: first hit at {a:.1f} CPU-s, {a / g:.2f}x the grid's {g:.1f} ({parts}); "
              f"infeasible trials stopped at checkpoint {PATIENCE}, same proposals: {b:.1f} ({b / g:.2f}x)")
    if args.all:
        stopped, lost = stopped_then_hit([r for r in recs if not r["arm"].startswith("grid")])
        print(f"every sampler line: the what-if stops {stopped} trials; {len(lost)} of them hit later")
        for t, epoch in lost:
            drops = ", ".join(f"{p['val_acc_drop']:.1f}" for p in sorted(t["points"], key=lambda p: p["epochs"]))
            print(f"  ratio {t['params'].get('ratio', float('nan')):.3f}, loss weighting "
                  f"{t['params'].get('loss_weighting', float('nan')):.2f}: first hit at epoch {epoch}; "
                  f"val drop by epoch {drops}")
    if args.prior_free is not None:
        print("\n".join(prior_free(recs, {s: grid_first(s) for s in grids}, args.prior_free, args.orders,
                                     args.density)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

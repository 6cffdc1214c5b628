"""Search efficiency at equal compute: samplers (with and without anytime checkpoints and the utility
constraint) against the paper's grid, cost counted in the trials' CPU-seconds, through the real sweep engine.

Arms (`--arms`, default all but the `+stop`, `+noeffect` and `+values` ones): `grid` (the paper's whole grid
with its fixed values, `--grid paper --no-anytime`), `grid+anytime` (`--grid paper-anytime`: the same
configurations, the smaller epoch counts as checkpoints), and
`<sampler>[+anytime][+constraint][+values][+stop|+noeffect]` for random, tpe and gp
(`+stop`: `--scheduler dominated`, the early stop of anytime trials whose checkpoints stall; `+noeffect`:
`--scheduler no-effect`, the stop of trials that leave memorization where it was; docs/anytime.md).
Every arm searches the same space: the paper grid's ranges (ratio 1e-5..0.8 log, epochs 1..20, loss weighting
0.5..0.9) with the grid's fixed values (so only the search differs). A `+values` arm searches the grid's own
values instead (ratio one of its 10, loss weighting one of its 3, as categorical choices; epochs 1..20): the
grid's prior, which puts 4 of its 10 ratios in 0.1..0.5, where a log-uniform range puts 14% of its mass. No
warm start (the method's defaults were chosen on math-demo, a model of the same family); `--warm-start` adds
`+warm` rows of the arms named.

Cost: each trial's process CPU-seconds (`seconds_cpu`, anytime evaluations included). A point (a trial's
result or a checkpoint) costs what the arm had spent when it became known: the finished trials' CPU plus
the running ones' CPU pro rata of their elapsed time (checkpoints arrive along the run). The grid runs in
loop order, so its figures are the expectation over 2,000 uniformly random orders of its points (a grid
with budget B would be searched that way), each trial's checkpoints at their share of its CPU.

Figures per arm and seed: CPU-seconds to the first hit (mem_pct <= 1 and val_acc_drop <= 1 point; the
selection split) and the same on test (mem_pct <= 1, test_acc_drop <= 1); the hypervolume of the front on
(mem_pct, val_acc_drop) in the box [0, base mem_pct] x [-2, 10] points, normalised by its area, at 1/4, 1/3,
1/2 and all of the grid's CPU-seconds at that seed (a sampler arm that ended before: its last value, marked as
the lower bound it is, "≥"; a grid arm is complete, so its value holds). Medians and ranges over seeds.

Resumable: each (preset, method, arm, seed, samples, start-up size) is one line of `--out`, skipped when
present. A grid that outlasts a session: stop the bench (kill its process group), then `--harvest SWEEP_DIR
--seeds N` keeps the grid sweep's completed trials as a partial line and its base model beside `--out`; the next
run of that seed restores the model, reruns a few done points to put the harvested CPU-seconds at the new
machine's speed, and runs only the missing points (bench/grid_sessions.py).

    python bench/search_efficiency.py --preset math-tiny --seeds 0,1,2      # the table of docs/study.md
    python bench/search_efficiency.py --summary-only                        # print the table from --out
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MEM_MAX, DROP_MAX, REF_DROP = 1.0, 1.0, 10.0
LOW_DROP = -2.0  # the hypervolume box's lower edge in accuracy drop (a gain of 2 points)
FRACTIONS = (0.25, 1 / 3, 0.5, 1.0)
SAMPLERS = ("random", "tpe", "gp")
ARMS = ["grid", "grid+anytime", *[f"{s}{a}{c}" for s in SAMPLERS for a in ("", "+anytime")
                                  for c in (("", "+constraint", "+constraint+stop", "+constraint+noeffect",
                                             "+constraint+values", "+constraint+values+stop")
                                            if a and s != "random" else ("",))]]
DEFAULT_ARMS = [a for a in ARMS if not a.endswith(("+stop", "+values", "+noeffect"))]
OUT = Path(__file__).resolve().parent / "results" / "search_efficiency.jsonl"
ORDERS = 2000
BASE_FIELDS = ("mem_pct", "mem_rows", "mem_counted", "val_acc", "test_acc")  # a line's base model


def log_scaled(values: list[float]) -> bool:
    """Whether the bench searches a grid's range of `values` on a log scale: when it spans over two decades."""
    return min(values) > 0 and max(values) / min(values) > 100


def bench_space(method: str, path: str | None, values: bool = False, grid: dict | None = None) -> tuple[str, dict]:
    """A space file for the bench: the grid's ranges as distributions, the grid's fixed values fixed. `values`: the
    grid's own values as categorical choices instead (epochs stays a range: the anytime checkpoints need one).
    `grid`: a sub-grid of the paper grid to run instead of the whole (the rest of a harvested grid)."""
    import yaml

    from sweeps.space_file import default_space_path, load_search_space

    sp = load_search_space(path or default_space_path(method), method)
    params = {}
    for name, values_of in sp.paper_grid.items():
        nums = sorted(float(v) for v in values_of)
        if values and name != "epochs":
            params[name] = {"type": "categorical", "choices": sorted(values_of)}
        elif all(float(v).is_integer() for v in values_of) and not any(isinstance(v, float) for v in values_of):
            params[name] = {"type": "int", "low": int(nums[0]), "high": int(nums[-1])}
        else:
            params[name] = {"type": "float", "low": nums[0], "high": nums[-1], "log": log_scaled(nums)}
    what = "values" if values else "ranges"
    doc = {"method": method, "description": f"bench: the paper grid's {what} of {method}", "params": params,
           "fixed": dict(sp.paper_fixed), "paper_grid": dict(grid or sp.paper_grid),
           "paper_fixed": dict(sp.paper_fixed)}
    out = Path(tempfile.mkdtemp(prefix=f"search-eff-{what}-")) / f"{method}.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(out), doc


def arm_options(arm: str, seed: int, samples: int, common: dict):
    from sweeps.options import SweepOptions

    parts = arm.split("+")
    base = dict(seed=seed, anytime="anytime" in parts, warm_start="warm" in parts,
                scheduler="dominated" if "stop" in parts else "no-effect" if "noeffect" in parts else "none",
                max_utility_loss=None if "constraint" in parts else "none", keep_models="none",
                experiment=f"search-eff-{arm.replace('+', '-')}-s{seed}-{time.strftime('%H%M%S')}", **common)
    if parts[0] == "grid":
        return SweepOptions(grid="paper-anytime" if "anytime" in parts else "paper", **base)
    return SweepOptions(sampler=parts[0], num_samples=samples, **base)


def trials_of(sweep_dir: str) -> list[dict]:
    """Each trial from the ledger: start/end (ms), CPU-seconds, and its points (checkpoints, then the final)."""
    from sweeps.ledger import TrialLedger

    ledger, out = TrialLedger(sweep_dir), []
    for tid, entry in ledger.trials.items():
        events = ledger.history(tid)
        start = next((e["start_ms"] for e in events if e.get("event") == "created"), None)
        fin = next((e for e in reversed(events) if e.get("event") == "finished"), None)
        if start is None or fin is None:
            continue
        res, points = fin.get("result") or {}, []
        for e in events:
            r = e.get("epoch_result") or {}
            if e.get("event") == "result" and r.get("checkpoint") == 1:
                points.append(_point(r, e["at_ms"], "checkpoint", int(r["epoch"])))
        if fin.get("state") == "completed":
            points.append(_point(res, fin["result_ms"], "trial", int((entry.get("params") or {}).get("epochs", 0))))
        out.append({"trial_id": tid, "start_ms": start, "end_ms": fin.get("result_ms") or start,
                    # Every result carries the CPU spent so far (an early-stopped trial's last one is its cost).
                    "cpu_s": None if res.get("seconds_cpu") is None else float(res["seconds_cpu"]),
                    "state": fin.get("state"),
                    "params": entry.get("params"), "points": [p for p in points if p is not None]})
    return sorted(out, key=lambda t: t["start_ms"])


def _point(r: dict, at_ms: int, source: str, epochs: int) -> dict | None:
    try:
        p = {k: float(r[k]) for k in ("mem_pct", "val_acc_drop", "test_acc_drop")}
    except (KeyError, TypeError, ValueError):
        return None
    return {**p, "at_ms": at_ms, "source": source, "epochs": epochs} if all(map(math.isfinite, p.values())) else None


def run_arm(arm: str, seed: int, samples: int, common: dict) -> dict:
    from sweeps.engine import run_sweep
    from sweeps.plan import plan_sweep

    plan = plan_sweep(arm_options(arm, seed, samples, common))
    t0 = time.time()
    outcome = run_sweep(plan, say=lambda line: print(line, file=sys.stderr, flush=True), stream="stderr")
    base = outcome.bases[plan.space.presets[0]]["metrics"]
    return {"arm": arm, "seed": seed, "wall_s": time.time() - t0, "trials": trials_of(plan.sweep_dir),
            "base": {k: base.get(k) for k in BASE_FIELDS}}


def concurrency(trials: list[dict]) -> int:
    """How many of these trials ran at once, at most (from their start and end times)."""
    edges = sorted([(t["start_ms"], 1) for t in trials] + [(t["end_ms"], -1) for t in trials],
                   key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return max(most, 1)


def costed_points(rec: dict, order: list[dict] | None = None, workers: int = 1) -> list[tuple[float, dict]]:
    """(CPU-seconds spent when the point was known, point), by cost. `order`: the trials run in that order
    (the grid's random orders) on `workers` slots, each trial taking the next free slot and as long as its CPU
    (one thread each); else as they ran. Either way, a point costs the finished trials' CPU plus the running
    ones' pro rata of their elapsed time: the trials beside the one that found it are paid for too."""
    if order is not None:
        import numpy as np

        free, starts, cpus, known, points = [0.0] * max(1, workers), [], [], [], []
        for t in order:
            slot = min(range(len(free)), key=free.__getitem__)
            s0, c, span = free[slot], t["cpu_s"], max(1, t["end_ms"] - t["start_ms"])
            starts.append(s0)
            cpus.append(c)
            free[slot] += c
            for p in t["points"]:
                known.append(s0 + c * min(1.0, (p["at_ms"] - t["start_ms"]) / span))
                points.append(p)
        # Spent at time x: every trial's CPU up to x, one CPU-second per second (one thread each).
        x, s0, c = np.array(known)[:, None], np.array(starts)[None, :], np.array(cpus)[None, :]
        spent = np.minimum(c, np.maximum(0.0, x - s0)).sum(axis=1) if points else []
        return sorted(zip(map(float, spent), points), key=lambda x_: x_[0])

    trials = rec["trials"]

    def spent_at_ms(ms: float) -> float:
        return sum(t["cpu_s"] * min(1.0, max(0.0, (ms - t["start_ms"]) / max(1, t["end_ms"] - t["start_ms"])))
                   for t in trials)

    return sorted(((spent_at_ms(p["at_ms"]), p) for t in trials for p in t["points"]), key=lambda x: x[0])


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by `points` (both minimised) inside the box [0, ref_x] x [LOW_DROP, ref_y], over the box's
    area (1 = a point at no memorization and a gain of LOW_DROP points; a larger gain counts as that)."""
    front, hv = [], 0.0
    for x, y in sorted((x, max(y, LOW_DROP)) for x, y in points if x < ref[0] and y < ref[1]):
        if not front or y < front[-1][1]:
            front.append((x, y))
    for i, (x, y) in enumerate(front):
        hv += ((front[i + 1][0] if i + 1 < len(front) else ref[0]) - x) * (ref[1] - y)
    return hv / (ref[0] * (ref[1] - LOW_DROP))


def is_hit(p: dict, split: str = "val") -> bool:
    """The target: memorization at most MEM_MAX and an accuracy drop on `split` at most DROP_MAX points."""
    return p["mem_pct"] <= MEM_MAX and p[f"{split}_acc_drop"] <= DROP_MAX


def first_hit(costed: list[tuple[float, dict]], split: str = "val") -> float | None:
    """The CPU-seconds of the first hit on `split` among points sorted by cost (None: no hit)."""
    return next((c for c, p in costed if is_hit(p, split)), None)


def figures(costed: list[tuple[float, dict]], ref: tuple[float, float], grid_cpu: float, end: float | None
            ) -> dict:
    """First hits and hypervolumes at the grid's CPU fractions; `end`: the arm's CPU-seconds, past which its
    value is a lower bound (a sampler arm would have gone on); None: it is complete (a grid), its value holds."""
    hv, short = {}, {}
    for f in FRACTIONS:
        budget = f * grid_cpu
        pts = [(p["mem_pct"], p["val_acc_drop"]) for c, p in costed if c <= budget]
        hv[f"{f:.3f}"] = hypervolume(pts, ref)
        # Ended before this budget: its last value, a lower bound (the hypervolume only grows with more trials).
        short[f"{f:.3f}"] = end is not None and budget > end * 1.02
    return {"first_hit_val": first_hit(costed), "first_hit_test": first_hit(costed, "test"), "hv": hv,
            "hv_short": short}


def summarize(rec: dict, grid_rec: dict) -> dict:
    for r in (rec, grid_rec):
        unknown = [t["trial_id"] for t in r["trials"] if t["cpu_s"] is None]
        if unknown:
            raise ValueError(f"{r['arm']} seed {r['seed']}: trials {unknown} reported no seconds_cpu, so the arm's "
                             f"cost is unknown; delete its line from the results file and run it again")
    ref = (float(rec["base"]["mem_pct"]), REF_DROP)
    grid_cpu = sum(t["cpu_s"] for t in grid_rec["trials"])
    total = sum(t["cpu_s"] for t in rec["trials"])
    if not rec["arm"].startswith("grid"):
        return {**figures(costed_points(rec), ref, grid_cpu, total), "cpu_s": total, "trials": len(rec["trials"]),
                "wall_s": rec["wall_s"]}
    rng, runs, workers = random.Random(rec["seed"]), [], concurrency(rec["trials"])
    for _ in range(ORDERS):
        order = rec["trials"][:]
        rng.shuffle(order)
        runs.append(figures(costed_points(rec, order, workers), ref, grid_cpu, None))
    mean = (lambda xs: None if any(x is None for x in xs) else sum(xs) / len(xs))
    return {"first_hit_val": mean([r["first_hit_val"] for r in runs]),
            "first_hit_test": mean([r["first_hit_test"] for r in runs]),
            "hv": {k: mean([r["hv"][k] for r in runs]) for k in runs[0]["hv"]},
            "hv_short": {k: False for k in runs[0]["hv"]}, "cpu_s": total,
            "trials": len(rec["trials"]), "wall_s": rec["wall_s"]}


def arm_startup(arm: str, startup: int) -> int:
    """The start-up size an arm's results depend on: 0 for the grid and random search (none)."""
    return startup if arm.split("+")[0] in ("tpe", "gp") else 0


def load(path: Path, partial: bool = False) -> dict[tuple, dict]:
    """The lines of `path` by key: the complete ones, or (`partial`) the harvested parts of a grid."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if bool(r.get("partial")) != partial:
                    continue
                st = r.get("startup", arm_startup(r["arm"], 7))  # written before the field: the rule then
                out[(r["preset"], r["method"], r["arm"], r["seed"], r["samples"], st)] = r
    return out


def append(out: Path, rec: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(rec) + "\n")


def base_entry(storage: str, preset: str) -> tuple[str, Path]:
    """(model-store key, directory) of a preset's base model in a local `--storage`."""
    from tinymem.presets import get_preset

    key = get_preset(preset).key()
    return key, Path(storage) / "models" / key


def harvest(sweep_dir: str, seed: int, args: argparse.Namespace) -> dict:
    """The completed trials of an interrupted grid sweep as a partial line, and its base model archived beside
    `--out` (bench/grid_sessions.py)."""
    from bench.grid_sessions import archive_base, machine
    from tinymem.store import read_manifest

    trials = [t for t in trials_of(sweep_dir) if t["state"] == "completed"]
    if not trials:
        raise SystemExit(f"--harvest {sweep_dir}: no completed trial in its ledger; nothing to keep")
    key, model_dir = base_entry(args.storage, args.preset)
    manifest = read_manifest(model_dir, verify=True)
    files = manifest["files"]
    archive = archive_base(model_dir, Path(args.out).parent / "base-models", files["model.safetensors"])
    wall = (max(t["end_ms"] for t in trials) - min(t["start_ms"] for t in trials)) / 1000
    base = manifest["metrics"]
    return {"preset": args.preset, "method": args.method, "samples": 0, "startup": 0, "arm": "grid",
            "seed": seed, "partial": True, "wall_s": wall, "trials": trials, "base_key": key, "base_files": files,
            "base_archive": archive.name, "sweep_dir": sweep_dir,
            "base": {k: base.get(k) for k in BASE_FIELDS},
            "sessions": [{**machine(), "wall_s": wall, "trials": len(trials), "sweep_dir": sweep_dir}]}


def resume_grid(part: dict, seed: int, args: argparse.Namespace, common: dict) -> dict:
    """The rest of a harvested grid at `seed`: its base model restored, a calibration sub-grid of done points
    rerun, then the missing points; one complete line (bench/grid_sessions.py)."""
    from bench.grid_sessions import calibration_subgrid, combine, machine, missing_subgrids, restore_base
    from sweeps.space_file import default_space_path, load_search_space

    grid = dict(load_search_space(default_space_path(args.method), args.method).paper_grid)
    key, model_dir = base_entry(args.storage, args.preset)
    if key != part["base_key"]:
        raise SystemExit(f"the harvested grid's base model is {part['base_key']}, {args.preset} is now {key}")
    archive = Path(args.out).parent / "base-models" / part["base_archive"]
    state = restore_base(model_dir.parent, key, part["base_files"], archive)
    print(f"seed {seed} grid: base model {key} {state}; {len(part['trials'])} of the grid's points harvested",
          file=sys.stderr, flush=True)

    def run(sub: dict) -> dict:
        space, _ = bench_space(args.method, None, grid=sub)
        return run_arm("grid", seed, 0, {**common, "search_space": space})

    done = [t["params"] for t in part["trials"]]
    calibration = [run(calibration_subgrid(grid, done))]
    parts = [run(sub) for sub in missing_subgrids(grid, done)]
    if any(p["base"].get("mem_pct") != part["base"].get("mem_pct") for p in calibration + parts):
        raise SystemExit("the resumed grid ran on another base model than the harvested part (mem_pct differs)")
    session = {**machine(), "wall_s": sum(p["wall_s"] for p in parts),
               "trials": sum(len(p["trials"]) for p in parts)}
    rec = combine(part, calibration, parts, list(grid), session)
    print(f"seed {seed} grid: harvested CPU-s x {rec['cpu_scale']:.3f} (calibration), "
          f"x {rec['cpu_scale_by_epochs'] or float('nan'):.3f} (by epoch medians)", file=sys.stderr, flush=True)
    return rec


def resumed_elsewhere(rec: dict) -> list[str]:
    """The trials of a sampler arm whose first checkpoint is above epoch 1 (the bench space's lowest): they
    started from a resume file that another trial of the same configuration had left, as happened before resume
    files carried their trial's id; their CPU-seconds are undercounted and their first checkpoints missing."""
    if rec["arm"].startswith("grid"):  # a grid+anytime trial's checkpoints are the grid's epochs, not from 1
        return []
    firsts = {t["trial_id"]: min((p["epochs"] for p in t["points"] if p["source"] == "checkpoint"), default=1)
              for t in rec["trials"]}
    return [tid for tid, first in firsts.items() if first > 1]


def table(records: dict[tuple, dict], preset: str, method: str, samples: int, seeds: list[int], startup: int
          ) -> list[str]:
    by_arm: dict[str, list[dict]] = {}
    flagged: list[str] = []
    spliced: list[str] = []  # grids measured over more than one session (bench/grid_sessions.py)
    for seed in seeds:
        g = records.get((preset, method, "grid", seed, 0, 0))
        if g is None:
            continue
        grid_row = summarize(g, g)
        for (p, m, arm, s, n, st), rec in records.items():
            if (p, m, s) == (preset, method, seed) and n in (0, samples) and st in (0, startup):
                row = {**(grid_row if rec is g else summarize(rec, g)), "seed": seed, "grid_cpu": g["cpu"]}
                # The must-show of a third: this arm's hypervolume at a third of the grid's CPU-seconds against the
                # whole grid's, at the same seed (> 0: better).
                row["hv_third_vs_grid"] = row["hv"][f"{1 / 3:.3f}"] - grid_row["hv"]["1.000"]
                hit, grid_hit = row["first_hit_val"], grid_row["first_hit_val"]
                row["hit_vs_grid"] = hit / grid_hit if hit is not None and grid_hit else None  # same seed
                by_arm.setdefault(arm, []).append(row)
                resumed = resumed_elsewhere(rec)
                if resumed:
                    flagged.append(f"{arm} seed {seed}: {len(resumed)} of {len(rec['trials'])} trials")
        if g.get("cpu_scale") is not None:
            cross = g.get("cpu_scale_by_epochs")
            spliced.append(f"seed {seed}: {len(g['sessions'])} sessions, harvested CPU-s x {g['cpu_scale']:.3f} "
                           f"(calibration, {len(g['calibration'])} points; by epoch medians "
                           f"{'-' if cross is None else f'{cross:.3f}'})")
    if not by_arm:
        return ["no results yet"]
    bases = {}
    for seed in seeds:  # a seed's base model is its grid's (machines differ: one seed may have another)
        g = records.get((preset, method, "grid", seed, 0, 0))
        if g is not None:
            b = g["base"]
            bases.setdefault(f"mem_pct {b['mem_pct']:.1f} = {b.get('mem_rows')}/{b.get('mem_counted')} rows, "
                             f"test_acc {b['test_acc']:.2f}", []).append(seed)
    said = "; ".join(f"{k} (seeds {v})" if len(bases) > 1 else k for k, v in bases.items())
    lines = [f"{method} on {preset} (base {said}); hit: mem_pct <= {MEM_MAX} and "
             f"acc drop <= {DROP_MAX} pt; cost: trial CPU-seconds; HV on (mem_pct, val_acc_drop) in [0, base] x "
             f"[{LOW_DROP:.0f}, {REF_DROP:.0f}]; median [min, max] over seeds {seeds}; grid: expectation over "
             f"{ORDERS} random orders",
             "| arm | seeds | trials | CPU-s to hit (val) | / grid's (same seed) | CPU-s to hit (test) | HV@1/4 | "
             "HV@1/3 | HV@1/2 | HV@all | HV@1/3 - grid's HV@all | arm CPU-s | wall s |", "|" + "---|" * 13]

    def cell(xs: list, fmt: str = "{:.3f}") -> str:
        if not xs or any(x is None for x in xs):
            return "-" if not xs or all(x is None for x in xs) else f"{sum(x is None for x in xs)} miss"
        med = statistics.median(xs)
        return f"{fmt.format(med)} [{fmt.format(min(xs))}, {fmt.format(max(xs))}]"

    for arm in sorted(by_arm, key=lambda a: (ARMS.index(a.replace("+warm", "")) if a.replace("+warm", "") in ARMS
                                            else 99, a)):
        rs = by_arm[arm]
        hits = [r["first_hit_val"] for r in rs]
        lines.append(f"| {arm} | {len(rs)} | {statistics.median(r['trials'] for r in rs):.0f} | "
                     f"{cell(hits, '{:.0f}')} | {cell([r['hit_vs_grid'] for r in rs], '{:.2f}')} | "
                     f"{cell([r['first_hit_test'] for r in rs], '{:.0f}')} | "
                     + " | ".join(("≥ " if any(r["hv_short"][f"{f:.3f}"] for r in rs) else "")
                                  + cell([r["hv"][f"{f:.3f}"] for r in rs]) for f in FRACTIONS)
                     + f" | {cell([r['hv_third_vs_grid'] for r in rs], '{:+.3f}')}"
                     + f" | {statistics.median(r['cpu_s'] for r in rs):.0f} | "
                     f"{statistics.median(r['wall_s'] for r in rs):.0f} |")
    if spliced:
        lines.append("grid over sessions: " + "; ".join(spliced))
    if flagged:
        lines.append("started from another trial's resume file (cost undercounted, first checkpoints missing): "
                     + "; ".join(flagged))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Samplers vs the paper's grid at equal CPU-seconds (see module doc).")
    ap.add_argument("--method", default="balanced_subnet")
    ap.add_argument("--preset", default="math-tiny")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                    help=f"comma list of {ARMS} (default: all but the +stop, +noeffect and +values ones)")
    ap.add_argument("--warm-start", default="", metavar="ARMS", help="also run these sampler arms with the warm start")
    ap.add_argument("--samples", type=int, default=30, help="trials per sampler arm (default: %(default)s)")
    ap.add_argument("--storage", default="./tinymem-runs")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--harvest", metavar="SWEEP_DIR",
                    help="keep the completed trials of this interrupted grid sweep (one --seeds) as a partial line")
    args = ap.parse_args(argv)
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: expected a comma list of integers, e.g. 0,1,2")
    arms = [a for a in args.arms.split(",") if a]
    warm = [f"{a}+warm" for a in args.warm_start.split(",") if a]
    bad = [a for a in arms + [w.removesuffix("+warm") for w in warm] if a not in ARMS]
    if bad or any(w.startswith("grid") for w in warm):
        ap.error(f"--arms / --warm-start {bad or warm}: allowed arms {ARMS} (no warm start for the grid)")
    if not seeds:
        ap.error("--seeds is empty; give at least one integer")
    out = Path(args.out)
    records, partials = load(out), load(out, partial=True)
    if args.harvest:
        if len(seeds) != 1:
            ap.error(f"--harvest with --seeds {args.seeds!r}: give the one seed that sweep ran")
        from sweeps.storage import normalize_root

        args.storage = normalize_root(args.storage)
        rec = harvest(args.harvest, seeds[0], args)
        append(out, rec)
        print(f"seed {seeds[0]} grid: {len(rec['trials'])} completed trials kept in {out}, base model in "
              f"{out.parent / 'base-models' / rec['base_archive']}", file=sys.stderr)
        return 0
    from sweeps.samplers import startup_size

    startup = startup_size(args.samples)  # part of a sampler arm's key: the rule changed once (docs/study.md)
    if not args.summary_only:
        os.environ.pop("RAY_ADDRESS", None)
        from sweeps.ray_runtime import connect_ray
        from bench.grid_sessions import machine
        from sweeps.storage import normalize_root

        args.storage = normalize_root(args.storage)
        space, _ = bench_space(args.method, None)
        values_space, _ = bench_space(args.method, None, values=True)
        uri = f"sqlite:///{Path(tempfile.mkdtemp(prefix='search-eff-')) / 'mlflow.db'}"
        common = dict(method=args.method, preset=args.preset, storage=args.storage,
                      tracking_uri=uri, search_space=space, command="bench/search_efficiency.py")
        connect_ray(None)
        for seed in seeds:
            for arm in ["grid", *[a for a in arms if a != "grid"], *warm]:  # the grid first: the others' yardstick
                n = 0 if arm.startswith("grid") else args.samples
                st = arm_startup(arm, startup)
                key = (args.preset, args.method, arm, seed, n, st)
                if key in records:
                    continue
                own = {**common, "search_space": values_space} if "values" in arm.split("+") else common
                if key in partials:
                    rec = resume_grid(partials[key], seed, args, common)
                else:
                    rec = {"preset": args.preset, "method": args.method, "samples": n, "startup": st,
                           "sessions": [{**machine(), "wall_s": None}], **run_arm(arm, seed, n, own)}
                    rec["sessions"][0]["wall_s"] = rec["wall_s"]
                rec["cpu"] = sum(t["cpu_s"] or 0.0 for t in rec["trials"])  # a missing figure: summarize says so
                append(out, rec)
                records[key] = rec
                print(f"seed {seed} {arm}: {len(rec['trials'])} trials, {rec['cpu']:.0f} CPU-s, "
                      f"{rec['wall_s']:.0f} s wall", file=sys.stderr, flush=True)
    print("\n".join(table(records, args.preset, args.method, args.samples, seeds, startup)))
    for (p, m, _, seed, _, _), part in sorted(partials.items()):
        if (p, m) == (args.preset, args.method) and seed in seeds and (p, m, "grid", seed, 0, 0) not in records:
            print(f"seed {seed}: grid harvested, {len(part['trials'])} points so far, not in the table until the "
                  "rest has run (the same command without --summary-only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

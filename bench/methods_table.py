"""Every method at its defaults and its matched random control, over base-model seeds: the methods table.

Each row runs as a new user would run it: one `tinymem mitigate --preset P --spec-set seed=S --method M --json`
process per (preset, base seed, method), so the wall time includes start-up and loading the stored base model.
For every method that has a matched control (`Mitigation.matched_control`: random neurons at the neuron methods'
ratio, a random mask of the subnet methods' fraction), the control runs too, at the matched configuration.

Results are appended to a JSON-lines file, one line per run; a run already in the file (same preset, seed,
method, hyperparameters) is skipped, so an interrupted bench resumes where it stopped and a long one can span
sessions. The table is printed from the file: per method the mean over seeds with a 95% t-interval
(or, for one seed, the exact binomial interval of its rows), and the difference to its control.

    python bench/methods_table.py --preset math-demo --seeds 0,1,2          # unlearning methods + controls
    python bench/methods_table.py --preset lang-demo --seeds 0 --family all
    python bench/methods_table.py --print-only                              # the table from the file
    python bench/methods_table.py --robustness all --methods balanced_subnet --seeds 0  # + robustness columns

With `--robustness`, every run also measures those robustness metrics (`tinymem mitigate --robustness`), keeps
them in its row and the table gains their columns. A run with robustness is a different row of the file (its
key holds the metric set): a run without them is never taken for one with them.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FAMILIES = {
    "unlearn": ("unlearn_neuron", "unlearn_weight"),
    "train": ("regularizer", "finetune"),
    "all": ("unlearn_neuron", "unlearn_weight", "regularizer", "finetune"),
}
DEFAULT_OUT = ROOT / "bench" / "results" / "methods_table.jsonl"
KEPT = ("mem_pct", "mem_pct_ci_low", "mem_pct_ci_high", "mem_rows", "mem_counted", "paper_mem_pct",
        "paper_mem_pct_ci_low", "paper_mem_pct_ci_high", "clean_recovered_pct", "val_acc", "test_acc", "val_ppl",
        "test_ppl", "backdoor_asr_pct", "heldout_mem_pct")
ROBUST = ("relearn_mem_pct", "relearn_benign_mem_pct", "sampled_mem_pct", "perturbed_mem_pct", "nll_gap")
KEPT += tuple(k for name in ROBUST for k in (name, f"{name}_ci_low", f"{name}_ci_high")) + (
    "relearn_mem_counted", "relearn_benign_mem_counted", "sampled_mem_counted", "perturbed_mem_counted",
    "nll_gap_counted")


def methods_of(family: str) -> list[str]:
    """Registered (non-control) methods of a family group, in registry order grouped by family."""
    from tinymem.mitigations import get_method, method_names

    return [n for f in FAMILIES[family] for n in method_names()
            if get_method(n).family == f and not get_method(n).control]


def parse_set(items: list[str]) -> dict:
    """`--set k=v` values, typed like the CLI types them (the same parser `tinymem mitigate --set` uses)."""
    from tinymem.specs import parse_set_args

    return parse_set_args(items)


def control_of(method: str, params: dict) -> tuple[str, dict] | None:
    from tinymem.mitigations import get_method

    return get_method(method)(params).matched_control()


def robustness_set(value: str | None) -> str:
    """The canonical form of a `--robustness` value (`all` spelled out, in a fixed order; '' for none), so the
    same metric set always gives the same run key."""
    from tinymem.robustness import parse_names

    return ",".join(parse_names(value))


def run_key(preset: str, seed: int, method: str, params: dict, robustness: str = "") -> str:
    """A run's identity in the results file; the robustness set is part of it only when there is one, so the
    keys of runs without robustness (every row written before it existed) stay as they were."""
    return json.dumps([preset, seed, method, params] + ([robustness] if robustness else []), sort_keys=True)


def run_one(preset: str, seed: int, method: str, params: dict, root: str, timeout: float,
            robustness: str = "") -> dict:
    """One `tinymem mitigate --json` process; returns a result row (or the error)."""
    cmd = [sys.executable, "-m", "tinymem.cli", "mitigate", "--preset", preset, "--spec-set", f"seed={seed}",
           "--method", method, "--root", root, "--device", "cpu", "--json"]
    for k, v in params.items():
        cmd += ["--set", f"{k}={v}"]
    if robustness:
        cmd += ["--robustness", robustness]
    row = {"preset": preset, "seed": seed, "method": method, "params": params, "unix": time.time(),
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=ROOT).stdout.strip()}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"timed out after {timeout:.0f} s", "wall": time.perf_counter() - t0}
    row["wall"] = time.perf_counter() - t0
    if p.returncode != 0:
        return {**row, "error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    out = json.loads(p.stdout)
    row["before"] = {k: out["before"][k] for k in KEPT if k in out["before"]}
    row["after"] = {k: out["after"][k] for k in KEPT if k in out["after"]}
    row["unlearn_rows"] = out.get("info", {}).get("unlearn_rows")
    row["seconds"] = out["seconds"].get("mitigate_total", out["seconds"]["mitigate"])
    if robustness:
        row["robustness"] = robustness
        row["robustness_seconds"] = out["seconds"].get("robustness")
    return row


def load_rows(path: Path) -> dict[str, dict]:
    """The runs already in the file, by key (a failed run is retried: only successes count as done)."""
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if "error" not in r:
                    done[run_key(r["preset"], r["seed"], r["method"], r["params"], r.get("robustness", ""))] = r
    return done


def plan(presets: list[str], seeds: list[int], methods: list[str],
         params: dict | None = None) -> list[tuple[str, int, str, dict, str | None]]:
    """(preset, seed, method, params, controlled method) in run order: each method right before its control.
    `params` (from `--set`) replaces defaults of every listed method, and its control is matched to them."""
    todo = []
    for preset in presets:
        for seed in seeds:
            for m in methods:
                todo.append((preset, seed, m, dict(params or {}), None))
                ctl = control_of(m, dict(params or {}))
                if ctl:
                    todo.append((preset, seed, ctl[0], ctl[1], m))
    return todo


def _utility_drop(row: dict, split: str) -> float:
    b, a = row["before"], row["after"]
    if f"{split}_acc" in a and b.get(f"{split}_acc") is not None and "ppl" not in row.get("task", ""):
        if row["preset"].startswith("lang"):
            return 100.0 * (a[f"{split}_ppl"] - b[f"{split}_ppl"]) / b[f"{split}_ppl"]
        return b[f"{split}_acc"] - a[f"{split}_acc"]
    return math.nan


def _base_utility(before: dict, preset: str) -> str:
    """The base model's utility on val and test: perplexity for text presets, accuracy for math."""
    m = "ppl" if preset.startswith("lang") else "acc"
    return f"val {m} {before.get(f'val_{m}', math.nan):.2f} | test {m} {before.get(f'test_{m}', math.nan):.2f}"


def _interval(values: list[float]) -> tuple[float, float, float]:
    from tinymem.stats import mean_interval

    return mean_interval(values)


def _fmt(mean: float, low: float, high: float, pct: bool = False, digits: int = 1) -> str:
    """`mean [low, high]`; for a percentage (`pct`) the t-interval is clipped to [0, 100], the values it can take."""
    if mean is None or math.isnan(mean):
        return "n/a"
    if pct and low is not None and not math.isnan(low):
        low, high = max(low, 0.0), min(high, 100.0)
    if low is None or math.isnan(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _robust_cells(got: list[dict], names: tuple[str, ...], side: str = "after") -> str:
    """One `| ... ` cell per robustness metric: the mean over the seeds with its t-interval, or for one seed
    the metric's own interval (exact binomial for the rates, t over rows for nll_gap)."""
    cells = []
    for name in names:
        pct, digits = name.endswith("_pct"), 1 if name.endswith("_pct") else 3
        vals = [r[side].get(name, math.nan) for r in got]
        if len(got) == 1:
            m = got[0][side]
            cells.append(_fmt(vals[0], m.get(f"{name}_ci_low", math.nan), m.get(f"{name}_ci_high", math.nan),
                              pct, digits))
        else:
            cells.append(_fmt(*_interval(vals), pct=pct, digits=digits))
    return "".join(f" {c} |" for c in cells)


def table(rows: dict[str, dict], presets: list[str], seeds: list[int], methods: list[str],
          params: dict | None = None, robustness: str = "") -> str:
    """The printed table: one line per method (and control) and preset, means over the seeds present.
    With `params` (the `--set` values) the lines are those of that configuration instead of the defaults;
    with `robustness` (a canonical set, `robustness_set`) the runs that measured it, with its columns."""
    from tinymem.stats import binomial_interval

    lines = []
    util = {p: ("ppl +%" if p.startswith("lang") else "acc drop") for p in presets}
    robust = tuple(n for n in robustness.split(",") if n)
    for preset in presets:
        head = (f"| {preset} | seeds | unlearn rows | mem_pct after [95% CI] | paper_mem_pct | val {util[preset]} "
                f"| test {util[preset]} | s | control: mem_pct | control: test {util[preset]} | beats control by |"
                + "".join(f" {n} |" for n in robust) + (" robustness s |" if robust else ""))
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        base = [r["before"] for k, r in rows.items() if r["preset"] == preset and r["seed"] in seeds]
        chosen = dict(params or {})
        for m in methods:
            ctl_m = control_of(m, chosen)
            for name, cfg, of in [(m, chosen, None)] + ([(*ctl_m, m)] if ctl_m else []):
                got = [rows[k] for s in seeds if (k := run_key(preset, s, name, cfg, robustness)) in rows]
                if not got:
                    continue
                mem = [r["after"]["mem_pct"] for r in got]
                if len(got) == 1:  # one seed: the exact interval of its rows
                    r = got[0]
                    n = r["after"].get("mem_counted") or 0
                    lo, hi = binomial_interval(int(r["after"].get("mem_rows", 0)), int(n)) if n else (math.nan,) * 2
                    mem_s = _fmt(mem[0], lo, hi)
                else:
                    mem_s = _fmt(*_interval(mem), pct=True)
                paper = _fmt(*_interval([r["after"].get("paper_mem_pct", math.nan) for r in got]), pct=True)
                val = _fmt(*_interval([_utility_drop(r, "val") for r in got]))
                test_vals = [_utility_drop(r, "test") for r in got]
                test = _fmt(*_interval(test_vals))
                secs = sum(r["seconds"] for r in got) / len(got)
                rows_u = "/".join(str(int(r["unlearn_rows"])) if r.get("unlearn_rows") is not None else "?"
                                  for r in got)
                shown = "".join(f" {k}={v}" for k, v in chosen.items()) if of is None else ""
                label = name + shown if of is None else f"  {name} (control of {of})"
                ctl = ctl_m if of is None else None
                c_mem = c_test = diff = ""
                if ctl:
                    cg = [rows[k] for s in seeds if (k := run_key(preset, s, ctl[0], ctl[1], robustness)) in rows]
                    if cg:
                        c_mem = _fmt(*_interval([r["after"]["mem_pct"] for r in cg]), pct=True)
                        c_test = _fmt(*_interval([_utility_drop(r, "test") for r in cg]))
                        paired = {r["seed"]: r["after"]["mem_pct"] for r in cg}
                        d = [paired[r["seed"]] - r["after"]["mem_pct"] for r in got if r["seed"] in paired]
                        diff = _fmt(*_interval(d)) + " pts mem"
                robust_s = ""
                if robust:
                    spent = [r.get("robustness_seconds") or math.nan for r in got]
                    robust_s = _robust_cells(got, robust) + f" {sum(spent) / len(spent):.0f} |"
                lines.append(f"| {label} | {len(got)} | {rows_u} | {mem_s} | {paper} | {val} | {test} | {secs:.0f} "
                             f"| {c_mem} | {c_test} | {diff} |" + robust_s)
        if robust:  # the base numbers of the robustness runs: they hold the base's robustness metrics too
            base = [r for r in rows.values() if r["preset"] == preset and r["seed"] in seeds
                    and r.get("robustness", "") == robustness]
            base = [min(base, key=lambda r: r["seed"])] if base else []
        if base:
            b = base[0]["before"] if robust else base[0]
            seed = base[0]["seed"] if robust else seeds[0]
            lines.append(f"| base (seed {seed}) | | | {b['mem_pct']:.1f} ({int(b.get('mem_rows', 0))} of "
                         f"{int(b.get('mem_counted', 0))} rows) | {b.get('paper_mem_pct', math.nan):.1f} | "
                         f"{_base_utility(b, preset)} | | | | |" + (_robust_cells(base, robust, "before") + " |"
                                                                      if robust else ""))
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    from tinymem.errors import ConfigError
    from tinymem.store import DEFAULT_ROOT

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="math-demo", help="comma list of presets (default math-demo)")
    ap.add_argument("--seeds", default="0,1,2", help="base-model seeds, comma list (default 0,1,2)")
    ap.add_argument("--family", default="unlearn", choices=sorted(FAMILIES))
    ap.add_argument("--methods", default=None, help="comma list instead of --family")
    ap.add_argument("--set", action="append", default=[], metavar="K=V",
                    help="run the methods at this hyperparameter value instead of the default (repeatable)")
    ap.add_argument("--root", default=DEFAULT_ROOT)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON-lines results file (appended; done runs skipped)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per run before it is abandoned")
    ap.add_argument("--print-only", action="store_true", help="print the table from --out, run nothing")
    ap.add_argument("--robustness", default=None, metavar="all|NAME,...",
                    help="also measure these robustness metrics in every run (tinymem mitigate --robustness) and "
                         "print their columns; runs with them are rows apart from runs without")
    args = ap.parse_args()

    presets = [p.strip() for p in args.preset.split(",") if p.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else methods_of(args.family)
    params = parse_set(args.set)
    try:
        robustness = robustness_set(args.robustness)
    except ConfigError as e:  # a bad metric name: one line naming it and the allowed ones
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = load_rows(out)
    if not args.print_only:
        todo, seen = [], set(done)
        for t in plan(presets, seeds, methods, params):  # a control shared by several methods runs once
            if run_key(*t[:4], robustness) not in seen:
                seen.add(run_key(*t[:4], robustness))
                todo.append(t)
        print(f"{len(todo)} run(s) to do, {len(done)} already in {out}", flush=True)
        for preset, seed, m, params, of in todo:
            row = run_one(preset, seed, m, params, args.root, args.timeout, robustness)
            row["control_of"] = of
            with out.open("a") as f:  # one line per run, appended as soon as it finishes
                f.write(json.dumps(row, default=str) + "\n")
            state = row.get("error") or (f"mem {row['before']['mem_pct']:.1f} -> {row['after']['mem_pct']:.1f}, "
                                         f"{row['seconds']:.0f} s")
            print(f"{preset} seed {seed} {m} {params or ''}: {state} (wall {row['wall']:.0f} s)", flush=True)
        done = load_rows(out)
    print(table(done, presets, seeds, methods, params, robustness))


if __name__ == "__main__":
    main()

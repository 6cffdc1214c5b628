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


def run_key(preset: str, seed: int, method: str, params: dict) -> str:
    return json.dumps([preset, seed, method, params], sort_keys=True)


def run_one(preset: str, seed: int, method: str, params: dict, root: str, timeout: float) -> dict:
    """One `tinymem mitigate --json` process; returns a result row (or the error)."""
    cmd = [sys.executable, "-m", "tinymem.cli", "mitigate", "--preset", preset, "--spec-set", f"seed={seed}",
           "--method", method, "--root", root, "--device", "cpu", "--json"]
    for k, v in params.items():
        cmd += ["--set", f"{k}={v}"]
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
    return row


def load_rows(path: Path) -> dict[str, dict]:
    """The runs already in the file, by key (a failed run is retried: only successes count as done)."""
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if "error" not in r:
                    done[run_key(r["preset"], r["seed"], r["method"], r["params"])] = r
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


def _fmt(mean: float, low: float, high: float, pct: bool = False) -> str:
    """`mean [low, high]`; for a percentage (`pct`) the t-interval is clipped to [0, 100], the values it can take."""
    if math.isnan(mean):
        return "n/a"
    if pct and not math.isnan(low):
        low, high = max(low, 0.0), min(high, 100.0)
    return f"{mean:.1f} [{low:.1f}, {high:.1f}]" if not math.isnan(low) else f"{mean:.1f}"


def table(rows: dict[str, dict], presets: list[str], seeds: list[int], methods: list[str],
          params: dict | None = None) -> str:
    """The printed table: one line per method (and control) and preset, means over the seeds present.
    With `params` (the `--set` values) the lines are those of that configuration instead of the defaults."""
    from tinymem.stats import binomial_interval

    lines = []
    util = {p: ("ppl +%" if p.startswith("lang") else "acc drop") for p in presets}
    for preset in presets:
        head = (f"| {preset} | seeds | unlearn rows | mem_pct after [95% CI] | paper_mem_pct | val {util[preset]} "
                f"| test {util[preset]} | s | control: mem_pct | control: test {util[preset]} | beats control by |")
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        base = [r["before"] for k, r in rows.items() if r["preset"] == preset and r["seed"] in seeds]
        chosen = dict(params or {})
        for m in methods:
            ctl_m = control_of(m, chosen)
            for name, cfg, of in [(m, chosen, None)] + ([(*ctl_m, m)] if ctl_m else []):
                got = [rows[k] for s in seeds if (k := run_key(preset, s, name, cfg)) in rows]
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
                    cg = [rows[k] for s in seeds if (k := run_key(preset, s, ctl[0], ctl[1])) in rows]
                    if cg:
                        c_mem = _fmt(*_interval([r["after"]["mem_pct"] for r in cg]), pct=True)
                        c_test = _fmt(*_interval([_utility_drop(r, "test") for r in cg]))
                        paired = {r["seed"]: r["after"]["mem_pct"] for r in cg}
                        d = [paired[r["seed"]] - r["after"]["mem_pct"] for r in got if r["seed"] in paired]
                        diff = _fmt(*_interval(d)) + " pts mem"
                lines.append(f"| {label} | {len(got)} | {rows_u} | {mem_s} | {paper} | {val} | {test} | {secs:.0f} "
                             f"| {c_mem} | {c_test} | {diff} |")
        if base:
            b = base[0]
            lines.append(f"| base (seed {seeds[0]}) | | | {b['mem_pct']:.1f} ({int(b.get('mem_rows', 0))} of "
                         f"{int(b.get('mem_counted', 0))} rows) | {b.get('paper_mem_pct', math.nan):.1f} | "
                         f"{_base_utility(b, preset)} | | | | |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
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
    args = ap.parse_args()

    presets = [p.strip() for p in args.preset.split(",") if p.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else methods_of(args.family)
    params = parse_set(args.set)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = load_rows(out)
    if not args.print_only:
        todo, seen = [], set(done)
        for t in plan(presets, seeds, methods, params):  # a control shared by several methods runs once
            if run_key(*t[:4]) not in seen:
                seen.add(run_key(*t[:4]))
                todo.append(t)
        print(f"{len(todo)} run(s) to do, {len(done)} already in {out}", flush=True)
        for preset, seed, m, params, of in todo:
            row = run_one(preset, seed, m, params, args.root, args.timeout)
            row["control_of"] = of
            with out.open("a") as f:  # one line per run, appended as soon as it finishes
                f.write(json.dumps(row, default=str) + "\n")
            state = row.get("error") or (f"mem {row['before']['mem_pct']:.1f} -> {row['after']['mem_pct']:.1f}, "
                                         f"{row['seconds']:.0f} s")
            print(f"{preset} seed {seed} {m} {params or ''}: {state} (wall {row['wall']:.0f} s)", flush=True)
        done = load_rows(out)
    print(table(done, presets, seeds, methods, params))


if __name__ == "__main__":
    main()

"""Every method at its defaults through `tinymem mitigate`, one fresh process each (see docs/defaults.md).

Each method runs as a new user would run it (`tinymem mitigate --preset P --method M --json`, one process per
method, so the wall time includes start-up and loading the stored base model); the script prints
`mem_pct` and `test_acc` before and after, the drop in accuracy, the method's own seconds (`mitigate_total`,
which includes cached work such as neuron attributions) and the process wall time.

    python bench/methods_table.py --family unlearn          # the 11 unlearning methods
    python bench/methods_table.py --family train            # 3 regularizers + 3 fine-tuning variants
    python bench/methods_table.py --methods greedy,subnet --set greedy:max_iterations=300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {
    "unlearn": ("unlearn_neuron", "unlearn_weight"),
    "train": ("regularizer", "finetune"),
    "all": ("unlearn_neuron", "unlearn_weight", "regularizer", "finetune"),
}


def methods_of(family: str) -> list[str]:
    """Registered methods of a family group, in registry order grouped by family."""
    from tinymem.mitigations import get_method, method_names

    fams = FAMILIES[family]
    return [n for f in fams for n in method_names() if get_method(n).family == f]


def run_one(method: str, preset: str, root: str, sets: list[str], timeout: float) -> dict:
    """One `tinymem mitigate --json` process; returns its JSON plus the wall time (or the error)."""
    cmd = [sys.executable, "-m", "tinymem.cli", "mitigate", "--preset", preset, "--method", method,
           "--root", root, "--device", "cpu", "--json"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"method": method, "error": f"timed out after {timeout:.0f} s", "wall": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"method": method, "error": (p.stderr.strip().splitlines() or ["?"])[-1], "wall": wall}
    out = json.loads(p.stdout)
    out["wall"] = wall
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="unlearn", choices=sorted(FAMILIES))
    ap.add_argument("--methods", default=None, help="comma list instead of --family")
    ap.add_argument("--preset", default="math-demo")
    ap.add_argument("--root", default="./tinymem-runs")
    ap.add_argument("--set", action="append", default=[], metavar="METHOD:HP=VALUE",
                    help="a hyperparameter for one method, e.g. greedy:max_iterations=300")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per method before it is abandoned")
    ap.add_argument("--json-out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()

    methods = [m.strip() for m in args.methods.split(",")] if args.methods else methods_of(args.family)
    sets: dict[str, list[str]] = {}
    for s in args.set:
        if ":" not in s:
            raise SystemExit(f"--set {s!r}: expected METHOD:HP=VALUE")
        m, hp = s.split(":", 1)
        sets.setdefault(m, []).append(hp)
    print(f"preset {args.preset}, root {args.root}, torch threads {os.cpu_count()} CPUs, one process per method",
          flush=True)
    head = (f"{'method':22s} {'mem before':>10s} {'mem after':>10s} {'acc before':>10s} {'acc after':>10s} "
            f"{'acc drop':>9s} {'method s':>9s} {'wall s':>8s}")
    print(head)
    print("-" * len(head), flush=True)
    rows = []
    for m in methods:
        r = run_one(m, args.preset, args.root, sets.get(m, []), args.timeout)
        rows.append(r)
        if "error" in r:
            print(f"{m:22s} FAILED ({r['error']}) after {r['wall']:.0f} s", flush=True)
            continue
        b, a = r["before"], r["after"]
        print(f"{m:22s} {b['mem_pct']:10.2f} {a['mem_pct']:10.2f} {b['test_acc']:10.2f} {a['test_acc']:10.2f} "
              f"{b['test_acc'] - a['test_acc']:9.2f} {r['seconds'].get('mitigate_total', r['seconds']['mitigate']):9.1f} "
              f"{r['wall']:8.1f}", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()

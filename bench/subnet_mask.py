"""The subnetwork mask, side by side: a stable argsort (`sort_mask`) against a selection (`select_mask`).

`subnet` and `balanced_subnet` recompute, on every forward pass, a 0/1 mask over each MLP weight matrix that
zeroes the `ratio` fraction with the lowest |score| (tinymem/mitigations/_subnet.py). This times both ways of
computing it on matrices of the shapes the project meets (math-demo's, GPT-2 small's, Pythia's), checks that
the masks are identical, prints the speed-up, and which one `lowest_k_mask` uses on that device.

    python bench/subnet_mask.py                    # CPU, 1 thread (what a 1-CPU sweep trial gets)
    python bench/subnet_mask.py --device cuda --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinymem.mitigations._subnet import lowest_k_mask, select_mask, sort_mask  # noqa: E402

# (name, out, in) of one MLP projection matrix
SHAPES = [("math-demo", 512, 128), ("gpt2-small", 3072, 768), ("pythia-1.4b", 8192, 2048),
          ("pythia-2.8b", 10240, 2560), ("pythia-6.9b", 16384, 4096)]


def timed(fn, m: torch.Tensor, k: int, repeat: int) -> float:
    sync = torch.cuda.synchronize if m.is_cuda else (lambda: None)
    fn(m, k)  # warm-up (allocations, kernels)
    sync()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(m, k)
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default: %(default)s)")
    ap.add_argument("--ratio", type=float, default=0.3, help="fraction pruned (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=5, help="timed calls per case; the best is kept")
    ap.add_argument("--max-numel", type=float, default=3e7, help="skip larger matrices (default: %(default)g)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, out_f, in_f in SHAPES:
        if out_f * in_f > args.max_numel:
            continue
        # |kaiming-uniform scores|, the initial state; float32 as the scores are kept
        m = (torch.rand(out_f, in_f, generator=gen) * 2 - 1).abs().div_(in_f ** 0.5).to(args.device)
        k = int(args.ratio * m.numel())
        ref = sort_mask(m, k)
        same = torch.equal(ref, select_mask(m, k)) and torch.equal(ref, lowest_k_mask(m, k))
        t_sort = timed(sort_mask, m, k, args.repeat)
        t_sel = timed(select_mask, m, k, args.repeat)
        rows.append({"shape": name, "numel": m.numel(), "k": k, "sort_ms": 1e3 * t_sort, "select_ms": 1e3 * t_sel,
                     "speedup": t_sort / t_sel, "identical": same})
        del m, ref
    if args.json:
        print(json.dumps({"device": args.device, "threads": args.threads, "ratio": args.ratio,
                          "torch": torch.__version__, "rows": rows},
                         indent=1))
        return 0 if all(r["identical"] for r in rows) else 1
    dev = args.device if args.device != "cpu" else f"cpu, {args.threads} thread(s)"
    used = "sort" if torch.device(args.device).type == "cuda" else "select"
    print(f"subnet mask, ratio {args.ratio}, {dev}; best of {args.repeat}; lowest_k_mask uses {used} here")
    print(f"{'matrix':12s} {'entries':>10s} {'sort ms':>9s} {'select ms':>10s} {'speed-up':>9s} identical")
    for r in rows:
        print(f"{r['shape']:12s} {r['numel']:10d} {r['sort_ms']:9.2f} {r['select_ms']:10.2f} {r['speedup']:8.2g}x "
              f"{r['identical']}")
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

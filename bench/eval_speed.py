"""Memorization evaluation: our batched KV-cache greedy decoder against `generate(use_cache=False)`.

The paper's code measures memorization with `model.generate` on the cache-less model config. This script
decodes the same prompts (the clean prefixes of the forget set) with both, on the same model, in one run,
checks the outputs are identical token for token, and prints the speed-up.

    python bench/eval_speed.py                      # math-demo from ./tinymem-runs (trained if missing)
    python bench/eval_speed.py --preset math-tiny --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tinymem.build import ensure_base_model, load_model_dir
from tinymem.decoding import greedy_continue
from tinymem.presets import get_preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="math-demo")
    ap.add_argument("--root", default="./tinymem-runs")
    ap.add_argument("--batch-size", type=int, default=512, help="same batch size for both decoders")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (median reported)")
    args = ap.parse_args()

    torch.manual_seed(0)
    stored = ensure_base_model(get_preset(args.preset), args.root, device="cpu")
    loaded = load_model_dir(stored.directory, device="cpu")
    model, b = loaded.model, loaded.bundle
    prompts = b.forget_clean[:, : b.prompt_len]
    k, eos, pad = b.k, b.meta["eos_id"], b.pad_id

    def ours() -> torch.Tensor:
        return greedy_continue(model, prompts, k, eos_id=eos, pad_id=pad, batch_size=args.batch_size)

    @torch.no_grad()
    def paper() -> torch.Tensor:
        outs = []
        for s in range(0, prompts.shape[0], args.batch_size):
            x = prompts[s : s + args.batch_size]
            g = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=k,
                               use_cache=False, eos_token_id=eos, pad_token_id=pad)[:, x.shape[1]:]
            if g.shape[1] < k:  # generate stops once every row has emitted EOS; the rest is padding
                g = torch.cat([g, torch.full((g.shape[0], k - g.shape[1]), pad)], dim=1)
            outs.append(g)
        return torch.cat(outs)

    def timed(fn) -> tuple[torch.Tensor, float]:
        times, out = [], None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return out, statistics.median(times)

    a, t_ours = timed(ours)
    p, t_paper = timed(paper)
    identical = torch.equal(a, p)
    print(f"model {stored.key} ({args.preset}), {prompts.shape[0]} prompts of {b.prompt_len} tokens, "
          f"{k} new tokens, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"{'decoder':34s} {'median s':>10s}")
    print(f"{'generate(use_cache=False) (paper)':34s} {t_paper:10.3f}")
    print(f"{'greedy_continue (KV cache)':34s} {t_ours:10.3f}")
    print(f"identical outputs: {identical}")
    print(f"speed-up: {t_paper / t_ours:.1f}x")
    if not identical:
        raise SystemExit("outputs differ")


if __name__ == "__main__":
    main()

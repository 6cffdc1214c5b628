"""The one evaluation engine. Training, mitigation and sweeps all call `evaluate`, so a number means the
same thing everywhere. Metric names are stable (they are MLflow metric keys); percentages are 0-100.

Memorization (noise data), over forget rows whose k-token window [prompt_len, prompt_len+k) actually holds
noise (the paper's noise-aware denominator). Full definitions: docs/metrics.md.

- `mem_pct`: greedy decoding from the clean `prompt_len` prefix reproduces the noised next k tokens exactly.
- `clean_recovered_pct`: ... reproduces the clean continuation instead.
- `token_match`: mean fraction (0-1) of the k tokens equal to the noised continuation.
- `approx_mem_pct`: rows with at least 90% of the k tokens equal to the noised ones (approximate
  memorization beyond the paper: exact-match metrics alone undercount near-copies).
- `prefix_match`: mean length of the longest matching prefix of the continuation.
- `mem_pct_dup<N>`: `mem_pct` restricted to forget rows repeated N times in training.

Backdoor data: `backdoor_asr_pct` is the attack success rate on held-out triggered prompts (every token of the
continuation after the trigger equals the backdoor token), and `mem_pct` is that same number.

Verbatim data (memorized-sequence files of a production model, `tinymem.memfile`): every
forget row counts; the prompt is the row's own first `prompt_len` tokens and the target its own next k tokens
(`forget_clean` is `forget`, so `clean_recovered_pct` would repeat `mem_pct` and is left out).

Utility: `test_acc` (next-token accuracy with padding masked, mean over the test distributions) and
`test_acc_<name>` per distribution; `test_ppl` (exp of the token-weighted mean NLL over all test tokens,
padding masked) and `test_ppl_<name>`. The paper's variants, for comparison: `paper_acc` (PAD positions
counted, mean over distributions) and `paper_ppl` (mean over batches of exp(batch-mean CE) with PAD counted,
main distribution).

Decoding follows `model.generate(do_sample=False)` exactly, including EOS handling (tokens after EOS are PAD),
which matches how sequences end in the data; the paper forces decoding past EOS with `min_length`
(docs/departures.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tinymem.data.bundle import DataBundle
from tinymem.decoding import greedy_continue, greedy_continue_ragged
from tinymem.errors import ConfigError
from tinymem.util import evaluation, model_device, progress_bar
from tinymem.stats import binomial_interval

APPROX_THRESHOLD = 0.9
BACKDOOR_TOKEN = 2


@dataclass
class Extraction:
    """Per-row outcome of a memorization test."""

    counted: torch.Tensor  # bool [N]: row enters the denominator (noise inside the window)
    memorized: torch.Tensor  # bool [N]: exact reproduction of the memorized continuation
    clean: torch.Tensor  # bool [N]: exact reproduction of the clean continuation
    token_match: torch.Tensor  # float [N]
    prefix_match: torch.Tensor  # float [N]


def compare(generated: torch.Tensor, target: torch.Tensor, clean_target: torch.Tensor,
            counted: torch.Tensor) -> Extraction:
    """Row-wise comparison of generated continuations with memorized and clean targets (all [N, k])."""
    eq = generated == target
    k = max(generated.shape[1], 1)
    # Longest matching prefix: cumulative product of matches along the window.
    prefix = eq.long().cumprod(dim=1).sum(dim=1).float()
    return Extraction(counted=counted, memorized=eq.all(dim=1), clean=(generated == clean_target).all(dim=1),
                      token_match=eq.float().sum(dim=1) / k, prefix_match=prefix)


def _pct(mask: torch.Tensor, among: torch.Tensor) -> float:
    n = int(among.sum())
    return float("nan") if n == 0 else 100.0 * float((mask & among).sum()) / n


def rate_with_interval(hits: torch.Tensor, among: torch.Tensor, name: str) -> dict[str, float]:
    """`name` (percent of `among` rows that are `hits`), its exact 95% interval (`name_ci_low`, `name_ci_high`)
    and the counts behind it (`name_rows` of `name_counted`): a rate means little without its row count."""
    n, k = int(among.sum()), int((hits & among).sum())
    low, high = binomial_interval(k, n)
    stem = name[: -len("_pct")] if name.endswith("_pct") else name
    return {name: _pct(hits, among), f"{name}_ci_low": low, f"{name}_ci_high": high,
            f"{stem}_rows": float(k), f"{stem}_counted": float(n)}


def summarize(ex: Extraction, prefix: str = "") -> dict[str, float]:
    """Percentages over the counted rows (NaN when no row counts); `mem_pct` with its interval and counts."""
    c = ex.counted
    n = int(c.sum())
    mean = (lambda t: float(t[c].mean())) if n else (lambda t: float("nan"))
    return {
        **rate_with_interval(ex.memorized, c, f"{prefix}mem_pct"),
        f"{prefix}clean_recovered_pct": _pct(ex.clean, c),
        f"{prefix}token_match": mean(ex.token_match),
        f"{prefix}approx_mem_pct": _pct(ex.token_match >= APPROX_THRESHOLD, c),
        f"{prefix}prefix_match": mean(ex.prefix_match),
    }


def noise_extraction(model: nn.Module, forget: torch.Tensor, forget_clean: torch.Tensor, prompt_len: int, k: int,
                     *, eos_id: int | None, pad_id: int | None, batch_size: int = 512,
                     paper_rule: bool = False) -> Extraction:
    """Prompt with the clean prefix, decode k tokens, compare with the noised and the clean windows.

    `paper_rule`: decode as the paper's `generate(min_length=...)` does, never choosing EOS, so a row whose
    sequence ends inside the window can never count as memorized (see docs/metrics.md).
    """
    n = forget[:, prompt_len : prompt_len + k].shape[1]  # k, or less where the rows end sooner
    rule = {"eos_id": None, "forbid_id": eos_id} if paper_rule else {"eos_id": eos_id}
    gen = greedy_continue(model, forget_clean[:, :prompt_len], n, pad_id=pad_id, batch_size=batch_size, **rule)
    return _noise_compare(gen, forget, forget_clean, prompt_len, k)


def noise_extractions(model: nn.Module, forget: torch.Tensor, forget_clean: torch.Tensor, prompt_len: int, k: int,
                      *, eos_id: int | None, pad_id: int | None, batch_size: int = 512
                      ) -> tuple[Extraction, Extraction]:
    """`noise_extraction` under generate's EOS rule and under the paper's rule, from one decode and a second
    one of only the rows that chose EOS: a row whose greedy continuation never picks EOS continues the same
    when EOS is forbidden, since its argmax was never EOS."""
    prompts, n = forget_clean[:, :prompt_len], forget[:, prompt_len : prompt_len + k].shape[1]
    gen = greedy_continue(model, prompts, n, eos_id=eos_id, pad_id=pad_id, batch_size=batch_size)
    paper = gen.clone()
    if eos_id is not None:
        ended = (gen == eos_id).any(dim=1)
        if bool(ended.any()):
            paper[ended] = greedy_continue(model, prompts[ended], n, eos_id=None, pad_id=pad_id,
                                           batch_size=batch_size, forbid_id=eos_id)
    return (_noise_compare(gen, forget, forget_clean, prompt_len, k),
            _noise_compare(paper, forget, forget_clean, prompt_len, k))


def _noise_compare(gen: torch.Tensor, forget: torch.Tensor, forget_clean: torch.Tensor, prompt_len: int,
                   k: int) -> Extraction:
    window = slice(prompt_len, prompt_len + k)
    target, clean_target = forget[:, window], forget_clean[:, window]
    counted = (target != clean_target).any(dim=1)
    return compare(gen, target, clean_target, counted)


def verbatim_extraction(model: nn.Module, seqs: torch.Tensor, prompt_len: int, k: int, *, eos_id: int | None,
                        pad_id: int | None, batch_size: int = 512) -> Extraction:
    """Prompt with each row's first `prompt_len` tokens, decode k tokens, compare with the row's own next k."""
    target = seqs[:, prompt_len : prompt_len + k]
    gen = greedy_continue(model, seqs[:, :prompt_len], target.shape[1], eos_id=eos_id, pad_id=pad_id,
                          batch_size=batch_size)
    return compare(gen, target, target, torch.ones(seqs.shape[0], dtype=torch.bool))


def backdoor_extraction(model: nn.Module, poisoned: torch.Tensor, clean: torch.Tensor, prompt_lens: torch.Tensor,
                        k: int, *, eos_id: int | None, pad_id: int | None, batch_size: int = 512) -> Extraction:
    """Prompt up to and including the trigger, decode up to k tokens (cut at the context end), compare.

    The comparison window is the same length for every row (k, or less where the context ends sooner), and
    positions beyond a row's context are ignored by filling them identically in generated and target.
    """
    max_ctx = poisoned.shape[1]
    n = poisoned.shape[0]
    gen = greedy_continue_ragged(model, clean, prompt_lens, k, eos_id=eos_id, pad_id=pad_id,
                                 batch_size=batch_size)
    pos = prompt_lens[:, None] + torch.arange(k)[None, :]
    inside = pos < max_ctx
    idx = pos.clamp(max=max_ctx - 1)
    target = torch.gather(poisoned, 1, idx)
    clean_target = torch.gather(clean, 1, idx)
    gen = torch.where(inside, gen, target)
    clean_cmp = torch.where(inside, clean_target, target)
    return compare(gen, target, clean_cmp, torch.ones(n, dtype=torch.bool))


@torch.no_grad()
def token_stats(model: nn.Module, seqs: torch.Tensor, pad_id: int, batch_size: int = 256) -> dict[str, float]:
    """Next-token statistics of a set of sequences, padding masked and unmasked (paper variants)."""
    device = model_device(model)
    nll_sum = correct = count = 0.0
    paper_correct = paper_count = 0.0
    paper_ppls: list[float] = []
    for start in range(0, seqs.shape[0], batch_size):
        x = seqs[start : start + batch_size].to(device)
        logits = model(input_ids=x).logits[:, :-1].float()
        y = x[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none").view_as(y)
        pred = logits.argmax(dim=-1)
        mask = y != pad_id
        nll_sum += float(nll[mask].sum())
        correct += float((pred == y)[mask].sum())
        count += float(mask.sum())
        paper_correct += float((pred == y).sum())
        paper_count += float(y.numel())
        paper_ppls.append(math.exp(float(nll.mean())))
    return {"nll_sum": nll_sum, "correct": correct, "count": count, "paper_correct": paper_correct,
            "paper_count": paper_count, "paper_ppl": sum(paper_ppls) / max(len(paper_ppls), 1)}


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")


SPLITS = ("val", "test")


def utility(model: nn.Module, bundle: DataBundle, batch_size: int = 256) -> dict[str, float]:
    """Accuracy and perplexity on both held-out splits (`val_*`: selection, `test_*`: report), per test
    distribution and overall, plus the paper's variants on `test`."""
    out: dict[str, float] = {}
    for split in SPLITS:
        tot_nll = tot_count = 0.0
        accs, paper_accs = [], []
        for i, name in enumerate(bundle.test_names):
            s = token_stats(model, bundle.test(name, split), bundle.pad_id, batch_size)
            acc = 100.0 * s["correct"] / max(s["count"], 1)
            out[f"{split}_acc_{name}"] = acc
            out[f"{split}_ppl_{name}"] = _safe_exp(s["nll_sum"] / max(s["count"], 1))
            accs.append(acc)
            paper_accs.append(100.0 * s["paper_correct"] / max(s["paper_count"], 1))
            tot_nll += s["nll_sum"]
            tot_count += s["count"]
            if i == 0 and split == "test":
                out["paper_ppl"] = s["paper_ppl"]
        out[f"{split}_acc"] = sum(accs) / len(accs)
        out[f"{split}_ppl"] = _safe_exp(tot_nll / max(tot_count, 1))
        if split == "test":
            out["paper_acc"] = sum(paper_accs) / len(paper_accs)
    return out


def forget_extraction(model: nn.Module, bundle: DataBundle, batch_size: int = 512) -> Extraction:
    """Which forget (training) rows the model currently reproduces: the unlearning set is `memorized`."""
    eos, pad = bundle.meta.get("eos_id"), bundle.pad_id
    if bundle.kind == "backdoor":
        return backdoor_extraction(model, bundle.forget, bundle.forget_clean, bundle["forget_prompt_len"],
                                   bundle.k, eos_id=eos, pad_id=pad, batch_size=batch_size)
    if bundle.kind == "verbatim":
        return verbatim_extraction(model, bundle.forget, bundle.prompt_len, bundle.k, eos_id=eos, pad_id=pad,
                                   batch_size=batch_size)
    return noise_extraction(model, bundle.forget, bundle.forget_clean, bundle.prompt_len, bundle.k,
                            eos_id=eos, pad_id=pad, batch_size=batch_size)


def memorization(model: nn.Module, bundle: DataBundle, batch_size: int = 512) -> dict[str, float]:
    """Memorization metrics of the bundle's kind (see the module docstring)."""
    eos, pad = bundle.meta.get("eos_id"), bundle.pad_id
    if bundle.kind == "backdoor":
        ex = backdoor_extraction(model, bundle["backdoor_test"], bundle["backdoor_test_clean"],
                                 bundle["backdoor_test_prompt_len"], bundle.k, eos_id=eos, pad_id=pad,
                                 batch_size=batch_size)
        out = summarize(ex)
        out["backdoor_asr_pct"] = out["mem_pct"]
        train_ex = forget_extraction(model, bundle, batch_size)
        out["train_backdoor_asr_pct"] = summarize(train_ex)["mem_pct"]
        return out
    if bundle.kind == "noise":
        ex, paper = noise_extractions(model, bundle.forget, bundle.forget_clean, bundle.prompt_len, bundle.k,
                                      eos_id=eos, pad_id=pad, batch_size=batch_size)
        out = {**summarize(ex), **rate_with_interval(paper.memorized, paper.counted, "paper_mem_pct")}
    else:
        ex = forget_extraction(model, bundle, batch_size)
        out = summarize(ex)
    if bundle.kind == "verbatim":
        del out["clean_recovered_pct"]  # the target is the clean text itself: the same number as mem_pct
    if "forget_dup" in bundle:
        dup = bundle["forget_dup"]
        classes = torch.unique(dup).tolist()
        if len(classes) > 1:
            for c in classes:
                sel = dup == c
                out[f"mem_pct_dup{c}"] = _pct(ex.memorized & sel, ex.counted & sel)
    return out


def evaluate(model: nn.Module, bundle: DataBundle, *, memorization_metrics: bool = True,
             utility_metrics: bool = True, batch_size: int = 512, progress: bool = False) -> dict[str, float]:
    """All metrics of a model on a bundle: memorization (kind-aware) and utility.

    `progress`: a bar on stderr over the two phases (greedy decoding of the forget set, then the held-out
    sets), for the command line; a sweep's per-epoch evaluations leave it off.
    """
    phases = [p for p, on in (("memorization", memorization_metrics), ("utility", utility_metrics)) if on]
    bar = progress_bar(len(phases), "eval", "phase", progress)
    with evaluation(model):
        out: dict[str, float] = {}
        for phase in phases:
            bar.set_postfix_str(phase)
            if phase == "memorization":
                out.update(memorization(model, bundle, batch_size))
            else:
                out.update(utility(model, bundle, max(batch_size // 2, 1)))
            bar.update(1)
        bar.close()
        return out


def deltas(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """`<name>_delta` = after - before for every metric both have (NaN-safe)."""
    return {f"{k}_delta": after[k] - before[k] for k in after if k in before and not k.endswith("_delta")}


def find_memorized(model: nn.Module, rows: torch.Tensor, prompt_len: int, k: int, batch_size: int = 64
                   ) -> torch.Tensor:
    """bool [N]: which candidate rows the model reproduces (greedy, exact next k tokens from the first
    prompt_len): the paper's unlearning set `mem_seq` (§5.4). Batched KV-cache decoding on the model's device."""
    if rows.shape[1] < prompt_len + k:
        raise ConfigError(f"candidate rows have {rows.shape[1]} tokens; prompt_len + k = {prompt_len + k} needed")
    with evaluation(model):
        ex = verbatim_extraction(model, rows, prompt_len, k, eos_id=None, pad_id=None, batch_size=batch_size)
    return ex.memorized

"""Robustness metrics: does memorization really go away, or does it only stop showing under greedy decoding?

Exact-match greedy extraction (`mem_pct`) is an easy test to pass. These optional metrics (off by default: they
cost time) ask harder questions of the same rows; `robustness_metrics` is their one entry point, so a number
means the same in `tinymem mitigate`, a sweep trial and a bench. Full definitions: docs/metrics.md.

- `relearn_mem_pct`: the unlearning set is split in two seeded halves; a COPY of the model is fine-tuned for
  `relearn_steps` AdamW steps on half A's memorized rows, then `mem_pct` is measured on half B, which the
  fine-tuning never saw. Half B can only come back if the model still holds it.
- `relearn_benign_mem_pct`: the same budget on clean retain rows, measured on half B.
- `sampled_mem_pct`: `samples` sampled continuations per prompt (temperature, top-k); a counted row counts
  when ANY sample reproduces the memorized window exactly.
- `perturbed_mem_pct`: the prompt with one token, at a seeded position, replaced by a different non-special
  token; greedy; exact match on the memorized window.
- `nll_gap`: mean per-token log-likelihood of the memorized window minus that of a reference window, teacher
  forced after the same prompt: the clean window (noise data) or held-out test text (verbatim data). > 0: the
  model still prefers the memorized tokens, even where greedy decoding no longer shows them.

Defined for noise data (math and language presets) and verbatim data (Hugging Face memorized-sequence files).
Everything is seeded and fixed by `RobustnessSettings`, so the base model's numbers (cached once per base
model, `cached_robustness`) are the reference of every trial on it.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from tinymem.data.bundle import DataBundle
from tinymem.decoding import greedy_continue, sample_continue
from tinymem.errors import ConfigError
from tinymem.metrics import rate_with_interval
from tinymem.specs import spec_hash
from tinymem.stats import mean_interval
from tinymem.train import masked_mean, token_losses
from tinymem.util import atomic_write_text, eval_mode, model_device

NAMES = ("relearn_mem_pct", "relearn_benign_mem_pct", "sampled_mem_pct", "perturbed_mem_pct", "nll_gap")
KINDS = ("noise", "verbatim")
# Bump when a metric's meaning changes: cached base numbers computed by older code are then never reused.
ROBUSTNESS_VERSION = 1


@dataclass(frozen=True)
class RobustnessSettings:
    """The fixed budgets and defaults (docs/metrics.md says how they were chosen). Trials always use the
    defaults, so numbers compare across trials and with the cached base reference."""

    relearn_steps: int = 10  # AdamW steps of the relearning fine-tune
    relearn_lr: float = 1e-4  # constant; betas (0.9, 0.98), no weight decay
    relearn_batch: int = 32  # rows per step (all of half A when it is smaller)
    samples: int = 8  # sampled continuations per prompt
    temperature: float = 1.0
    top_k: int = 0  # 0: the whole vocabulary
    seed: int = 0  # every random choice (halves, batch order, samples, perturbations) derives from it
    batch_size: int = 512  # rows decoded at once

    def key(self) -> str:
        """Short hash of the settings: part of a cached number's file name."""
        return spec_hash(asdict(self), 8)


DEFAULT_SETTINGS = RobustnessSettings()


def parse_names(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """The requested metric names, in `NAMES` order: None/empty (none), "all", a comma list or a list. An
    unknown name is a ConfigError naming it and the allowed ones."""
    if value is None or value == "":
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [str(i).strip() for i in items if str(i).strip()]
    if "all" in items:
        return NAMES
    bad = [i for i in items if i not in NAMES]
    if bad:
        raise ConfigError(f"robustness metric {bad[0]!r} is unknown; allowed: 'all' or a comma list of {list(NAMES)}")
    return tuple(n for n in NAMES if n in items)


@dataclass
class Probe:
    """What `mem_pct` tests, row aligned with `bundle.forget`: prompt, memorized window, reference window
    (the clean window for noise data; None for verbatim data) and which rows count."""

    prompts: torch.Tensor  # [N, prompt_len]
    target: torch.Tensor  # [N, k]
    clean: torch.Tensor | None  # [N, k]
    counted: torch.Tensor  # bool [N]


def probe(bundle: DataBundle) -> Probe:
    """The memorization test of the bundle's kind (docs/metrics.md), as tensors; other kinds are refused."""
    if bundle.kind not in KINDS:
        raise ConfigError(f"robustness metrics are defined for data kinds {list(KINDS)}; this base model's data "
                          f"is {bundle.kind!r}")
    p, k = bundle.prompt_len, bundle.k
    if bundle.kind == "verbatim":
        f = bundle.forget
        return Probe(f[:, :p], f[:, p : p + k], None, torch.ones(f.shape[0], dtype=torch.bool))
    target, clean = bundle.forget[:, p : p + k], bundle.forget_clean[:, p : p + k]
    return Probe(bundle.forget_clean[:, :p], target, clean, (target != clean).any(dim=1))


def _greedy_hits(model: nn.Module, bundle: DataBundle, prompts: torch.Tensor, target: torch.Tensor,
                 s: RobustnessSettings) -> torch.Tensor:
    gen = greedy_continue(model, prompts, target.shape[1], eos_id=bundle.meta.get("eos_id"), pad_id=bundle.pad_id,
                          batch_size=s.batch_size)
    return (gen == target).all(dim=1)


def sampled_mem(model: nn.Module, bundle: DataBundle, s: RobustnessSettings = DEFAULT_SETTINGS) -> dict[str, float]:
    """`sampled_mem_pct`: counted rows of which any of `s.samples` sampled continuations is the memorized window."""
    pr = probe(bundle)
    rows = torch.nonzero(pr.counted).flatten()  # only counted rows enter the rate: decode only those
    gen = sample_continue(model, pr.prompts[rows], pr.target.shape[1], samples=s.samples, temperature=s.temperature,
                          top_k=s.top_k, seed=s.seed, eos_id=bundle.meta.get("eos_id"), pad_id=bundle.pad_id,
                          batch_size=s.batch_size)
    hits = torch.zeros_like(pr.counted)
    hits[rows] = (gen == pr.target[rows, None, :]).all(dim=2).any(dim=1)
    return rate_with_interval(hits, pr.counted, "sampled_mem_pct")


def special_ids(bundle: DataBundle) -> set[int]:
    """Token ids a perturbation never writes or replaces: the bundle's pad / bos / eos ids and the tokenizer's
    special tokens (from the `tokenizer.json` the bundle carries)."""
    ids = {int(bundle.meta[k]) for k in ("pad_id", "bos_id", "eos_id", "model_eos_id")
           if bundle.meta.get(k) is not None}
    if "tokenizer.json" in bundle.files:
        added = json.loads(bundle.files["tokenizer.json"]).get("added_tokens") or []
        ids |= {int(t["id"]) for t in added if t.get("special")}
    return ids


def perturb_prompts(prompts: torch.Tensor, special: set[int], vocab_size: int, seed: int) -> torch.Tensor:
    """Each prompt with exactly one token replaced: at a seeded position holding a non-special token (any
    position if a prompt has none), by a seeded different token drawn uniformly from the non-special ids."""
    pool = torch.tensor([i for i in range(vocab_size) if i not in special], dtype=torch.long)
    if pool.numel() < 2:
        raise ConfigError(f"a perturbation needs two non-special token ids; the vocabulary of {vocab_size} has "
                          f"{pool.numel()}")
    g = torch.Generator().manual_seed(int(seed) + 104729)
    n = prompts.shape[0]
    weights = (~torch.isin(prompts, torch.tensor(sorted(special), dtype=torch.long))).float()
    weights[weights.sum(dim=1) == 0] = 1.0
    pos = torch.multinomial(weights, 1, generator=g).squeeze(1) if n else torch.zeros(0, dtype=torch.long)
    old = prompts[torch.arange(n), pos]
    # A draw over the pool without the old token: draw among P-1 slots, skip the old token's slot.
    slot = torch.searchsorted(pool, old)
    draw = torch.randint(0, pool.numel() - 1, (n,), generator=g)
    draw = draw + (draw >= slot).long() * torch.isin(old, pool).long()
    out = prompts.clone()
    out[torch.arange(n), pos] = pool[draw]
    return out


def perturbed_mem(model: nn.Module, bundle: DataBundle, s: RobustnessSettings = DEFAULT_SETTINGS
                  ) -> dict[str, float]:
    """`perturbed_mem_pct`: counted rows whose memorized window greedy decoding reproduces from the prompt
    with one token replaced (`perturb_prompts`)."""
    pr = probe(bundle)
    prompts = perturb_prompts(pr.prompts, special_ids(bundle), bundle.vocab_size, s.seed)
    return rate_with_interval(_greedy_hits(model, bundle, prompts, pr.target, s), pr.counted, "perturbed_mem_pct")


@torch.no_grad()
def window_loglik(model: nn.Module, prompts: torch.Tensor, windows: torch.Tensor, pad_id: int,
                  batch_size: int = 256) -> torch.Tensor:
    """float [N]: mean log-likelihood per token of each window after its prompt (teacher forced), PAD tokens of
    the window left out as training leaves them out; NaN for a window of PAD only."""
    device = model_device(model)
    p = prompts.shape[1]
    out = []
    with eval_mode(model):
        for start in range(0, prompts.shape[0], batch_size):
            x = torch.cat([prompts[start : start + batch_size], windows[start : start + batch_size]], dim=1)
            nll, _ = token_losses(model, x.to(device), None, mask_padding=False)
            ll = -nll[:, p - 1 :].cpu()  # position t predicts token t + 1: the window's tokens
            mask = (windows[start : start + batch_size] != pad_id).float()
            n = mask.sum(dim=1)
            out.append(torch.where(n > 0, (ll * mask).sum(dim=1) / n.clamp(min=1), torch.tensor(float("nan"))))
    return torch.cat(out) if out else torch.zeros(0)


def _reference_windows(bundle: DataBundle) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompts, windows) of the held-out test rows, cut like the forget rows: the verbatim reference."""
    p, k = bundle.prompt_len, bundle.k
    rows = [bundle[f"test/{name}"] for name in bundle.test_names]
    rows = [r[:, : p + k] for r in rows if r.shape[1] > p]
    if not rows:
        return torch.zeros((0, p), dtype=torch.long), torch.zeros((0, k), dtype=torch.long)
    width = min(r.shape[1] for r in rows)
    test = torch.cat([r[:, :width] for r in rows])
    return test[:, :p], test[:, p:]


def _mean(values: torch.Tensor) -> tuple[float, int]:
    ok = values[~torch.isnan(values)]
    return (float(ok.mean()) if ok.numel() else math.nan), int(ok.numel())


def nll_gap(model: nn.Module, bundle: DataBundle, s: RobustnessSettings = DEFAULT_SETTINGS) -> dict[str, float]:
    """`nll_gap` with `nll_gap_counted` (rows averaged). Noise data: per counted row, the window log-likelihood
    of the noised window minus that of the clean window after the same clean prompt, averaged over the rows
    (`nll_gap_ci_low/high`: their t-interval). Verbatim data: the mean over the memorized rows minus the mean
    over held-out test rows cut the same way (`nll_gap_ref_rows`); no interval."""
    pr = probe(bundle)
    batch = max(s.batch_size // 2, 1)
    rows = torch.nonzero(pr.counted).flatten()
    memorized = window_loglik(model, pr.prompts[rows], pr.target[rows], bundle.pad_id, batch)
    if pr.clean is not None:
        gap = memorized - window_loglik(model, pr.prompts[rows], pr.clean[rows], bundle.pad_id, batch)
        ok = gap[~torch.isnan(gap)]
        mean, low, high = mean_interval(ok.tolist())
        return {"nll_gap": mean, "nll_gap_ci_low": low, "nll_gap_ci_high": high, "nll_gap_counted": float(ok.numel())}
    ref_prompts, ref_windows = _reference_windows(bundle)
    ref, n_ref = _mean(window_loglik(model, ref_prompts, ref_windows, bundle.pad_id, batch))
    mem, n_mem = _mean(memorized)
    return {"nll_gap": mem - ref, "nll_gap_counted": float(n_mem), "nll_gap_ref_rows": float(n_ref)}


def split_halves(rows: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B): a seeded split of the unlearning set into halves (B gets the odd row); fixed by the seed alone,
    so every trial on a base model splits its unlearning set the same way."""
    order = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(int(seed) + 15485863))
    half = rows.numel() // 2
    return rows[order[:half]], rows[order[half:]]


def relearned_copy(model: nn.Module, data: torch.Tensor, pad_id: int, s: RobustnessSettings) -> nn.Module:
    """A fine-tuned COPY of `model` (the model itself is never touched): `s.relearn_steps` AdamW steps (lr
    `s.relearn_lr`, betas 0.9/0.98, no weight decay) on batches of `data` in a seeded order, PAD masked."""
    tuned = copy.deepcopy(model)
    for p in tuned.parameters():
        p.requires_grad_(True)  # a method may leave flags off; relearning may move every weight
    opt = torch.optim.AdamW(tuned.parameters(), lr=s.relearn_lr, betas=(0.9, 0.98), weight_decay=0.0)
    g = torch.Generator().manual_seed(int(s.seed) + 32452843)
    device, n, size = model_device(tuned), data.shape[0], min(s.relearn_batch, data.shape[0])
    order, at = torch.randperm(n, generator=g), 0
    tuned.train()
    for _ in range(s.relearn_steps):
        if at + size > n:  # a new pass over the rows, in a new seeded order
            order, at = torch.randperm(n, generator=g), 0
        loss = masked_mean(*token_losses(tuned, data[order[at : at + size]].to(device), pad_id))
        at += size
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return tuned.eval()


def relearn_mem(model: nn.Module, bundle: DataBundle, unlearn_rows: torch.Tensor, benign: bool = False,
                s: RobustnessSettings = DEFAULT_SETTINGS) -> dict[str, float]:
    """`relearn_mem_pct` (fine-tuned on half A's memorized rows) or `relearn_benign_mem_pct` (`benign`: on
    clean retain rows), both measured on half B of the unlearning set; NaN with fewer than 2 rows to split."""
    name = "relearn_benign_mem_pct" if benign else "relearn_mem_pct"
    pr = probe(bundle)
    a, b = split_halves(unlearn_rows, s.seed)
    data = bundle.retain if benign else bundle.forget[a]
    among = torch.zeros_like(pr.counted)
    if a.numel() == 0 or data.shape[0] == 0:
        return rate_with_interval(among, among, name)
    tuned = relearned_copy(model, data, bundle.pad_id, s)
    among[b] = pr.counted[b]
    hits = torch.zeros_like(pr.counted)
    hits[b] = _greedy_hits(tuned, bundle, pr.prompts[b], pr.target[b], s)
    del tuned
    return rate_with_interval(hits, among, name)


def robustness_metrics(model: nn.Module, bundle: DataBundle, names: Sequence[str], unlearn_rows: torch.Tensor,
                       s: RobustnessSettings = DEFAULT_SETTINGS) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics, seconds per name) of the requested robustness metrics (`parse_names`) of `model`;
    `unlearn_rows` are the base model's unlearning set (forget-row indices), which relearning splits."""
    probe(bundle)  # refuses an unsupported kind before any work
    compute = {"relearn_mem_pct": lambda: relearn_mem(model, bundle, unlearn_rows, False, s),
               "relearn_benign_mem_pct": lambda: relearn_mem(model, bundle, unlearn_rows, True, s),
               "sampled_mem_pct": lambda: sampled_mem(model, bundle, s),
               "perturbed_mem_pct": lambda: perturbed_mem(model, bundle, s),
               "nll_gap": lambda: nll_gap(model, bundle, s)}
    metrics: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for name in parse_names(names):
        t0 = time.perf_counter()
        metrics.update(compute[name]())
        seconds[name] = time.perf_counter() - t0
    return metrics, seconds


def cached_robustness(model: nn.Module, bundle: DataBundle, names: Sequence[str], unlearn_rows: torch.Tensor,
                      cache_dir: Path | None, s: RobustnessSettings = DEFAULT_SETTINGS
                      ) -> tuple[dict[str, float], dict[str, float]]:
    """`robustness_metrics` of a base model, each name cached in its own file in `cache_dir` (beside the base
    evaluation, which stays valid without them): a later trial asking for more names computes only those."""
    metrics: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for name in parse_names(names):
        path = cache_dir / f"robustness-{name}-v{ROBUSTNESS_VERSION}-{s.key()}.json" if cache_dir else None
        if path is not None and path.exists():
            got = json.loads(path.read_text())
        else:
            m, sec = robustness_metrics(model, bundle, [name], unlearn_rows, s)
            got = {"metrics": m, "seconds": sec[name]}
            if path is not None:
                # Plain json.dumps: a NaN must read back as NaN (as the base evaluation's cache does).
                atomic_write_text(path, json.dumps(got))
        metrics.update(got["metrics"])
        seconds[name] = float(got["seconds"])
    return metrics, seconds

"""Data for the weight-level methods: labelled forget/retain batches and a cheap per-epoch probe.

Mixed batches (Greedy, BalancedSubnet): forget rows are labelled +1 and
retain rows -1. The paper concatenates both sets and shuffles, so with a small forget set most batches hold
no forget row (BalancedSubnet's forget mean is then NaN). `stratified=True` (our default) spreads the
forget rows evenly over the batches of an epoch instead, so every batch has at least one; when the forget
set is smaller than the number of batches, forget rows are reused (each one as evenly as possible).
`stratified=False` is the paper's plain shuffle.

The batch order of epoch e depends only on (seed, e), so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from tinymem.errors import ConfigError
from tinymem.mitigations.base import MitigationContext
from tinymem.train import sequence_losses
from tinymem.util import evaluation, model_device

PROBE_RETAIN_ROWS = 512  # retain rows in the per-epoch probe: one no-grad forward pass, a fraction of an epoch


@dataclass
class LabelledBatch:
    """Rows [B, T] and which of them are forget rows (label +1; the others are retain rows, label -1).

    The forget rows come first; `forget_index` holds their positions in the forget set (NPO looks up each
    row's reference log-likelihood by it).
    """

    rows: torch.Tensor
    is_forget: torch.Tensor
    forget_index: torch.Tensor | None = None

    @property
    def labels(self) -> torch.Tensor:
        return self.is_forget.float() * 2.0 - 1.0


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))


class MixedBatches:
    """Labelled forget/retain batches, stratified (every batch has forget rows) or plainly shuffled."""

    def __init__(self, forget: torch.Tensor, retain: torch.Tensor, batch_size: int, seed: int,
                 stratified: bool = True, device: torch.device | str = "cpu"):
        if batch_size < 2 and stratified:
            raise ConfigError(f"batch_size={batch_size} is too small for stratified batches; allowed: >= 2")
        if forget.shape[0] == 0:
            raise ConfigError("the forget set is empty: the base model memorizes nothing to unlearn")
        if retain.shape[0] == 0:
            raise ConfigError("the retain set is empty; mixed forget/retain batches need retain rows")
        self.forget, self.retain = forget, retain
        self.batch_size, self.seed, self.stratified, self.device = int(batch_size), int(seed), stratified, device
        self.num_batches = math.ceil((forget.shape[0] + retain.shape[0]) / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def epoch(self, epoch: int) -> Iterator[LabelledBatch]:
        g = epoch_generator(self.seed, epoch)
        nf, nr = self.forget.shape[0], self.retain.shape[0]
        if not self.stratified:
            for idx in torch.randperm(nf + nr, generator=g).split(self.batch_size):
                yield self._batch(idx[idx < nf], idx[idx >= nf] - nf)
            return
        f_order = torch.randperm(nf, generator=g)
        r_order = torch.randperm(nr, generator=g)
        n = self.num_batches
        if nf < n:  # too few forget rows for one per batch: cycle through them (fresh permutation each cycle)
            cycles = [f_order] + [torch.randperm(nf, generator=g) for _ in range(math.ceil(n / nf) - 1)]
            f_order = torch.cat(cycles)[:n]
        for fi, ri in zip(f_order.tensor_split(n), r_order.tensor_split(n)):
            yield self._batch(fi, ri)

    def _batch(self, forget_idx: torch.Tensor, retain_idx: torch.Tensor) -> LabelledBatch:
        rows = torch.cat([self.forget[forget_idx], self.retain[retain_idx]])
        is_forget = torch.arange(rows.shape[0]) < forget_idx.numel()
        return LabelledBatch(rows.to(self.device), is_forget.to(self.device), forget_idx.to(self.device))


def memorization_probe_rows(ctx: MitigationContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(sequences, target window, counted) for the teacher-forced memorization check, or None (backdoor data).

    The sequence is the clean `prompt_len` prefix followed by the noised window: exactly what greedy
    decoding must produce for the row to count as memorized.
    """
    b = ctx.bundle
    if b.kind != "noise" or ctx.forget.shape[0] == 0:
        return None
    p, k = b.prompt_len, b.k
    target = ctx.forget[:, p : p + k]
    seqs = torch.cat([ctx.forget_clean[:, :p], target], dim=1)
    counted = (target != ctx.forget_clean[:, p : p + k]).any(dim=1)
    return seqs, target, counted


@torch.no_grad()
def teacher_forced_memorized(model: nn.Module, seqs: torch.Tensor, target: torch.Tensor, prompt_len: int,
                             eos_id: int | None, pad_id: int | None) -> torch.Tensor:
    """bool [N]: would greedy decoding from the prefix reproduce `target`? One forward pass, no decoding.

    Greedy decoding reproduces the target iff the argmax at every window position, fed the target so far,
    is the target token: the same answer as `metrics.noise_extraction`, for the price of one batched forward.
    After the first EOS of the target, decoding emits PAD (generate's rule), so there the target must be PAD.
    """
    device = model_device(model)
    k = target.shape[1]
    logits = model(input_ids=seqs.to(device)).logits[:, prompt_len - 1 : prompt_len - 1 + k]
    pred = logits.argmax(dim=-1).cpu()
    ok = pred == target
    if eos_id is not None:
        is_eos = target == eos_id
        after_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
        fill = pad_id if pad_id is not None else eos_id
        ok = torch.where(after_eos, target == fill, ok)
    return ok.all(dim=1)


@torch.no_grad()
def epoch_probe(ctx: MitigationContext, model: nn.Module) -> dict[str, float]:
    """Cheap metrics for per-epoch reports (about one forward pass over the forget set and 512 retain rows).

    - `forget_loss`: mean per-sequence CE on the forget rows (rises as memorization is removed).
    - `retain_loss`: the same on a fixed sample of retain rows (the guard metric for early stopping).
    - `forget_mem_pct`: percent of counted forget rows still extractable (teacher-forced, exact for noise
      data: equal to `mem_pct` restricted to the unlearning set); absent for backdoor data.
    """
    with evaluation(model):
        device = model_device(model)
        out = {"forget_loss": float(sequence_losses(model, ctx.forget.to(device), ctx.pad_id).mean())}
        g = torch.Generator().manual_seed(int(ctx.seed))
        idx = torch.randperm(ctx.retain.shape[0], generator=g)[:PROBE_RETAIN_ROWS]
        if idx.numel():
            out["retain_loss"] = float(sequence_losses(model, ctx.retain[idx].to(device), ctx.pad_id).mean())
        probe = memorization_probe_rows(ctx)
        if probe is not None:
            seqs, target, counted = probe
            mem = teacher_forced_memorized(model, seqs, target, ctx.bundle.prompt_len,
                                           ctx.bundle.meta.get("eos_id"), ctx.pad_id)
            n = int(counted.sum())
            out["forget_mem_pct"] = 100.0 * float((mem & counted).sum()) / n if n else float("nan")
        return out

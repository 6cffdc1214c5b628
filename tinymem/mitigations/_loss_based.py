"""Shared loop of the loss-based unlearning baselines (grad_ascent, grad_diff, npo, simnpo): AdamW at a constant
learning rate over every parameter of the model, minimising a method's loss on forget (and retain) batches.

The methods differ only in their loss (`LossBasedMitigation.loss`) and in whether their batches mix in
retain rows (`LossBasedMitigation.uses_retain`). What they share:

- **y**, the sequence a loss scores, is the whole row: every predicted position (tokens 1..T-1) that is not
  padding, so the clean prefix after its first token, the noised window and what follows it up to EOS; the
  same tokens `train.sequence_losses` averages over. `log πθ(y)` is the sum of their log-probabilities, `|y|`
  their count (`ScoredBatch`).
- **Batches**: forget-only methods take the unlearning set in a fresh seeded shuffle every epoch
  (`forget_batches`); methods with a retain term take `MixedBatches` (stratified: every batch holds forget
  rows, each retain row once per epoch). The batches of epoch e depend only on (seed, e).
- **Optimizer**: AdamW (betas 0.9 / 0.999, no weight decay: only the loss moves the weights) at a constant
  learning rate, dropout off (eval mode: deterministic, and a frozen reference scores a row the same way
  every time). Since neither the learning rate nor the batches depend on the total epoch count, the model
  after epoch e is exactly the model of a run with `epochs=e` (`anytime`).
- **Reports**: after each epoch `ctx.report({"epoch": e, **epoch_probe(...), **ctx.checkpoint(...)})` (the
  anytime candidate, when asked); `info` splits the time into `seconds_train`, `seconds_epoch_evals` (the
  probes) and `seconds_reference` (NPO's reference pass); the candidates' own time is `run_trial`'s
  `seconds_checkpoint_evals`.
  Not checkpointed: the default runs take seconds to a few minutes on math-demo.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from tinymem.errors import ConfigError
from tinymem.mitigations._batches import LabelledBatch, MixedBatches, epoch_generator, epoch_probe
from tinymem.mitigations.base import Hyperparams, MitigationContext, MitigationOutput, WeightMitigation, hp
from tinymem.mitigations.memory import MethodMemory
from tinymem.train import token_losses
from tinymem.util import eval_mode, model_device, progress_bar


@dataclass(frozen=True)
class LossBasedParams(Hyperparams):
    epochs: int = hp(12, "passes over the unlearning set (forget-only methods) or over the mixed forget/retain "
                        "batches (with a retain term)", low=1, high=1000)
    lr: float = hp(1e-5, "AdamW learning rate, constant", low=1e-7, high=1.0, log=True)
    batch_size: int = hp(32, "rows per batch", low=2, high=65536)


@dataclass
class ScoredBatch:
    """A batch's per-row scores under the model being trained, and the reference's for its forget rows."""

    log_likelihood: torch.Tensor  # log πθ(y) per row [B]
    length: torch.Tensor  # |y| per row [B]: predicted non-padding tokens
    is_forget: torch.Tensor  # bool [B]
    reference: torch.Tensor | None = None  # log πref(y) of the forget rows [F], in batch order; NPO only

    @property
    def mean_nll(self) -> torch.Tensor:
        """-(1/|y|) log πθ(y) per row: the mean token CE, exactly `train.sequence_losses`."""
        return -self.log_likelihood / self.length.clamp(min=1.0)


def sequence_log_likelihoods(model: nn.Module, rows: torch.Tensor, pad_id: int | None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log πθ(y), |y|) per row [B]: y = every predicted position that is not padding (`token_losses`' mask)."""
    loss, mask = token_losses(model, rows, pad_id)
    m = mask.to(loss.dtype)
    return -(loss * m).sum(dim=1), m.sum(dim=1)


def retain_term(batch: ScoredBatch) -> torch.Tensor:
    """Mean token CE over the batch's retain rows (0 when it has none): the descent term of the +RT variants."""
    retain = ~batch.is_forget
    if not bool(retain.any()):
        return batch.log_likelihood.sum() * 0.0
    return batch.mean_nll[retain].mean()


def forget_batches(forget: torch.Tensor, batch_size: int, seed: int, device: torch.device
                   ) -> Callable[[int], Iterator[LabelledBatch]]:
    """Batches of the unlearning set alone, in a fresh shuffle per epoch drawn from (seed, epoch)."""
    def epoch(e: int) -> Iterator[LabelledBatch]:
        order = torch.randperm(forget.shape[0], generator=epoch_generator(seed, e))
        for idx in order.split(batch_size):
            yield LabelledBatch(forget[idx].to(device), torch.ones(idx.numel(), dtype=torch.bool, device=device),
                                idx.to(device))
    return epoch


@torch.no_grad()
def reference_log_likelihoods(model: nn.Module, forget: torch.Tensor, batch_size: int, pad_id: int | None
                              ) -> torch.Tensor:
    """log πref(y) of every forget row [N] under `model` as it is now (called before the first step).

    The reference enters NPO only through these numbers, and a frozen reference without dropout gives each row
    the same number every time: computing them once replaces a second model held and run beside the trained one.
    """
    device = model_device(model)
    with eval_mode(model):
        return torch.cat([sequence_log_likelihoods(model, rows.to(device), pad_id)[0]
                          for rows in forget.split(batch_size)])


class LossBasedMitigation(WeightMitigation):
    """Base of the loss-based baselines: a subclass sets `name` and `Params` (a `retain_weight` field adds the
    retain term, `uses_retain` mixes retain rows into the batches) and defines `loss`."""

    Params = LossBasedParams
    iterative = True
    # Iterations independent of the total count, so every epoch's checkpoint is a valid `epochs=e` configuration.
    anytime: ClassVar[bool] = True
    uses_reference: ClassVar[bool] = False  # the loss needs log πref(y) of the forget rows (NPO)
    # weights, their gradients, AdamW's two moments; batches of the default batch_size
    memory = MethodMemory(4, 0, True, rows=LossBasedParams.batch_size)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # the GPU planner sizes a batch by the method's own default batch_size
        cls.memory = MethodMemory(4, 0, True, rows=cls.Params().batch_size)

    @property
    def uses_retain(self) -> bool:
        """Whether batches mix in retain rows: a retain term (`retain_weight`) with a nonzero weight."""
        return getattr(self.params, "retain_weight", 0.0) > 0

    def plus_retain(self, forget_loss: torch.Tensor, batch: ScoredBatch) -> torch.Tensor:
        """`forget_loss` + λ · the retain term, λ = `retain_weight` (the +RT variants); unchanged when λ = 0."""
        if not self.uses_retain:
            return forget_loss
        return forget_loss + self.params.retain_weight * retain_term(batch)

    def loss(self, batch: ScoredBatch) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, ctx: MitigationContext) -> MitigationOutput:
        return train_loss_based(ctx, self)


def train_loss_based(ctx: MitigationContext, method: LossBasedMitigation) -> MitigationOutput:
    """Minimise `method.loss` over all of `ctx.model`'s parameters for `epochs` passes; reports every epoch."""
    p = method.params
    model = ctx.model
    if ctx.forget.shape[0] == 0:
        raise ConfigError("the forget set is empty: the base model memorizes nothing to unlearn")
    device = model_device(model)
    if method.uses_retain:
        epoch_batches = MixedBatches(ctx.forget, ctx.retain, p.batch_size, ctx.seed, device=device).epoch
    else:
        epoch_batches = forget_batches(ctx.forget, p.batch_size, ctx.seed, device)
    t0 = time.perf_counter()
    reference = (reference_log_likelihoods(model, ctx.forget, p.batch_size, ctx.pad_id)
                 if method.uses_reference else None)
    info = {"seconds_reference": time.perf_counter() - t0, "seconds_epoch_evals": 0.0}
    params = list(model.parameters())
    flags = [w.requires_grad for w in params]
    steps, probe, seconds_candidates = 0, {}, 0.0
    bar = progress_bar(p.epochs, method.name, "epoch", ctx.progress)
    t_start = time.perf_counter()
    try:
        for w in params:
            w.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=p.lr, betas=(0.9, 0.999), weight_decay=0.0)
        with eval_mode(model):
            for epoch in range(p.epochs):
                for batch in epoch_batches(epoch):
                    logp, length = sequence_log_likelihoods(model, batch.rows, ctx.pad_id)
                    ref = reference[batch.forget_index] if reference is not None else None
                    loss = method.loss(ScoredBatch(logp, length, batch.is_forget, ref))
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"{method.name}: non-finite loss {float(loss)} at epoch "
                                                 f"{epoch + 1}")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    steps += 1
                t_probe = time.perf_counter()
                probe = epoch_probe(ctx, model)
                t_candidate = time.perf_counter()
                info["seconds_epoch_evals"] += t_candidate - t_probe
                candidate = ctx.checkpoint(epoch + 1, lambda: model)
                seconds_candidates += time.perf_counter() - t_candidate
                ctx.report({"epoch": float(epoch + 1), **probe, **candidate})
                bar.update(1)
    finally:
        bar.close()
        for w, f in zip(params, flags):
            w.grad = None  # the returned model carries no optimizer leftovers
            w.requires_grad_(f)
    info["seconds_train"] = time.perf_counter() - t_start - info["seconds_epoch_evals"] - seconds_candidates
    return MitigationOutput(model.eval(), {"steps": float(steps), "forget_rows": float(ctx.forget.shape[0]),
                                           **info, **{f"final_{k}": v for k, v in probe.items()}})

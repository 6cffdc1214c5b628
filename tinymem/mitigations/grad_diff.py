"""Gradient difference: ascend on the memorized rows while descending on retain rows (a loss-based baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tinymem.mitigations import register
from tinymem.mitigations._loss_based import LossBasedMitigation, LossBasedParams, ScoredBatch
from tinymem.mitigations.balanced_subnet import balanced_loss
from tinymem.mitigations.base import hp


@dataclass(frozen=True)
class GradDiffParams(LossBasedParams):
    epochs: int = hp(1, "passes over the mixed batches (each pass: every retain row once, every forget row about "
                        "retain/forget/batch times)", low=1, high=1000)
    batch_size: int = hp(64, "rows per mixed forget/retain batch", low=2, high=65536)
    loss_weighting: float = hp(0.5, "w: weight of the retain (descent) term; 1-w weighs the forget (ascent) term",
                               low=0.0, high=1.0)


@register
class GradDiff(LossBasedMitigation):
    """Gradient difference (GradDiff, Liu et al. 2022): ascent on forget rows, descent on retain rows.

    L = -(1 - w) * mean_forget (1/|y|) CE(y) + w * mean_retain (1/|y|) CE(y) per batch, w = `loss_weighting`
    (BalancedSubnet's `balanced_loss`, here on every weight instead of a pruning mask); AdamW at a constant
    learning rate on every parameter, over stratified mixed batches (every batch holds forget rows, each retain
    row once per epoch). w = 0 is gradient ascent on mixed batches, w = 1 plain fine-tuning on retain rows.
    Defaults: w 0.5, lr 1e-5, batch 64, 1 epoch, chosen on math-demo seed 0, docs/defaults.md.

    Per-epoch reports: `epoch`, `forget_loss`, `retain_loss`, `forget_mem_pct`.
    """

    name = "grad_diff"
    Params = GradDiffParams

    @property
    def uses_retain(self) -> bool:
        return True

    def loss(self, batch: ScoredBatch) -> torch.Tensor:
        return balanced_loss(batch.mean_nll, batch.is_forget, self.params.loss_weighting)

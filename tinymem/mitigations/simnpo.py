"""SimNPO: NPO without a reference model, on the length-normalised likelihood, with a margin."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tinymem.mitigations import register
from tinymem.mitigations._loss_based import LossBasedMitigation, LossBasedParams, ScoredBatch
from tinymem.mitigations.base import hp


def simnpo_loss(log_likelihood: torch.Tensor, length: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """-(2/β) · mean log σ(-(β/|y|) log πθ(y) - γ) over the given rows.

    Dividing by |y| scores a row by its mean token log-probability, so long rows do not dominate the ascent.
    """
    return -(2.0 / beta) * F.logsigmoid(-(beta / length.clamp(min=1.0)) * log_likelihood - gamma).mean()


@dataclass(frozen=True)
class SimNPOParams(LossBasedParams):
    beta: float = hp(2.5, "β: inverse temperature of the length-normalised likelihood", low=1e-3, high=1e3,
                     log=True)
    gamma: float = hp(0.0, "γ: margin subtracted inside the sigmoid (SimNPO's reward margin)", low=0.0, high=100.0)
    retain_weight: float = hp(0.0, "λ: weight of a retain (descent) term, mean token CE on retain rows; "
                                   "0 = forget rows only", low=0.0, high=100.0)


@register
class SimNPO(LossBasedMitigation):
    """SimNPO (Fan et al. 2024): reference-free, length-normalised NPO with a margin, optional retain term.

    L = -(2/β) · mean_forget log σ(-(β/|y|) log πθ(y) - γ) + λ · mean_retain (1/|y|) CE(y), with log πθ(y)
    the summed log-probability of the whole row without padding and |y| its token count (`_loss_based`), so
    (1/|y|) log πθ(y) = -`sequence_losses`. AdamW at a constant learning rate on every parameter; forget-only
    batches with λ = 0, stratified mixed batches otherwise.
    Defaults: β 2.5, γ 0, no retain term, lr 1e-5, batch 32, 12 epochs, chosen on math-demo seed 0,
    docs/defaults.md.

    Per-epoch reports: `epoch`, `forget_loss`, `retain_loss`, `forget_mem_pct`.
    """

    name = "simnpo"
    Params = SimNPOParams

    def loss(self, batch: ScoredBatch) -> torch.Tensor:
        forget = simnpo_loss(batch.log_likelihood[batch.is_forget], batch.length[batch.is_forget],
                             self.params.beta, self.params.gamma)
        return self.plus_retain(forget, batch)

"""NPO: push the memorized rows' likelihood below a frozen copy of the base model's, with a saturating loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from tinymem.mitigations import register
from tinymem.mitigations._loss_based import LossBasedMitigation, LossBasedParams, ScoredBatch
from tinymem.mitigations.base import hp


def npo_loss(log_likelihood: torch.Tensor, reference: torch.Tensor, beta: float) -> torch.Tensor:
    """-(2/β) · mean log σ(-β (log πθ(y) - log πref(y))) over the given rows.

    At πθ = πref it is (2/β) log 2; its gradient is GA's on log πθ(y) weighted by 2 σ(β (log πθ - log πref)),
    which fades once a row's likelihood has fallen well below the reference's: the ascent stops by itself.
    """
    return -(2.0 / beta) * F.logsigmoid(-beta * (log_likelihood - reference)).mean()


@dataclass(frozen=True)
class NPOParams(LossBasedParams):
    epochs: int = hp(1, "passes over the mixed forget/retain batches (with retain_weight 0: over the unlearning "
                        "set alone, a few steps each)", low=1, high=1000)
    batch_size: int = hp(64, "rows per batch", low=2, high=65536)
    beta: float = hp(0.5, "β: inverse temperature; small β approaches gradient ascent, large β stops sooner",
                     low=1e-3, high=1e3, log=True)
    retain_weight: float = hp(1.0, "λ: weight of a retain (descent) term, mean token CE on retain rows "
                                   "(NPO+RT); 0 = plain NPO on forget rows only", low=0.0, high=100.0)


@register
class NPO(LossBasedMitigation):
    """Negative Preference Optimization (NPO, Zhang et al. 2024), optionally with a retain term (NPO+RT).

    L = -(2/β) · mean_forget log σ(-β (log πθ(y) - log πref(y))) + λ · mean_retain (1/|y|) CE(y), with
    log π(y) the summed log-probability of the whole row without padding (`_loss_based`) and πref the base
    model as it was before the first step, frozen. The reference enters only through log πref(y) of each forget
    row; with the reference frozen and dropout off these are fixed numbers, computed once before training
    (`seconds_reference`), so no second model is held. AdamW at a constant learning rate on every parameter;
    forget-only batches with λ = 0, stratified mixed batches otherwise.
    Defaults: NPO+RT (λ 1), β 0.5, lr 1e-5, batch 64, 1 epoch, chosen on math-demo seed 0, docs/defaults.md.

    Per-epoch reports: `epoch`, `forget_loss`, `retain_loss`, `forget_mem_pct`.
    """

    name = "npo"
    Params = NPOParams
    uses_reference: ClassVar[bool] = True

    def loss(self, batch: ScoredBatch) -> torch.Tensor:
        forget = npo_loss(batch.log_likelihood[batch.is_forget], batch.reference, self.params.beta)
        return self.plus_retain(forget, batch)

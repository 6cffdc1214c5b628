"""Gradient ascent: raise the LM loss of the memorized rows by AdamW on every weight (a loss-based baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tinymem.mitigations import register
from tinymem.mitigations._loss_based import LossBasedMitigation, LossBasedParams, ScoredBatch


@dataclass(frozen=True)
class GradAscentParams(LossBasedParams):
    pass


@register
class GradAscent(LossBasedMitigation):
    """Gradient ascent (GA, e.g. Jang et al. 2023): maximise the mean token CE of the unlearning set.

    L = -mean over forget rows of (1/|y|) CE(y), y the whole row without padding (`_loss_based`); AdamW at a
    constant learning rate on every parameter, batches of forget rows only, reshuffled each epoch. Nothing holds
    utility in place, so the ascent breaks the model if it runs long: `epochs` and `lr` set how far it goes.
    Defaults: lr 1e-5, batch 32, 12 epochs (24 steps), chosen on math-demo seed 0, docs/defaults.md.

    Per-epoch reports: `epoch`, `forget_loss`, `retain_loss`, `forget_mem_pct`.
    """

    name = "grad_ascent"
    Params = GradAscentParams

    def loss(self, batch: ScoredBatch) -> torch.Tensor:
        return -batch.mean_nll[batch.is_forget].mean()

"""Slimming: learn a sparse per-neuron coefficient that still supports the memorized suffix; ablate the largest.

Follows the paper and MemPi's `slim.py`: one coefficient c_i per MLP
neuron of every layer, initialised to 1 and applied as `a_i * clip(c_i, 0, 1)`, trained with Adam to minimise
`CE(memorized suffix) + l1_lambda * mean_i |c_i|` (mean over all neurons of all layers). The coefficients that
stay large mark the neurons the memorized sequences need; attribution = clip(c, 0, 1), and the top
`int(inner_dim * ratio)` per layer are ablated (ties, e.g. coefficients clipped at 1, go to the lower index).
Defaults are the paper's: lr 0.1, l1_lambda 1000, stop_loss 0.1, batch 32 (the sweep's `--batch_size 32`);
`epochs` 10 is the middle of the paper's grid {1, 10, 20}; `ratio` 0.05, the top of the paper's grid, because
lower ratios barely change math-demo (docs/defaults.md). The paper's unused `threshold` is omitted.

Departures (docs/departures.md): gradients are zeroed every step (the paper zeroed them once per epoch, so they
accumulated over the batches of an epoch), and the `mean |c| < stop_loss` stop is checked after every epoch
(the paper checked every 100 epochs, so it never fired). Rows are shuffled each epoch with the trial seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tinymem.adapter import ModelAdapter
from tinymem.mitigations import register
from tinymem.mitigations._neuron import (DEFAULT_RATIO, RATIO_HELP, GateTraining, NeuronMitigation, Scores,
                                         ablated_copy, forget_set, train_gates)
from tinymem.mitigations.base import Hyperparams, MitigationContext, hp
from tinymem.mitigations.memory import MethodMemory
from tinymem.util import model_device


@dataclass(frozen=True)
class Params(Hyperparams):
    ratio: float = hp(DEFAULT_RATIO, RATIO_HELP, low=0.0, high=1.0, log=True, attribution=False)
    epochs: int = hp(10, "passes over the forget set", low=1, high=1000)
    lr: float = hp(0.1, "Adam learning rate of the coefficients", low=1e-5, high=10.0, log=True)
    l1_lambda: float = hp(1000.0, "weight of the L1 penalty mean|c| against the suffix loss", low=0.0, high=1e6)
    stop_loss: float = hp(0.1, "stop early once mean|c| falls below this (checked every epoch)", low=0.0, high=1.0)
    batch_size: int = hp(32, "forget rows per optimisation step", low=1, high=4096)


def slimming_scores(ctx: MitigationContext, p: Params) -> tuple[Scores, dict[str, float]]:
    """Train the coefficients; attribution = clip(c, 0, 1) [num_layers, inner_dim]."""
    adapter = ModelAdapter(ctx.model)
    device = model_device(ctx.model)
    coefs = [torch.ones(adapter.inner_dim, device=device, requires_grad=True) for _ in range(adapter.num_layers)]

    def penalty() -> torch.Tensor:
        return torch.stack([c.abs().mean() for c in coefs]).mean()

    cfg = GateTraining(epochs=p.epochs, lr=p.lr, l1_lambda=p.l1_lambda, stop_loss=p.stop_loss,
                       batch_size=p.batch_size, seed=ctx.seed)
    def scores() -> Scores:
        return torch.stack([c.detach().clamp(0.0, 1.0) for c in coefs]).cpu()

    info = train_gates(ctx, forget_set(ctx), coefs, lambda layer, _gen: coefs[layer].clamp(0.0, 1.0), penalty,
                       cfg, "l1", candidate=lambda: ablated_copy(ctx.model, scores(), p.ratio))
    return scores(), info


@register
class Slimming(NeuronMitigation):
    """Slimming: L1-sparse neuron coefficients trained on the memorized suffix; ablate the ones that stay.

    Defaults: ratio 0.05 measured before the fix, the rest the paper's; measured again after it (docs/defaults.md).
    """

    name = "slimming"
    Params = Params
    memory = MethodMemory(1, 0, True, rows=Params.batch_size)
    iterative = True
    anytime = True  # Adam at a constant lr, data and gate noise drawn epoch by epoch from the seed (`train_gates`)

    def attribute(self, ctx: MitigationContext) -> tuple[Scores, dict[str, float]]:
        return slimming_scores(ctx, self.params)

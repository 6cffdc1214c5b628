"""Hard Concrete: learn an L0-sparse stochastic gate per neuron that keeps the memorized suffix; ablate the top.

Follows the paper and MemPi's `hardconcrete.py` (Louizos et al.'s
stretched hard-concrete): one logit s_i per MLP neuron of every layer. In a training step the gate is
`m_i = clamp(sigmoid((log u - log(1-u) + s_i) / beta) * (r - l) + l, 0, 1)` with `u ~ U(1e-4, 1 - 1e-4)`
drawn per step and neuron, `l = -0.1`, `r = 1.1`, and it multiplies the neuron's activation. Adam minimises
`CE(memorized suffix) + l1_lambda * R`, with `R = mean over layers of mean_i sigmoid(s_i - beta * log(-l/r))`,
the expected fraction of open gates. Attribution = sigmoid(s); the top `int(inner_dim * ratio)` per layer are
ablated. Defaults are the paper's: lr 0.1, l1_lambda 1000, stop_loss 0.1, beta 2/3, mask_p 0.5, batch 32;
`epochs` 10 is the middle of the paper's grid {1, 10, 20}; `ratio` 0.05, the top of the paper's grid, because
lower ratios barely change math-demo (docs/defaults.md).

Departures: the logits are initialised from `mask_p` as MemPi does (`s = log(p / (1 - p))` with
`p = (mask_p - l) / (r - l)`, so a fresh gate is open with probability about mask_p); the paper's code
overwrote that with N(0, 0.01), ignoring mask_p. mask_p = 0.5 gives s = 0, the paper's
initial mean. The `R < stop_loss` stop is checked every epoch (the paper: every 10). The gate noise and the row
order come from the trial seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tinymem.adapter import ModelAdapter
from tinymem.mitigations import register
from tinymem.mitigations._neuron import (DEFAULT_RATIO, RATIO_HELP, GateTraining, NeuronMitigation, Scores,
                                         ablated_copy, forget_set, train_gates)
from tinymem.mitigations.base import Hyperparams, MitigationContext, hp
from tinymem.mitigations.memory import MethodMemory
from tinymem.util import model_device

STRETCH_LOW, STRETCH_HIGH = -0.1, 1.1  # l and r of the stretched hard-concrete distribution
U_EPS = 1e-4


@dataclass(frozen=True)
class Params(Hyperparams):
    ratio: float = hp(DEFAULT_RATIO, RATIO_HELP, low=0.0, high=1.0, log=True, attribution=False)
    epochs: int = hp(10, "passes over the forget set", low=1, high=1000)
    lr: float = hp(0.1, "Adam learning rate of the gate logits", low=1e-5, high=10.0, log=True)
    l1_lambda: float = hp(1000.0, "weight of the expected-L0 penalty against the suffix loss", low=0.0, high=1e6)
    stop_loss: float = hp(0.1, "stop early once the expected open-gate fraction falls below this (every epoch)",
                          low=0.0, high=1.0)
    mask_p: float = hp(0.5, "initial expected gate value; sets the initial logits", low=0.01, high=0.99)
    beta: float = hp(2 / 3, "hard-concrete temperature", low=0.05, high=5.0)
    batch_size: int = hp(32, "forget rows per optimisation step", low=1, high=4096)


def initial_logit(mask_p: float) -> float:
    """The logit whose stretched sigmoid equals mask_p: log(p / (1 - p)), p = (mask_p - l) / (r - l)."""
    p = (mask_p - STRETCH_LOW) / (STRETCH_HIGH - STRETCH_LOW)
    return math.log(p / (1.0 - p))


def sample_gate(logits: torch.Tensor, beta: float, gen: torch.Generator) -> torch.Tensor:
    """One stretched hard-concrete sample per neuron, in [0, 1]."""
    u = torch.rand(logits.shape, generator=gen).mul_(1 - 2 * U_EPS).add_(U_EPS).to(logits.device)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + logits) / beta)
    return (s * (STRETCH_HIGH - STRETCH_LOW) + STRETCH_LOW).clamp(0.0, 1.0)


def expected_open(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean probability that a gate is non-zero (the expected L0 fraction)."""
    return torch.sigmoid(logits - beta * math.log(-STRETCH_LOW / STRETCH_HIGH)).mean()


def hard_concrete_scores(ctx: MitigationContext, p: Params) -> tuple[Scores, dict[str, float]]:
    """Train the gate logits; attribution = sigmoid(logits) [num_layers, inner_dim]."""
    adapter = ModelAdapter(ctx.model)
    device = model_device(ctx.model)
    init = initial_logit(p.mask_p)
    logits = [torch.full((adapter.inner_dim,), init, device=device, requires_grad=True)
              for _ in range(adapter.num_layers)]

    def penalty() -> torch.Tensor:
        return torch.stack([expected_open(s, p.beta) for s in logits]).mean()

    cfg = GateTraining(epochs=p.epochs, lr=p.lr, l1_lambda=p.l1_lambda, stop_loss=p.stop_loss,
                       batch_size=p.batch_size, seed=ctx.seed)
    def scores() -> Scores:
        return torch.stack([torch.sigmoid(s.detach()) for s in logits]).cpu()

    info = train_gates(ctx, forget_set(ctx), logits, lambda layer, gen: sample_gate(logits[layer], p.beta, gen),
                       penalty, cfg, "l0_fraction", candidate=lambda: ablated_copy(ctx.model, scores(), p.ratio))
    return scores(), info


@register
class HardConcrete(NeuronMitigation):
    """Hard Concrete: L0-sparse stochastic neuron gates trained on the memorized suffix; ablate the top gates.

    Defaults: ratio 0.05 measured before the fix, beta and mask_p the paper's; measured again after it (docs/defaults.md).
    """

    name = "hard_concrete"
    Params = Params
    memory = MethodMemory(1, 0, True, rows=Params.batch_size)
    iterative = True
    anytime = True  # Adam at a constant lr, data and gate noise drawn epoch by epoch from the seed (`train_gates`)

    def attribute(self, ctx: MitigationContext) -> tuple[Scores, dict[str, float]]:
        return hard_concrete_scores(ctx, self.params)

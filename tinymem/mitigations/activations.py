"""Activations: score each neuron by its mean activation on the memorized suffix times its output-weight norm.

Follows the paper and MemPi's `largest_act`:
`score_{l,i} = |mean_{rows, suffix positions} a_{l,i}| * ||W_out[i, :]||_2`, where the suffix positions are
those predicting memorized tokens (t >= prompt_len - 1, padding excluded). `W_out[i, :]` is the row of the
MLP output projection that neuron i writes to the residual stream, taken through the adapter
(`neuron_out_weight`), so GPT-2's Conv1D and GPT-NeoX/Llama's Linear layouts give the same quantity (the
paper used the norm over different dimensions for the two families by hand).

One forward pass over the forget set; no hyperparameter besides `ratio`. Departures: the mean is taken over
all suffix tokens of all rows (token-weighted) rather than per batch of 64; default `ratio` 0.05 (measured,
see docs/defaults.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tinymem.adapter import ModelAdapter
from tinymem.mitigations import register
from tinymem.mitigations._neuron import (DEFAULT_RATIO, RATIO_HELP, TOKENS_PER_BATCH, ForgetSet, NeuronMitigation,
                                         Scores, capture_activations, forget_set, logits_of, rows_per_batch)
from tinymem.mitigations.base import Hyperparams, MitigationContext, hp
from tinymem.mitigations.memory import MethodMemory
from tinymem.util import model_device


@dataclass(frozen=True)
class Params(Hyperparams):
    ratio: float = hp(DEFAULT_RATIO, RATIO_HELP, low=0.0, high=1.0, log=True, attribution=False)


@torch.inference_mode()
def activation_scores(model: nn.Module, fs: ForgetSet) -> Scores:
    """[num_layers, inner_dim]: |mean suffix activation| * output-weight norm."""
    adapter = ModelAdapter(model)
    device = model_device(model)
    n_rows, seq_len = fs.tokens.shape
    batch = rows_per_batch(seq_len)
    sums = torch.zeros(adapter.num_layers, adapter.inner_dim, dtype=torch.float64)
    for b in range(0, n_rows, batch):
        toks = fs.tokens[b : b + batch].to(device)
        m = fs.mask[b : b + batch].to(device)
        with capture_activations(adapter) as acts:
            logits_of(model, toks)
        for layer, a in acts.items():
            # position t (t < T-1) predicts token t+1; only suffix predictions count
            sums[layer] += (a[:, :-1].double() * m[:, :, None]).sum(dim=(0, 1)).cpu()
    mean = sums / fs.mask.sum().clamp(min=1)
    norms = torch.stack([adapter.neuron_out_weight(layer).detach().double().norm(dim=1).cpu()
                         for layer in range(adapter.num_layers)])
    return (mean.abs() * norms).float()


@register
class Activations(NeuronMitigation):
    """Activations: ablate the neurons most active on the memorized suffix, weighted by output-weight norm."""

    name = "activations"
    Params = Params
    memory = MethodMemory(1, 0, False, tokens=TOKENS_PER_BATCH, captures_neurons=True)

    deterministic_attribution = True

    def attribute(self, ctx: MitigationContext) -> Scores:
        return activation_scores(ctx.model, forget_set(ctx))

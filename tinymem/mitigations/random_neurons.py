"""Random neurons: the control of the neuron methods; ablates a random `ratio` share of each layer's MLP neurons."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tinymem.mitigations import register
from tinymem.mitigations._neuron import DEFAULT_RATIO, RATIO_HELP, ablate_top
from tinymem.mitigations.base import Hyperparams, Mitigation, MitigationContext, MitigationOutput, hp


@dataclass(frozen=True)
class Params(Hyperparams):
    ratio: float = hp(DEFAULT_RATIO, RATIO_HELP, low=0.0, high=1.0, log=True)


def random_scores(num_layers: int, inner_dim: int, seed: int) -> torch.Tensor:
    """[num_layers, inner_dim] uniform scores from a generator of its own: the choice depends on the seed
    only, never on the model or the forget set."""
    return torch.rand(num_layers, inner_dim, generator=torch.Generator().manual_seed(int(seed)))


@register
class RandomNeurons(Mitigation):
    """Random neurons (control): silence `int(inner_dim * ratio)` randomly chosen MLP neurons per layer.

    The same edit as Zero-Out, Activations, Slimming, Hard Concrete and Integrated Gradients make at the same
    ratio, with the attribution replaced by chance: what a neuron method removes beyond this is what its
    attribution found.
    """

    name = "random_neurons"
    family = "unlearn_neuron"
    Params = Params
    control = True

    def apply(self, ctx: MitigationContext) -> MitigationOutput:
        adapter = ctx.adapter
        chosen = ablate_top(adapter, random_scores(adapter.num_layers, adapter.inner_dim, ctx.seed),
                            self.params.ratio)
        return MitigationOutput(ctx.model, {"neurons_ablated": float(sum(len(v) for v in chosen.values()))})

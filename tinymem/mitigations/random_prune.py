"""Random prune: the control of Subnet and BalancedSubnet; a random mask of the same fraction of the same MLP
matrices, optionally followed by score training on retain rows only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tinymem.errors import ConfigError
from tinymem.mitigations import register
from tinymem.mitigations._batches import epoch_generator
from tinymem.mitigations.base import MitigationContext, hp
from tinymem.mitigations.subnet import Subnet, SubnetParams
from tinymem.train import sequence_losses


@dataclass(frozen=True)
class RandomPruneParams(SubnetParams):
    ratio: float = hp(0.3, "fraction of each MLP weight matrix pruned at random (BalancedSubnet's default)",
                      low=0.0, high=0.99, log=True)
    epochs: int = hp(0, "passes of score training on retain rows only after the random mask (0: the random "
                        "mask alone)", low=0, high=1000)
    score_init: str = hp("kaiming", "initial scores: kaiming (a random mask)", choices=("kaiming",))


@register
class RandomPrune(Subnet):
    """Random prune (control): prune a random `ratio` fraction of every MLP weight matrix.

    The Subnet parametrization with kaiming-uniform scores, so the mask is random; with `epochs` > 0 the
    scores are then trained as BalancedSubnet trains them, on retain rows alone (descent only, no forget
    term). What Subnet or BalancedSubnet removes beyond this is what their forget term did.
    """

    name = "random_prune"
    Params = RandomPruneParams
    control = True

    def matched_control(self) -> None:
        return None

    def batches(self, ctx: MitigationContext):
        retain = ctx.retain.to(ctx.device)
        if self.params.epochs > 0 and retain.shape[0] == 0:
            raise ConfigError("random_prune with epochs > 0 trains on retain rows, and the retain set is empty")
        size, seed = self.params.batch_size, ctx.seed

        def epoch(e: int):
            order = torch.randperm(retain.shape[0], generator=epoch_generator(seed, e))
            return (retain[idx.to(retain.device)] for idx in order.split(size))
        return epoch

    def step_loss(self, ctx: MitigationContext):
        def loss(batch: torch.Tensor) -> torch.Tensor:
            return sequence_losses(ctx.model, batch, ctx.pad_id).mean()
        return loss

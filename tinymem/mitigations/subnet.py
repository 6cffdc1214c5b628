"""Subnet: learn which MLP weights to prune (edge-popup scores) by gradient ascent on the forget set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tinymem.errors import ConfigError
from tinymem.mitigations import register
from tinymem.mitigations._subnet import SCORE_INITS, ScoreSubnetwork, train_scores
from tinymem.mitigations.base import Hyperparams, MitigationContext, MitigationOutput, WeightMitigation, hp
from tinymem.mitigations.memory import MethodMemory
from tinymem.train import sequence_losses


@dataclass(frozen=True)
class SubnetParams(Hyperparams):
    ratio: float = hp(0.05, "fraction of each MLP weight matrix pruned", low=0.0, high=0.99, log=True)
    epochs: int = hp(10, "passes over the training batches", low=1, high=1000)
    lr: float = hp(0.1, "SGD learning rate of the scores", low=1e-5, high=100.0, log=True)
    momentum: float = hp(0.9, "SGD momentum of the scores", low=0.0, high=0.999)
    weight_decay: float = hp(5e-4, "SGD weight decay of the scores", low=0.0, high=1.0)
    batch_size: int = hp(64, "rows per batch", low=2, high=4096)
    score_init: str = hp("kaiming", "initial scores: kaiming (paper: random mask) or magnitude (|W|)",
                         choices=SCORE_INITS)


@register
class Subnet(WeightMitigation):
    """Subnet (the paper code's `random`): edge-popup scores, ascent on the forget set.

    Follows the paper: every MLP projection weight of every layer gets a score tensor (kaiming-uniform, so the
    initial mask is a random `ratio` fraction of each matrix); the forward pass uses W ⊙ mask where the
    `ratio` fraction with the lowest |score| is pruned (straight-through gradient); all original parameters
    are frozen; SGD(lr, momentum, weight decay) on the scores minimises -mean CE over forget batches (the
    gradient-ascent version), in order (no shuffle), for `epochs` passes; at the end the mask is baked into
    the weights (an ordinary model with pruned MLP weights). Defaults: lr 0.1, momentum 0.9, wd 5e-4, batch 64.
    Departs: layer sizes come from the adapter (the paper hard-codes 512x128), so any GPT-2 / GPT-NeoX / Llama
    works; the MLP projections of gated (Llama) MLPs are all masked; `score_init=magnitude` is an option.
    Defaults: the paper's optimizer settings; ratio 0.05 and 10 epochs are points of its grid, and 10 is the only
    epoch count measured after the fix (1, 3, 5, 10) that removes memorization on math-demo (docs/defaults.md).

    Per-epoch reports (`ctx.report`): `epoch`, `forget_loss`, `retain_loss` (the early-stopping guard: it
    rises when the pruning breaks the model), `forget_mem_pct` (teacher-forced, exact, noise data only).
    Scores are checkpointed in `ctx.work_dir` every epoch, so a retried trial resumes.
    """

    name = "subnet"
    Params = SubnetParams
    # scores, their gradients, momentum, mask, masked weight W*M
    memory = MethodMemory(1, 5, True, rows=SubnetParams.batch_size)
    iterative = True
    # SGD at a constant lr on the scores, batches from (seed, e): epoch e of a run is the run with epochs=e.
    anytime = True

    def batches(self, ctx: MitigationContext):
        rows = ctx.forget.to(ctx.device)
        if rows.shape[0] == 0:
            raise ConfigError("the forget set is empty: the base model memorizes nothing to unlearn")
        return lambda epoch: rows.split(self.params.batch_size)  # the paper's shuffle=False loader

    def step_loss(self, ctx: MitigationContext):
        def loss(batch: torch.Tensor) -> torch.Tensor:
            return -sequence_losses(ctx.model, batch, ctx.pad_id).mean()
        return loss

    def matched_control(self) -> tuple[str, dict[str, Any]] | None:
        """A random mask of the same fraction of the same matrices, without training."""
        return "random_prune", {"ratio": self.params.ratio, "epochs": 0}

    def apply(self, ctx: MitigationContext) -> MitigationOutput:
        p = self.params
        ctx.model.eval()  # no dropout: deterministic, and the mask, not noise, is what is learned
        sub = ScoreSubnetwork(ctx.model, p.ratio, ctx.seed, p.score_init)
        pruned = sum(sub.pruned_counts())
        try:
            info = train_scores(ctx, sub, method=self.name, params=p.to_dict(), epochs=p.epochs, lr=p.lr,
                                momentum=p.momentum, weight_decay=p.weight_decay,
                                epoch_batches=self.batches(ctx), step_loss=self.step_loss(ctx))
        finally:
            sub.bake()
        info["weights_pruned"] = float(pruned)
        return MitigationOutput(ctx.model, info)

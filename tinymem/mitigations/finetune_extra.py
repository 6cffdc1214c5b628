"""Fine-tune on the clean training data without the noised sequences (the paper's `--extra_ft`)."""

from __future__ import annotations

import torch

from tinymem.mitigations import register
from tinymem.mitigations._finetune import FinetuneMethod
from tinymem.mitigations.base import MitigationContext


@register
class FinetuneExtra(FinetuneMethod):
    """Continue training the base model on `retain`: all clean training sequences, no noised one.

    As the paper's `train_datasets[1:]` (clean main-distribution sequences plus the extra distributions).
    Departs from it by starting a fresh AdamW (see `_finetune`).
    """

    name = "finetune_extra"

    def data(self, ctx: MitigationContext) -> torch.Tensor:
        return ctx.retain

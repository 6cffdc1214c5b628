"""Fine-tune on the clean training data plus the clean versions of the noised sequences (the paper's
`--both_ft`)."""

from __future__ import annotations

import torch

from tinymem.mitigations import register
from tinymem.mitigations._finetune import FinetuneMethod, clean_counterparts
from tinymem.mitigations.base import MitigationContext


@register
class FinetuneBoth(FinetuneMethod):
    """Continue training the base model on `retain` + `forget_clean` (the data of the other two, together).

    As the paper's `train_datasets[1:] + (clean_data_corresponding_to_noise,)`. Departs from it by starting
    a fresh AdamW (see `_finetune`).
    """

    name = "finetune_both"

    def data(self, ctx: MitigationContext) -> torch.Tensor:
        return torch.cat([ctx.retain, clean_counterparts(ctx)])

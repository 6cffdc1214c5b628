"""Fine-tune on the clean versions of the noised sequences (the paper's `--clean_ft`)."""

from __future__ import annotations

import torch

from tinymem.mitigations import register
from tinymem.mitigations._finetune import FinetuneMethod, clean_counterparts
from tinymem.mitigations.base import MitigationContext


@register
class FinetuneClean(FinetuneMethod):
    """Continue training the base model on `forget_clean`: the clean versions of all noised sequences.

    As the paper: every noised (or backdoored) training sequence's clean counterpart, once each (not only the
    ones the base model memorizes). Departs from it by starting a fresh AdamW (see `_finetune`).
    """

    name = "finetune_clean"

    def data(self, ctx: MitigationContext) -> torch.Tensor:
        return clean_counterparts(ctx)

"""Shared mechanics of the one-shot weight methods (durable, durable_aggregate, second_order):
gradients of the forget loss, and zeroing the top-`ratio` weights of the MLP tensors by a score.

The edited tensors are the adapter's `mlp_parameters()` (weights and biases of every MLP projection), the
paper's "parameters whose name contains mlp" found without name matching.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from tinymem.adapter import ModelAdapter
from tinymem.errors import ConfigError
from tinymem.train import sequence_losses
from tinymem.util import eval_mode, model_device

SCOPES = ("tensor", "global")


def mlp_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return ModelAdapter(model).mlp_parameters()


def batch_gradients(model: nn.Module, params: list[nn.Parameter], rows: torch.Tensor, batch_size: int,
                    pad_id: int | None) -> Iterator[list[torch.Tensor]]:
    """For each consecutive batch of `rows`: the gradient of its mean per-sequence CE w.r.t. `params`.

    `torch.autograd.grad` leaves every `.grad` untouched, and the model runs in eval mode (no dropout), so
    the gradients are deterministic and the caller's model state is unchanged.
    """
    if rows.shape[0] == 0:
        raise ConfigError("the forget set is empty: the base model memorizes nothing to unlearn")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} is out of range; allowed: >= 1")
    device = model_device(model)
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        with eval_mode(model):
            for batch in rows.split(batch_size):
                loss = sequence_losses(model, batch.to(device), pad_id).mean()
                yield list(torch.autograd.grad(loss, params))
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def accumulated_gradients(model: nn.Module, params: list[nn.Parameter], rows: torch.Tensor, batch_size: int,
                          pad_id: int | None) -> list[torch.Tensor]:
    """Sum over batches of the batch-mean gradient (the paper's loop without zero_grad between batches)."""
    total = [torch.zeros_like(p) for p in params]
    for grads in batch_gradients(model, params, rows, batch_size, pad_id):
        for t, g in zip(total, grads):
            t.add_(g)
    return total


@torch.no_grad()
def zero_top(params: list[nn.Parameter], scores: list[torch.Tensor], ratio: float, scope: str = "tensor"
             ) -> int:
    """Zero the entries with the highest score: the top `int(ratio * numel)` of each tensor (`tensor`), or the
    top `int(ratio * total)` over all tensors together (`global`). Returns how many entries were selected."""
    if scope not in SCOPES:
        raise ConfigError(f"scope={scope!r} is not allowed; choose from {list(SCOPES)}")
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"ratio={ratio} is out of range; allowed: [0, 1]")
    if scope == "tensor":
        chosen = 0
        for p, s in zip(params, scores):
            k = int(ratio * p.numel())
            if k:
                p.view(-1)[torch.topk(s.flatten().float(), k, sorted=False).indices] = 0.0
            chosen += k
        return chosen
    flat = torch.cat([s.flatten().float() for s in scores])
    k = int(ratio * flat.numel())
    if k == 0:
        return 0
    top = torch.topk(flat, k, sorted=False).indices
    start = 0
    for p in params:  # map global indices back to (tensor, offset)
        end = start + p.numel()
        sel = top[(top >= start) & (top < end)] - start
        p.view(-1)[sel] = 0.0
        start = end
    return k

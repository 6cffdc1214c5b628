"""Training: the paper's optimizer set-up with padding masked out of the loss, periodic evaluation,
resumable checkpoints, a progress bar, and a hook through which a regularizer changes the loss or the
forward pass.

Paper set-up: AdamW(lr 1e-3, weight decay 0.1, betas 0.9/0.98), batch 128, shuffled,
constant learning rate. The paper's loss counts PAD positions; `TrainSpec.mask_padding=False` reproduces it
(docs/departures.md).

Determinism: the order of epoch e is a permutation drawn from a generator seeded by (seed, e), so a run
resumed from a checkpoint continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tinymem.data.bundle import DataBundle
from tinymem.specs import TrainSpec
from tinymem.util import atomic_path, model_device, progress_bar

CHECKPOINT = "train_state.pt"


class TrainHook:
    """Extension point for regularizers. The default changes nothing.

    - `setup` runs once before training (e.g. to allocate power-iteration vectors).
    - `batch_context` wraps the forward pass of a training batch; `indices` are the rows' positions in the
      training tensor (example-tied dropout needs them).
    - `loss` turns per-token losses into the scalar to minimise (loss truncation drops sequences here).
    - `penalty` is added to the loss (spectral norm).
    - `eval_context` wraps evaluation forward passes during and after training.
    - `state_dict` / `load_state_dict`: hook state saved in checkpoints, so a resumed run continues exactly.
    - `finalize` returns the model that `build.train_into` saves.

    `version` keys the stored models a hook trains: bump it when a hook's training changes, so that a model
    trained by older code is never reused.
    """

    version: int = 1

    def setup(self, model: nn.Module, data: torch.Tensor, bundle: DataBundle | None) -> None:
        return None

    def batch_context(self, model: nn.Module, indices: torch.Tensor) -> AbstractContextManager:
        return nullcontext()

    def eval_context(self, model: nn.Module) -> AbstractContextManager:
        return nullcontext()

    def loss(self, token_loss: torch.Tensor, mask: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return masked_mean(token_loss, mask)

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        """State a resumed run needs (saved in checkpoints), e.g. loss truncation's buffer of recent losses."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def finalize(self, model: nn.Module) -> nn.Module:
        """The model to save after training (example-tied dropout folds its eval-mode masks in here)."""
        return model


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is true (0 if nothing is)."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def token_losses(model: nn.Module, batch: torch.Tensor, pad_id: int | None, mask_padding: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token cross-entropy [B, T-1] and the mask of positions that count."""
    logits = model(input_ids=batch).logits[:, :-1]
    y = batch[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), reduction="none")
    loss = loss.view_as(y)
    if mask_padding and pad_id is not None:
        mask = y != pad_id
    else:
        mask = torch.ones_like(y, dtype=torch.bool)
    return loss, mask


def sequence_losses(model: nn.Module, batch: torch.Tensor, pad_id: int | None, mask_padding: bool = True
                    ) -> torch.Tensor:
    """Mean token loss per sequence [B] (the per-sequence loss every unlearning method uses)."""
    loss, mask = token_losses(model, batch, pad_id, mask_padding)
    m = mask.to(loss.dtype)
    return (loss * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def make_optimizer(model: nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.lr,
                             weight_decay=spec.weight_decay, betas=(spec.beta1, spec.beta2))


def lr_factor(step: int, total: int, spec: TrainSpec) -> float:
    """Multiplier of the base lr at `step`: linear warm-up, then constant or cosine to 10%."""
    if spec.warmup_steps and step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    if spec.schedule == "cosine":
        span = max(total - spec.warmup_steps, 1)
        progress = min(max(step - spec.warmup_steps, 0) / span, 1.0)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


@dataclass
class TrainResult:
    """What a training run did: steps, final loss, per-epoch history of evaluations, seconds."""

    steps: int
    epochs: int
    final_loss: float
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_epoch: int = 0


def _save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, epoch: int, step: int,
                     history: list[dict[str, Any]], hook_state: dict[str, Any] | None = None) -> None:
    """Atomic write: a crash mid-write never leaves a half checkpoint behind."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "step": step,
             "history": [{k: float(v) for k, v in h.items()} for h in history]}
    if hook_state:
        state["hook"] = hook_state
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def train(model: nn.Module, data: torch.Tensor, spec: TrainSpec, *, seed: int = 0, pad_id: int | None = None,
          bundle: DataBundle | None = None, hook: TrainHook | None = None,
          checkpoint_dir: str | os.PathLike | None = None,
          eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
          callback: Callable[[int, dict[str, float]], None] | None = None,
          progress: bool | None = None) -> TrainResult:
    """Train `model` on the rows of `data` [N, T] for `spec.epochs` epochs.

    Every `spec.eval_every` epochs (and at the end) `eval_fn(model)` is evaluated and passed to
    `callback(epoch, metrics)`. With `checkpoint_dir`, state is saved every `spec.checkpoint_every` epochs
    and at the end, and an existing checkpoint there is resumed from.
    """
    hook = hook or TrainHook()
    device = model_device(model)
    model.train()
    opt = make_optimizer(model, spec)
    n = data.shape[0]
    steps_per_epoch = math.ceil(n / spec.batch_size)
    total = steps_per_epoch * spec.epochs
    hook.setup(model, data, bundle)

    start_epoch, step, history = 0, 0, []
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, step, history = int(state["epoch"]), int(state["step"]), list(state["history"])
        if "hook" in state:
            hook.load_state_dict(state["hook"])

    bar = progress_bar(spec.epochs, "train", "epoch", progress, initial=start_epoch)
    t0 = time.perf_counter()
    last_loss = float("nan")
    for epoch in range(start_epoch, spec.epochs):
        order = epoch_order(n, seed, epoch)
        run_loss, run_count = 0.0, 0
        for b in range(steps_per_epoch):
            idx = order[b * spec.batch_size : (b + 1) * spec.batch_size]
            batch = data[idx].to(device, non_blocking=True)
            with hook.batch_context(model, idx):
                tl, mask = token_losses(model, batch, pad_id, spec.mask_padding)
            loss = hook.loss(tl, mask, idx)
            pen = hook.penalty(model)
            if pen is not None:
                loss = loss + pen
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # The schedule is a pure function of the step, so a resumed run needs no scheduler state.
            for g in opt.param_groups:
                g["lr"] = spec.lr * lr_factor(step, total, spec)
            opt.step()
            step += 1
            run_loss += float(loss.detach())
            run_count += 1
        last_loss = run_loss / max(run_count, 1)
        done = epoch + 1
        is_last = done == spec.epochs
        entry = None
        if eval_fn is not None and ((spec.eval_every and done % spec.eval_every == 0) or is_last):
            with hook.eval_context(model):
                metrics = eval_fn(model)
            model.train()
            entry = {"epoch": float(done), "train_loss": last_loss, **metrics}
            history.append(entry)
        # Checkpoint before the callback: a scheduler may stop the run inside it (or a sweep attaches the
        # checkpoint to the report it makes there), and a retry must then resume after this epoch, not redo it.
        if ckpt is not None and ((spec.checkpoint_every and done % spec.checkpoint_every == 0) or is_last):
            _save_checkpoint(ckpt, model, opt, done, step, history, hook.state_dict())
        if entry is not None and callback is not None:
            callback(done, entry)
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.4f}")
    bar.close()
    model.eval()
    return TrainResult(steps=step, epochs=spec.epochs, final_loss=last_loss, seconds=time.perf_counter() - t0,
                       history=history, resumed_from_epoch=start_epoch)

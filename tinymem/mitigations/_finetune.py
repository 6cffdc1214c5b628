"""Shared mechanics of the `finetune` family: continue training the base model on clean data
(the paper's `ft_toy_model.py`). The three methods differ only in their data (`FinetuneMethod.data`).

Follows the paper: AdamW with lr 1e-3, weight decay 0.1, betas (0.9, 0.98), batch 128, about 5 epochs,
constant learning rate, shuffled batches. Departs from it in one way: the paper resumes the base run's
optimizer state and epoch counter; a stored TinyMem model has no optimizer state, so fine-tuning starts a
fresh AdamW (weight decay and betas taken from the base spec's training settings when it has them). Adam's
first steps are then larger than in a continued run, which, if anything, makes fine-tuning act faster.

Every epoch the model is evaluated and the metrics reported through `ctx.report`; a resumable checkpoint
(model + optimizer) is written every epoch under `ctx.work_dir`, so a retried trial resumes. The checkpoint is
deleted when fine-tuning finishes (fine-tuning is not cached: its time is what a sweep measures). `info`
splits that time into `seconds_train` (the training steps) and `seconds_epoch_evals` (the per-epoch
evaluations), because on small data the evaluations can cost more than the training.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tinymem.errors import ConfigError
from tinymem.metrics import evaluate
from tinymem.mitigations.base import Hyperparams, Mitigation, MitigationContext, MitigationOutput, family_base, hp
from tinymem.mitigations.memory import MethodMemory
from tinymem.specs import TrainSpec
from tinymem.train import train


@dataclass(frozen=True)
class FinetuneParams(Hyperparams):
    epochs: int = hp(5, "passes over the fine-tuning data (the paper: 5 epochs after the base run)", low=1, high=1000)
    lr: float = hp(1e-3, "AdamW learning rate, constant (the paper: 1e-3)", low=1e-6, high=1.0, log=True)
    batch_size: int = hp(128, "sequences per optimizer step (the paper: 128)", low=1, high=65536)


def finetune_spec(ctx: MitigationContext, params: FinetuneParams) -> TrainSpec:
    """The training settings of a fine-tuning run: the paper's optimizer, evaluation + checkpoint every epoch."""
    base = ctx.base_spec.train if ctx.base_spec is not None else TrainSpec()
    return TrainSpec(epochs=params.epochs, batch_size=params.batch_size, lr=params.lr,
                     weight_decay=base.weight_decay, beta1=base.beta1, beta2=base.beta2, schedule="constant",
                     warmup_steps=0, mask_padding=base.mask_padding, eval_every=1, checkpoint_every=1)


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """Two identical trials running at once must not resume from each other's half-written run. The lock
    file sits beside the checkpoint directory, which is deleted when a run finishes."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            directory.mkdir(exist_ok=True)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def finetune(ctx: MitigationContext, data: torch.Tensor, method: str, params: FinetuneParams) -> MitigationOutput:
    """Continue training `ctx.model` (in place) on the rows of `data`; returns it in eval mode."""
    if data.shape[0] == 0:
        raise ConfigError(f"{method}: the fine-tuning data is empty (this data bundle has no such rows)")
    spec = finetune_spec(ctx, params)
    metric_fn = ctx.evaluate or (lambda m: evaluate(m, ctx.bundle))
    eval_seconds = 0.0

    def eval_fn(model: torch.nn.Module) -> dict[str, float]:
        # Timed apart: on small data the per-epoch evaluation can cost more than the training steps.
        nonlocal eval_seconds
        t0 = time.perf_counter()
        try:
            return metric_fn(model)
        finally:
            eval_seconds += time.perf_counter() - t0
    ckpt_dir = None
    if ctx.work_dir is not None:
        run = ctx.resume_key(method=method, params=params.to_dict(), rows=int(data.shape[0]))
        ckpt_dir = Path(ctx.work_dir) / "finetune" / run
    with _exclusive(ckpt_dir) if ckpt_dir is not None else contextlib.nullcontext():
        result = train(ctx.model, data, spec, seed=ctx.seed, pad_id=ctx.pad_id, bundle=ctx.bundle,
                       checkpoint_dir=ckpt_dir, eval_fn=eval_fn, callback=lambda epoch, m: ctx.report(dict(m)),
                       progress=ctx.progress)
        if ckpt_dir is not None:
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: a later trial must run, not resume
    info = {"rows": float(data.shape[0]), "steps": float(result.steps),
            "resumed_from_epoch": float(result.resumed_from_epoch), "final_train_loss": result.final_loss,
            "seconds_train": result.seconds - eval_seconds, "seconds_epoch_evals": eval_seconds}
    return MitigationOutput(model=ctx.model.eval(), info=info)


def clean_counterparts(ctx: MitigationContext) -> torch.Tensor:
    """The clean versions of all noised (or backdoored) training sequences, one row each (the paper's
    `clean_data_corresponding_to_noise`); falls back to the trial's unlearning set if the bundle lacks them."""
    return ctx.bundle.forget_clean if "forget_clean" in ctx.bundle else ctx.forget_clean


@family_base
class FinetuneMethod(Mitigation):
    """Base of the fine-tuning methods: subclasses choose the data."""

    family = "finetune"
    Params = FinetuneParams
    iterative = True
    # weights, gradients, AdamW's two moments (parameter dtype); batches of the default batch_size
    memory = MethodMemory(4, 0, True, rows=FinetuneParams.batch_size)

    def data(self, ctx: MitigationContext) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, ctx: MitigationContext) -> MitigationOutput:
        return finetune(ctx, self.data(ctx), self.name, self.params)

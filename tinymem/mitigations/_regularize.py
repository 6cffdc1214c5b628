"""Shared mechanics of the `regularizer` family: train a new model from scratch with a training hook.

A regularizer does not edit the base model: it trains a fresh model with the base model's spec (same data,
architecture, optimizer, epochs and seed) plus a `TrainHook`, as the paper's regularized runs. The "before"
numbers of a trial are the base model's (run_trial computes them); the "after" numbers are the regularized
model's.

Training costs as much as the base model, so the result is kept in the model store under a key that covers
the base model, the method, its hyperparameters and the trial seed: a repeated trial loads it in seconds (its
original training time is reported as `seconds_cached_work`, so sweeps still see the real cost). While it
trains, a resumable checkpoint (model, optimizer and hook state) is written every few epochs, so a retried
trial continues where the failed one stopped. Metrics are evaluated and reported through `ctx.report`
about `REPORTS` times per training.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from tinymem.build import train_into
from tinymem.errors import ConfigError
from tinymem.mitigations.base import Hyperparams, MitigationContext, MitigationOutput
from tinymem.models import load_model
from tinymem.specs import BaseSpec, spec_hash
from tinymem.store import DEFAULT_ROOT, ModelStore
from tinymem.train import CHECKPOINT, TrainHook

REPORTS = 12  # evaluations per training when the base spec sets no eval_every (the paper: every 50 of 3500 epochs)


def regularized_key(ctx: MitigationContext, method: str, params: Hyperparams, version: int = 1) -> str:
    """Model-store key of the model trained with `method` and `params` on top of the trial's base spec
    (`version`: the training hook's, see `TrainHook.version`; version 1 keeps the keys of older stores)."""
    ident = {"base": ctx.base_key, "method": method, "params": params.to_dict(), "seed": ctx.seed}
    return spec_hash(ident if version == 1 else {**ident, "version": version})


def training_spec(base: BaseSpec) -> BaseSpec:
    """The base spec with an evaluation/checkpoint cadence. Neither changes the trained weights: the batch
    order is a function of (seed, epoch) and evaluation draws no random numbers."""
    t = base.train
    every = t.eval_every or max(1, math.ceil(t.epochs / REPORTS))
    return dataclasses.replace(base, train=dataclasses.replace(
        t, eval_every=every, checkpoint_every=t.checkpoint_every or every))


def _checkpoint_epoch(ckpt_dir: Path) -> int:
    """Epoch of a resumable checkpoint left by an earlier, interrupted attempt (0 if none)."""
    path = ckpt_dir / CHECKPOINT
    if not path.exists():
        return 0
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # a damaged file: train() will fail on it with its own error
        return 0


def train_regularized(ctx: MitigationContext, method: str, params: Hyperparams, hook: TrainHook
                      ) -> MitigationOutput:
    """Train (or load from the store) the model of `method`; returns it in eval mode.

    `info`: `reused` (1 if it came from the store), `resumed_from_epoch`, `seconds_train`, and for a reused
    model `seconds_cached_work` (its original training + evaluation time).
    """
    if ctx.base_spec is None:
        raise ConfigError(f"{method} trains a model from scratch and needs the base model's spec; this base model "
                          f"(key {ctx.base_key!r}) has none in its manifest. Use a preset or a stored TinyMem model.")
    spec = training_spec(ctx.base_spec)
    store = ModelStore(ctx.store_root or DEFAULT_ROOT)
    key = regularized_key(ctx, method, params, hook.version)
    if store.remote:  # checkpoints are local files; keep them with the trial's other caches
        ckpt_dir = (ctx.work_dir or Path(".")) / "checkpoints" / key
    else:
        ckpt_dir = Path(store.root) / "checkpoints" / key
    resumed = 0

    def report(epoch: int, entry: dict[str, float]) -> None:
        ctx.report(dict(entry))

    def build(tmp: Path) -> dict[str, Any]:
        nonlocal resumed
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        resumed = _checkpoint_epoch(ckpt_dir)
        info = train_into(tmp, spec, device=ctx.device, hook=hook, checkpoint_dir=ckpt_dir, callback=report,
                          progress=ctx.progress, bundle=ctx.bundle)
        # The manifest names what this model is: the base spec plus the method that changed its training.
        info.update(spec=ctx.base_spec.to_dict(), base_key=ctx.base_key, method=method,
                    params=params.to_dict(), trial_seed=ctx.seed, eval_every=spec.train.eval_every)
        return info

    directory, manifest, created = store.get_or_create(key, build)
    if created:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # the published model supersedes the checkpoint
    else:
        # Replay the stored learning curve, so a scheduler sees the same reports as for a fresh training.
        for entry in manifest.get("history", []):
            ctx.report(dict(entry))
    model = load_model(directory, device=ctx.device)
    seconds = manifest.get("seconds", {})
    info = {"reused": float(not created), "resumed_from_epoch": float(resumed),
            "seconds_train": float(seconds.get("train", float("nan")))}
    if not created:
        info["seconds_cached_work"] = float(seconds.get("train", 0.0)) + float(seconds.get("eval", 0.0))
    return MitigationOutput(model=model, info=info)

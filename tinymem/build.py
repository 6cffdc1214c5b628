"""Make base models: build the data, train the model, evaluate it, and publish it to the model store.

`ensure_base_model(spec, store)` is the one entry point: it returns the stored model if the store has it
(in seconds) and trains it otherwise. `load_model_dir` reads any model directory back.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinymem.data import DataBundle, build_bundle
from tinymem.metrics import evaluate
from tinymem.models import build_model, load_model, pick_device
from tinymem.specs import BaseSpec
from tinymem.store import DEFAULT_ROOT, ModelStore, read_manifest
from tinymem.train import TrainHook, train


@dataclass
class StoredModel:
    """A model directory in the store, with its manifest."""

    key: str
    directory: Path
    manifest: dict[str, Any]
    created: bool
    seconds: float

    @property
    def metrics(self) -> dict[str, float]:
        return self.manifest.get("metrics", {})

    @property
    def spec(self) -> BaseSpec:
        return BaseSpec.from_dict(self.manifest["spec"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


def train_into(directory: Path, spec: BaseSpec, *, device: str | torch.device = "auto",
               hook: TrainHook | None = None, checkpoint_dir: str | os.PathLike | None = None,
               callback: Callable[[int, dict[str, float]], None] | None = None,
               progress: bool | None = None, bundle: DataBundle | None = None) -> dict[str, Any]:
    """Build data, train, evaluate and save model + bundle into `directory`; returns manifest info."""
    dev = pick_device(str(device))
    t0 = time.perf_counter()
    bundle = bundle or build_bundle(spec.data, spec.seed)
    t_data = time.perf_counter() - t0
    model = build_model(spec.model, bundle.vocab_size, spec.data.max_ctx, bundle.meta["bos_id"],
                        bundle.meta["eos_id"], bundle.pad_id, seed=spec.seed).to(dev)
    eval_fn = (lambda m: evaluate(m, bundle)) if spec.train.eval_every else None
    result = train(model, bundle.train, spec.train, seed=spec.seed, pad_id=bundle.pad_id, bundle=bundle,
                   hook=hook, checkpoint_dir=checkpoint_dir, eval_fn=eval_fn, callback=callback,
                   progress=progress)
    t1 = time.perf_counter()
    with (hook.eval_context(model) if hook else nullcontext()):
        metrics = evaluate(model, bundle)
    t_eval = time.perf_counter() - t1
    if hook is not None:
        model = hook.finalize(model)
    model.save_pretrained(directory)
    bundle.save(directory)
    return {"spec": spec.to_dict(), "metrics": metrics, "history": result.history,
            "seconds": {"data": t_data, "train": result.seconds, "eval": t_eval},
            "train_steps": result.steps, "final_train_loss": result.final_loss}


def ensure_base_model(spec: BaseSpec, store: ModelStore | str | None = None, *, device: str = "auto",
                      progress: bool | None = None) -> StoredModel:
    """The stored model for `spec`: loaded if present, trained and published otherwise."""
    store = store if isinstance(store, ModelStore) else ModelStore(store or DEFAULT_ROOT)
    key = spec.key()
    t0 = time.perf_counter()
    ckpt = None if store.remote else Path(store.root) / "checkpoints" / key

    def build(tmp: Path) -> dict[str, Any]:
        if ckpt is not None:
            ckpt.mkdir(parents=True, exist_ok=True)
        return train_into(tmp, spec, device=device, checkpoint_dir=ckpt, progress=progress)

    directory, manifest, created = store.get_or_create(key, build)
    if created and ckpt is not None:
        import shutil

        shutil.rmtree(ckpt, ignore_errors=True)  # the published model supersedes the training checkpoint
    return StoredModel(key=key, directory=directory, manifest=manifest, created=created,
                       seconds=time.perf_counter() - t0)


@dataclass
class LoadedModel:
    model: nn.Module
    bundle: DataBundle
    manifest: dict[str, Any]
    directory: Path


def load_model_dir(directory: str | os.PathLike, device: str = "auto", verify: bool = True) -> LoadedModel:
    """Load a model directory (model, data bundle, manifest), verifying checksums."""
    d = Path(directory)
    manifest = read_manifest(d, verify=verify)
    model = load_model(d, device=pick_device(device))
    bundle = DataBundle.load(d)
    return LoadedModel(model=model, bundle=bundle, manifest=manifest, directory=d)

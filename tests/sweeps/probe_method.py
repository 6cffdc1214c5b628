"""`sweep_probe`: a test-only mitigation whose behaviour a test dictates through its hyperparameters.

Real methods cover the normal path (durable, balanced_subnet). This one exists for what a real method does
not do on demand: raise, produce NaN, report a chosen per-epoch guard value so ASHA's decisions are
predictable, lose its node after a chosen epoch, or take a chosen time (`sleep` per epoch). It really edits the model (zeroes a random `ratio` of MLP
neurons), so its metrics are real.

With `marker` set it checkpoints like a real iterative method: its state (epoch, and a value accumulated over
the epochs) goes into `ctx.work_dir` before each epoch's report, and a retried run resumes from it.
`fail=lose_node` then crashes once, right after reporting epoch `crash_epoch`, having wiped `ctx.work_dir`
(what a retry on another node sees of a node-local directory); the `marker` file records that it crashed.

Ray workers import this module by name (`tests.sweeps.probe_method`, found under the driver's working
directory, the repository root) before running a trial of it; see `sweeps.trainable.extra_method_modules`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tinymem.errors import ConfigError
from tinymem.mitigations import REGISTRY, register
from tinymem.mitigations.base import Hyperparams, Mitigation, MitigationContext, MitigationOutput, hp
from tinymem.specs import spec_hash


@dataclass(frozen=True)
class ProbeParams(Hyperparams):
    ratio: float = hp(0.1, "fraction of MLP neurons zeroed per layer", low=0.0, high=1.0)
    epochs: int = hp(2, "epochs reported through ctx.report", low=1, high=20)
    guard: float = hp(1.0, "value reported as retain_loss every epoch (the ASHA guard)", low=0.0, high=100.0)
    fail: str = hp("none", "none | raise (a ConfigError) | nan (weights become NaN) | crash (RuntimeError) | "
                           "lose_node (wipe work_dir and crash once after crash_epoch; needs marker)",
                   choices=("none", "raise", "nan", "crash", "lose_node"))
    crash_epoch: int = hp(1, "epoch after whose report fail=lose_node crashes", low=1, high=20)
    marker: str = hp("", "file: checkpoint per epoch in work_dir; fail=lose_node crashes while it is absent")
    sleep: float = hp(0.0, "seconds each epoch takes (a trial that lasts at least epochs x sleep)", low=0.0,
                      high=60.0)


class SweepProbe(Mitigation):
    """Zero a random `ratio` of MLP neurons; report `epochs` fake epochs; fail on request."""

    name = "sweep_probe"
    family = "unlearn_neuron"
    Params = ProbeParams
    iterative = True

    def apply(self, ctx: MitigationContext) -> MitigationOutput:
        p = self.params
        state_file = None
        if p.marker and ctx.work_dir is not None:
            key = spec_hash({"params": p.to_dict(), "seed": ctx.seed, "base": ctx.base_key}, 16)
            state_file = Path(ctx.work_dir) / f"probe-{key}.json"
        start, acc = 0, 0.0
        if state_file is not None and state_file.exists():
            saved = json.loads(state_file.read_text())
            start, acc = int(saved["epoch"]), float(saved["acc"])
        for epoch in range(start, p.epochs):
            acc = acc * 0.5 + (epoch + 1)  # order-dependent: a redone or skipped epoch changes it
            time.sleep(p.sleep)
            if state_file is not None:  # checkpoint before the report, as the real methods do
                state_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = state_file.with_name(f".{state_file.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"epoch": epoch + 1, "acc": acc}))
                os.replace(tmp, state_file)
            ctx.report({"epoch": float(epoch + 1), "retain_loss": p.guard, "forget_loss": 1.0})
            if p.fail == "lose_node" and epoch + 1 == p.crash_epoch and p.marker and not Path(p.marker).exists():
                Path(p.marker).write_text("crashed")
                shutil.rmtree(ctx.work_dir, ignore_errors=True)  # the node's local disk is gone with it
                raise RuntimeError(f"sweep_probe lost its node after epoch {epoch + 1} (fail=lose_node)")
        if state_file is not None:
            state_file.unlink(missing_ok=True)  # finished: a later run must start over
        if p.fail == "raise":
            raise ConfigError("sweep_probe was asked to fail (fail=raise)")
        if p.fail == "crash":
            raise RuntimeError("sweep_probe crashed (fail=crash)")
        g = torch.Generator().manual_seed(ctx.seed)
        k = 0
        with torch.no_grad():
            for block in ctx.model.transformer.h:
                w = block.mlp.c_fc.weight  # GPT-2 Conv1D: [n_embd, inner]
                k = int(p.ratio * w.shape[1])
                idx = torch.randperm(w.shape[1], generator=g)[:k]
                w[:, idx] = float("nan") if p.fail == "nan" else 0.0
                block.mlp.c_fc.bias[idx] = 0.0
        return MitigationOutput(ctx.model, {"neurons_zeroed_per_layer": float(k), "resumed_from_epoch": float(start),
                                            "acc": acc})


if SweepProbe.name not in REGISTRY:
    register(SweepProbe)

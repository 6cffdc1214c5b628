"""`sweep_probe`: a test-only mitigation whose behaviour a test dictates through its hyperparameters.

Real methods cover the normal path (durable, balanced_subnet). This one exists for what a real method does
not do on demand: raise, produce NaN, or report a chosen per-epoch guard value so ASHA's decisions are
predictable. It really edits the model (zeroes a random `ratio` of MLP neurons), so its metrics are real.

Ray workers import this module by name (`tests.sweeps.probe_method`, found under the driver's working
directory, the repository root) before running a trial of it; see `sweeps.engine._method_modules`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tinymem.errors import ConfigError
from tinymem.mitigations import REGISTRY, register
from tinymem.mitigations.base import Hyperparams, Mitigation, MitigationContext, MitigationOutput, hp


@dataclass(frozen=True)
class ProbeParams(Hyperparams):
    ratio: float = hp(0.1, "fraction of MLP neurons zeroed per layer", low=0.0, high=1.0)
    epochs: int = hp(2, "epochs reported through ctx.report", low=1, high=20)
    guard: float = hp(1.0, "value reported as retain_loss every epoch (the ASHA guard)", low=0.0, high=100.0)
    fail: str = hp("none", "none | raise (a ConfigError) | nan (weights become NaN) | crash (RuntimeError)",
                   choices=("none", "raise", "nan", "crash"))


class SweepProbe(Mitigation):
    """Zero a random `ratio` of MLP neurons; report `epochs` fake epochs; fail on request."""

    name = "sweep_probe"
    family = "unlearn_neuron"
    Params = ProbeParams
    iterative = True

    def apply(self, ctx: MitigationContext) -> MitigationOutput:
        p = self.params
        for epoch in range(p.epochs):
            ctx.report({"epoch": float(epoch + 1), "retain_loss": p.guard, "forget_loss": 1.0})
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
        return MitigationOutput(ctx.model, {"neurons_zeroed_per_layer": float(k)})


if SweepProbe.name not in REGISTRY:
    register(SweepProbe)

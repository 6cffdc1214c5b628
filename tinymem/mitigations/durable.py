"""Durable: zero the MLP weights that the memorized data's gradient uses most, per tensor (one shot)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from tinymem.mitigations import register
from tinymem.mitigations._weights import accumulated_gradients, mlp_parameters, zero_top
from tinymem.mitigations.base import Hyperparams, MitigationContext, MitigationOutput, WeightMitigation, hp
from tinymem.mitigations.memory import MethodMemory


@dataclass(frozen=True)
class DurableParams(Hyperparams):
    ratio: float = hp(0.01, "fraction of each MLP tensor zeroed (by largest accumulated |grad|)",
                      low=0.0, high=1.0, log=True)
    batch_size: int = hp(64, "forget rows per gradient batch (the paper's 64)", low=1, high=4096)


@register
class Durable(WeightMitigation):
    """Durable: zero each MLP tensor's top-`ratio` entries by accumulated forget-loss |grad| (Neurotoxin reversed).

    Follows the paper: accumulate the gradient of the mean CE on the forget set over all batches (summed, no
    zero_grad in between), then in each MLP tensor (weights and biases of every MLP projection, found through
    the adapter) zero the `int(ratio * numel)` entries with the largest |grad|. One shot, no training.
    Departs: the MLP tensors come from the model adapter instead of matching "mlp" in parameter names, so
    GPT-2, GPT-NeoX and Llama work alike; padding is masked out of the loss.
    Defaults: ratio 0.01 (a value of the paper's grid, ratio < 0.1); no measurement recorded (docs/defaults.md).
    """

    name = "durable"
    Params = DurableParams
    memory = MethodMemory(1, 2, True, rows=DurableParams.batch_size)  # accumulated MLP gradients + a batch's
    scope: ClassVar[str] = "tensor"

    def apply(self, ctx: MitigationContext) -> MitigationOutput:
        p = self.params
        t0 = time.perf_counter()
        params = [w for _, w in mlp_parameters(ctx.model)]
        grads = accumulated_gradients(ctx.model, params, ctx.forget, p.batch_size, ctx.pad_id)
        zeroed = zero_top(params, [g.abs() for g in grads], p.ratio, self.scope)
        return MitigationOutput(ctx.model, {"weights_zeroed": float(zeroed),
                                            "seconds_gradients": time.perf_counter() - t0})

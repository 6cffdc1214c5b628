"""Durable-Aggregate: Durable with one global top-`ratio` over all MLP tensors together."""

from __future__ import annotations

from typing import ClassVar

from tinymem.mitigations import register
from tinymem.mitigations.durable import Durable


@register
class DurableAggregate(Durable):
    """Durable-Aggregate: Durable with one global top-`ratio` over all MLP tensors (the paper code's `durable_agg`).

    Follows the paper: the same accumulated forget-set gradients as `durable`, but the `int(ratio * total)`
    entries with the largest |grad| are chosen over the concatenation of all MLP weights and biases, so
    layers whose gradients are larger lose more weights. Departs: one `topk` over the concatenated scores
    instead of the paper's CPU concatenation plus Python set intersections (which took 170-560 s on Pythia).
    Hyperparameters: those of `durable`.
    Defaults: those of `durable` (a point of the paper's grid), measured after the fix but not re-chosen (docs/defaults.md).
    """

    name = "durable_aggregate"
    scope: ClassVar[str] = "global"

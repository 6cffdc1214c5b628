"""Anytime checkpoints: an `anytime` method's model after epoch e of one run is exactly the model of a run with
`epochs = e`, so evaluating it there makes a candidate configuration without a second run.

A method qualifies (`Mitigation.anytime`) when nothing it does in epoch e depends on the total epoch count: a
constant learning rate, batches drawn from (seed, e), no schedule, no final step that differs from the others.
Such a method calls `ctx.checkpoint(e, model_fn)` after each epoch; when the trial asked for candidates
(`anytime` in the trial config) and e is on the schedule, the evaluator builds the candidate model
(`model_fn()`), evaluates it with the trial's own final evaluation and returns the metrics to report with the
epoch (marked `checkpoint = 1`); otherwise it returns nothing and costs nothing.

Schedule (`checkpoint_epochs`): every epoch 1..E-1 when E <= `EVERY_EPOCH_UP_TO` (20); beyond, a geometric set,
the powers of sqrt(2) rounded (1, 2, 3, 4, 6, 8, 11, 16, 23, 32, ...) below E, so a 1000-epoch run pays about 20
evaluations. The last epoch E is never a checkpoint: it is the trial itself, evaluated once as usual.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

EVERY_EPOCH_UP_TO = 20


def checkpoint_epochs(epochs: int, first: int = 1) -> list[int]:
    """The epochs < `epochs` (and >= `first`) at which an anytime run of `epochs` epochs is evaluated."""
    if epochs <= EVERY_EPOCH_UP_TO:
        picked = set(range(1, epochs))
    else:
        picked, k = set(), 0
        while round(2 ** (k / 2)) < epochs:
            picked.add(int(round(2 ** (k / 2))))
            k += 1
    return sorted(e for e in picked if e >= max(1, first))


@dataclass
class CheckpointEvaluator:
    """Evaluates an anytime run at its scheduled epochs with `evaluate` (the trial's final evaluation); keeps
    each candidate's metrics and the seconds spent (method time, reported as `seconds_checkpoint_evals`)."""

    evaluate: Callable[[nn.Module], dict[str, float]]
    epochs: frozenset[int]
    candidates: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def __call__(self, epoch: int, model_fn: Callable[[], nn.Module]) -> dict[str, float]:
        """The candidate's metrics with `checkpoint = 1` at a scheduled epoch, else {}."""
        if int(epoch) not in self.epochs:
            return {}
        t0 = time.perf_counter()
        metrics = {**self.evaluate(model_fn()), "checkpoint": 1.0}
        self.seconds += time.perf_counter() - t0
        self.candidates.append({"epoch": float(epoch), **metrics})
        return metrics


def no_checkpoint(epoch: int, model_fn: Callable[[], nn.Module]) -> dict[str, float]:
    """The checkpoint hook of a trial that asked for no candidates: nothing evaluated, nothing reported."""
    return {}

"""Loss truncation (Kang & Hashimoto 2020, `ddkang/loss_dropper`, as used by the paper's code).

While training from scratch, the sequences whose loss is among the highest `dropc` fraction of recently seen
losses are left out of the loss: the model never has to fit the hardest (e.g. noised) sequences.

Follows the paper's `LossDropper`:

- per-sequence loss = mean token cross-entropy of the sequence;
- a ring buffer holds the most recent `window` per-sequence losses; nothing is dropped until `min_count`
  losses have been seen; after that the cutoff is the (1 - dropc) quantile of the buffer (linear
  interpolation, like `np.percentile`), recomputed every `window` sequences;
- a sequence is kept iff its loss < cutoff, and the batch loss is mean_i(keep_i * loss_i) over all rows
  of the batch (dropped rows count in the denominator, as in the paper).

Departures, both about scale:

- The paper uses window = min_count = recompute = 10,000 sequences, about a third of an epoch of its
  ~30,000-sequence training set over 3,500 epochs. On small data that would be many epochs of no truncation,
  so `window=0` (default) means min(10,000, rows of the training set): truncation starts after at most one
  epoch and the cutoff always reflects about the last epoch of losses. Set `window` to reproduce 10,000.
- Padding is masked out of the per-sequence mean (the paper's loss counts PAD; `mask_padding` of the base
  spec decides, like for every other method).
- The buffer, counters and cutoff are saved in training checkpoints, so a resumed run drops exactly what the
  uninterrupted one would have.

The default `dropc` is 0.05, the middle of the paper's grid {0.01, 0.05, 0.1}; the paper code's argparse
default 0.4 was never part of a paper run's grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tinymem.data.bundle import DataBundle
from tinymem.mitigations import register
from tinymem.mitigations._regularize import train_regularized
from tinymem.mitigations.base import Hyperparams, Mitigation, MitigationContext, MitigationOutput, hp
from tinymem.train import TrainHook

PAPER_WINDOW = 10_000


@dataclass(frozen=True)
class Params(Hyperparams):
    dropc: float = hp(0.05, "fraction of sequences (the highest-loss ones) left out of the loss "
                      "(paper grid 0.01, 0.05, 0.1)", low=0.0, high=0.99)
    window: int = hp(0, "ring-buffer size = sequences seen before dropping starts = recompute interval; "
                     "0 = min(10000, training rows) (the paper: 10000)", low=0, high=10_000_000)


class LossDropper:
    """The paper's LossDropper: which sequences of a batch to keep, from a ring buffer of recent losses."""

    def __init__(self, dropc: float, window: int, min_count: int | None = None, recompute: int | None = None):
        self.dropc = dropc
        self.min_count = window if min_count is None else min_count
        self.recompute = window if recompute is None else recompute
        self.buffer = torch.zeros(window)  # fixed size: memory never grows with training length
        self.filled = 0  # valid entries in the buffer
        self.pos = 0  # next write position
        self.seen = 0  # sequences seen so far
        self.since = 0  # sequences since the cutoff was last computed
        self.cutoff: float | None = None
        self.dropped = 0

    def _push(self, losses: torch.Tensor) -> None:
        vals = losses.detach().float().cpu().flatten()
        n = self.buffer.numel()
        if vals.numel() >= n:  # a batch larger than the buffer: keep its last n losses
            vals = vals[-n:]
        k = vals.numel()
        end = self.pos + k
        if end <= n:
            self.buffer[self.pos:end] = vals
        else:
            first = n - self.pos
            self.buffer[self.pos:] = vals[:first]
            self.buffer[: k - first] = vals[first:]
        self.pos = end % n
        self.filled = min(n, self.filled + k)

    def __call__(self, losses: torch.Tensor) -> torch.Tensor:
        """Bool mask [B]: True for sequences that stay in the loss."""
        b = losses.numel()
        self._push(losses)
        self.seen += b
        self.since += b
        if self.dropc <= 0.0 or self.seen < self.min_count:
            return torch.ones_like(losses, dtype=torch.bool)
        if self.cutoff is None or self.since >= self.recompute:
            self.cutoff = float(torch.quantile(self.buffer[: self.filled], 1.0 - self.dropc))
            self.since = 0
        keep = losses.detach() < self.cutoff
        self.dropped += int((~keep).sum())
        return keep

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.clone(), "filled": self.filled, "pos": self.pos, "seen": self.seen,
                "since": self.since, "cutoff": self.cutoff, "dropped": self.dropped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = state["buffer"].clone()
        for k in ("filled", "pos", "seen", "since", "dropped"):
            setattr(self, k, int(state[k]))
        self.cutoff = None if state["cutoff"] is None else float(state["cutoff"])


class LossTruncationHook(TrainHook):
    """Replaces the mean token loss by the mean over the batch of kept sequences' losses."""

    def __init__(self, dropc: float, window: int = 0):
        self.dropc, self.window = dropc, window
        self.dropper: LossDropper | None = None

    def setup(self, model: torch.nn.Module, data: torch.Tensor, bundle: DataBundle | None) -> None:
        window = self.window or min(PAPER_WINDOW, int(data.shape[0]))
        self.dropper = LossDropper(self.dropc, max(window, 1))

    def loss(self, token_loss: torch.Tensor, mask: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        m = mask.to(token_loss.dtype)
        per_seq = (token_loss * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        keep = self.dropper(per_seq).to(per_seq.dtype)
        return (per_seq * keep).mean()

    def state_dict(self) -> dict[str, Any]:
        return {"dropper": self.dropper.state_dict()} if self.dropper is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.dropper is not None and "dropper" in state:
            self.dropper.load_state_dict(state["dropper"])


@register
class LossTruncation(Mitigation):
    """Loss truncation: train from scratch leaving the highest-loss `dropc` fraction of sequences out of the loss.

    The paper's LossDropper (ring buffer, warm-up, periodic quantile cutoff) with a buffer scaled to small
    data (`window`); see the module docstring.
    """

    name = "loss_truncation"
    family = "regularizer"
    Params = Params
    iterative = True

    def apply(self, ctx: MitigationContext) -> MitigationOutput:
        p = self.params
        return train_regularized(ctx, self.name, p, LossTruncationHook(p.dropc, p.window))

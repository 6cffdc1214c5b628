"""Example-tied dropout (Maini et al. 2023, "Can Neural Network Memorization Be Localized?", as adapted by the
paper's code).

While training from scratch, the hidden channels of the residual stream are split into
`p_fixed` "generalization" channels that are always on, and "memorization" channels, each of which is on for a
given training example with probability `p_mem`. The channel mask of an example is a fixed function of
(trial seed, example index), the same in every epoch, so example-specific information can only live in that
example's own memorization channels. At evaluation the memorization channels are dropped and the fixed ones
scaled by (p_fixed + p_mem) / p_fixed (Maini's "drop" mode), which is meant to remove what was memorized.

Where it applies. The paper's code masks the hidden states at the start of every GPT-2 block, before `ln_1`
(the residual is masked too). Here the residual stream is masked wherever a LayerNorm reads it: before `ln_1`
and `ln_2` of every block and before `ln_f`. In training (a 0/1 mask, which is idempotent) the input of every
`ln_1` is exactly the paper's; in addition `ln_2` and `ln_f` no longer see the unmasked output of the
sublayer just before them. That extra masking makes the evaluation transform linear in the residual stream,
so it folds exactly into plain GPT-2 weights: the stored model is an ordinary Hugging Face model whose
evaluation is the dropout's evaluation (see `fold_eval_masks`). With the paper's placement the fold is not
exact (LayerNorm statistics would see channels that the next block's mask removes), and its evaluation scales
early contributions by ((p_fixed+p_mem)/p_fixed)**depth rather than once.

Fixes of the paper's code (docs/departures.md):

- channels, not sequence positions: the paper's code takes the mask size from `X.shape[1]`, which for
  [batch, positions, channels] is the number of positions;
- no mask cache: the paper caches a max_id x ctx x hidden float tensor (about 7.7 GB) and fills it only on
  the first batch, so every later example gets an all-zero mask. Here each example's mask is computed on
  demand from a counter-based hash (SplitMix64) of (seed, example index, channel): deterministic, and
  memory does not grow with the data.

As in Maini's code the fixed channels are the first int(p_fixed * hidden) channels (at least one).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tinymem.data.bundle import DataBundle
from tinymem.errors import ConfigError
from tinymem.mitigations import register
from tinymem.mitigations._regularize import train_regularized
from tinymem.mitigations.base import Hyperparams, Mitigation, MitigationContext, MitigationOutput, hp
from tinymem.train import TrainHook


@dataclass(frozen=True)
class Params(Hyperparams):
    p_fixed: float = hp(0.2, "fraction of hidden channels always on (Maini's and the paper's default 0.2)",
                        low=0.01, high=0.99)
    p_mem: float = hp(0.1, "probability that each other channel is on for a given example "
                      "(default 0.1; the paper ran only the default)", low=0.0, high=1.0)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 arrays (arithmetic wraps modulo 2**64, as intended)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def channel_uniforms(seed: int, indices: torch.Tensor, channels: int) -> torch.Tensor:
    """[B, channels] uniforms in [0, 1): a counter-based hash of (seed, example index, channel).

    Pure integer arithmetic, so the same on every machine and independent of the batch an example is in.
    (A torch CPU generator would not do: it keeps only the low 32 bits of its seed.)
    """
    idx = indices.detach().cpu().numpy().astype(np.uint64)
    with np.errstate(over="ignore"):
        stream = _splitmix64(_splitmix64(np.asarray([seed], dtype=np.uint64)) ^ _splitmix64(idx))  # [B]
        counters = stream[:, None] + np.arange(1, channels + 1, dtype=np.uint64)[None, :] * _GOLDEN
        bits = _splitmix64(counters) >> np.uint64(11)  # 53 random bits
    return torch.from_numpy(bits.astype(np.float64) * 2.0**-53)


def unique_example_ids(data: torch.Tensor) -> torch.Tensor:
    """[N] id of each training row's unique sequence: duplicated rows (a noised sequence repeated 10 times)
    are one example and must share one mask, or each copy would get its own memorization channels."""
    return torch.unique(data, dim=0, return_inverse=True)[1]


def _gpt2(model: nn.Module) -> nn.Module:
    if getattr(model.config, "model_type", "") != "gpt2":
        raise ConfigError("example_tied_dropout supports GPT-2 (TinyMem) models; got model family "
                          f"{getattr(model.config, 'model_type', type(model).__name__)!r}")
    return model.transformer


def stream_readers(model: nn.Module) -> list[nn.Module]:
    """The LayerNorms that read the residual stream: ln_1 and ln_2 of every block, then ln_f."""
    t = _gpt2(model)
    return [ln for block in t.h for ln in (block.ln_1, block.ln_2)] + [t.ln_f]


class ExampleTiedDropoutHook(TrainHook):
    """Masks the residual stream's channels per example in training; drops memorization channels at eval."""

    version = 2  # 2: one mask per unique sequence (version 1 gave each duplicate row its own)

    def __init__(self, p_fixed: float, p_mem: float, seed: int = 0, hidden: int | None = None):
        self.p_fixed, self.p_mem, self.seed = p_fixed, p_mem, seed
        self.hidden = hidden
        self.example_ids: torch.Tensor | None = None
        if hidden is not None:
            self._set_hidden(hidden)

    def _set_hidden(self, hidden: int) -> None:
        self.hidden = hidden
        self.n_fixed = min(hidden, max(1, int(self.p_fixed * hidden)))

    def setup(self, model: nn.Module, data: torch.Tensor, bundle: DataBundle | None) -> None:
        stream_readers(model)  # fail early on an unsupported family
        self._set_hidden(int(model.config.n_embd))
        self.example_ids = unique_example_ids(data)

    def masks(self, indices: torch.Tensor) -> torch.Tensor:
        """[B, hidden] 0/1 float masks of the training rows `indices`: a pure function of the seed and the
        row's example (its unique sequence, once `setup` has seen the data; else the row index itself)."""
        ids = self.example_ids[indices] if self.example_ids is not None else indices
        out = torch.ones(len(indices), self.hidden)
        u = channel_uniforms(self.seed, ids, self.hidden - self.n_fixed)
        out[:, self.n_fixed:] = (u < self.p_mem).float()
        return out

    def eval_scale(self) -> torch.Tensor:
        """[hidden]: (p_fixed + p_mem) / p_fixed on fixed channels, 0 on memorization channels."""
        d = torch.zeros(self.hidden)
        d[: self.n_fixed] = (self.p_fixed + self.p_mem) / self.p_fixed
        return d

    @contextmanager
    def _scaled_reads(self, model: nn.Module, scale: torch.Tensor) -> Iterator[None]:
        """Multiply the input of every stream-reading LayerNorm by `scale` ([hidden] or [B, 1, hidden])."""
        def pre_hook(_module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            return (x * scale.to(device=x.device, dtype=x.dtype),) + tuple(args[1:])

        handles = [ln.register_forward_pre_hook(pre_hook) for ln in stream_readers(model)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def batch_context(self, model: nn.Module, indices: torch.Tensor):
        return self._scaled_reads(model, self.masks(indices).unsqueeze(1))

    def eval_context(self, model: nn.Module):
        return self._scaled_reads(model, self.eval_scale())

    def finalize(self, model: nn.Module) -> nn.Module:
        return fold_eval_masks(model, self.eval_scale())


@torch.no_grad()
def fold_eval_masks(model: nn.Module, scale: torch.Tensor) -> nn.Module:
    """Make `model` compute, with no hooks, what it computes under `eval_context` (in place).

    Masking every read of the residual stream by a diagonal `scale` equals scaling everything written into
    the stream (token and position embeddings, attention and MLP output projections) by it, because the
    stream is a sum of those writes. The LM head is untied from `wte` first (it must keep the unscaled
    embeddings), so the config gets `tie_word_embeddings=False`; the result is still a plain GPT2LMHeadModel.
    """
    t = _gpt2(model)
    d = scale.to(device=t.wte.weight.device, dtype=t.wte.weight.dtype)
    head = model.get_output_embeddings()
    if head.weight is t.wte.weight:
        head.weight = nn.Parameter(t.wte.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):  # newer transformers read the flag from the text config
        model.config.get_text_config().tie_word_embeddings = False
    t.wte.weight.mul_(d)
    t.wpe.weight.mul_(d)
    for block in t.h:
        for proj in (block.attn.c_proj, block.mlp.c_proj):  # Conv1D: weight [in, out], bias [out]
            proj.weight.mul_(d)
            proj.bias.mul_(d)
    return model


@register
class ExampleTiedDropout(Mitigation):
    """Example-tied dropout: train from scratch with per-example channel masks, then drop memorization channels.

    Masks hidden channels (not positions, the bug in the paper's code) of the residual stream where LayerNorms read
    it; masks are a seeded function of the example index (no cache); the evaluation-mode drop is folded
    into an ordinary GPT-2 model. See the module docstring.
    """

    name = "example_tied_dropout"
    family = "regularizer"
    Params = Params
    iterative = True

    def apply(self, ctx: MitigationContext) -> MitigationOutput:
        p = self.params
        return train_regularized(ctx, self.name, p, ExampleTiedDropoutHook(p.p_fixed, p.p_mem, seed=ctx.seed))

"""Score-based subnetworks (edge-popup, Ramanujan et al. 2020) over the MLP projection weights.

Shared by `subnet` and `balanced_subnet`. Every MLP projection weight
W of every layer (found through the adapter, so GPT-2 Conv1D and nn.Linear alike) gets a trainable score
tensor S of W's shape. The forward pass uses W ⊙ M(S), where M zeroes the `ratio` fraction of entries with
the lowest |S| in that tensor (so `ratio` is the fraction *pruned*, the paper's convention, the opposite of
edge-popup's k = fraction kept). Backward is straight-through: dL/dS = dL/dW_eff ⊙ W ⊙ sign(S). W, biases
and every other parameter are frozen; only the scores train.

It is implemented as a `torch.nn.utils.parametrize` parametrization of `module.weight`, so the model's own
forward code runs unchanged, and `bake()` removes the parametrization leaving `weight = W ⊙ M(S)`: an
ordinary model with pruned MLP weights, saveable with `save_pretrained`.

The training loop (SGD over the scores, one report per epoch, per-epoch checkpoints in `ctx.work_dir` keyed
by the hyperparameters so a retried trial resumes) also lives here; the two methods differ only in their
batches and their loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from tinymem.adapter import ModelAdapter, weight_out_in
from tinymem.errors import ConfigError
from tinymem.mitigations._batches import epoch_probe
from tinymem.mitigations.base import MitigationContext
from tinymem.util import atomic_path, progress_bar

SCORE_INITS = ("kaiming", "magnitude")


def select_mask(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """1/0 mask (dtype and shape of `magnitudes`) with 0 at its k smallest entries; ties at the cut-off go by
    position, lowest index first, exactly as the first k of a stable argsort would (`sort_mask`).

    `kthvalue` finds the cut-off in linear time; then everything below it and the first ties at it are dropped.
    """
    flat = magnitudes.flatten()
    if k <= 0:
        return torch.ones_like(magnitudes)
    if k >= flat.numel():
        return torch.zeros_like(magnitudes)
    cut = torch.kthvalue(flat, k).values
    below = flat < cut
    tie = flat == cut
    # Ties at the cut-off make up the rest of the k; a stable sort would take them in index order.
    drop = below | (tie & (torch.cumsum(tie, 0) <= k - below.sum()))
    return (~drop).to(magnitudes.dtype).view_as(magnitudes)


def sort_mask(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """The same mask from the first k entries of a stable argsort (ties resolve the same way on every run)."""
    mask = torch.ones_like(magnitudes)
    if k > 0:
        mask.view(-1)[torch.argsort(magnitudes.flatten(), stable=True)[:k]] = 0.0
    return mask


def lowest_k_mask(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """The mask of the k smallest entries, by whichever way is faster on the tensor's device.

    It is recomputed on every forward pass of every masked matrix; the masks are identical, and which one is
    faster depends on the device: selection on CPU, the sort on CUDA (measured with bench/subnet_mask.py, see
    docs/defaults.md).
    """
    return sort_mask(magnitudes, k) if magnitudes.is_cuda else select_mask(magnitudes, k)


class _PruneLowest(torch.autograd.Function):
    """Hard mask zeroing the k smallest entries of `magnitudes`; straight-through gradient."""

    @staticmethod
    def forward(ctx, magnitudes: torch.Tensor, k: int) -> torch.Tensor:  # type: ignore[override]
        return lowest_k_mask(magnitudes, k)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


class ScoreMask(nn.Module):
    """Parametrization W -> W ⊙ M(S): prunes the `ratio` fraction of W with the lowest |score|."""

    def __init__(self, scores: torch.Tensor, ratio: float):
        super().__init__()
        self.scores = nn.Parameter(scores)
        self.k = int(ratio * scores.numel())  # the paper's int(): ratio*numel < 1 prunes nothing

    def mask(self) -> torch.Tensor:
        return _PruneLowest.apply(self.scores.abs(), self.k)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask().to(weight.dtype)


def init_scores(module: nn.Module, how: str, generator: torch.Generator) -> torch.Tensor:
    """Initial scores in the weight's own layout, drawn from `generator` (on the CPU or on the weight's device).

    `kaiming`: the paper's `kaiming_uniform_(a=sqrt(5))`, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in
    the layer's input features (read from the [out, in] view, so Conv1D and Linear get the same bound); the
    scores are unrelated to |W|, so the initial mask is a random `ratio` fraction.
    `magnitude`: S = |W| (initial mask = magnitude pruning); a departure from the paper, offered for sweeps.
    """
    w = module.weight
    if how == "kaiming":
        bound = 1.0 / math.sqrt(weight_out_in(module).shape[1])
        u = torch.rand(w.shape, generator=generator, dtype=torch.float32, device=generator.device)
        return ((u * 2.0 - 1.0) * bound).to(device=w.device, dtype=w.dtype)
    if how == "magnitude":
        return w.detach().abs().clone()
    raise ConfigError(f"score_init={how!r} is not allowed; choose from {list(SCORE_INITS)}")


def score_generators(modules: list[nn.Module], seed: int) -> list[torch.Generator]:
    """The generator each module's scores are drawn from.

    On the CPU: one stream seeded with `seed`, in module order. On an accelerator: each matrix gets its own
    generator on its own device (a model may span several GPUs), seeded by (seed, module index), so no
    model-sized tensor is drawn on the host and copied over (at Pythia 2.8B that took longer than 20 steps).
    Masks are reproducible per seed on a given device type, not across CPU and GPU.
    """
    cpu = torch.Generator().manual_seed(int(seed))
    gens = []
    for i, mod in enumerate(modules):
        device = mod.weight.device
        gens.append(cpu if device.type == "cpu"
                    else torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + i))
    return gens


class ScoreSubnetwork:
    """Installs score masks on every MLP projection weight, freezes everything else, bakes at the end."""

    def __init__(self, model: nn.Module, ratio: float, seed: int, score_init: str = "kaiming"):
        if not 0.0 <= ratio < 1.0:
            raise ConfigError(f"ratio={ratio} is out of range; allowed: [0, 1)")
        self.model = model
        self.modules = [m for _, m in ModelAdapter(model).mlp_modules()]
        # Remember every flag so bake() restores the model exactly as it came (only the weights differ).
        self._requires_grad = {id(p): p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        self.masks: list[ScoreMask] = []
        for mod, gen in zip(self.modules, score_generators(self.modules, seed)):
            sm = ScoreMask(init_scores(mod, score_init, gen), ratio)
            parametrize.register_parametrization(mod, "weight", sm)
            self.masks.append(sm)

    def scores(self) -> list[nn.Parameter]:
        return [m.scores for m in self.masks]

    def pruned_counts(self) -> list[int]:
        return [m.k for m in self.masks]

    def bake(self) -> nn.Module:
        """Replace each parametrized weight by W ⊙ M(S) and drop the scores; restores requires_grad flags."""
        originals = []
        for mod in self.modules:
            originals.append(mod.parametrizations.weight.original)
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
        for p in [*self.model.parameters(), *originals]:
            if id(p) in self._requires_grad:
                p.requires_grad_(self._requires_grad[id(p)])
        self.masks = []
        return self.model


def _checkpoint_path(ctx: MitigationContext, method: str, params: dict[str, Any]) -> Path | None:
    if ctx.work_dir is None:
        return None
    return Path(ctx.work_dir) / f"scores-{ctx.resume_key(method=method, params=params)}.pt"


def _save(path: Path, state: dict[str, Any]) -> None:
    """Atomic write: a crash mid-write never leaves a half checkpoint that a retry would trust."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def train_scores(ctx: MitigationContext, sub: ScoreSubnetwork, *, method: str, params: dict[str, Any],
                 epochs: int, lr: float, momentum: float, weight_decay: float,
                 epoch_batches: Callable[[int], Iterable[Any]],
                 step_loss: Callable[[Any], torch.Tensor]) -> dict[str, float]:
    """SGD over the scores for `epochs` passes; reports and checkpoints after every epoch.

    `epoch_batches(e)` yields the batches of epoch e (deterministic in e, so a resumed run sees the same
    data); `step_loss(batch)` returns the scalar to minimise. Reported keys per epoch: `epoch`,
    `forget_loss`, `retain_loss`, `forget_mem_pct` (see `_batches.epoch_probe`), and at anytime checkpoints the
    candidate's metrics (`ctx.checkpoint`; the masked model evaluates exactly as the baked one would).
    Returns info for MitigationOutput: steps, resumed_from_epoch and the last probe.
    """
    scores = sub.scores()
    opt = torch.optim.SGD(scores, lr=lr, momentum=momentum, weight_decay=weight_decay)
    path = _checkpoint_path(ctx, method, params)
    start, steps = 0, 0
    if path is not None and path.exists():
        state = torch.load(path, map_location=scores[0].device, weights_only=True)
        with torch.no_grad():
            for s, saved in zip(scores, state["scores"]):
                s.copy_(saved)
        opt.load_state_dict(state["optimizer"])
        start, steps = int(state["epoch"]), int(state["steps"])
    probe: dict[str, float] = {}
    bar = progress_bar(epochs, method, "epoch", ctx.progress, initial=start)
    for epoch in range(start, epochs):
        for batch in epoch_batches(epoch):
            loss = step_loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{method}: non-finite loss {float(loss)} at epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        probe = epoch_probe(ctx, ctx.model)
        # The anytime candidate before the resume file: a trial that dies while evaluating it redoes the epoch.
        candidate = ctx.checkpoint(epoch + 1, lambda: ctx.model)
        # Checkpoint before reporting: a scheduler may stop the trial inside `report`, and a retry must
        # then resume after this epoch, not redo it.
        if path is not None:
            _save(path, {"epoch": epoch + 1, "steps": steps, "scores": [s.detach() for s in scores],
                         "optimizer": opt.state_dict()})
        ctx.report({"epoch": float(epoch + 1), **probe, **candidate})
        bar.update(1)
    bar.close()
    if path is not None:
        path.unlink(missing_ok=True)  # finished: the baked model is the result; keep the cache small
    return {"steps": float(steps), "resumed_from_epoch": float(start), **{f"final_{k}": v for k, v in probe.items()}}

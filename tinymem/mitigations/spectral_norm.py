"""Spectral norm regularization (Yoshida & Miyato 2017, as adapted by the paper's code).

Training loss = CE + (lam/2) * sum over weight blocks W of sigma_max(W)**power.

Follows the paper's code (`utils/spectral_reg.py`):

- Matrices: every parameter whose name contains none of `ln`, `wte`, `wpe`, `bias`. In GPT-2 these are the
  attention `c_attn` and `c_proj` and the MLP `c_fc` and `c_proj` of every block (the LM head is tied to `wte`).
- Attention is regularized per head: `c_attn` as 3*n_head blocks (the query, key and value matrix of each
  head) and `c_proj` as n_head blocks. MLP matrices are whole.
- sigma comes from one power iteration per training step with persistent vectors u (PyTorch's spectral_norm
  conventions, eps 1e-12): v = normalize(W^T u), u = normalize(W v) without gradient, then sigma = u^T W v
  with gradient (d sigma / dW = u v^T).
- `power=1` (default) is the paper's code: the sum of sigma. Yoshida & Miyato penalize sigma squared; choose
  `power=2` for that.

Departs from the paper's code (docs/departures.md):

- `c_proj` of the attention is split along its input dimension, i.e. into the block that reads each head's
  output. The paper's code splits along the output dimension (`chunk(n_head, dim=-1)`), which is not aligned
  with heads; both give n_head blocks of the same size.
- The u vectors are drawn from a generator seeded by the trial seed and saved in training checkpoints, so a
  resumed run continues with the same vectors (the paper re-draws them on restart).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tinymem.data.bundle import DataBundle
from tinymem.errors import ConfigError
from tinymem.mitigations import register
from tinymem.mitigations._regularize import train_regularized
from tinymem.mitigations.base import Hyperparams, Mitigation, MitigationContext, MitigationOutput, hp
from tinymem.train import TrainHook

EPS = 1e-12
SKIP = ("ln", "wte", "wpe", "bias")  # the paper's name filter (`should_compute_sigma`)


@dataclass(frozen=True)
class Params(Hyperparams):
    lam: float = hp(0.01, "penalty weight lambda: loss += (lam/2) * sum of sigma_max**power "
                    "(paper grid 0.001, 0.01, 0.1; code default 0.01); 0 = no penalty", low=0.0, high=10.0)
    power: int = hp(1, "1: sum of sigma (the paper's code); 2: sum of sigma**2 (Yoshida & Miyato)", choices=(1, 2))


@dataclass
class SpectralGroup:
    """One weight parameter seen as `n` blocks of equal shape [m, k]; `u` holds one vector per block."""

    name: str
    param: nn.Parameter
    kind: str  # "qkv_heads" | "proj_heads" | "whole"
    n_head: int
    u: torch.Tensor | None = None

    def blocks(self) -> torch.Tensor:
        """[n, m, k] view of the parameter's blocks (differentiable)."""
        w = self.param
        if self.kind == "qkv_heads":
            # Conv1D weight [in, 3*C]: output columns are (q|k|v) x heads x head_dim.
            return w.view(w.shape[0], 3 * self.n_head, -1).permute(1, 0, 2)
        if self.kind == "proj_heads":
            # Conv1D weight [C_in, C_out]: input rows are heads x head_dim (the concatenated head outputs).
            return w.view(self.n_head, -1, w.shape[1])
        return w.unsqueeze(0)


def spectral_groups(model: nn.Module) -> list[SpectralGroup]:
    """The matrices the paper regularizes, with the per-head split of GPT-2 attention."""
    family = getattr(model.config, "model_type", "")
    if family != "gpt2":
        raise ConfigError(f"spectral_norm supports GPT-2 (TinyMem) models; got model family {family!r}")
    n_head = int(model.config.n_head)
    groups = []
    for name, p in model.named_parameters():
        if p.dim() != 2 or any(s in name for s in SKIP):
            continue
        if name.endswith("attn.c_attn.weight"):
            kind = "qkv_heads"
        elif name.endswith("attn.c_proj.weight"):
            kind = "proj_heads"
        else:
            kind = "whole"
        groups.append(SpectralGroup(name, p, kind, n_head))
    return groups


class SpectralNormHook(TrainHook):
    """Adds (lam/2) * sum sigma_max**power to the loss, one power iteration per call of `penalty`."""

    def __init__(self, lam: float, power: int = 1, seed: int = 0):
        self.lam, self.power, self.seed = lam, power, seed
        self.groups: list[SpectralGroup] = []

    def setup(self, model: nn.Module, data: torch.Tensor, bundle: DataBundle | None) -> None:
        self.groups = spectral_groups(model)
        g = torch.Generator().manual_seed(self.seed)
        for grp in self.groups:
            n, m, _ = grp.blocks().shape
            u = torch.randn(n, m, generator=g)
            grp.u = F.normalize(u, dim=1, eps=EPS).to(grp.param.device)

    def sigmas(self) -> list[torch.Tensor]:
        """One power iteration for every block; returns sigma per group ([n] each), differentiable in W."""
        out = []
        for grp in self.groups:
            w = grp.blocks()
            with torch.no_grad():
                wd = w.detach()
                v = F.normalize(torch.bmm(wd.transpose(1, 2), grp.u.unsqueeze(2)).squeeze(2), dim=1, eps=EPS)
                grp.u = F.normalize(torch.bmm(wd, v.unsqueeze(2)).squeeze(2), dim=1, eps=EPS)
            out.append((grp.u.unsqueeze(1) @ w @ v.unsqueeze(2)).flatten())
        return out

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        if self.lam == 0.0:
            return None
        total = sum(s.pow(self.power).sum() for s in self.sigmas())
        return 0.5 * self.lam * total

    def state_dict(self) -> dict[str, Any]:
        return {"u": {grp.name: grp.u.detach().cpu() for grp in self.groups}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("u", {})
        for grp in self.groups:
            if grp.name in saved and saved[grp.name].shape == grp.u.shape:
                grp.u = saved[grp.name].to(grp.param.device)


@register
class SpectralNorm(Mitigation):
    """Spectral norm regularization: train from scratch with (lam/2)*sum of largest singular values added.

    Per-head blocks for attention, whole MLP matrices, one power iteration per step, as the paper's code;
    `power=1` (default, the paper's sigma) or 2 (Yoshida & Miyato's sigma**2). See the module docstring.
    """

    name = "spectral_norm"
    family = "regularizer"
    Params = Params
    iterative = True

    def apply(self, ctx: MitigationContext) -> MitigationOutput:
        p = self.params
        return train_regularized(ctx, self.name, p, SpectralNormHook(p.lam, p.power, seed=ctx.seed))

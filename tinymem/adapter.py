"""The model adapter: one map from a model family to the parts the mitigations touch.

Methods never hard-code layer names or sizes; they ask the adapter for the transformer blocks, each
block's MLP input projection(s), output projection and activation, and the LM head. GPT-2 (TinyMem and
Hugging Face), GPT-NeoX (Pythia) and Llama-style families (Llama, Mistral, Qwen2) are supported.

A "neuron" is one channel of the MLP's inner dimension: the input of the MLP output projection. That
point exists in every family (for gated Llama MLPs it is act(gate) * up), so hooking it is uniform:
`neuron_hook(layer, fn)` registers a forward pre-hook on the output projection.

GPT-2 uses `Conv1D` (weight [in, out]); the other families use `nn.Linear` (weight [out, in]). The
adapter hides that: `neuron_in_params` says which dimension of each parameter indexes the neurons.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from tinymem.errors import ConfigError

try:  # transformers' GPT-2 projection layer
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - very old or very new transformers
    Conv1D = ()  # type: ignore[assignment]

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "olmo", "olmo2", "phi3")
FAMILIES = ("gpt2", "gpt_neox") + LLAMA_LIKE


@dataclass
class MLPParts:
    """The MLP of one block: input projection(s) producing the neurons, the output projection, activation."""

    inputs: list[nn.Module]
    output: nn.Module
    act: nn.Module | None


def is_conv1d(module: nn.Module) -> bool:
    return bool(Conv1D) and isinstance(module, Conv1D)


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as [out_features, in_features] (a view; transposes GPT-2's Conv1D)."""
    return module.weight.t() if is_conv1d(module) else module.weight


class ModelAdapter:
    """Family-independent access to blocks, MLPs and the LM head of a causal LM."""

    def __init__(self, model: nn.Module):
        self.model = model
        cfg = model.config
        self.family = getattr(cfg, "model_type", type(model).__name__)
        if self.family == "gpt2":
            self._blocks = list(model.transformer.h)
        elif self.family == "gpt_neox":
            self._blocks = list(model.gpt_neox.layers)
        elif self.family in LLAMA_LIKE:
            self._blocks = list(model.model.layers)
        else:
            raise ConfigError(f"unsupported model family {self.family!r}; supported: {list(FAMILIES)}")
        self.num_layers = len(self._blocks)
        self.hidden_dim = int(getattr(cfg, "n_embd", None) or cfg.hidden_size)
        self.inner_dim = int(weight_out_in(self.mlp(0).output).shape[1])

    def blocks(self) -> list[nn.Module]:
        return list(self._blocks)

    def mlp(self, layer: int) -> MLPParts:
        block = self._blocks[layer]
        m = block.mlp
        if self.family == "gpt2":
            return MLPParts([m.c_fc], m.c_proj, m.act)
        if self.family == "gpt_neox":
            return MLPParts([m.dense_h_to_4h], m.dense_4h_to_h, m.act)
        return MLPParts([m.gate_proj, m.up_proj], m.down_proj, getattr(m, "act_fn", None))

    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def mlp_modules(self) -> list[tuple[str, nn.Module]]:
        """Every MLP projection (inputs then output) of every layer, with a stable name."""
        out = []
        for i in range(self.num_layers):
            parts = self.mlp(i)
            for j, mod in enumerate(parts.inputs):
                out.append((f"layer{i}.mlp_in{j}", mod))
            out.append((f"layer{i}.mlp_out", parts.output))
        return out

    def mlp_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Weights and biases of every MLP projection (the parameter subset weight-level methods edit)."""
        params = []
        for name, mod in self.mlp_modules():
            params.append((f"{name}.weight", mod.weight))
            if getattr(mod, "bias", None) is not None:
                params.append((f"{name}.bias", mod.bias))
        return params

    def neuron_in_params(self, layer: int) -> list[tuple[nn.Parameter, int]]:
        """(parameter, dim) pairs such that index i along dim belongs to neuron i of this layer.

        Zeroing those slices silences the neuron for ReLU/GELU/SiLU MLPs (act(0) = 0; gate*up = 0).
        """
        pairs: list[tuple[nn.Parameter, int]] = []
        for mod in self.mlp(layer).inputs:
            pairs.append((mod.weight, 1 if is_conv1d(mod) else 0))
            if getattr(mod, "bias", None) is not None:
                pairs.append((mod.bias, 0))
        return pairs

    def neuron_out_weight(self, layer: int) -> torch.Tensor:
        """[inner, hidden]: the output weights of each neuron (a view)."""
        return weight_out_in(self.mlp(layer).output).t()

    def neuron_hook(self, layer: int, fn: Callable[[torch.Tensor], torch.Tensor | None]):
        """Call fn(activations [B, T, inner]) before the MLP output projection; a returned tensor replaces them."""

        def pre_hook(_module, args):
            new = fn(args[0])
            if new is None:
                return None
            return (new,) + tuple(args[1:])

        return self.mlp(layer).output.register_forward_pre_hook(pre_hook)

    @contextmanager
    def neuron_hooks(self, fns: dict[int, Callable[[torch.Tensor], torch.Tensor | None]]) -> Iterator[None]:
        """Context manager installing `neuron_hook` for several layers and removing them on exit."""
        handles = [self.neuron_hook(layer, fn) for layer, fn in fns.items()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def ablate_neurons(self, layer: int, neurons: torch.Tensor) -> None:
        """Zero the input weights and biases of `neurons` in `layer`, silencing them permanently."""
        if neurons.numel() == 0:
            return
        for param, dim in self.neuron_in_params(layer):
            param.index_fill_(dim, neurons.to(param.device), 0.0)

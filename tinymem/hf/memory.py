"""GPU sizing of a trial on a Hugging Face model: estimated peak memory per method, GPUs per trial for
`--gpus-per-trial auto`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tinymem.errors import ConfigError
from tinymem.hf.models import DTYPE_BYTES, count_params_meta, load_config, parse_source
from tinymem.mitigations import FAMILY_BASES, get_family_base, get_method, method_memory
from tinymem.mitigations.memory import MethodMemory


@dataclass(frozen=True)
class Architecture:
    """The sizes that set a trial's memory: from a model config, or inferred from a parameter count."""

    hidden: int
    layers: int
    inner: int
    vocab: int
    mlp_matrices: int = 2  # 2: up + down (GPT-2, GPT-NeoX); 3: gate + up + down (Llama-like)

    @classmethod
    def from_config(cls, config: Any) -> "Architecture":
        h = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd"))
        layers = int(getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer"))
        inner = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * h)
        from tinymem.adapter import LLAMA_LIKE

        return cls(h, layers, inner, int(config.vocab_size), 3 if config.model_type in LLAMA_LIKE else 2)

    @classmethod
    def from_params(cls, num_params: int, vocab: int = 50304) -> "Architecture":
        """A GPT-NeoX-shaped guess: params ~ 12 * layers * hidden^2, hidden / layers ~ 80 (Pythia 1B-12B)."""
        h = max(64, round((num_params * 80 / 12) ** (1 / 3)))
        return cls(h, max(1, round(h / 80)), 4 * h, vocab)


OVERHEAD_GB = 2.0  # CUDA context, allocator fragmentation
PACKINGS = (1, 2, 3, 4, 6, 8)  # trials per GPU that `--gpus-per-trial` fractions express


def memory_of(method_family: str, method: str | None = None) -> MethodMemory:
    """What a trial holds (`MethodMemory`): the registered method's own `memory` (or its family base's), else,
    for no method or an unregistered one, the worst case of `method_family` (its family base class's)."""
    if method_family == "regularizer":
        raise ConfigError("regularizer methods train a TinyMem model from scratch; they do not apply to "
                          "Hugging Face models")
    m = method_memory(method) if method is not None else None
    if m is not None:
        return m
    base = get_family_base(method_family)
    if base is None or base.memory is None:
        raise ConfigError(f"method family {method_family!r} is not allowed; choose from "
                          f"{sorted(FAMILY_BASES) + ['regularizer']}")
    return base.memory


def estimate_method_gb(num_params: int, dtype: str, method_family: str, method: str | None = None, *,
                       seq_len: int = 80, arch: Architecture | None = None) -> float:
    """Estimated peak GPU memory (GiB) of one trial of `method` (or the worst of its family).

    weights x copies + MLP weights x per-weight state + activations. Activations with a backward pass:
    tokens * layers * hidden * 34 values (Korthikanti et al. 2022, no recomputation) plus the logits in float32
    with their gradient; without backward: the logits and, for zero_out / activations, every layer's MLP
    activations of the batch.
    """
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"dtype {dtype!r} is not allowed; choose from {list(DTYPE_BYTES)}")
    m = memory_of(method_family, method)
    a = arch or Architecture.from_params(num_params)
    b = DTYPE_BYTES[dtype]
    weights = num_params * b
    mlp_params = min(a.layers * a.mlp_matrices * a.hidden * a.inner, num_params)
    total = m.weight_copies * weights + m.mlp_copies * mlp_params * b
    if m.mlp_state_bytes:
        total += mlp_params * m.mlp_state_bytes
    tokens = m.rows * seq_len if m.rows else m.tokens
    if m.backward:
        total += tokens * a.layers * a.hidden * 34 * b / 2 + tokens * a.vocab * (b + 8)
    else:
        total += tokens * a.vocab * (b + 4) + tokens * a.hidden * 4 * b
    if m.captures_neurons:
        total += tokens * a.layers * a.inner * b
    return total / 2**30 + OVERHEAD_GB


def estimate_gpus(num_params: int, dtype: str, method_family: str, gpu_mem_gb: float, method: str | None = None,
                  *, seq_len: int = 80, arch: Architecture | None = None, gpus_per_node: int = 8) -> float:
    """GPUs per trial for `--gpus-per-trial auto`: 1/n when n trials fit on one GPU (n in PACKINGS), else the
    whole number of GPUs whose memory holds `estimate_method_gb` (the model is then spread with device_map, which
    works within one node: more than `gpus_per_node` is an error)."""
    if not gpu_mem_gb > 0:
        raise ConfigError(f"gpu_mem_gb={gpu_mem_gb} must be > 0")
    need = estimate_method_gb(num_params, dtype, method_family, method, seq_len=seq_len, arch=arch)
    for n in reversed(PACKINGS):
        if n * need <= gpu_mem_gb:
            return 1.0 / n
    gpus = math.ceil(need / gpu_mem_gb)
    if gpus > gpus_per_node:
        raise ConfigError(f"{method or method_family} on a {num_params / 1e9:.1f}B model in {dtype} needs about "
                          f"{need:.0f} GiB, {gpus} GPUs of {gpu_mem_gb:g} GB: more than one node's {gpus_per_node} "
                          "(device_map spreads a model within one node only)")
    return float(gpus)


def gpus_for_source(source: str, method: str, gpu_mem_gb: float, dtype: str = "float32", seq_len: int = 80
                    ) -> float:
    """`estimate_gpus` for an `hf:` model: reads only its config (no weights) to count parameters."""
    cls = get_method(method)
    cfg, _ = load_config(parse_source(source))
    return estimate_gpus(count_params_meta(cfg), dtype, cls.family, gpu_mem_gb, method, seq_len=seq_len,
                         arch=Architecture.from_config(cfg))

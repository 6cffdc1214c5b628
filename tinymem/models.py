"""TinyMem models: Hugging Face GPT-2 with the paper's configuration."""

from __future__ import annotations

import math
import os

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from tinymem.specs import ModelSpec

# The paper's tested depths; any n_layer >= 1 works.
PAPER_LAYERS = (1, 2, 4, 8, 16)


def gpt2_config(spec: ModelSpec, vocab_size: int, n_positions: int, bos_id: int, eos_id: int,
                pad_id: int) -> GPT2Config:
    """GPT2Config for a TinyMem model: ReLU, no dropout, init range init_scale/sqrt(width)."""
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        activation_function=spec.activation,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        initializer_range=spec.init_scale / math.sqrt(spec.n_embd),
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=True,
    )


def build_model(spec: ModelSpec, vocab_size: int, n_positions: int, bos_id: int, eos_id: int, pad_id: int,
                seed: int = 0) -> GPT2LMHeadModel:
    """A freshly initialised TinyMem GPT-2, deterministic for `seed`."""
    cfg = gpt2_config(spec, vocab_size, n_positions, bos_id, eos_id, pad_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(cfg)
    return model


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> nn.Module:
    """Load a `save_pretrained` directory (any causal LM) in eval mode; never touches the network."""
    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(str(directory), **kwargs)
    return model.to(device).eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pick_device(name: str = "auto") -> torch.device:
    """`auto` -> cuda if available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)

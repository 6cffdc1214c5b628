"""What one trial of a method holds in GPU memory at its peak: each method class states it as its `memory`
(`tinymem.hf.memory.estimate_method_gb` turns it into GiB). Plain data, no torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodMemory:
    """What one trial of a method holds at its peak, beyond activations (see `estimate_method_gb`).

    A forward pass holds either `rows` sequences (a batch of the default `batch_size`) or, for methods that
    batch by tokens, `tokens` tokens: exactly one of the two is set.
    """

    weight_copies: float  # x the model's weight bytes (1 = the weights; all-parameter gradients add 1 each)
    mlp_copies: float  # x the MLP weight bytes: per-weight state (scores, their gradients, momentum, masks)
    backward: bool  # activations of every layer are kept for a backward pass
    rows: int = 0  # sequences per forward pass (default hyperparameters)
    captures_neurons: bool = False  # keeps every layer's MLP activations of a batch (zero_out, activations)
    tokens: int = 0  # tokens per forward pass, for methods that batch by tokens (rows = 0)
    mlp_state_bytes: int = 0  # further bytes per MLP weight in the method's own dtype (second_order: float64)

    def __post_init__(self) -> None:
        if (self.rows > 0) == (self.tokens > 0):
            raise ValueError(f"MethodMemory needs exactly one of rows ({self.rows}) and tokens ({self.tokens})")

"""The subnetwork on a CUDA GPU: scores drawn on the device, reproducible per seed, masks as on the CPU.

Skipped without a GPU (CI has none); run it where one is: `python -m pytest tests/mitigations/test_subnet_cuda.py`.
"""

from __future__ import annotations

import pytest
import torch

from tinymem.mitigations._subnet import ScoreSubnetwork, lowest_k_mask, select_mask, sort_mask

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _tiny_neox() -> torch.nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=100, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024)
    return GPTNeoXForCausalLM(cfg).cuda().to(torch.bfloat16)


def _scores(seed: int) -> tuple[list[torch.Tensor], ScoreSubnetwork, torch.nn.Module]:
    model = _tiny_neox()
    sub = ScoreSubnetwork(model, 0.3, seed)
    return [s.detach().clone() for s in sub.scores()], sub, model


def test_scores_are_drawn_on_the_gpu_and_reproducible_per_seed():
    a, sub, model = _scores(1)
    b, _, _ = _scores(1)
    c, _, _ = _scores(2)
    assert {s.device.type for s in sub.scores()} == {"cuda"} and {s.dtype for s in sub.scores()} == {torch.bfloat16}
    assert all(torch.equal(x, y) for x, y in zip(a, b)), "same seed, same scores"
    assert not any(torch.equal(x, y) for x, y in zip(a, c)), "another seed, other scores"
    assert not torch.equal(a[0], a[2]), "each matrix has its own stream"
    bound = 1 / 256 ** 0.5  # kaiming-uniform bound of the up-projections (fan_in = hidden size)
    assert all(float(s.float().abs().max()) <= bound * 1.01 for s in a[::2])
    x = torch.randint(0, 100, (2, 16), device="cuda")
    model(x, labels=x).loss.backward()
    assert all(s.grad is not None and bool(torch.isfinite(s.grad).all()) for s in sub.scores())


def test_cuda_mask_is_the_cpu_mask():
    m = torch.rand(512, 128, generator=torch.Generator().manual_seed(0))
    k = int(0.3 * m.numel())
    cpu = lowest_k_mask(m, k)
    assert torch.equal(lowest_k_mask(m.cuda(), k).cpu(), cpu)
    assert torch.equal(select_mask(m.cuda(), k).cpu(), sort_mask(m, k))

"""Batched greedy (and seeded sampled) decoding with the KV cache.

Gives token for token what `model.generate(input_ids, do_sample=False, max_new_tokens=n)` gives (a test
proves it), including generate's end-of-sequence rule: once a row emits EOS, every later token is PAD.
The paper's code calls `generate` without the cache and one batch at a time; this is the hot path of every
memorization measurement, so it runs one prefill plus one single-token step per new token. Sampled decoding
(`sample_continue`, for the robustness metrics) shares the same loop and differs only in how a token is chosen.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from tinymem.util import eval_mode, model_device


def _cache_kwarg(model: nn.Module) -> str:
    """transformers 5 renamed `past_key_values` to `cache` in forward(); support both."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _get_cache(output) -> object:
    """The KV cache of a forward output, under its transformers 5 (`cache`) or 4 (`past_key_values`) name."""
    return output["cache"] if "cache" in output else output["past_key_values"]


@torch.no_grad()
def _continue(model: nn.Module, prompts: torch.Tensor, new_tokens: int, choose: Callable[[torch.Tensor], torch.Tensor],
              *, eos_id: int | None, pad_id: int | None, batch_size: int) -> torch.Tensor:
    """The decoding loop that greedy and sampled decoding share: one prefill, then one single-token step per new
    token with the KV cache; `choose(logits [b, vocab]) -> [b]` picks each next token. Generate's EOS rule:
    after a row's EOS every token is `pad_id`; a batch stops once all its rows have finished."""
    if prompts.dim() != 2:
        raise ValueError(f"prompts must be [batch, prompt_len], got shape {tuple(prompts.shape)}")
    if new_tokens <= 0 or prompts.shape[0] == 0:
        return prompts.new_empty((prompts.shape[0], max(new_tokens, 0)))
    device = model_device(model)
    key = _cache_kwarg(model)
    fill = pad_id if pad_id is not None else eos_id
    outs = []
    with eval_mode(model):
        for start in range(0, prompts.shape[0], batch_size):
            x = prompts[start : start + batch_size].to(device)
            b = x.shape[0]
            out = torch.full((b, new_tokens), fill if fill is not None else 0, dtype=torch.long, device=device)
            finished = torch.zeros(b, dtype=torch.bool, device=device)
            res = model(input_ids=x, use_cache=True)
            for t in range(new_tokens):
                nxt = choose(res.logits[:, -1, :])
                if eos_id is not None:
                    nxt = torch.where(finished, torch.full_like(nxt, fill), nxt)
                    finished |= nxt == eos_id
                out[:, t] = nxt
                if t + 1 == new_tokens or (eos_id is not None and bool(finished.all())):
                    break
                res = model(input_ids=nxt[:, None], use_cache=True, **{key: _get_cache(res)})
            outs.append(out.cpu())
    return torch.cat(outs)


def greedy_continue(model: nn.Module, prompts: torch.Tensor, new_tokens: int, *, eos_id: int | None = None,
                    pad_id: int | None = None, batch_size: int = 512, forbid_id: int | None = None) -> torch.Tensor:
    """Greedy continuation of equal-length prompts [B, P] -> new tokens [B, new_tokens].

    With `eos_id` set, a row that has produced EOS continues with `pad_id` (generate's rule); decoding stops
    early once every row of a batch has finished. `forbid_id` is never chosen (generate's `min_length`
    forbids EOS this way until the length is reached; the paper's metric decodes so).
    """
    def choose(logits: torch.Tensor) -> torch.Tensor:
        if forbid_id is not None:
            logits = logits.index_fill(-1, torch.tensor([forbid_id], device=logits.device), float("-inf"))
        return logits.argmax(dim=-1)

    return _continue(model, prompts, new_tokens, choose, eos_id=eos_id, pad_id=pad_id, batch_size=batch_size)


def sample_continue(model: nn.Module, prompts: torch.Tensor, new_tokens: int, *, samples: int = 1,
                    temperature: float = 1.0, top_k: int = 0, seed: int = 0, eos_id: int | None = None,
                    pad_id: int | None = None, batch_size: int = 512) -> torch.Tensor:
    """`samples` sampled continuations of each prompt [B, P] -> [B, samples, new_tokens], batched (the copies
    of a prompt decode side by side) and seeded: a `torch.Generator` on the model's device, so the same call on
    the same device gives the same tokens. Softmax of logits / `temperature`, restricted to the `top_k` most
    likely tokens when `top_k` > 0 (`top_k=1` is greedy). The EOS rule is greedy decoding's."""
    if temperature <= 0 or samples < 1 or top_k < 0:
        raise ValueError(f"sampling needs temperature > 0, samples >= 1 and top_k >= 0; got temperature="
                         f"{temperature}, samples={samples}, top_k={top_k}")
    generator = torch.Generator(device=model_device(model)).manual_seed(int(seed))

    def choose(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float() / temperature
        if top_k:
            kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    rows = prompts.repeat_interleave(samples, dim=0)
    out = _continue(model, rows, new_tokens, choose, eos_id=eos_id, pad_id=pad_id, batch_size=batch_size)
    return out.view(prompts.shape[0], samples, max(new_tokens, 0))


@torch.no_grad()
def greedy_continue_ragged(model: nn.Module, sequences: torch.Tensor, prompt_lens: torch.Tensor,
                           new_tokens: int, *, eos_id: int | None = None, pad_id: int | None = None,
                           batch_size: int = 512) -> torch.Tensor:
    """Greedy continuation where each row has its own prompt length (`sequences[i, :prompt_lens[i]]`).

    Rows are grouped by prompt length so every group decodes as one batch. Returns [B, new_tokens]; positions
    past the end of the context (`sequences.shape[1]`) are not decoded and hold PAD.
    """
    fill = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
    out = torch.full((sequences.shape[0], new_tokens), fill, dtype=torch.long)
    ctx = sequences.shape[1]
    for plen in torch.unique(prompt_lens).tolist():
        rows = torch.nonzero(prompt_lens == plen).flatten()
        # Never decode past the context: the model has no positions there (text chunks fill the context).
        n = max(min(new_tokens, ctx - plen), 0)
        out[rows, :n] = greedy_continue(model, sequences[rows, :plen], n, eos_id=eos_id, pad_id=pad_id,
                                        batch_size=batch_size)
    return out

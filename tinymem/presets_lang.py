"""Language presets (task="text"), merged into the preset registry by `tinymem.presets`.

- `lang-demo`: sized for a 2-core CPU: the offline builtin corpus (Python's help topics, ~465k characters),
  a byte-level BPE of 2,048 tokens trained on it, 64-token chunks, memorization measured from a 32-token clean
  prompt over the next 32 tokens (the paper uses 150 / 50 / 50; 64 / 32 / 32 keeps the demo small and still
  leaves a 32-token window in which ~10% of tokens are noised). 40 noised chunks in four classes of 10,
  repeated x1/x10/x100/x1000 as in the paper. Measured numbers: docs/defaults.md.
- `lang-noise-{2,4,8,16}l` and `lang-backdoor-{2,4,8,16}l`: the paper's language runs:
  WikiText-103 with GPT-2's tokenizer (both need the Hugging Face hub or a cache), 150-token chunks, prompt
  50 and k 50, 1,000 noised chunks duplicated x1/x10/x100/x1000 (noise) or all triggered chunks x100
  (backdoor), 100 / 50 epochs, batch 128, constant lr 1e-3. GPU-sized.
"""

from __future__ import annotations

from tinymem.specs import BaseSpec, DataSpec, ModelSpec, TrainSpec

# About 3.5 minutes on 2 cores; chosen against the alternatives measured in docs/defaults.md.
LANG_DEMO = BaseSpec(
    data=DataSpec(task="text", kind="noise", corpus="builtin", tokenizer="bpe", vocab_size=2048, max_ctx=64,
                  num_test=200, num_noise=40, dup_powers=(0, 1, 2, 3), prompt_len=32, k=32),
    model=ModelSpec(n_layer=2, n_embd=128, n_head=4),
    train=TrainSpec(epochs=6, batch_size=64, lr=1e-3, schedule="cosine", warmup_steps=50),
    seed=0,
)

_PAPER_DATA = dict(task="text", corpus="wikitext-103", tokenizer="gpt2", max_ctx=150, prompt_len=50, k=50,
                   num_test=1000, num_noise=1000)


def _paper_presets() -> dict[str, BaseSpec]:
    out = {}
    for kind, dup, epochs in (("noise", (0, 1, 2, 3), 100), ("backdoor", (2,), 50)):
        for layers in (2, 4, 8, 16):
            out[f"lang-{kind}-{layers}l"] = BaseSpec(
                data=DataSpec(kind=kind, dup_powers=dup, **_PAPER_DATA),
                model=ModelSpec(n_layer=layers, n_embd=128, n_head=4),
                train=TrainSpec(epochs=epochs, batch_size=128, lr=1e-3, schedule="constant"),
            )
    return out


LANG_PRESETS: dict[str, BaseSpec] = {"lang-demo": LANG_DEMO, **_paper_presets()}

"""Named base-model configurations: `math-demo` (the default, sized for a 2-core CPU) and the paper's ones.

Paper presets: `{increment,mult}-{noise,backdoor}-{1,2,4,8,16}l`: 20,000 main sequences,
3,000 per extra distribution, 1,000 noised, 3,500 epochs (noise) or 500 (backdoor), constant lr 1e-3, batch 128,
context 150. They are GPU-sized. Language presets come from `tinymem.presets_lang`.
"""

from __future__ import annotations

from tinymem.errors import ConfigError
from tinymem.presets_lang import LANG_PRESETS
from tinymem.specs import BaseSpec, DataSpec, ModelSpec, TrainSpec, apply_overrides

DEFAULT_PRESET = "math-demo"

# Sized for a 2-core CPU: the increment task with 5,000 main sequences (no extra distributions), 100 noised
# sequences each repeated 10 times, 2 layers, context 104 (the longest sequence has 101 tokens), 12 epochs
# (516 AdamW steps) of a cosine schedule. Epochs chosen by measurement, see docs/defaults.md.
MATH_DEMO = BaseSpec(
    data=DataSpec(task="increment", kind="noise", length=20, max_ctx=104, num_main=5000, num_extra=0,
                  num_test=500, num_noise=100, dup_powers=(1,), prompt_len=50, k=50),
    model=ModelSpec(n_layer=2),
    train=TrainSpec(epochs=12, batch_size=128, lr=1e-3, schedule="cosine", warmup_steps=30),
    seed=0,
)

# A seconds-sized model for tests and smoke runs.
MATH_TINY = BaseSpec(
    data=DataSpec(task="increment", kind="noise", length=12, max_ctx=64, num_main=600, num_extra=0,
                  num_test=100, num_noise=40, dup_powers=(1,), prompt_len=24, k=24),
    model=ModelSpec(n_layer=1, n_embd=64, n_head=2),
    train=TrainSpec(epochs=30, batch_size=64, lr=3e-3, schedule="cosine", warmup_steps=10),
    seed=0,
)


def _paper_presets() -> dict[str, BaseSpec]:
    out = {}
    for task in ("increment", "mult"):
        for kind, epochs in (("noise", 3500), ("backdoor", 500)):
            for layers in (1, 2, 4, 8, 16):
                out[f"{task}-{kind}-{layers}l"] = BaseSpec(
                    data=DataSpec(task=task, kind=kind),
                    model=ModelSpec(n_layer=layers),
                    train=TrainSpec(epochs=epochs),
                )
    return out


def all_presets() -> dict[str, BaseSpec]:
    """Every preset by name (math demo, tiny, paper, language)."""
    presets = {"math-demo": MATH_DEMO, "math-tiny": MATH_TINY}
    presets.update(_paper_presets())
    presets.update(LANG_PRESETS)
    return presets


def get_preset(name: str, overrides: dict[str, str] | None = None) -> BaseSpec:
    """The preset `name` with `overrides` applied; an unknown name is a ConfigError listing the allowed ones."""
    presets = all_presets()
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}; allowed: {sorted(presets)}")
    spec = presets[name]
    return apply_overrides(spec, overrides) if overrides else spec.validate()


def describe(spec: BaseSpec) -> str:
    d, m, t = spec.data, spec.model, spec.train
    what = f"{d.task}/{d.kind}" + (f", dup {d.dup_powers}" if d.dup_powers else "")
    return f"{what}, {m.n_layer} layers x {m.n_embd}, ctx {d.max_ctx}, {t.epochs} epochs"

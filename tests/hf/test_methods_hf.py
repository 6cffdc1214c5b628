"""Every registered mitigation method on the tiny Hugging Face models, through `run_trial` (the sweep's entry),
with small hyperparameters: the 15 unlearning methods (the paper's 11 and 4 loss-based baselines) and the 3
fine-tuning methods run on GPT-NeoX and Llama; the regularizers (which train a TinyMem model from scratch)
refuse with a clear error. Also: which parameters each unlearning method leaves gradients on (none) and that it
restores every requires_grad flag."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.hf.conftest import K, PROMPT
from tinymem.errors import ConfigError
from tinymem.hf.models import load_trial_base
from tinymem.mitigations import get_method, method_names
from tinymem.mitigations.base import MitigationContext
from tinymem.trial import base_evaluation, run_trial

# Small settings: every trial below takes about a second on a 2-core CPU.
FAST = {
    "zero_out": {"ratio": 0.1, "max_sequences": 4},
    "activations": {"ratio": 0.1},
    "slimming": {"ratio": 0.1, "epochs": 2},
    "hard_concrete": {"ratio": 0.1, "epochs": 2},
    "integrated_gradients": {"ratio": 0.1, "ig_steps": 2, "max_sequences": 2, "max_positions": 2},
    "durable": {"ratio": 0.05},
    "durable_aggregate": {"ratio": 0.05},
    "second_order": {"ratio": 0.05, "num_grads": 4},
    "subnet": {"epochs": 2, "batch_size": 8},
    "balanced_subnet": {"epochs": 2, "batch_size": 16},
    "greedy": {"max_iterations": 4, "batch_size": 16},
    "grad_ascent": {"epochs": 2, "lr": 1e-3, "batch_size": 4},
    "grad_diff": {"epochs": 1, "lr": 1e-3, "batch_size": 16},
    "npo": {"epochs": 2, "lr": 1e-3, "batch_size": 4, "retain_weight": 1.0},  # NPO+RT: mixed batches
    "simnpo": {"epochs": 2, "lr": 1e-3, "batch_size": 4},
    "finetune_clean": {"epochs": 1, "batch_size": 32},
    "finetune_extra": {"epochs": 1, "batch_size": 32},
    "finetune_both": {"epochs": 1, "batch_size": 32},
    "random_neurons": {"ratio": 0.1},  # the random controls edit Hugging Face models the same way
    "random_prune": {"ratio": 0.1, "epochs": 1, "batch_size": 16},
}
UNLEARN = [m for m in FAST if not m.startswith("finetune") and not m.startswith("random_")]


def test_every_non_regularizer_method_is_covered():
    # only the project's own methods (other test modules may register test-only ones)
    families = {m: get_method(m).family for m in method_names()
                if get_method(m).__module__.startswith("tinymem.mitigations.")}
    assert sorted(FAST) == sorted(m for m, f in families.items() if f != "regularizer")
    assert len(UNLEARN) == 15


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("hf_methods_store")


def config(tiny, method: str, storage) -> dict:
    f = tiny.files
    return {"method": method, "params": FAST.get(method, {}), "model": tiny.source, "device": "cpu",
            "forget_file": str(f["forget"]), "retain_file": str(f["retain"]), "test_file": str(f["test"]),
            "prompt_len": PROMPT, "k": K, "storage": str(storage)}


@pytest.mark.parametrize("method", sorted(FAST))
@pytest.mark.parametrize("family", ["tiny_neox", "tiny_llama"])
def test_method_runs_on_hf_model(family, method, request, storage):
    tiny = request.getfixturevalue(family)
    result = run_trial(config(tiny, method, storage))
    assert result.before["mem_pct"] == 100.0
    for key in ("mem_pct", "token_match", "test_ppl", "test_acc"):
        assert math.isfinite(result.after[key]), (key, result.after)
    assert result.seconds["mitigate"] > 0


def test_regularizers_refuse_hf_models_clearly(tiny_neox, storage):
    regularizers = [m for m in method_names() if get_method(m).family == "regularizer"]
    assert regularizers
    for m in regularizers:
        with pytest.raises(ConfigError, match="needs the base model's spec"):
            run_trial(config(tiny_neox, m, storage))


@pytest.fixture(scope="module")
def llama_ctx_parts(tiny_llama):
    f = tiny_llama.files
    base = load_trial_base({"model": tiny_llama.source, "forget_file": str(f["forget"]),
                            "retain_file": str(f["retain"]), "prompt_len": PROMPT, "k": K}, "cpu")
    ev = base_evaluation(base.model, base.bundle, None)
    return base, ev.memorized_rows


@pytest.mark.parametrize("method", UNLEARN)
def test_unlearning_leaves_no_gradients_and_restores_flags(method, llama_ctx_parts, tmp_path):
    base, rows = llama_ctx_parts
    model = copy.deepcopy(base.model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    b = base.bundle
    ctx = MitigationContext(model=model, bundle=b, forget=b.forget[rows], forget_clean=b.forget_clean[rows],
                            retain=b.retain, base_key=base.key, work_dir=tmp_path, device=torch.device("cpu"))
    out = get_method(method)(FAST[method]).apply(ctx)
    with_grad = [n for n, p in out.model.named_parameters() if p.grad is not None]
    assert with_grad == [], f"{method} left .grad on {with_grad[:3]}..."
    assert {n: p.requires_grad for n, p in out.model.named_parameters()} == flags

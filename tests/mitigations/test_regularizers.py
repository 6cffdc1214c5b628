"""The three training regularizers: what each does to the loss or the forward pass, on hand-checkable cases,
and the regularizer family's store reuse and checkpoint resume on math-tiny."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, GPT2LMHeadModel

from tinymem.build import load_model_dir
from tinymem.errors import ConfigError
from tinymem.metrics import evaluate
from tinymem.mitigations import get_method
from tinymem.mitigations.base import MitigationContext
from tinymem.mitigations.example_tied_dropout import ExampleTiedDropoutHook, stream_readers
from tinymem.mitigations.loss_truncation import LossDropper, LossTruncationHook
from tinymem.mitigations.spectral_norm import SpectralNormHook
from tinymem.models import build_model
from tinymem.specs import ModelSpec, apply_overrides
from tinymem.trial import run_trial

ROOT = Path(__file__).resolve().parents[2]
MY_METHODS = ("spectral_norm", "loss_truncation", "example_tied_dropout", "finetune_clean", "finetune_extra",
              "finetune_both")


def small_gpt2(n_layer: int = 2, n_embd: int = 16, n_head: int = 4, seed: int = 1) -> GPT2LMHeadModel:
    model = build_model(ModelSpec(n_layer=n_layer, n_embd=n_embd, n_head=n_head), 14, 32, 10, 11, 13, seed=seed)
    with torch.no_grad():  # non-trivial LayerNorm parameters and biases, so folding checks are not vacuous
        g = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if "ln" in name or "bias" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


# ---------------------------------------------------------------------------------------------- spectral norm

def test_spectral_blocks_are_per_head_for_attention_and_whole_for_mlp():
    model = small_gpt2()
    hook = SpectralNormHook(0.1)
    hook.setup(model, torch.zeros(1, 1), None)
    by_name = {g.name: g for g in hook.groups}
    assert len(by_name) == 2 * 4  # c_attn, attn c_proj, c_fc, mlp c_proj per layer; no ln/wte/wpe/bias
    qkv = by_name["transformer.h.0.attn.c_attn.weight"].blocks()
    proj = by_name["transformer.h.0.attn.c_proj.weight"].blocks()
    assert qkv.shape == (3 * 4, 16, 4) and proj.shape == (4, 4, 16)
    w = model.transformer.h[0].attn.c_attn.weight  # Conv1D [in, 3*C]; key of head 2 = columns 16+8..16+12
    assert torch.equal(qkv[4 + 2], w[:, 16 + 8:16 + 12])
    wp = model.transformer.h[0].attn.c_proj.weight  # rows of head 3 = its output's contribution
    assert torch.equal(proj[3], wp[12:16, :])
    assert by_name["transformer.h.1.mlp.c_fc.weight"].blocks().shape == (1, 16, 64)


@pytest.mark.parametrize("power", [1, 2])
def test_spectral_penalty_equals_true_singular_values_after_power_iterations(power):
    model = small_gpt2()
    lam = 0.3
    hook = SpectralNormHook(lam, power, seed=0)
    hook.setup(model, torch.zeros(1, 1), None)
    for _ in range(500):  # one power iteration per call, u persists between calls
        pen = hook.penalty(model)
    true = sum(torch.linalg.matrix_norm(g.blocks().detach(), ord=2).pow(power).sum() for g in hook.groups)
    assert pen.item() == pytest.approx(lam / 2 * true.item(), rel=1e-4)
    # and a single iteration from random u underestimates (sigma = u^T W v <= sigma_max): it is an estimate
    fresh = SpectralNormHook(lam, power, seed=0)
    fresh.setup(model, torch.zeros(1, 1), None)
    assert fresh.penalty(model).item() < lam / 2 * true.item()


def test_spectral_gradient_is_top_singular_pair():
    model = small_gpt2()
    hook = SpectralNormHook(2.0, 1)
    hook.setup(model, torch.zeros(1, 1), None)
    for _ in range(500):
        pen = hook.penalty(model)
    model.zero_grad()
    pen.backward()
    w = model.transformer.h[0].mlp.c_fc.weight
    u, s, vh = torch.linalg.svd(w.detach())
    expected = 1.0 * torch.outer(u[:, 0], vh[0])  # d(lam/2 * sigma)/dW = (lam/2) u1 v1^T
    sign = torch.sign((w.grad * expected).sum())
    assert torch.allclose(w.grad, sign * expected, atol=1e-4)


def test_spectral_state_round_trip():
    model = small_gpt2()
    a = SpectralNormHook(0.1, seed=3)
    a.setup(model, torch.zeros(1, 1), None)
    a.penalty(model)
    b = SpectralNormHook(0.1, seed=99)
    b.setup(model, torch.zeros(1, 1), None)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.penalty(model), b.penalty(model))


# ---------------------------------------------------------------------------------------------- loss truncation

def test_loss_dropper_warms_up_then_drops_exactly_the_top_fraction():
    d = LossDropper(dropc=0.1, window=100)
    losses = torch.arange(100, dtype=torch.float32)[torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    for chunk in losses.split(25)[:3]:  # 75 < min_count: nothing is dropped yet, even the largest losses
        assert d(chunk).all()
    keep = d(losses.split(25)[3])  # the 100th loss: the cutoff is the 90th percentile of 0..99 = 89.1
    assert d.cutoff == pytest.approx(89.1)
    assert torch.equal(keep, losses.split(25)[3] < 89.1)
    batch = torch.arange(100, dtype=torch.float32)  # same distribution: exactly the top 10% go
    keep = d(batch)
    assert int((~keep).sum()) == 10 and torch.equal(batch[~keep], torch.arange(90, 100, dtype=torch.float32))


def test_loss_dropper_recomputes_periodically_with_a_bounded_buffer():
    d = LossDropper(dropc=0.5, window=10)
    d(torch.zeros(10))
    first = d.cutoff
    for _ in range(50):  # losses rise; the cutoff follows the last window of losses, memory stays fixed
        d(torch.full((5,), 7.0))
    assert d.buffer.numel() == 10 and d.cutoff == 7.0 and first == 0.0
    # state round trip: a restored dropper decides identically
    e = LossDropper(dropc=0.5, window=10)
    e.load_state_dict(d.state_dict())
    x = torch.tensor([1.0, 9.0, 7.0, 6.5])
    assert torch.equal(d(x), e(x)) and d.cutoff == e.cutoff


def test_loss_truncation_hook_loss_is_mean_of_kept_sequence_losses():
    hook = LossTruncationHook(dropc=0.25, window=4)
    hook.setup(None, torch.zeros(4, 3), None)
    # per-sequence masked means: row0 (1+3)/2=2, row1 4, row2 6, row3 8 (padding positions masked out)
    tl = torch.tensor([[1.0, 3.0, 100.0], [4.0, 4.0, 4.0], [6.0, 100.0, 100.0], [8.0, 8.0, 8.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    idx = torch.arange(4)
    # the first batch fills the buffer (min_count 4): cutoff = 75th percentile of [2, 4, 6, 8] = 6.5 -> row3 dropped
    loss = hook.loss(tl, mask, idx)
    assert loss.item() == pytest.approx((2 + 4 + 6 + 0) / 4)
    assert hook.dropper.dropped == 1


# ---------------------------------------------------------------------------------------------- example-tied dropout

def _tensor_bytes(obj) -> int:
    return sum(v.numel() * v.element_size() for v in vars(obj).values() if isinstance(v, torch.Tensor))


def test_etd_masks_deterministic_distinct_fixed_on_expected_fraction_bounded_memory():
    hook = ExampleTiedDropoutHook(p_fixed=0.2, p_mem=0.3, seed=5, hidden=128)
    assert hook.n_fixed == 25
    idx = torch.arange(4000)
    m = hook.masks(idx)
    assert m.shape == (4000, 128) and set(m.unique().tolist()) <= {0.0, 1.0}
    again = ExampleTiedDropoutHook(p_fixed=0.2, p_mem=0.3, seed=5, hidden=128).masks(idx.flip(0)).flip(0)
    assert torch.equal(m, again)  # a function of (seed, index) alone, whatever the batch or the hook instance
    assert not torch.equal(m, ExampleTiedDropoutHook(0.2, 0.3, seed=6, hidden=128).masks(idx))
    assert (m[:, :25] == 1).all()  # fixed channels always on
    assert len({tuple(r) for r in m[:, 25:].to(torch.int8).tolist()}) == 4000  # all examples differ
    frac = m.mean().item()
    expected = (25 + 0.3 * 103) / 128
    assert abs(frac - expected) < 0.01
    before = (_tensor_bytes(hook), sorted(vars(hook)))
    for start in range(0, 2_000_000, 200_000):  # no per-example cache: memory does not grow with the indices
        hook.masks(torch.arange(start, start + 64))
    assert (_tensor_bytes(hook), sorted(vars(hook))) == before


def test_etd_duplicates_of_a_sequence_share_one_mask():
    # Ten copies of a noised row are one example: a mask per copy would give each copy its own
    # memorization channels and defeat the method.
    rows = torch.randint(0, 14, (50, 12), generator=torch.Generator().manual_seed(0))
    data = torch.cat([rows, rows[7].repeat(10, 1), rows[:3]])  # row 7 eleven times, rows 0-2 twice
    data = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(1))]
    hook = ExampleTiedDropoutHook(p_fixed=0.2, p_mem=0.3, seed=5)
    hook.setup(small_gpt2(), data, None)
    m = hook.masks(torch.arange(len(data)))
    copies = (data == rows[7]).all(dim=1).nonzero().flatten()
    assert len(copies) == 11 and (m[copies] == m[copies[0]]).all()
    assert len({tuple(r) for r in m.to(torch.int8).tolist()}) == 50  # one mask per distinct sequence


def _capture_layernorm_inputs(model):
    seen = []
    handles = [ln.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
               for ln in stream_readers(model)]
    return seen, handles


def test_etd_training_masks_channels_at_every_stream_read():
    model = small_gpt2()
    hook = ExampleTiedDropoutHook(p_fixed=0.25, p_mem=0.3, seed=0)
    hook.setup(model, torch.arange(1001 * 2).view(1001, 2), None)  # 1001 distinct rows
    idx = torch.tensor([3, 17, 1000])
    x = torch.randint(0, 14, (3, 12))
    with hook.batch_context(model, idx):
        seen, handles = _capture_layernorm_inputs(model)  # registered after the mask: sees masked inputs
        model(input_ids=x)
    for h in handles:
        h.remove()
    masks = hook.masks(idx)
    assert len(seen) == 2 * 2 + 1  # ln_1, ln_2 of two blocks and ln_f
    for inp in seen:
        for b in range(3):
            off = masks[b] == 0
            assert (inp[b][:, off] == 0).all()  # dropped channels carry nothing, at every position
            assert (inp[b][:, ~off] != 0).any(dim=0).all()
    seen, handles = _capture_layernorm_inputs(model)  # and the hooks are gone after the context
    model(input_ids=x)
    for h in handles:
        h.remove()
    assert all((inp != 0).float().mean() > 0.9 for inp in seen)


def test_etd_eval_drops_memorization_channels_and_folds_exactly(tmp_path):
    model = small_gpt2()
    hook = ExampleTiedDropoutHook(p_fixed=0.25, p_mem=0.3, seed=0)
    hook.setup(model, torch.arange(1001 * 2).view(1001, 2), None)  # 1001 distinct rows
    x = torch.randint(0, 14, (3, 12))
    with hook.eval_context(model):
        seen, handles = _capture_layernorm_inputs(model)
        ref = model(input_ids=x).logits
    for h in handles:
        h.remove()
    scale = hook.eval_scale()
    assert (scale[:4] == pytest.approx((0.25 + 0.3) / 0.25)) and (scale[4:] == 0).all()
    assert all((inp[..., 4:] == 0).all() and (inp[..., :4] != 0).all() for inp in seen)
    plain = model(input_ids=x).logits
    assert not torch.allclose(plain, ref, atol=1e-3)  # the eval transform really changes the model
    folded = hook.finalize(copy.deepcopy(model))
    assert torch.allclose(folded(input_ids=x).logits, ref, atol=1e-5)
    folded.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    assert type(loaded) is GPT2LMHeadModel and not loaded.config.tie_word_embeddings
    assert loaded.lm_head.weight.data_ptr() != loaded.transformer.wte.weight.data_ptr()
    assert torch.allclose(loaded(input_ids=x).logits, ref, atol=1e-5)


def test_regularizers_reject_non_gpt2_models():
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=14, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ConfigError, match="GPT-2"):
        SpectralNormHook(0.1).setup(llama, torch.zeros(1, 1), None)
    with pytest.raises(ConfigError, match="GPT-2"):
        ExampleTiedDropoutHook(0.2, 0.1).setup(llama, torch.zeros(1, 1), None)


# ---------------------------------------------------------------------------------------------- trials on math-tiny

def tiny_ctx(tiny_store, tmp_path, *, epochs=2, report=None, seed=0, store="store") -> MitigationContext:
    """A context over the math-tiny base whose spec trains briefly (3 steps per epoch)."""
    _root, stored = tiny_store
    loaded = load_model_dir(stored.directory, device="cpu")
    b = loaded.bundle
    spec = apply_overrides(stored.spec, {"epochs": epochs, "batch_size": 300, "warmup_steps": 0})
    return MitigationContext(model=loaded.model, bundle=b, forget=b.forget, forget_clean=b.forget_clean,
                             retain=b.retain, base_spec=spec, base_key=spec.key(), seed=seed,
                             report=report or (lambda m: None), evaluate=lambda m: evaluate(m, b),
                             work_dir=tmp_path / "work", store_root=str(tmp_path / store))


class Crash(RuntimeError):
    pass


def test_regularizer_retry_resumes_from_checkpoint_with_hook_state(tiny_store, tmp_path):
    method = get_method("loss_truncation")({"dropc": 0.1})

    def crash_at_2(m):
        if m["epoch"] == 2:
            raise Crash("killed during epoch 2")

    with pytest.raises(Crash):
        method.apply(tiny_ctx(tiny_store, tmp_path, epochs=3, report=crash_at_2))
    assert list((tmp_path / "store" / "checkpoints").glob("*/train_state.pt"))
    reports = []
    resumed = method.apply(tiny_ctx(tiny_store, tmp_path, epochs=3, report=reports.append))
    # The epoch-2 checkpoint was written before the report that crashed: only epoch 3 is left.
    assert resumed.info["resumed_from_epoch"] == 2.0 and resumed.info["reused"] == 0.0
    assert [r["epoch"] for r in reports] == [3.0]
    assert not list((tmp_path / "store" / "checkpoints").glob("*/train_state.pt"))  # published: removed
    # The resumed model is the model an uninterrupted run trains (the dropper's buffer was restored: from
    # epoch 2 on it drops sequences, which a fresh dropper would not yet do).
    straight = method.apply(tiny_ctx(tiny_store, tmp_path, epochs=3, store="other"))
    assert straight.info["resumed_from_epoch"] == 0.0
    a, b = resumed.model.state_dict(), straight.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_repeated_regularizer_trial_reuses_stored_model(tmp_path):
    # a 2-epoch math-tiny base of its own (seconds), so the shared session store stays untouched
    config = {"method": "spectral_norm", "params": {"lam": 0.1}, "preset": "math-tiny",
              "storage": str(tmp_path / "store"), "set": {"epochs": 2, "batch_size": 300, "warmup_steps": 0},
              "device": "cpu", "work_dir": str(tmp_path / "work")}
    first = run_trial(config)
    assert first.info["reused"] == 0.0 and [h["epoch"] for h in first.history] == [1.0, 2.0]
    assert {"mem_pct", "test_acc"} <= set(first.history[-1])
    second = run_trial(config)
    assert second.info["reused"] == 1.0 and second.info["seconds_cached_work"] > 0
    for k in ("test_acc", "test_ppl", "token_match"):
        assert second.after[k] == first.after[k]
    assert [(h["epoch"], h["test_acc"]) for h in second.history] == [(h["epoch"], h["test_acc"]) for h in first.history]
    assert second.seconds["mitigate"] < first.seconds["mitigate"]
    other = run_trial({**config, "params": {"lam": 0.001}})  # different hyperparameters: a different model
    assert other.info["reused"] == 0.0


def test_etd_trial_stores_an_ordinary_gpt2_that_evaluates_like_the_dropout(tiny_store, tmp_path):
    reports = []
    out = get_method("example_tied_dropout")().apply(tiny_ctx(tiny_store, tmp_path, epochs=1, report=reports.append))
    assert type(out.model) is GPT2LMHeadModel and not out.model.config.tie_word_embeddings
    stored = next((tmp_path / "store" / "models").glob("*/tinymem.json"))
    import json

    manifest = json.loads(stored.read_text())
    assert manifest["method"] == "example_tied_dropout" and manifest["params"] == {"p_fixed": 0.2, "p_mem": 0.1}
    # metrics measured under the dropout's eval mode before folding == metrics of the stored plain model
    b = load_model_dir(stored.parent).bundle
    after = evaluate(out.model, b)
    for k in ("mem_pct", "test_acc", "test_ppl"):
        assert after[k] == pytest.approx(manifest["metrics"][k], rel=1e-4, abs=1e-4)
    assert reports and reports[-1]["epoch"] == 1.0


def test_regularizer_needs_a_base_spec(tiny_store, tmp_path):
    ctx = tiny_ctx(tiny_store, tmp_path)
    ctx.base_spec = None
    with pytest.raises(ConfigError, match="needs the base model's spec"):
        get_method("spectral_norm")().apply(ctx)


# ---------------------------------------------------------------------------------------------- search spaces

@pytest.mark.parametrize("name", MY_METHODS)
def test_search_space_matches_the_method(name):
    data = yaml.safe_load((ROOT / "search_spaces" / f"{name}.yaml").read_text())
    assert set(data) - {"paper_fixed"} == {"method", "description", "params", "fixed", "paper_grid"}
    assert data["method"] == name
    get_method(name).Params.from_dict(data.get("paper_fixed") or {}, name)
    cls = get_method(name)
    fields = {h["name"]: h for h in cls.Params.spec()}
    for key, dist in data["params"].items():
        assert key in fields, f"{key} is not a hyperparameter of {name}"
        h = fields[key]
        if dist["type"] == "categorical":
            for c in dist["choices"]:
                cls.Params.from_dict({key: c}, name)
        else:
            assert dist["type"] in ("float", "int")
            cls.Params.from_dict({key: dist["low"]}, name)
            cls.Params.from_dict({key: dist["high"]}, name)
            assert not dist.get("log") or dist["low"] > 0
    assert set(data["fixed"]) <= set(fields)
    grid = data["paper_grid"]
    for values in itertools.product(*grid.values()):
        cls.Params.from_dict({**data["fixed"], **dict(zip(grid, values))}, name)

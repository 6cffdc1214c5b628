"""The five neuron-level unlearning methods: what they edit, determinism, the attribution cache, that they
remove memorization on a tiny memorizing model, the fixes of the paper code's bugs, and GPT-NeoX / Llama support."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from tinymem.adapter import ModelAdapter
from tinymem.data.bundle import DataBundle
from tinymem.errors import ConfigError
from tinymem.mitigations import get_method
from tinymem.mitigations._neuron import ablate_top, capture_activations, forget_set, suffix_starts
from tinymem.mitigations.base import MitigationContext
from tinymem.mitigations.hard_concrete import STRETCH_HIGH, STRETCH_LOW, hard_concrete_scores, initial_logit
from tinymem.mitigations.integrated_gradients import ig_scores
from tinymem.mitigations.zero_out import zero_out_scores

METHODS = ["zero_out", "activations", "slimming", "hard_concrete", "integrated_gradients"]
# Small settings: every apply below takes well under a second on the math-tiny model.
FAST = {
    "zero_out": {"max_sequences": 8},
    "activations": {},
    "slimming": {"epochs": 3},
    "hard_concrete": {"epochs": 3},
    "integrated_gradients": {"ig_steps": 4, "max_sequences": 8, "max_positions": 4},
}
# A non-ratio change that must miss the cache (None: the method has no other attribution setting).
OTHER_SETTING = {"zero_out": {"max_sequences": 6}, "activations": None, "slimming": {"lr": 0.05},
                 "hard_concrete": {"mask_p": 0.9}, "integrated_gradients": {"ig_steps": 2}}
ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def tiny_base(tiny_store):
    """The math-tiny model (from the shared session store), its bundle and memorized forget rows."""
    from tinymem.build import load_model_dir
    from tinymem.trial import base_evaluation

    _root, stored = tiny_store
    loaded = load_model_dir(stored.directory, device="cpu")
    base = base_evaluation(loaded.model, loaded.bundle, None)
    assert base.memorized_rows.numel() >= 8, "the fixture model should memorize"
    return loaded.model, loaded.bundle, base, stored.key


def tiny_ctx(tiny_base, work_dir: Path | None, seed: int = 0, reports: list | None = None) -> MitigationContext:
    model, bundle, base, key = tiny_base
    rows = base.memorized_rows
    return MitigationContext(
        model=copy.deepcopy(model), bundle=bundle, forget=bundle.forget[rows],
        forget_clean=bundle.forget_clean[rows],
        retain=bundle.retain, base_key=key, seed=seed, work_dir=work_dir,
        report=(reports.append if reports is not None else (lambda m: None)))


def apply(name: str, ctx: MitigationContext, **params):
    return get_method(name)({**FAST[name], **params}).apply(ctx)


def neuron_in_slices(adapter: ModelAdapter, layer: int) -> list[tuple[torch.Tensor, int]]:
    return [(p.detach(), dim) for p, dim in adapter.neuron_in_params(layer)]


def changed_neurons(before: torch.nn.Module, after: torch.nn.Module) -> dict[int, torch.Tensor]:
    """Per layer, the neurons whose input weights/bias changed; asserts every such slice is exactly zero and
    that nothing outside the MLP input projections changed."""
    a_before, a_after = ModelAdapter(before), ModelAdapter(after)
    in_params = {id(p) for layer in range(a_after.num_layers) for p, _ in a_after.neuron_in_params(layer)}
    sb = dict(before.named_parameters())
    for name, p in after.named_parameters():
        if id(p) not in in_params:
            assert torch.equal(p, sb[name]), f"{name} changed but is not a neuron input parameter"
    out = {}
    for layer in range(a_after.num_layers):
        changed = torch.zeros(a_after.inner_dim, dtype=torch.bool)
        for (pb, dim), (pa, _) in zip(neuron_in_slices(a_before, layer), neuron_in_slices(a_after, layer)):
            diff = (pb != pa).movedim(dim, 0).reshape(a_after.inner_dim, -1).any(dim=1)
            changed |= diff
        for pa, dim in neuron_in_slices(a_after, layer):
            rows = pa.movedim(dim, 0)[changed]
            assert torch.all(rows == 0), f"layer {layer}: an edited neuron is not fully zeroed"
        out[layer] = torch.nonzero(changed).flatten()
    return out


def assert_silenced(model: torch.nn.Module, tokens: torch.Tensor, neurons: dict[int, torch.Tensor]) -> None:
    adapter = ModelAdapter(model)
    with torch.no_grad(), capture_activations(adapter) as acts:
        model(input_ids=tokens)
    for layer, idx in neurons.items():
        assert torch.all(acts[layer][..., idx] == 0), f"layer {layer}: ablated neurons still fire"


# ------------------------------------------------------------------------------------------------ edits


@pytest.mark.parametrize("name", METHODS)
def test_edits_exactly_the_top_neurons_and_nothing_else(tiny_base, tmp_path, name):
    ctx = tiny_ctx(tiny_base, tmp_path)
    before = copy.deepcopy(ctx.model)
    out = apply(name, ctx, ratio=0.05)
    k = int(ModelAdapter(before).inner_dim * 0.05)
    chosen = changed_neurons(before, out.model)
    # A neuron whose weights are all zero already could hide from `changed`; TinyMem has none.
    assert all(len(idx) == k for idx in chosen.values()), {l: len(i) for l, i in chosen.items()}
    assert out.info["neurons_per_layer"] == k and out.info["neurons_ablated"] == k * len(chosen)
    assert_silenced(out.model, ctx.forget[:4], chosen)
    assert get_method(name).family == "unlearn_neuron"


def test_ablation_targets_the_right_layers_with_12_layers():
    """The paper matched layers by substring (layer 1 -> 10/11); the adapter indexes them."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=16, n_head=2, vocab_size=14, n_positions=16,
                                       activation_function="relu"))
    before = copy.deepcopy(model)
    adapter = ModelAdapter(model)
    scores = torch.zeros(adapter.num_layers, adapter.inner_dim)
    target = {layer: (7 * layer + 3) % adapter.inner_dim for layer in range(12)}
    for layer, neuron in target.items():
        scores[layer, neuron] = 1.0
    ablate_top(adapter, scores, 1 / adapter.inner_dim)
    chosen = changed_neurons(before, model)
    assert {layer: idx.tolist() for layer, idx in chosen.items()} == {l: [n] for l, n in target.items()}


# ------------------------------------------------------------------------------------------- determinism, cache


@pytest.mark.parametrize("name", METHODS)
def test_deterministic_for_a_seed(tiny_base, tmp_path, name):
    a = apply(name, tiny_ctx(tiny_base, tmp_path / "a"), ratio=0.05).model
    b = apply(name, tiny_ctx(tiny_base, tmp_path / "b"), ratio=0.05).model
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("name", METHODS)
def test_attribution_cache_reused_when_only_ratio_changes(tiny_base, tmp_path, name):
    first = apply(name, tiny_ctx(tiny_base, tmp_path / "w"), ratio=0.02)
    assert first.info["attribution_cached"] == 0.0 and first.info["seconds_attribution"] > 0
    assert "seconds_cached_work" not in first.info
    assert list((tmp_path / "w").glob("attributions-*.safetensors"))

    second = apply(name, tiny_ctx(tiny_base, tmp_path / "w"), ratio=0.08)
    assert second.info["attribution_cached"] == 1.0
    assert second.info["seconds_cached_work"] == pytest.approx(first.info["seconds_attribution"])
    assert "seconds_attribution" not in second.info

    # The cached attributions give exactly what a fresh computation gives.
    fresh = apply(name, tiny_ctx(tiny_base, tmp_path / "fresh"), ratio=0.08)
    assert fresh.info["attribution_cached"] == 0.0
    for (n, p), (_, q) in zip(second.model.named_parameters(), fresh.model.named_parameters()):
        assert torch.equal(p, q), n

    other = OTHER_SETTING[name]
    if other is not None:
        third = apply(name, tiny_ctx(tiny_base, tmp_path / "w"), ratio=0.08, **other)
        assert third.info["attribution_cached"] == 0.0
    if get_method(name).iterative:  # stochastic methods: the seed is part of the key
        fourth = apply(name, tiny_ctx(tiny_base, tmp_path / "w", seed=1), ratio=0.08)
        assert fourth.info["attribution_cached"] == 0.0


def _key_ctx(seed: int = 0) -> SimpleNamespace:
    """What an attribution key reads of a context (no model: the base key names it)."""
    return SimpleNamespace(base_key="base", forget=torch.arange(12).view(3, 4), seed=seed, pad_id=0,
                           bundle=SimpleNamespace(prompt_len=2))


def _other_value(f: dataclasses.Field):
    """A valid value of hyperparameter `f` other than its default."""
    m, d = f.metadata, f.default
    if m.get("choices"):
        return next(c for c in m["choices"] if c != d)
    hi, lo = m.get("high"), m.get("low")
    v = type(d)(d * 2 if d else 1)
    return v if hi is None or v <= hi else type(d)((d + lo) / 2 if isinstance(d, float) else lo)


@pytest.mark.parametrize("name", METHODS)
def test_attribution_key_derived_from_every_hyperparameter(name):
    """Every hyperparameter keys the attribution except those declared post-attribution (`ratio`); the seed
    keys it unless the method is deterministic. Derived from the Params dataclass, so nothing to forget."""
    cls = get_method(name)
    assert cls.post_attribution_fields() == {"ratio"}
    base = cls().attribution_key(_key_ctx())
    assert cls().attribution_key(_key_ctx()) == base  # equal configs share one cache entry
    for f in dataclasses.fields(cls.Params):
        changed = cls({f.name: _other_value(f)}).attribution_key(_key_ctx())
        assert (changed != base) == (f.name != "ratio"), f.name
    assert (cls().attribution_key(_key_ctx(seed=1)) != base) == (not cls.deterministic_attribution)
    assert cls.deterministic_attribution == (name in ("zero_out", "activations", "integrated_gradients"))


def test_a_new_hyperparameter_keys_the_attribution_without_further_code():
    from tinymem.mitigations._neuron import DEFAULT_RATIO, RATIO_HELP
    from tinymem.mitigations.base import hp
    from tinymem.mitigations.zero_out import Params as ZeroOutParams
    from tinymem.mitigations.zero_out import ZeroOut

    @dataclasses.dataclass(frozen=True)
    class NewParams(ZeroOutParams):
        new_knob: float = hp(0.5, "a setting added later", low=0.0, high=1.0)
        new_scale: float = hp(1.0, "applied after the attribution, like ratio", low=0.0, high=2.0,
                              attribution=False)

    class NewMethod(ZeroOut):
        name = "zero_out_v2"
        Params = NewParams

    assert NewMethod.post_attribution_fields() == {"ratio", "new_scale"}
    base = NewMethod().attribution_key(_key_ctx())
    assert NewMethod({"new_knob": 0.25}).attribution_key(_key_ctx()) != base
    assert NewMethod({"new_scale": 0.25, "ratio": 0.2}).attribution_key(_key_ctx()) == base
    assert NewMethod().attribution_settings(_key_ctx()) == {"max_sequences": 16, "new_knob": 0.5}
    # `ratio` must be declared post-attribution, and the seed is not a hyperparameter
    with pytest.raises(TypeError, match="attribution=False"):
        @dataclasses.dataclass(frozen=True)
        class Forgot(ZeroOutParams):
            ratio: float = hp(DEFAULT_RATIO, RATIO_HELP, low=0.0, high=1.0)

        type("Bad", (ZeroOut,), {"name": "bad", "Params": Forgot})
    with pytest.raises(TypeError, match="seed"):
        @dataclasses.dataclass(frozen=True)
        class Seeded(ZeroOutParams):
            seed: int = hp(0, "a seed", low=0, high=10)

        type("Bad", (ZeroOut,), {"name": "bad", "Params": Seeded})


def test_attribution_keys_unchanged_for_existing_caches():
    """The derived settings are exactly the hand-listed ones they replace, so caches written before stay valid."""
    from tinymem.mitigations._neuron import ATTRIBUTION_VERSION, AttributionCache

    ctx = _key_ctx(seed=3)
    expected = {"zero_out": {"max_sequences": 16}, "activations": {},
                "integrated_gradients": {"ig_steps": 20, "max_sequences": 16, "max_positions": 10},
                "slimming": {**get_method("slimming")().params.to_dict(), "seed": 3},
                "hard_concrete": {**get_method("hard_concrete")().params.to_dict(), "seed": 3}}
    for name, settings in expected.items():
        settings.pop("ratio", None)
        assert get_method(name)().attribution_key(ctx) == AttributionCache.key(ctx, name, settings)
    assert ATTRIBUTION_VERSION == 1


def test_run_trial_counts_cached_attribution_seconds(tiny_store, tmp_path):
    from tinymem.trial import run_trial

    root, _ = tiny_store
    cfg = {"method": "activations", "preset": "math-tiny", "storage": str(root), "device": "cpu",
           "work_dir": str(tmp_path)}
    first = run_trial({**cfg, "params": {"ratio": 0.02}})
    second = run_trial({**cfg, "params": {"ratio": 0.05}})
    assert first.info["attribution_cached"] == 0.0 and second.info["attribution_cached"] == 1.0
    assert second.seconds["mitigate_total"] == pytest.approx(
        second.seconds["mitigate"] + first.info["seconds_attribution"])


# ------------------------------------------------------------------------------------------------ effect


@pytest.mark.parametrize("name", METHODS)
def test_removes_memorization_on_the_fixture(tiny_base, tmp_path, name):
    from tinymem.metrics import evaluate

    _model, bundle, base, _key = tiny_base
    out = apply(name, tiny_ctx(tiny_base, tmp_path), ratio=0.1)
    after = evaluate(out.model, bundle)
    assert after["mem_pct"] <= base.metrics["mem_pct"] - 20.0, (base.metrics["mem_pct"], after["mem_pct"])
    assert after["test_acc"] > 70.0  # still a working model


def test_ablating_random_neurons_removes_less_than_zero_out(tiny_base, tmp_path):
    """A control: the attribution matters, not just the number of ablated neurons."""
    from tinymem.metrics import evaluate

    model, bundle, base, _ = tiny_base
    zero = evaluate(apply("zero_out", tiny_ctx(tiny_base, tmp_path), ratio=0.1).model, bundle)["mem_pct"]
    rand = copy.deepcopy(model)
    adapter = ModelAdapter(rand)
    g = torch.Generator().manual_seed(0)
    ablate_top(adapter, torch.rand(adapter.num_layers, adapter.inner_dim, generator=g), 0.1)
    assert evaluate(rand, bundle)["mem_pct"] > zero


# ------------------------------------------------------------------------------------------------ paper bugs fixed


def test_zero_out_scores_equal_brute_force_removal(tiny_base):
    """Score = L(neuron i zeroed) - L: the paper kept only neuron i instead. Checked against real ablation."""
    from tinymem.mitigations._neuron import suffix_loss_sums

    ctx = tiny_ctx(tiny_base, None)
    fs = forget_set(ctx, max_sequences=6)
    scores = zero_out_scores(ctx.model, fs)

    def loss(model):
        with torch.no_grad():
            return float(suffix_loss_sums(model(input_ids=fs.tokens).logits, fs.tokens, fs.mask).sum()
                         / fs.mask.sum())

    base = loss(ctx.model)
    top = int(torch.argmax(scores[0]))
    for neuron in (top, int(torch.argmin(scores[0])), 17):
        m = copy.deepcopy(ctx.model)
        ModelAdapter(m).ablate_neurons(0, torch.tensor([neuron]))
        assert scores[0, neuron].item() == pytest.approx(loss(m) - base, abs=1e-4)
    # removing the top neuron really hurts the memorized suffix: far more than a typical neuron does
    typical = float(scores[0].abs().median())
    print(f"top {float(scores[0, top]):.4g}, median |score| {typical:.4g}")
    assert scores[0, top] > 0.003 and scores[0, top] > 10 * typical


def _random_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=14, n_positions=24,
                                      activation_function="gelu_new")).eval()


def _hand_ctx(model, work_dir=None, kind="noise", rows=6, seq=20, prompt_len=8) -> MitigationContext:
    g = torch.Generator().manual_seed(1)
    forget = torch.randint(1, 14, (rows, seq), generator=g)
    forget[:, -3:] = 0  # padding
    clean = forget.clone()
    clean[:, prompt_len:-3] = torch.randint(1, 14, (rows, seq - prompt_len - 3), generator=g)
    bundle = DataBundle({"forget": forget, "forget_clean": clean, "retain": clean},
                        {"kind": kind, "prompt_len": prompt_len, "pad_id": 0, "k": 8})
    return MitigationContext(model=model, bundle=bundle, forget=forget, forget_clean=clean, retain=clean,
                             work_dir=work_dir)


def test_integrated_gradients_honours_ig_steps_and_completes():
    """IG completeness: over one (row, position), sum_i IG_i ~= P(y | a) - P(y | a := 0) for many steps."""
    model = _random_gpt2()
    ctx = _hand_ctx(model)
    fs = forget_set(ctx, max_sequences=1)
    t = int(torch.nonzero(fs.mask[0])[0])
    many = ig_scores(model, fs, steps=400, max_positions=1)
    one = ig_scores(model, fs, steps=1, max_positions=1)
    assert not torch.allclose(many, one)  # the paper ignored ig_steps

    adapter = ModelAdapter(model)
    toks = fs.tokens[:1, : t + 1]
    y = int(fs.tokens[0, t + 1])
    for layer in range(adapter.num_layers):
        def zero_at_t(a):
            a = a.clone()
            a[:, t] = 0
            return a

        with torch.no_grad():
            p_full = torch.softmax(model(input_ids=toks).logits[0, t], -1)[y]
            with adapter.neuron_hooks({layer: zero_at_t}):
                p_zero = torch.softmax(model(input_ids=toks).logits[0, t], -1)[y]
        assert many[layer].sum().item() == pytest.approx(float(p_full - p_zero), abs=2e-3, rel=2e-2)


def test_hard_concrete_initialises_from_mask_p(tiny_base):
    for p in (0.2, 0.5, 0.9):
        s = torch.tensor(initial_logit(p))
        assert float(torch.sigmoid(s) * (STRETCH_HIGH - STRETCH_LOW) + STRETCH_LOW) == pytest.approx(p)
    # With a negligible learning rate the attributions stay at the initial gates, so mask_p must show.
    Params = get_method("hard_concrete").Params
    lo, _ = hard_concrete_scores(tiny_ctx(tiny_base, None), Params(epochs=1, lr=1e-5, mask_p=0.2))
    hi, _ = hard_concrete_scores(tiny_ctx(tiny_base, None), Params(epochs=1, lr=1e-5, mask_p=0.9))
    assert lo.mean().item() == pytest.approx(torch.sigmoid(torch.tensor(initial_logit(0.2))).item(), abs=1e-3)
    assert hi.mean().item() == pytest.approx(torch.sigmoid(torch.tensor(initial_logit(0.9))).item(), abs=1e-3)


@pytest.mark.parametrize("name,params,key", [("slimming", {"stop_loss": 0.99}, "l1"),
                                             ("hard_concrete", {"stop_loss": 0.99}, "l0_fraction")])
def test_gate_methods_report_every_epoch_and_stop_early(tiny_base, tmp_path, name, params, key):
    reports: list = []
    out = apply(name, tiny_ctx(tiny_base, tmp_path, reports=reports), ratio=0.05, epochs=5, **params)
    # The penalty falls below 0.99 within the first epoch, so the per-epoch check stops at once.
    assert out.info["epochs_run"] == 1.0 and [r["epoch"] for r in reports] == [1.0]
    assert {"train_loss", key} <= set(reports[0])

    reports.clear()
    out = apply(name, tiny_ctx(tiny_base, tmp_path / "b", reports=reports), ratio=0.05, epochs=4, stop_loss=0.0)
    assert [r["epoch"] for r in reports] == [1.0, 2.0, 3.0, 4.0] and out.info["epochs_run"] == 4.0
    assert get_method(name).iterative


def test_gate_gradients_do_not_accumulate_across_steps(tiny_base, monkeypatch):
    """Each Adam step sees only its own batch's gradient (the paper zeroed once per epoch)."""
    seen = []
    real_step = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    from tinymem.mitigations.slimming import Params, slimming_scores

    # Four copies of one row in batches of two: both steps of the epoch see the same batch, and with lr 0
    # (set directly, bypassing validation) the coefficients never move, so the two gradients must be equal;
    # accumulating them would double the second.
    ctx = tiny_ctx(tiny_base, None)
    ctx.forget, ctx.forget_clean = ctx.forget[:1].repeat(4, 1), ctx.forget_clean[:1].repeat(4, 1)
    slimming_scores(ctx, Params(epochs=1, lr=0.0, batch_size=2))
    assert len(seen) == 2
    for g0, g1 in zip(*seen):
        assert torch.allclose(g0, g1, rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------------------------------------ model families


def _neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=64, vocab_size=14, max_position_embeddings=32))


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=64, vocab_size=14,
                                        max_position_embeddings=32))


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
@pytest.mark.parametrize("name", METHODS)
def test_runs_on_gpt_neox_and_llama(tmp_path, family, name):
    torch.manual_seed(0)
    model = (_neox if family == "gpt_neox" else _llama)().eval()
    before = copy.deepcopy(model)
    ctx = _hand_ctx(model, tmp_path)
    out = get_method(name)({**FAST[name], "ratio": 0.1}).apply(ctx)
    chosen = changed_neurons(before, out.model)
    assert all(len(idx) == int(64 * 0.1) for idx in chosen.values())
    assert_silenced(out.model, ctx.forget, chosen)
    if family == "llama":  # both gate and up projections of a neuron are zeroed
        mlp = ModelAdapter(out.model).mlp(0)
        assert torch.all(mlp.inputs[0].weight[chosen[0]] == 0) and torch.all(mlp.inputs[1].weight[chosen[0]] == 0)


# ------------------------------------------------------------------------------------------------ inputs


def test_suffix_positions_noise_and_backdoor():
    model = _random_gpt2()
    ctx = _hand_ctx(model, prompt_len=8)
    fs = forget_set(ctx)
    # position t predicts token t+1: the first counted position is prompt_len - 1, padding targets excluded
    assert fs.mask[0].tolist() == [False] * 7 + [True] * 9 + [False] * 3

    ctx = _hand_ctx(model, kind="backdoor", prompt_len=8)
    ctx.bundle.tensors["forget_prompt_len"] = torch.tensor([5, 6, 7, 8, 9, 10])
    assert suffix_starts(ctx).tolist() == [5, 6, 7, 8, 9, 10]


def test_empty_forget_set_edits_nothing(tmp_path):
    model = _random_gpt2()
    before = copy.deepcopy(model)
    ctx = _hand_ctx(model, tmp_path)
    ctx.forget, ctx.forget_clean = ctx.forget[:0], ctx.forget_clean[:0]
    out = get_method("zero_out")({"ratio": 0.5}).apply(ctx)
    assert out.info["neurons_ablated"] == 0 and not any(len(v) for v in changed_neurons(before, model).values())


@pytest.mark.parametrize("name,params,bad", [
    ("zero_out", {"ratio": 1.5}, "ratio"), ("activations", {"ratio": -0.1}, "ratio"),
    ("slimming", {"epochs": 0}, "epochs"), ("hard_concrete", {"mask_p": 1.0}, "mask_p"),
    ("integrated_gradients", {"ig_steps": 0}, "ig_steps"), ("slimming", {"mask_p": 0.5}, "mask_p")])
def test_bad_hyperparameters_raise_config_error(name, params, bad):
    with pytest.raises(ConfigError, match=bad):
        get_method(name)(params)


@pytest.mark.parametrize("name", METHODS)
def test_search_space_matches_the_method(name):
    space = yaml.safe_load((ROOT / "search_spaces" / f"{name}.yaml").read_text())
    Params = get_method(name).Params
    assert space["method"] == name and space["description"]
    for section in ("params", "fixed", "paper_grid", "paper_fixed"):
        assert set(space.get(section) or {}) <= set(Params.names()), section
    for hp_name, dist in space["params"].items():
        values = dist["choices"] if dist["type"] == "categorical" else [dist["low"], dist["high"]]
        for v in values:
            Params.from_dict({hp_name: v}, name)  # inside the method's valid range
    grid = space["paper_grid"]
    assert grid["ratio"] == [0.001, 0.01, 0.05]
    for combo in itertools.product(*grid.values()):
        Params.from_dict({**(space.get("fixed") or {}), **dict(zip(grid, combo))}, name)

"""The random controls: they edit as much of the model as the method they control, never look at the forget
set, are reproducible per seed, and every method with a control names one that exists and accepts the
configuration."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tinymem.adapter import ModelAdapter
from tinymem.build import load_model_dir
from tinymem.metrics import forget_extraction
from tinymem.mitigations import get_method, method_names
from tinymem.mitigations.base import MitigationContext


@pytest.fixture(scope="module")
def tiny(tiny_store):
    _, stored = tiny_store
    loaded = load_model_dir(stored.directory, device="cpu")
    rows = torch.nonzero(forget_extraction(loaded.model, loaded.bundle).memorized).flatten()
    return SimpleNamespace(directory=stored.directory, bundle=loaded.bundle, rows=rows)


def _apply(tiny, name: str, params: dict, seed: int = 0, forget_rows: torch.Tensor | None = None):
    model = load_model_dir(tiny.directory, device="cpu").model
    b = tiny.bundle
    rows = tiny.rows if forget_rows is None else forget_rows
    ctx = MitigationContext(model=model, bundle=b, forget=b.forget[rows], forget_clean=b.forget_clean[rows],
                            retain=b.retain, seed=seed, report=lambda m: None)
    out = get_method(name)(params).apply(ctx)
    return {k: v.detach().clone() for k, v in out.model.state_dict().items()}, out


def _zeroed(before: dict, after: dict, keys) -> dict:
    return {k: int(((before[k] != 0) & (after[k] == 0)).sum()) for k in keys}


@pytest.mark.parametrize("epochs", [0, 1])
def test_random_prune_prunes_the_ratio_of_each_mlp_matrix_whatever_the_forget_set(tiny, epochs):
    base = {k: v.clone() for k, v in load_model_dir(tiny.directory, device="cpu").model.state_dict().items()}
    model = load_model_dir(tiny.directory, device="cpu").model
    weights = {id(m.weight) for _, m in ModelAdapter(model).mlp_modules()}
    mlp = [n for n, p in model.named_parameters() if id(p) in weights]
    assert mlp
    params = {"ratio": 0.2, "epochs": epochs, "batch_size": 256}
    after, _ = _apply(tiny, "random_prune", params)
    for k, n in _zeroed(base, after, mlp).items():
        assert n == int(0.2 * base[k].numel()), k
    other = [k for k in base if k not in mlp]
    assert all(torch.equal(base[k], after[k]) for k in other), "only the MLP weight matrices may change"
    # the control never looks at the forget set: another forget set, the same model
    again, _ = _apply(tiny, "random_prune", params, forget_rows=tiny.rows[:1])
    assert all(torch.equal(after[k], again[k]) for k in after)
    reseeded, _ = _apply(tiny, "random_prune", params, seed=1)
    assert any(not torch.equal(after[k], reseeded[k]) for k in mlp)


def test_random_prune_retain_training_changes_the_mask(tiny):
    untrained, _ = _apply(tiny, "random_prune", {"ratio": 0.2, "epochs": 0})
    trained, out = _apply(tiny, "random_prune", {"ratio": 0.2, "epochs": 1, "batch_size": 256})
    assert out.info["steps"] > 0
    assert any(not torch.equal(untrained[k], trained[k]) for k in trained)


def test_random_neurons_ablates_k_neurons_per_layer_at_random(tiny):
    model = load_model_dir(tiny.directory, device="cpu").model
    adapter = ModelAdapter(model)
    after, out = _apply(tiny, "random_neurons", {"ratio": 0.05})
    k = int(adapter.inner_dim * 0.05)
    assert k > 0 and out.info["neurons_ablated"] == k * adapter.num_layers
    again, _ = _apply(tiny, "random_neurons", {"ratio": 0.05}, forget_rows=tiny.rows[:1])
    assert all(torch.equal(after[key], again[key]) for key in after)
    other, _ = _apply(tiny, "random_neurons", {"ratio": 0.05}, seed=3)
    assert any(not torch.equal(after[key], other[key]) for key in after)


def test_every_matched_control_exists_and_accepts_the_configuration():
    matched = {}
    for name in method_names():
        cls = get_method(name)
        pair = cls({}).matched_control()
        if pair is None:
            continue
        control, params = pair
        assert get_method(control).control, f"{name}'s control {control} is not marked as a control"
        get_method(control)(params)  # validates
        matched[name] = control
    neuron = {n for n in method_names() if get_method(n).family == "unlearn_neuron" and not get_method(n).control}
    assert {n: matched.get(n) for n in neuron} == {n: "random_neurons" for n in neuron}
    assert matched["subnet"] == matched["balanced_subnet"] == "random_prune"
    bs = get_method("balanced_subnet")({"ratio": 0.1, "epochs": 3}).matched_control()
    assert bs[1]["ratio"] == 0.1 and bs[1]["epochs"] == 3  # the same fraction, the same training length

"""The three fine-tuning mitigations: each trains on exactly its data, reports every epoch, resumes after a
crash, and runs as a trial, on math-tiny."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from tinymem.build import load_model_dir
from tinymem.errors import ConfigError
from tinymem.mitigations import get_method
from tinymem.mitigations.base import MitigationContext
from tinymem.trial import run_trial


def cheap_eval(model: torch.nn.Module) -> dict[str, float]:
    """Stands in for the metric engine where a test checks data or resumption, not metrics (saves time)."""
    return {"probe": float(sum(p.detach().double().sum() for p in model.parameters()))}


def tiny_ctx(tiny_store, tmp_path, report=None, seed=0) -> MitigationContext:
    _root, stored = tiny_store
    loaded = load_model_dir(stored.directory, device="cpu")
    b = loaded.bundle
    return MitigationContext(model=loaded.model, bundle=b, forget=b.forget[:5], forget_clean=b.forget_clean[:5],
                             retain=b.retain, base_spec=stored.spec, base_key=stored.key, seed=seed,
                             report=report or (lambda m: None),
                             evaluate=cheap_eval,
                             work_dir=tmp_path / "work", store_root=str(tmp_path / "store"))


def rows(t: torch.Tensor) -> Counter:
    return Counter(tuple(r) for r in t.tolist())


def record_training_rows(model: torch.nn.Module) -> tuple[list, object]:
    """Every row the training loop feeds the model (evaluation runs in eval mode and is not recorded)."""
    seen: list = []

    def pre_hook(module, args, kwargs):
        if module.training:
            seen.extend(tuple(r) for r in kwargs["input_ids"].tolist())

    return seen, model.register_forward_pre_hook(pre_hook, with_kwargs=True)


@pytest.mark.parametrize("name", ["finetune_clean", "finetune_extra", "finetune_both"])
def test_each_variant_trains_on_exactly_its_data(tiny_store, tmp_path, name):
    ctx = tiny_ctx(tiny_store, tmp_path)
    b = ctx.bundle
    expected = {"finetune_clean": rows(b.forget_clean), "finetune_extra": rows(b.retain),
                "finetune_both": rows(b.retain) + rows(b.forget_clean)}[name]
    seen, handle = record_training_rows(ctx.model)
    reports = []
    ctx.report = reports.append
    out = get_method(name)({"epochs": 2, "batch_size": 512}).apply(ctx)
    handle.remove()
    assert Counter(seen) == Counter({r: 2 * c for r, c in expected.items()})  # every row, once per epoch
    noised = set(rows(b.forget[(b.forget != b.forget_clean).any(dim=1)]))  # rows the noise really changed
    assert noised and not noised & set(seen)  # no variant ever trains on a noised sequence
    if name == "finetune_extra":  # nor, here, on any forget row or its clean version
        assert not (set(rows(b.forget)) | set(rows(b.forget_clean))) & set(seen)
    # not only the memorized subset in ctx.forget_clean: all clean counterparts (the paper's clean data)
    assert out.info["rows"] == float(sum(expected.values()))
    assert out.info["seconds_train"] > 0 and out.info["seconds_epoch_evals"] > 0
    assert [r["epoch"] for r in reports] == [1.0, 2.0] and {"probe", "train_loss"} <= set(reports[0])
    assert not out.model.training


def test_finetune_changes_the_model_and_keeps_the_paper_optimizer(tiny_store, tmp_path):
    from tinymem.mitigations._finetune import finetune_spec

    ctx = tiny_ctx(tiny_store, tmp_path)
    params = get_method("finetune_clean").Params.from_dict({})
    spec = finetune_spec(ctx, params)
    assert (spec.lr, spec.weight_decay, spec.beta1, spec.beta2, spec.batch_size, spec.epochs) == (
        1e-3, 0.1, 0.9, 0.98, 128, 5)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    out = get_method("finetune_clean")({"epochs": 1}).apply(ctx)
    assert any(not torch.equal(before[k], v) for k, v in out.model.state_dict().items())


class Crash(RuntimeError):
    pass


def test_retried_finetune_resumes_from_checkpoint(tiny_store, tmp_path):
    method = get_method("finetune_both")({"epochs": 3, "batch_size": 256})

    def crash_at_2(m):
        if m["epoch"] == 2:
            raise Crash("killed during epoch 2")

    with pytest.raises(Crash):
        method.apply(tiny_ctx(tiny_store, tmp_path, report=crash_at_2))
    assert list((tmp_path / "work" / "finetune").glob("*/train_state.pt"))
    reports = []
    resumed = method.apply(tiny_ctx(tiny_store, tmp_path, report=reports.append))
    # The epoch-2 checkpoint was written before the report that crashed: only epoch 3 is left.
    assert resumed.info["resumed_from_epoch"] == 2.0 and [r["epoch"] for r in reports] == [3.0]
    assert not list((tmp_path / "work" / "finetune").glob("*/train_state.pt"))  # finished: nothing to resume
    straight = method.apply(tiny_ctx(tiny_store, tmp_path / "fresh"))
    assert straight.info["resumed_from_epoch"] == 0.0
    a, b = resumed.model.state_dict(), straight.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the resumed run is the uninterrupted run


def test_finetune_trial_end_to_end(tiny_store, tmp_path):
    root, _ = tiny_store
    seen = []
    result = run_trial({"method": "finetune_clean", "params": {"epochs": 3}, "preset": "math-tiny",
                        "storage": str(root), "device": "cpu", "work_dir": str(tmp_path / "work")},
                       callback=seen.append)
    assert [h["epoch"] for h in result.history] == [1.0, 2.0, 3.0] and len(seen) == 3
    assert result.info["steps"] == 3.0  # 40 clean rows, batch 128: one step per epoch
    assert result.seconds["mitigate"] > 0 and "mem_pct" in result.after and "test_acc" in result.after
    assert result.history[-1]["mem_pct"] == pytest.approx(result.after["mem_pct"])


@pytest.mark.parametrize("params,match", [({"epochs": 0}, "epochs=0"), ({"lr": -1.0}, "lr=-1.0"),
                                          ({"batch": 3}, "unknown hyperparameter")])
def test_bad_params_are_config_errors(params, match):
    with pytest.raises(ConfigError, match=match):
        get_method("finetune_extra")(params)


def test_empty_data_is_a_config_error(tiny_store, tmp_path):
    ctx = tiny_ctx(tiny_store, tmp_path)
    ctx.retain = ctx.retain[:0]
    with pytest.raises(ConfigError, match="empty"):
        get_method("finetune_extra")().apply(ctx)

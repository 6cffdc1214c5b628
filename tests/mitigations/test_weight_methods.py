"""The six weight-level unlearning methods: greedy, durable, durable_aggregate, second_order, subnet,
balanced_subnet. Each edits only what it should, is deterministic for a seed, lowers memorization on a tiny
memorizing model, and runs on GPT-2, GPT-NeoX and Llama through the adapter."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from tinymem.adapter import ModelAdapter
from tinymem.build import load_model_dir
from tinymem.errors import ConfigError
from tinymem.metrics import forget_extraction, memorization
from tinymem.mitigations import get_method
from tinymem.mitigations._batches import (MixedBatches, epoch_probe, memorization_probe_rows,
                                          teacher_forced_memorized)
from tinymem.mitigations._subnet import (ScoreMask, init_scores, lowest_k_mask, score_generators, select_mask,
                                         sort_mask)
from tinymem.mitigations._weights import zero_top
from tinymem.mitigations.balanced_subnet import balanced_loss
from tinymem.mitigations.base import MitigationContext
from tinymem.mitigations.second_order import mlp_modules_and_params, per_row_gradients
from tinymem.train import sequence_losses

METHODS = ("greedy", "durable", "durable_aggregate", "second_order", "subnet", "balanced_subnet")
# Small settings that still remove memorization on math-tiny within seconds.
FAST = {
    "greedy": {"ratio": 1e-3, "max_iterations": 12, "weights_per_step": 2},
    "durable": {"ratio": 0.02},
    "durable_aggregate": {"ratio": 0.02},
    "second_order": {"ratio": 0.02},
    "subnet": {"ratio": 0.05, "epochs": 4, "lr": 1.0},
    "balanced_subnet": {"ratio": 0.1, "epochs": 2, "batch_size": 128},
}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tiny_store):
    """The math-tiny model directory, its bundle and the rows it memorizes (the unlearning set)."""
    _, stored = tiny_store
    loaded = load_model_dir(stored.directory, device="cpu")
    rows = torch.nonzero(forget_extraction(loaded.model, loaded.bundle).memorized).flatten()
    assert rows.numel() > 0, "the fixture model must memorize something"
    return SimpleNamespace(directory=stored.directory, bundle=loaded.bundle, rows=rows,
                           mem_pct=memorization(loaded.model, loaded.bundle)["mem_pct"])


def make_ctx(tiny, seed: int = 0, work_dir: Path | None = None, report=None, scope: str = "") -> MitigationContext:
    model = load_model_dir(tiny.directory, device="cpu").model
    b = tiny.bundle
    return MitigationContext(model=model, bundle=b, forget=b.forget[tiny.rows], forget_clean=b.forget_clean[tiny.rows],
                             retain=b.retain, seed=seed, work_dir=work_dir, resume_scope=scope,
                             report=report or (lambda metrics: None))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters by name; tied weights (GPT-2's wte / lm_head) appear once."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def mlp_param_names(model: torch.nn.Module) -> set[str]:
    ids = {id(p) for _, p in ModelAdapter(model).mlp_parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.fixture(scope="module")
def runs(tiny):
    """Each method applied once with its FAST settings: (before, after, output, mlp names, reports)."""
    out = {}
    for name in METHODS:
        reports: list[dict[str, float]] = []
        ctx = make_ctx(tiny, report=reports.append)
        names = mlp_param_names(ctx.model)
        before = snapshot(ctx.model)
        res = get_method(name)(FAST[name]).apply(ctx)
        out[name] = SimpleNamespace(before=before, after=snapshot(res.model), out=res, mlp=names, reports=reports,
                                    model=res.model)
    return out


@pytest.mark.parametrize("name", METHODS)
def test_only_mlp_weights_change_and_become_zero(runs, name):
    r = runs[name]
    assert set(r.before) == set(r.after), "the model's structure (parameter names) must not change"
    changed_total = 0
    for key, old in r.before.items():
        new = r.after[key]
        changed = old != new
        if name != "greedy" and key not in r.mlp:
            assert not changed.any(), f"{name} changed the non-MLP parameter {key}"
        assert (new[changed] == 0).all(), f"{name} changed {key} to something other than zero"
        changed_total += int(changed.sum())
    assert changed_total > 0, f"{name} changed nothing"
    assert all(p.requires_grad for p in r.model.parameters()), "requires_grad flags must be restored"


@pytest.mark.parametrize("name,scope", [("durable", "tensor"), ("second_order", "tensor"),
                                        ("durable_aggregate", "global")])
def test_zeroed_count_matches_ratio(runs, name, scope):
    r = runs[name]
    ratio = FAST[name]["ratio"]
    newly = {k: int(((r.before[k] != 0) & (r.after[k] == 0)).sum()) for k in r.mlp}
    if scope == "tensor":
        for k in r.mlp:
            assert newly[k] == int(ratio * r.before[k].numel()), k
    else:
        total = sum(r.before[k].numel() for k in r.mlp)
        assert sum(newly.values()) == int(ratio * total)
    assert r.out.info["weights_zeroed"] == sum(newly.values())


@pytest.mark.parametrize("name", ["subnet", "balanced_subnet"])
def test_subnet_prunes_ratio_of_each_mlp_weight_and_keeps_biases(runs, name):
    r = runs[name]
    ratio = FAST[name]["ratio"]
    for k in r.mlp:
        newly = int(((r.before[k] != 0) & (r.after[k] == 0)).sum())
        if k.endswith("weight"):
            assert newly == int(ratio * r.before[k].numel()), k
        else:
            assert torch.equal(r.before[k], r.after[k]), f"bias {k} must stay unmasked"
    assert not any("parametrizations" in k for k in r.after), "the mask must be baked in"


def test_greedy_zeroes_at_most_its_budget(runs):
    r = runs["greedy"]
    zeroed = sum(int(((r.before[k] != 0) & (r.after[k] == 0)).sum()) for k in r.before)
    budget = FAST["greedy"]["max_iterations"] * FAST["greedy"]["weights_per_step"]
    assert r.out.info["steps"] == FAST["greedy"]["max_iterations"]
    assert 0 < zeroed <= budget


@pytest.mark.parametrize("name", METHODS)
def test_lowers_memorization(runs, tiny, name):
    after = memorization(runs[name].model, tiny.bundle)["mem_pct"]
    assert after < tiny.mem_pct, f"{name}: mem_pct {tiny.mem_pct} -> {after}"


@pytest.mark.parametrize("name", ["greedy", "subnet", "balanced_subnet"])
def test_iterative_methods_report_each_epoch(runs, name):
    reps = runs[name].reports
    assert get_method(name).iterative
    assert reps, f"{name} reported nothing"
    assert [r["epoch"] for r in reps] == [float(i + 1) for i in range(len(reps))]
    for r in reps:
        assert {"forget_loss", "retain_loss", "forget_mem_pct"} <= set(r)
        assert all(math.isfinite(v) for v in r.values())
    if name != "greedy":
        assert len(reps) == FAST[name]["epochs"]


@pytest.mark.parametrize("name", METHODS)
def test_deterministic_for_a_seed(runs, tiny, name):
    again = snapshot(get_method(name)(FAST[name]).apply(make_ctx(tiny)).model)
    for k, v in runs[name].after.items():
        assert torch.equal(v, again[k]), f"{name} is not deterministic ({k})"


def test_subnet_seed_changes_the_mask(runs, tiny):
    other = snapshot(get_method("subnet")(FAST["subnet"]).apply(make_ctx(tiny, seed=1)).model)
    assert any(not torch.equal(v, other[k]) for k, v in runs["subnet"].after.items())


# --- the NaN fix and the batching ----------------------------------------------------------------

def test_balanced_loss_is_finite_without_forget_rows():
    losses = torch.tensor([0.5, 1.5, 2.0], requires_grad=True)
    loss = balanced_loss(losses, torch.zeros(3, dtype=torch.bool), 0.7)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.7 * 4.0 / 3)
    loss.backward()
    assert torch.isfinite(losses.grad).all()
    only_forget = balanced_loss(losses, torch.ones(3, dtype=torch.bool), 0.7)
    assert only_forget.item() == pytest.approx(-0.3 * 4.0 / 3)
    mixed = balanced_loss(losses, torch.tensor([True, False, False]), 0.7)
    assert mixed.item() == pytest.approx(-0.3 * 0.5 + 0.7 * 1.75)


def test_stratified_batches_always_hold_forget_rows_and_cover_the_data():
    forget = torch.arange(5).unsqueeze(1) + 1000
    retain = torch.arange(300).unsqueeze(1)
    mb = MixedBatches(forget, retain, batch_size=16, seed=3, stratified=True)
    batches = list(mb.epoch(0))
    assert len(batches) == len(mb) == math.ceil(305 / 16)
    assert all(b.is_forget.any() for b in batches), "every stratified batch must hold a forget row"
    seen_retain = torch.cat([b.rows[~b.is_forget] for b in batches]).flatten().sort().values
    assert torch.equal(seen_retain, retain.flatten()), "each retain row exactly once per epoch"
    assert all((b.rows[b.is_forget] >= 1000).all() and (b.rows[~b.is_forget] < 1000).all() for b in batches)
    again = list(MixedBatches(forget, retain, 16, seed=3).epoch(0))
    assert all(torch.equal(a.rows, b.rows) for a, b in zip(batches, again)), "deterministic for (seed, epoch)"
    assert not all(torch.equal(a.rows, b.rows) for a, b in zip(batches, mb.epoch(1)))


def test_paper_shuffle_has_empty_batches_yet_the_loss_stays_finite(tiny):
    ctx = make_ctx(tiny)
    mb = MixedBatches(ctx.forget, ctx.retain, batch_size=16, seed=0, stratified=False)
    batches = list(mb.epoch(0))
    empty = [b for b in batches if not b.is_forget.any()]
    assert empty, "with the paper's shuffle some batches have no forget row"
    assert sum(int(b.is_forget.sum()) for b in batches) == ctx.forget.shape[0]
    with torch.no_grad():
        loss = balanced_loss(sequence_losses(ctx.model, empty[0].rows, ctx.pad_id), empty[0].is_forget, 0.7)
    assert torch.isfinite(loss)


def test_balanced_subnet_paper_shuffle_runs_finite(tiny):
    ctx = make_ctx(tiny)
    out = get_method("balanced_subnet")({"ratio": 0.05, "epochs": 1, "batch_size": 16, "stratified": False}).apply(ctx)
    assert all(torch.isfinite(p).all() for p in out.model.parameters())


# --- probes, per-row gradients, checkpoints --------------------------------------------------------

def test_teacher_forced_probe_equals_greedy_decoding(tiny):
    ctx = make_ctx(tiny)
    model = ctx.model
    with torch.no_grad():  # damage the model a little so that some rows are memorized and some are not
        ModelAdapter(model).mlp(0).output.weight.mul_(0.7)
    seqs, target, counted = memorization_probe_rows(ctx)
    fast = teacher_forced_memorized(model, seqs, target, tiny.bundle.prompt_len, tiny.bundle.meta["eos_id"],
                                    tiny.bundle.pad_id)
    slow = forget_extraction(model, tiny.bundle).memorized[tiny.rows]
    assert torch.equal(fast, slow)
    probe = epoch_probe(ctx, model)
    assert probe["forget_mem_pct"] == pytest.approx(100.0 * float((slow & counted).sum()) / int(counted.sum()))


def test_per_row_gradients_match_autograd(tiny):
    model = make_ctx(tiny).model
    rows = tiny.bundle.forget[:3]
    _, params = mlp_modules_and_params(model)
    fast = next(per_row_gradients(model, rows, tiny.bundle.pad_id))
    for i in range(3):
        loss = sequence_losses(model, rows[i : i + 1], tiny.bundle.pad_id).mean()
        ref = torch.autograd.grad(loss, params)
        for f, r in zip(fast, ref):
            torch.testing.assert_close(f[i], r, rtol=1e-4, atol=1e-7)


class Crash(Exception):
    pass


def interrupt_after_first_epoch(tiny, params: dict, work_dir: Path, scope: str = "") -> None:
    """A BalancedSubnet run that dies after its first epoch (its resume file written)."""
    def crash_after_first_epoch(metrics):
        if metrics["epoch"] == 1.0:
            raise Crash

    with pytest.raises(Crash):
        get_method("balanced_subnet")(params).apply(make_ctx(tiny, work_dir=work_dir, report=crash_after_first_epoch,
                                                             scope=scope))


def test_balanced_subnet_resumes_from_its_checkpoint(tiny, tmp_path):
    params = {"ratio": 0.1, "epochs": 2, "batch_size": 128}
    full = snapshot(get_method("balanced_subnet")(params).apply(make_ctx(tiny)).model)
    interrupt_after_first_epoch(tiny, params, tmp_path)
    assert len(list(tmp_path.glob("scores-*.pt"))) == 1, "a checkpoint after epoch 1"
    reports: list[dict[str, float]] = []
    out = get_method("balanced_subnet")(params).apply(make_ctx(tiny, work_dir=tmp_path, report=reports.append))
    assert out.info["resumed_from_epoch"] == 1.0
    assert [r["epoch"] for r in reports] == [2.0]
    for k, v in snapshot(out.model).items():
        assert torch.equal(v, full[k]), f"resumed run differs from the uninterrupted one ({k})"
    assert not list(tmp_path.glob("scores-*.pt")), "a finished run removes its checkpoint"


def test_resume_files_are_their_scopes(tiny, tmp_path):
    """A sweep scopes resume files to a trial: another trial of the same configuration (a rerun at the same seed)
    runs from epoch 0 and reports every epoch; only the interrupted trial itself resumes."""
    params = {"ratio": 0.1, "epochs": 2, "batch_size": 128}
    interrupt_after_first_epoch(tiny, params, tmp_path, scope="trial-a")
    assert len(list(tmp_path.glob("scores-*.pt"))) == 1
    for scope, resumed, epochs in (("trial-b", 0.0, [1.0, 2.0]), ("", 0.0, [1.0, 2.0]), ("trial-a", 1.0, [2.0])):
        reports: list[dict[str, float]] = []
        out = get_method("balanced_subnet")(params).apply(make_ctx(tiny, work_dir=tmp_path, report=reports.append,
                                                                   scope=scope))
        assert out.info["resumed_from_epoch"] == resumed and [r["epoch"] for r in reports] == epochs, scope
    assert not list(tmp_path.glob("scores-*.pt")), "each finished run removed its own file, trial-a's included"


def test_zero_top_global_and_tensor():
    a, b = torch.nn.Parameter(torch.ones(10)), torch.nn.Parameter(torch.ones(10))
    zero_top([a, b], [torch.arange(10.0), torch.arange(10.0) + 100], 0.2, "global")
    assert int((a == 0).sum()) == 0 and int((b == 0).sum()) == 4 and (b[6:] == 0).all()
    zero_top([a, b], [torch.arange(10.0), torch.zeros(10)], 0.1, "tensor")
    assert a[9] == 0 and int((a == 0).sum()) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selection_mask_is_the_stable_sorts(dtype):
    gen = torch.Generator().manual_seed(0)
    cases = [torch.rand(37, 53, generator=gen),  # distinct values
             torch.randint(0, 4, (40, 25), generator=gen).float(),  # heavy ties at every cut-off
             torch.zeros(6, 7)]  # all tied: the lowest indices go first
    for m in cases:
        m = m.to(dtype)
        for k in (0, 1, 2, 5, m.numel() // 3, m.numel() // 2 + 1, m.numel() - 1, m.numel()):
            got = select_mask(m, k)
            assert got.dtype == dtype and got.shape == m.shape
            assert int((got == 0).sum()) == k
            assert torch.equal(got, sort_mask(m, k)), (m.shape, k)
            assert torch.equal(lowest_k_mask(m, k), got)


def test_cpu_scores_come_from_one_seeded_stream_in_module_order():
    """On the CPU the kaiming scores are one stream per seed (CPU results stay reproducible across versions)."""
    mods = [torch.nn.Linear(8, 4), torch.nn.Linear(16, 8)]
    gens = score_generators(mods, seed=3)
    assert gens[0] is gens[1]
    got = [init_scores(m, "kaiming", g) for m, g in zip(mods, gens)]
    ref = torch.Generator().manual_seed(3)
    for m, scores in zip(mods, got):
        fan_in = m.weight.shape[1]
        expected = (torch.rand(m.weight.shape, generator=ref) * 2.0 - 1.0) * (1.0 / math.sqrt(fan_in))
        assert torch.equal(scores, expected)


def test_score_mask_straight_through_gradient():
    sm = ScoreMask(torch.tensor([[0.1, -0.2, 0.3, -0.4]] * 3), ratio=0.5)
    w = torch.randn(3, 4)
    eff = sm(w)
    assert int((eff == 0).sum()) == 6 and torch.equal(eff[:, 2:], w[:, 2:])
    eff.sum().backward()
    # d/dS of sum(W * mask(|S|)) with a straight-through mask = W * sign(S), for pruned entries too
    torch.testing.assert_close(sm.scores.grad, w * torch.sign(sm.scores.detach()))


# --- other families through the adapter ------------------------------------------------------------

def tiny_family_model(family: str) -> torch.nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if family == "gpt_neox":
        cfg = GPTNeoXConfig(vocab_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64)
        return GPTNeoXForCausalLM(cfg).eval()
    cfg = LlamaConfig(vocab_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
@pytest.mark.parametrize("name", METHODS)
def test_runs_on_other_families(tiny, family, name):
    model = tiny_family_model(family)
    b = tiny.bundle
    reports: list[dict[str, float]] = []
    ctx = MitigationContext(model=model, bundle=b, forget=b.forget[:6], forget_clean=b.forget_clean[:6],
                            retain=b.retain[:40], seed=0, report=reports.append)
    names = mlp_param_names(model)
    before = snapshot(model)
    params = dict(FAST[name])
    if name in ("subnet", "balanced_subnet"):
        params.update(epochs=1, batch_size=16)
    if name == "greedy":
        params.update(batch_size=16)
    out = get_method(name)(params).apply(ctx)
    after = snapshot(out.model)
    changed = 0
    for k, old in before.items():
        diff = old != after[k]
        if name != "greedy":
            assert k in names or not diff.any(), f"{name} on {family} changed non-MLP {k}"
        assert (after[k][diff] == 0).all()
        changed += int(diff.sum())
    assert changed > 0
    if name in ("subnet", "balanced_subnet"):
        for mod in [m for _, m in ModelAdapter(model).mlp_modules()]:
            w = mod.weight
            assert int((w == 0).sum()) >= int(params["ratio"] * w.numel())
        assert reports and "retain_loss" in reports[-1]


# --- bad input and search spaces -------------------------------------------------------------------

@pytest.mark.parametrize("name,params,match", [
    ("balanced_subnet", {"ratio": 1.5}, "ratio"),
    ("balanced_subnet", {"loss_weighting": -0.1}, "loss_weighting"),
    ("subnet", {"score_init": "zeros"}, "score_init"),
    ("greedy", {"ratios": 0.1}, "unknown hyperparameter"),
    ("second_order", {"block_size": 0}, "block_size"),
    ("durable", {"ratio": "lots"}, "ratio"),
])
def test_bad_params_are_config_errors(name, params, match):
    with pytest.raises(ConfigError, match=match):
        get_method(name)(params)


@pytest.mark.parametrize("name", METHODS)
def test_empty_forget_set_is_a_config_error(tiny, name):
    ctx = make_ctx(tiny)
    ctx.forget, ctx.forget_clean = ctx.forget[:0], ctx.forget_clean[:0]
    with pytest.raises(ConfigError, match="forget set is empty"):
        get_method(name)(FAST[name]).apply(ctx)


@pytest.mark.parametrize("name", METHODS)
def test_search_space_matches_the_method(name):
    space = yaml.safe_load((ROOT / "search_spaces" / f"{name}.yaml").read_text())
    assert space["method"] == name and isinstance(space["description"], str)
    assert set(space) <= {"method", "description", "params", "fixed", "paper_grid", "paper_fixed"}
    cls = get_method(name)
    allowed = set(cls.Params.names())
    for section in ("params", "fixed", "paper_grid", "paper_fixed"):
        assert set(space.get(section) or {}) <= allowed, f"{section} keys must be hyperparameters of {name}"
    cls.Params.from_dict(space.get("paper_fixed") or {}, name)  # the paper's fixed values are valid
    for key, dist in space["params"].items():
        assert dist["type"] in ("float", "int", "categorical")
        values = dist["choices"] if dist["type"] == "categorical" else [dist["low"], dist["high"]]
        for v in values:
            cls.Params.from_dict({key: v}, name)  # every bound is a valid value
    cls.Params.from_dict(space.get("fixed") or {}, name)
    for key, values in (space.get("paper_grid") or {}).items():
        for v in values:
            cls.Params.from_dict({key: v}, name)

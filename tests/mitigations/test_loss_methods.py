"""The four loss-based unlearning baselines: grad_ascent, grad_diff, npo, simnpo. Each lowers memorization on a
tiny memorizing model beyond chance, is deterministic for a seed and anytime (epoch e of a long run is the run
with epochs=e); the losses equal their formulas on hand-computed examples; NPO's reference is the base model,
frozen; bad hyperparameters are ConfigErrors naming the value."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from sweeps.errors import SweepError
from sweeps.space import SweepSpace
from sweeps.space_file import default_space_path, load_search_space
from tinymem.build import load_model_dir
from tinymem.errors import ConfigError
from tinymem.metrics import forget_extraction, memorization
from tinymem.mitigations import get_method
from tinymem.mitigations._batches import MixedBatches
from tinymem.mitigations._loss_based import ScoredBatch, sequence_log_likelihoods
from tinymem.mitigations.base import MitigationContext
from tinymem.mitigations.npo import npo_loss
from tinymem.mitigations.simnpo import simnpo_loss
from tinymem.train import sequence_losses

METHODS = ("grad_ascent", "grad_diff", "npo", "simnpo")
# Small settings that remove most memorization on math-tiny within seconds.
FAST = {
    "grad_ascent": {"epochs": 3, "lr": 1e-3, "batch_size": 8},
    "grad_diff": {"epochs": 1, "lr": 1e-3, "batch_size": 32, "loss_weighting": 0.5},
    "npo": {"epochs": 3, "lr": 1e-3, "batch_size": 8, "beta": 0.1, "retain_weight": 0.0},
    "simnpo": {"epochs": 3, "lr": 1e-3, "batch_size": 8, "beta": 2.5},
}


@pytest.fixture(scope="module")
def tiny(tiny_store):
    """The math-tiny model directory, its bundle, the rows it memorizes and its memorization metrics."""
    _, stored = tiny_store
    loaded = load_model_dir(stored.directory, device="cpu")
    rows = torch.nonzero(forget_extraction(loaded.model, loaded.bundle).memorized).flatten()
    assert rows.numel() > 0, "the fixture model must memorize something"
    return SimpleNamespace(directory=stored.directory, bundle=loaded.bundle, rows=rows,
                           before=memorization(loaded.model, loaded.bundle))


def make_ctx(tiny, seed: int = 0, report=None) -> MitigationContext:
    model = load_model_dir(tiny.directory, device="cpu").model
    b = tiny.bundle
    return MitigationContext(model=model, bundle=b, forget=b.forget[tiny.rows],
                             forget_clean=b.forget_clean[tiny.rows], retain=b.retain, seed=seed,
                             report=report or (lambda metrics: None))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.fixture(scope="module")
def runs(tiny):
    """Each method applied once with its FAST settings: the weights before and after, output, reports."""
    out = {}
    for name in METHODS:
        reports: list[dict[str, float]] = []
        ctx = make_ctx(tiny, report=reports.append)
        before = snapshot(ctx.model)
        res = get_method(name)(FAST[name]).apply(ctx)
        out[name] = SimpleNamespace(before=before, after=snapshot(res.model), out=res, reports=reports,
                                    model=res.model)
    return out


@pytest.mark.parametrize("name", METHODS)
def test_lowers_memorization_beyond_chance(runs, tiny, name):
    """The exact 95% intervals of the rates before and after do not overlap."""
    after = memorization(runs[name].model, tiny.bundle)
    assert after["mem_pct_ci_high"] < tiny.before["mem_pct_ci_low"], (name, tiny.before["mem_pct"],
                                                                      after["mem_pct"])


@pytest.mark.parametrize("name", METHODS)
def test_edits_every_weight_and_leaves_no_gradients(runs, name):
    r = runs[name]
    unchanged = [k for k, v in r.before.items() if torch.equal(v, r.after[k])]
    assert unchanged == [], f"{name} left {unchanged} untouched"
    assert all(p.grad is None for p in r.model.parameters())
    assert all(p.requires_grad for p in r.model.parameters()), "requires_grad flags must be restored"
    assert not r.model.training


@pytest.mark.parametrize("name", METHODS)
def test_reports_each_epoch_and_times_itself(runs, name):
    cls = get_method(name)
    assert cls.iterative and cls.anytime and cls.family == "unlearn_weight"
    reps = runs[name].reports
    assert [r["epoch"] for r in reps] == [float(e + 1) for e in range(FAST[name]["epochs"])]
    for r in reps:
        assert {"forget_loss", "retain_loss", "forget_mem_pct"} <= set(r)
        assert all(math.isfinite(v) for v in r.values())
    info = runs[name].out.info
    assert info["steps"] > 0 and info["seconds_train"] > 0 and info["seconds_epoch_evals"] > 0
    assert info["final_forget_mem_pct"] == reps[-1]["forget_mem_pct"]


@pytest.mark.parametrize("name", METHODS)
def test_deterministic_for_a_seed(runs, tiny, name):
    again = snapshot(get_method(name)(FAST[name]).apply(make_ctx(tiny)).model)
    assert all(torch.equal(v, again[k]) for k, v in runs[name].after.items()), f"{name} is not deterministic"
    other = snapshot(get_method(name)(FAST[name]).apply(make_ctx(tiny, seed=1)).model)
    assert any(not torch.equal(v, other[k]) for k, v in runs[name].after.items()), "the seed orders the batches"


@pytest.mark.parametrize("name", ["grad_ascent", "npo"])
def test_anytime_epoch_e_of_a_long_run_is_the_run_with_epochs_e(tiny, name):
    """What the `anytime` flag promises a sweep: a checkpoint after epoch 1 is exactly an epochs=1 run."""
    ctx = make_ctx(tiny)
    at_epoch: dict[int, dict[str, torch.Tensor]] = {}
    ctx.report = lambda m: at_epoch.setdefault(int(m["epoch"]), snapshot(ctx.model))
    get_method(name)({**FAST[name], "epochs": 2}).apply(ctx)
    short = snapshot(get_method(name)({**FAST[name], "epochs": 1}).apply(make_ctx(tiny)).model)
    assert all(torch.equal(v, at_epoch[1][k]) for k, v in short.items())
    assert any(not torch.equal(v, at_epoch[2][k]) for k, v in short.items())


# --- the losses ----------------------------------------------------------------------------------------

def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_npo_loss_is_the_formula_by_hand():
    logp, ref, beta = torch.tensor([-2.0, -5.0, -1.0]), torch.tensor([-1.0, -5.0, -3.0]), 0.5
    # -(2/β) mean log σ(-β (logp - ref)): the three arguments are 0.5, 0 and -1
    expected = -(2 / 0.5) * (log_sigmoid(0.5) + log_sigmoid(0.0) + log_sigmoid(-1.0)) / 3
    assert npo_loss(logp, ref, beta).item() == pytest.approx(expected, rel=1e-6)
    assert npo_loss(ref, ref, beta).item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)
    # the method's loss of a forget-only batch is that formula; its retain term adds λ * mean retain CE
    batch = ScoredBatch(torch.tensor([-2.0, -5.0, -1.0, -6.0]), torch.tensor([2.0, 5.0, 1.0, 3.0]),
                        torch.tensor([True, True, True, False]), ref)
    plain = get_method("npo")({"beta": beta, "retain_weight": 0.0}).loss(batch)
    assert plain.item() == pytest.approx(expected, rel=1e-6)
    rt = get_method("npo")({"beta": beta, "retain_weight": 0.3}).loss(batch)
    assert rt.item() == pytest.approx(expected + 0.3 * 6.0 / 3.0, rel=1e-6)


def test_simnpo_loss_normalises_by_length():
    """Two rows with the same log-likelihood but lengths 2 and 8: each is scored by its mean token
    log-probability, -2 and -0.5."""
    logp, length, beta, gamma = torch.tensor([-4.0, -4.0]), torch.tensor([2.0, 8.0]), 2.0, 0.5
    expected = -(2 / beta) * (log_sigmoid(2.0 * 2.0 - 0.5) + log_sigmoid(2.0 * 0.5 - 0.5)) / 2
    assert simnpo_loss(logp, length, beta, gamma).item() == pytest.approx(expected, rel=1e-6)
    # a row twice as long with the same per-token log-probability gets the same score
    assert simnpo_loss(torch.tensor([-8.0]), torch.tensor([4.0]), beta, gamma).item() == pytest.approx(
        simnpo_loss(torch.tensor([-4.0]), torch.tensor([2.0]), beta, gamma).item(), rel=1e-6)


def test_y_is_the_whole_row_without_padding(tiny):
    """On real rows of different lengths: |y| counts the predicted non-padding tokens, and (1/|y|) log πθ(y) is
    -sequence_losses, so SimNPO scores a row by its mean token log-probability whatever its length."""
    model = make_ctx(tiny).model
    b = tiny.bundle
    rows = b.forget[tiny.rows[:2]].clone()
    rows[1, rows.shape[1] // 2 :] = b.pad_id  # the second row is shorter
    with torch.no_grad():
        logp, length = sequence_log_likelihoods(model, rows, b.pad_id)
        mean_nll = sequence_losses(model, rows, b.pad_id)
    assert length.tolist() == (rows[:, 1:] != b.pad_id).sum(dim=1).float().tolist()
    assert length[0] > length[1]
    torch.testing.assert_close(-logp / length, mean_nll)
    beta, gamma = 2.5, 0.0
    expected = -(2 / beta) * torch.nn.functional.logsigmoid(beta * mean_nll - gamma).mean()
    torch.testing.assert_close(simnpo_loss(logp, length, beta, gamma), expected)


@pytest.mark.parametrize("retain_weight", [0.0, 1.0])
def test_npo_reference_is_the_frozen_base_model(tiny, retain_weight):
    """Every step's reference values are the base model's log-likelihoods of the forget rows, also in the last
    epoch, when the trained model's have moved away from them; the first step's loss is (2/β) log 2 (plus the
    retain term). Plain NPO sees each forget row once per epoch: the last epoch's references are exactly the
    base model's values."""
    params = {**FAST["npo"], "epochs": 3, "retain_weight": retain_weight}
    if retain_weight:
        params.update(epochs=1, batch_size=64)  # mixed batches: one pass over the retain rows
    method = get_method("npo")(params)
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    loss_of = method.loss

    def recording_loss(batch: ScoredBatch) -> torch.Tensor:
        loss = loss_of(batch)
        seen.append((batch.reference.clone(), batch.log_likelihood[batch.is_forget].detach().clone(),
                     npo_loss(batch.log_likelihood[batch.is_forget], batch.reference, params["beta"]).detach()))
        return loss

    method.loss = recording_loss
    ctx = make_ctx(tiny)
    with torch.no_grad():
        base_logp, _ = sequence_log_likelihoods(ctx.model, ctx.forget, ctx.pad_id)
    method.apply(ctx)
    assert seen[0][2].item() == pytest.approx(2 / params["beta"] * math.log(2), rel=1e-5)
    for ref, _, _ in seen:  # each reference value is one of the base model's
        assert torch.isclose(ref[:, None], base_logp[None, :], rtol=1e-5, atol=1e-5).any(dim=1).all()
    if not retain_weight:
        last = seen[-math.ceil(ctx.forget.shape[0] / params["batch_size"]):]
        refs = torch.cat([r for r, _, _ in last])
        torch.testing.assert_close(refs.sort().values, base_logp.sort().values)
    moved = torch.cat([lp for _, lp, _ in seen[-3:]]).mean() - torch.cat([r for r, _, _ in seen[-3:]]).mean()
    assert moved < -1.0, "the trained model's log-likelihoods moved away from the reference"


def test_mixed_batches_name_their_forget_rows(tiny):
    """`forget_index` points at each batch's forget rows, stratified (with forget rows reused when there are
    fewer than batches) or plainly shuffled: what NPO+RT looks its reference values up by."""
    b = tiny.bundle
    forget = b.forget[tiny.rows]
    for stratified, rows in ((True, forget), (True, forget[:3]), (False, forget)):
        for batch in MixedBatches(rows, b.retain, 16, seed=0, stratified=stratified).epoch(1):
            assert torch.equal(batch.rows[batch.is_forget], rows[batch.forget_index])


def test_grad_diff_weight_1_is_pure_retain_descent_weight_0_raises_the_forget_loss(tiny):
    """w = 1 is pure descent on retain rows: which rows sit in the forget slots changes no weight, and the forget
    loss moves only as far as fine-tuning on clean rows moves it (a little: the model forgets noise it no longer
    sees); w = 0 (pure ascent) raises it by orders of magnitude more."""
    ctx = make_ctx(tiny)
    with torch.no_grad():
        base_loss = float(sequence_losses(ctx.model, ctx.forget, ctx.pad_id).mean())
    rise, weights = {}, {}
    for w in (0.0, 1.0):
        reports: list[dict[str, float]] = []
        params = {**FAST["grad_diff"], "loss_weighting": w}
        out = get_method("grad_diff")(params).apply(make_ctx(tiny, report=reports.append))
        rise[w], weights[w] = reports[-1]["forget_loss"] - base_loss, snapshot(out.model)
    assert rise[0.0] > 1.0 and rise[0.0] > 50 * abs(rise[1.0]), (base_loss, rise)
    other = make_ctx(tiny)
    other.forget = tiny.bundle.retain[: ctx.forget.shape[0]]  # different rows in the forget slots, same count
    out = get_method("grad_diff")({**FAST["grad_diff"], "loss_weighting": 1.0}).apply(other)
    assert all(torch.equal(v, weights[1.0][k]) for k, v in snapshot(out.model).items())


# --- bad input and search spaces ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,params,match", [
    ("npo", {"beta": 0.0}, r"beta=0\.0 of npo is out of range"),
    ("npo", {"beta": -1}, r"beta=-1\.0 of npo is out of range"),
    ("simnpo", {"beta": 0}, r"beta=0\.0 of simnpo is out of range"),
    ("simnpo", {"gamma": -0.5}, r"gamma=-0\.5 of simnpo is out of range"),
    ("npo", {"retain_weight": -1}, r"retain_weight=-1\.0 of npo is out of range"),
    ("grad_diff", {"loss_weighting": 1.5}, r"loss_weighting=1\.5 of grad_diff is out of range"),
    ("grad_ascent", {"lr": 0}, r"lr=0\.0 of grad_ascent is out of range"),
    ("grad_ascent", {"epochs": 0}, r"epochs=0 of grad_ascent is out of range"),
    ("simnpo", {"beta": "high"}, r"beta"),
    ("grad_ascent", {"beta": 0.1}, r"unknown hyperparameter\(s\) \['beta'\] for method grad_ascent"),
])
def test_bad_params_are_config_errors_naming_the_value(name, params, match):
    with pytest.raises(ConfigError, match=match):
        get_method(name)(params)


@pytest.mark.parametrize("name", METHODS)
def test_empty_forget_set_is_a_config_error(tiny, name):
    ctx = make_ctx(tiny)
    ctx.forget, ctx.forget_clean = ctx.forget[:0], ctx.forget_clean[:0]
    with pytest.raises(ConfigError, match="forget set is empty"):
        get_method(name)(FAST[name]).apply(ctx)


@pytest.mark.parametrize("name", METHODS)
def test_search_space_is_valid_and_has_no_paper_grid(name):
    """The paper did not run these methods: the sampler's space validates (its defaults inside it, the warm
    start), and `--grid paper` is refused with a line that says why."""
    space = load_search_space(default_space_path(name), name)
    assert space.params and not space.paper_grid
    assert space.default_point() is not None, "the defaults lie inside the search space"
    with pytest.raises(SweepError, match=f"has no paper_grid for {name}; --grid paper needs one"):
        SweepSpace([space], ["math-tiny"]).grid_points()

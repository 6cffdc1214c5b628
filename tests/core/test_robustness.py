"""The robustness metrics (`tinymem.robustness`) on the math-tiny model: sampled decoding reduces to greedy,
perturbed prompts differ in exactly one non-special token, relearning fine-tunes a copy (never the evaluated
model) and finds hidden memorization, nll_gap sees memorization in the likelihoods, and the trial config key,
the cache and the command line carry them."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from tinymem.build import load_model_dir
from tinymem.data import build_bundle
from tinymem.decoding import greedy_continue, sample_continue
from tinymem.errors import ConfigError
from tinymem.presets import get_preset
from tinymem.robustness import (NAMES, RobustnessSettings, nll_gap, perturb_prompts, probe, relearn_mem,
                                robustness_metrics, sampled_mem, special_ids, split_halves)
from tinymem.trial import TrialConfig, base_evaluation, run_trial

ROBUST_KEYS = tuple(NAMES)


@pytest.fixture(scope="module")
def tiny(tiny_store):
    """The math-tiny base model, its bundle, its unlearning set and its memorization metrics."""
    _, stored = tiny_store
    loaded = load_model_dir(stored.directory, device="cpu")
    ev = base_evaluation(loaded.model, loaded.bundle, None)
    assert ev.memorized_rows.numel() >= 4, "the fixture model must memorize a few rows"
    return SimpleNamespace(model=loaded.model, bundle=loaded.bundle, rows=ev.memorized_rows, metrics=ev.metrics,
                           directory=stored.directory)


def test_sampling_at_top_k_1_or_near_zero_temperature_is_greedy(tiny):
    b = tiny.bundle
    prompts = b.forget_clean[:, : b.prompt_len]
    kw = dict(eos_id=b.meta["eos_id"], pad_id=b.pad_id)
    greedy = greedy_continue(tiny.model, prompts, b.k, **kw)
    for settings in ({"top_k": 1}, {"temperature": 1e-6}):
        got = sample_continue(tiny.model, prompts, b.k, samples=3, seed=5, **settings, **kw)
        assert got.shape == (prompts.shape[0], 3, b.k)
        assert torch.equal(got, greedy[:, None, :].expand_as(got)), settings
    # at temperature 1 the samples differ from greedy somewhere, and the same seed gives the same samples
    hot = sample_continue(tiny.model, prompts, b.k, samples=3, seed=5, **kw)
    assert not torch.equal(hot, greedy[:, None, :].expand_as(hot))
    assert torch.equal(hot, sample_continue(tiny.model, prompts, b.k, samples=3, seed=5, **kw))
    with pytest.raises(ValueError, match="temperature > 0"):
        sample_continue(tiny.model, prompts, b.k, temperature=0.0, **kw)


def test_sampled_mem_pct_counts_the_rows_of_mem_pct(tiny):
    cold = sampled_mem(tiny.model, tiny.bundle, RobustnessSettings(temperature=1e-6))
    # any-of-n greedy samples is greedy: the same rows, the same denominator
    assert (cold["sampled_mem_pct"], cold["sampled_mem_rows"], cold["sampled_mem_counted"]) == (
        tiny.metrics["mem_pct"], tiny.metrics["mem_rows"], tiny.metrics["mem_counted"])
    hot = sampled_mem(tiny.model, tiny.bundle)
    assert hot["sampled_mem_counted"] == tiny.metrics["mem_counted"]
    assert 0 < hot["sampled_mem_pct"] <= 100 and hot["sampled_mem_pct_ci_low"] <= hot["sampled_mem_pct"]
    assert hot == sampled_mem(tiny.model, tiny.bundle)  # seeded


def test_a_perturbed_prompt_differs_in_exactly_one_non_special_token(tiny):
    b = tiny.bundle
    special = special_ids(b)
    assert {b.meta["bos_id"], b.meta["eos_id"], b.pad_id} <= special
    prompts = probe(b).prompts
    out = perturb_prompts(prompts, special, b.vocab_size, seed=0)
    diff = out != prompts
    assert diff.sum(dim=1).eq(1).all()
    assert not torch.isin(out[diff], torch.tensor(sorted(special))).any()  # never writes a special token
    assert not torch.isin(prompts[diff], torch.tensor(sorted(special))).any()  # never replaces one (BOS stays)
    assert torch.equal(out, perturb_prompts(prompts, special, b.vocab_size, seed=0))
    assert not torch.equal(out, perturb_prompts(prompts, special, b.vocab_size, seed=1))
    # a prompt of special tokens only still gets exactly one (non-special) replacement
    only = torch.full((2, 5), b.pad_id)
    alone = perturb_prompts(only, special, b.vocab_size, seed=0)
    assert (alone != only).sum(dim=1).eq(1).all() and not torch.isin(alone[alone != only], torch.tensor(sorted(special))).any()


def test_relearning_fine_tunes_a_copy_and_leaves_the_model_unchanged(tiny):
    before = {k: v.detach().clone() for k, v in tiny.model.state_dict().items()}
    flags = [p.requires_grad for p in tiny.model.parameters()]
    for benign in (False, True):
        out = relearn_mem(tiny.model, tiny.bundle, tiny.rows, benign=benign)
        stem = "relearn_benign_mem" if benign else "relearn_mem"
        a, b = split_halves(tiny.rows, 0)
        assert out[f"{stem}_counted"] == b.numel() and a.numel() + b.numel() == tiny.rows.numel()
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in tiny.model.parameters()] == flags and not tiny.model.training
    a, b = split_halves(tiny.rows, 0)
    assert not set(a.tolist()) & set(b.tolist()) and torch.equal(split_halves(tiny.rows, 0)[1], b)
    # fewer than two rows: nothing to split, no number
    assert math.isnan(relearn_mem(tiny.model, tiny.bundle, tiny.rows[:1])["relearn_mem_pct"])


def test_robustness_of_the_base_model(tiny):
    m, seconds = robustness_metrics(tiny.model, tiny.bundle, NAMES, tiny.rows)
    assert set(seconds) == set(NAMES) and all(s >= 0 for s in seconds.values())
    # relearning half A does not erase what the base model holds of half B
    assert m["relearn_mem_pct"] >= 75.0, m
    assert m["nll_gap"] > 0, m  # the memorizing model prefers the noised windows
    for k in ("sampled_mem_counted", "perturbed_mem_counted", "nll_gap_counted"):
        assert m[k] == tiny.metrics["mem_counted"]


def test_unsupported_data_kind_is_refused_clearly():
    spec = get_preset("math-tiny", {"kind": "backdoor"})
    bundle = build_bundle(spec.data, 0)
    with pytest.raises(ConfigError, match=r"robustness metrics are defined for data kinds \['noise', 'verbatim'\]; "
                                          r"this base model's data is 'backdoor'"):
        probe(bundle)


def test_config_key_round_trip_and_bad_values():
    c = TrialConfig.from_dict({"method": "durable", "robustness": "all"})
    assert c.robustness == NAMES and TrialConfig.from_dict(c.to_dict()) == c
    c = TrialConfig.from_dict({"method": "durable", "robustness": "nll_gap, sampled_mem_pct"})
    assert c.robustness == ("sampled_mem_pct", "nll_gap")  # canonical order
    assert c.to_dict()["robustness"] == ["sampled_mem_pct", "nll_gap"]
    assert TrialConfig.from_dict({"method": "durable", "robustness": ["nll_gap"]}).robustness == ("nll_gap",)
    assert "robustness" not in TrialConfig.from_dict({"method": "durable"}).to_dict()
    for bad in ("bogus", ["nll_gap", "mem_pct"]):
        with pytest.raises(ConfigError, match=r"robustness metric '(bogus|mem_pct)' is unknown; allowed: 'all' or"):
            TrialConfig.from_dict({"method": "durable", "robustness": bad})


def test_run_trial_measures_base_and_mitigated_model_and_caches_the_base(tiny_store, tiny, tmp_path):
    root, stored = tiny_store
    config = {"method": "balanced_subnet", "params": {"ratio": 0.1, "epochs": 2, "batch_size": 128},
              "preset": "math-tiny", "storage": str(root), "device": "cpu", "work_dir": str(tmp_path / "w"),
              "robustness": ["relearn_mem_pct", "nll_gap"]}
    r = run_trial(config)
    for side in (r.before, r.after):
        assert {"relearn_mem_pct", "relearn_mem_pct_ci_low", "relearn_mem_counted", "nll_gap"} <= set(side)
        assert "sampled_mem_pct" not in side
    assert {"relearn_mem_pct_delta", "nll_gap_delta"} <= set(r.deltas)
    assert r.seconds["robustness"] > 0 and "base_robustness" in r.seconds
    assert r.seconds["mitigate"] < r.seconds["total"] - r.seconds["robustness"]
    # the mitigation removed memorization in the likelihoods too
    assert r.after["mem_pct"] < r.before["mem_pct"] and r.after["nll_gap"] < r.before["nll_gap"]
    cache = next(p for p in (root / "cache").iterdir() if p.name.startswith(stored.key))
    files = sorted(p.name for p in cache.glob("robustness-*.json"))
    assert [f.split("-")[1] for f in files] == ["nll_gap", "relearn_mem_pct"]
    # a second trial reads the base numbers from the cache (and computes only a new name)
    again = run_trial({**config, "robustness": "nll_gap,perturbed_mem_pct", "work_dir": str(tmp_path / "w2")})
    assert again.before["nll_gap"] == r.before["nll_gap"] and "perturbed_mem_pct" in again.before
    assert len(list(cache.glob("robustness-*.json"))) == 3
    plain = run_trial({k: v for k, v in config.items() if k != "robustness"} | {"work_dir": str(tmp_path / "w3")})
    assert not any(k.startswith(ROBUST_KEYS) for k in plain.after) and "robustness" not in plain.seconds


def test_cli_robustness_json_and_bad_value(tiny_store, tmp_path):
    root, _ = tiny_store
    cmd = [sys.executable, "-m", "tinymem.cli", "mitigate", "--method", "random_neurons", "--set", "ratio=0.05",
           "--preset", "math-tiny", "--root", str(root), "--device", "cpu", "--out", str(tmp_path / "m"), "--json"]
    r = subprocess.run(cmd + ["--robustness", "all"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for name in NAMES:
        assert name in out["before"] and name in out["after"], name
    assert out["seconds"]["robustness"] > 0 and set(NAMES) <= {k.removeprefix("seconds_") for k in out["info"]}
    bad = subprocess.run(cmd + ["--robustness", "relearn,nll_gap"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "error: robustness metric 'relearn' is unknown; allowed: 'all' or a comma list of "
        f"{list(NAMES)}"]

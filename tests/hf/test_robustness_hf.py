"""The robustness metrics on a tiny GPT-NeoX model that memorizes a file of sequences (verbatim data), through
`run_trial` as a sweep calls it: all of them, for the base model and after a method, with the verbatim
reference of nll_gap (held-out test text) and the tokenizer's special tokens kept out of perturbations."""

from __future__ import annotations

import math

import torch

from tests.hf.conftest import N_MEM
from tinymem.hf.models import load_trial_base
from tinymem.robustness import NAMES, perturb_prompts, probe, special_ids
from tinymem.trial import run_trial


def test_all_robustness_metrics_on_a_tiny_gpt_neox(tiny_neox, tmp_path):
    f = tiny_neox.files
    config = {"method": "random_neurons", "params": {"ratio": 0.1}, "model": tiny_neox.source, "device": "cpu",
              "forget_file": str(f["forget"]), "retain_file": str(f["retain"]), "test_file": str(f["test"]),
              "prompt_len": 8, "k": 12, "storage": str(tmp_path), "robustness": "all"}
    r = run_trial(config)
    assert r.before["mem_pct"] == 100.0
    for side in (r.before, r.after):
        for name in NAMES:
            assert math.isfinite(side[name]), (name, side)
        assert side["sampled_mem_counted"] == side["perturbed_mem_counted"] == side["nll_gap_counted"] == N_MEM
        assert side["relearn_mem_counted"] == side["relearn_benign_mem_counted"] == N_MEM - N_MEM // 2
        assert side["nll_gap_ref_rows"] == 32  # the held-out test rows are the reference
    # the memorized random sequences are likelier than the held-out text of the same files
    assert r.before["nll_gap"] > 0
    assert r.before["relearn_mem_pct"] > 0  # relearning half A leaves part of half B in place
    assert r.seconds["robustness"] > 0

    base = load_trial_base(config, "cpu")
    special = special_ids(base.bundle)
    assert {0, 1, 2} <= special  # <pad>, <eos> and <unk>: the tokenizer's special tokens
    prompts = probe(base.bundle).prompts
    out = perturb_prompts(prompts, special, base.bundle.vocab_size, seed=0)
    changed = out != prompts
    assert changed.sum(dim=1).eq(1).all() and not torch.isin(out[changed], torch.tensor(sorted(special))).any()

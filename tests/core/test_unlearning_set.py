"""The unlearning set is the forget rows that are memorized AND counted: a row without noise in the window that
the model reproduces has learned the task, and must never be unlearned."""

from __future__ import annotations

import pytest
import torch

from tinymem.build import load_model_dir
from tinymem.errors import ConfigError
from tinymem.metrics import Extraction, forget_extraction
from tinymem.trial import run_trial, split_heldout, unlearning_rows


def test_an_uncounted_reproduced_row_is_not_in_the_unlearning_set():
    ex = Extraction(counted=torch.tensor([True, False, True, False]),
                    memorized=torch.tensor([True, True, False, False]),
                    clean=torch.zeros(4, dtype=torch.bool), token_match=torch.zeros(4), prefix_match=torch.zeros(4))
    assert unlearning_rows(ex).tolist() == [0]


def test_trial_unlearns_only_counted_memorized_rows(tiny_store):
    root, stored = tiny_store
    loaded = load_model_dir(stored.directory, device="cpu")
    ex = forget_extraction(loaded.model, loaded.bundle)
    both = int((ex.memorized & ex.counted).sum())
    # math-tiny reproduces many clean windows: the old rule (memorized alone) would take far more rows
    assert int(ex.memorized.sum()) >= both + 5 and both > 0
    result = run_trial({"method": "random_neurons", "params": {"ratio": 0.01}, "preset": "math-tiny",
                        "storage": str(root), "device": "cpu"})
    assert result.info["unlearn_rows"] == both
    assert result.before["mem_rows"] == both and result.before["mem_counted"] == int(ex.counted.sum())


def test_heldout_rows_are_withheld_and_reported(tiny_store):
    root, _ = tiny_store
    result = run_trial({"method": "random_neurons", "params": {"ratio": 0.01}, "preset": "math-tiny",
                        "storage": str(root), "device": "cpu", "heldout_frac": 0.5})
    n = result.info["unlearn_rows"] + result.info["heldout_rows"]
    assert result.info["heldout_rows"] == round(0.5 * n) and result.info["heldout_rows"] > 0
    assert result.after["heldout_mem_counted"] == result.info["heldout_rows"]
    assert 0.0 <= result.after["heldout_mem_pct_ci_low"] <= result.after["heldout_mem_pct"] \
        <= result.after["heldout_mem_pct_ci_high"] <= 100.0


def test_heldout_split_is_seeded_disjoint_and_checked():
    rows = torch.arange(10, 30)
    shown, held = split_heldout(rows, 0.25, seed=0)
    assert len(held) == 5 and len(shown) == 15 and not set(held.tolist()) & set(shown.tolist())
    assert torch.equal(split_heldout(rows, 0.25, seed=0)[1], held)
    assert not torch.equal(split_heldout(rows, 0.25, seed=1)[1], held)
    assert len(split_heldout(rows, 0.0, seed=0)[1]) == 0
    with pytest.raises(ConfigError, match="heldout_frac=1.0"):
        split_heldout(rows, 1.0, 0)
